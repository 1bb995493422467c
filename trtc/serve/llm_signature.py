"""What the decoupled LLM model `trtc export triton` writes for a decoder takes and answers.

One prompt per request; every generated token is a response of its own. The names follow
TensorRT-LLM's Triton ensemble (and the vLLM backend) where they mean the same thing, so clients
and tools written for those (Triton's generate endpoint, genai-perf) send what they already send:

  input_ids           INT64  [-1]  the prompt's token ids (or text_input with a tokenizer)
  text_input          BYTES  [1]   the prompt as text, encoded with the model's tokenizer.json
  max_tokens          INT32  [1]   new tokens at most (TensorRT-LLM's ensemble and vLLM's name)
  temperature, top_p, min_p, repetition_penalty  FP32 [1];  top_k INT32 [1]
  random_seed         UINT64 [1]   the sampler's seed (TensorRT-LLM's name and type)
  end_id              INT32  [1]   a token that ends generation (TensorRT-LLM's; -1: none)
  stop_token_ids      INT64  [-1]  tokens that end generation (vLLM's name; TensorRT-LLM's
                                   stop_words_list takes token sequences, which trtc does not)
  stream              BOOL   [1]   false: one response with every token (default true)
->
  output_ids          INT64  [-1]  this response's token(s)
  text_output         BYTES  [1]   their text (the new part of the decoded text) with a tokenizer
  finish_reason       BYTES  [1]   "stop" or "length", in the last response only

Every input but the prompt is optional (`optional: true`); with a tokenizer the prompt comes as
input_ids or as text_input, so both are optional and the model asks for one.
"""

from __future__ import annotations

from trtc.serve.signature import ServedTensor, Signature

# (name, numpy dtype, dims, what) of the optional request inputs, in config order.
PARAMETERS: tuple[tuple[str, str, tuple[int, ...], str], ...] = (
    ("max_tokens", "int32", (1,), "new tokens at most"),
    ("temperature", "float32", (1,), "sampling temperature (0: greedy)"),
    ("top_k", "int32", (1,), "sample among the k most probable tokens (0: all)"),
    ("top_p", "float32", (1,), "sample among the most probable tokens holding this probability"),
    ("min_p", "float32", (1,), "drop tokens less probable than this fraction of the top one"),
    ("repetition_penalty", "float32", (1,), "HF's penalty on tokens already in the context (1: none)"),
    ("random_seed", "uint64", (1,), "seed of the sampler"),
    ("end_id", "int32", (1,), "a token that ends generation (-1: none)"),
    ("stop_token_ids", "int64", (-1,), "tokens that end generation"),
    ("stream", "bool", (1,), "false: one response holding every token"),
)
PROMPT_IDS = "input_ids"
PROMPT_TEXT = "text_input"
OUTPUT_IDS = "output_ids"
OUTPUT_TEXT = "text_output"
FINISH_REASON = "finish_reason"


def llm_signature(text: bool) -> Signature:
    """The model's inputs and outputs; `text`: with a tokenizer (text_input, text_output)."""
    inputs = [ServedTensor(PROMPT_IDS, "int64", (-1,), optional=text)]
    if text:
        inputs.append(ServedTensor(PROMPT_TEXT, "object", (1,), optional=True))
    inputs += [ServedTensor(name, dtype, dims, optional=True) for name, dtype, dims, _ in PARAMETERS]
    outputs = [ServedTensor(OUTPUT_IDS, "int64", (-1,))]
    if text:
        outputs.append(ServedTensor(OUTPUT_TEXT, "object", (1,)))
    outputs.append(ServedTensor(FINISH_REASON, "object", (1,)))
    return Signature("llm", tuple(inputs), tuple(outputs), ())
