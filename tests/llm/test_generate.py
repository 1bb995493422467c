"""`trtc generate` and its library on the LLM corpus (../shared/models/llm, every model its
manifest.json lists, the onnxruntime-genai folder too): greedy generation reproduces HF generate's
`gen:tokens`; one decoder step reproduces the prefill, left-padded and decode cases at the valid
positions; a batch of different lengths gives each row its tokens alone; stop tokens, sampling
through the loop, text through tokenizer.json; and the refusals, one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from trtc.errors import TrtcError
from trtc.llm.decoder import Decoder, DecoderSpec, open_decoder
from trtc.llm.generate import GenerateOptions, generate
from trtc.llm.sampling import SamplingOptions

from corpus import MODELS, one_error_line, run_trtc, trtc_in_process

LLM = MODELS / "llm"
GENAI = LLM / "llama-genai"
MLP = MODELS / "mlp-ts-op17.onnx"
needs_llm = pytest.mark.skipif(not (LLM / "manifest.json").is_file(),
                               reason=f"the LLM corpus is missing (no {LLM / 'manifest.json'}, ../shared/models/llm)")


def llm_models() -> list:
    """(name, model path, npz path) per manifest entry; a genai model is given as its folder."""
    if not (LLM / "manifest.json").is_file():
        return [pytest.param(None, id="llm-corpus-missing", marks=pytest.mark.skip(
            reason=f"the LLM corpus is missing (no {LLM / 'manifest.json'}, ../shared/models/llm)"))]
    params = []
    for entry in json.loads((LLM / "manifest.json").read_text())["models"]:
        path = LLM / entry["file"]
        if (path.parent / "genai_config.json").is_file():
            path = path.parent
        params.append(pytest.param((entry["name"], path, LLM / entry["npz"]), id=entry["name"]))
    return params


MODEL_PARAMS = llm_models()
_decoders: dict[Path, Decoder] = {}


def decoder_for(path: Path) -> Decoder:
    """One open decoder per model for the whole module (opening is most of a test's time)."""
    if path not in _decoders:
        _decoders[path] = open_decoder(path)
    return _decoders[path]


def data(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz) as stored:
        return dict(stored)


def step_case(decoder: Decoder, stored: dict[str, np.ndarray], case: str) -> tuple[np.ndarray, list[np.ndarray]]:
    feeds = {k.split(":", 1)[1]: v for k, v in stored.items() if k.startswith(f"{case}:")}
    past = [feeds[name] for pair in decoder.spec.past for name in pair]
    return decoder(feeds["input_ids"], feeds["attention_mask"], feeds.get("position_ids"), past)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    bound = 1e-4 * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_greedy_reproduces_hf_generate(model):
    name, path, npz = model
    stored = data(npz)
    result = generate(decoder_for(path), stored["gen:prompt"], GenerateOptions(max_new_tokens=16))
    assert [r.ids for r in result.rows] == stored["gen:tokens"].tolist(), name
    assert [r.finish_reason for r in result.rows] == ["length", "length"]
    assert result.timings.new_tokens == 32 and result.timings.steps == 16
    assert result.timings.prefill_s > 0 and result.timings.decode_tokens_per_s > 0
    assert result.executor == "cpu-reference (onnxruntime)"


@pytest.mark.parametrize("model", MODEL_PARAMS)
@pytest.mark.parametrize("case", ["in", "pad_in", "dec_in"])
def test_one_step_reproduces_the_stored_outputs(model, case):
    """Logits and presents equal onnxruntime's stored outputs; in the left-padded case only at the
    valid positions (the pads' outputs are don't-care values)."""
    name, path, npz = model
    decoder, stored = decoder_for(path), data(npz)
    logits, presents = step_case(decoder, stored, case)
    out = case.replace("in", "out") if case != "in" else "out"
    mask = stored[f"{case}:attention_mask"].astype(bool)
    valid = mask[:, -logits.shape[1]:]
    assert_close(logits[valid], stored[f"{out}:logits"][valid], f"{name} {case} logits")
    for got, present in zip(presents, [n for pair in decoder.spec.present for n in pair]):
        want = stored[f"{out}:{present}"]
        assert got.shape == want.shape, f"{name} {case} {present}"
        assert_close(got.transpose(0, 2, 1, 3)[mask], want.transpose(0, 2, 1, 3)[mask], f"{name} {case} {present}")


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_a_batch_of_different_lengths_gives_each_row_its_own_tokens(model):
    """Prompts of 3 and 7 tokens together: each row as if run alone (padding on the side the model
    reads: left for HF-style decoders, right for GroupQueryAttention)."""
    _, path, npz = model
    decoder, prompt = decoder_for(path), data(npz)["gen:prompt"]
    prompts = [prompt[0][:3], prompt[1]]
    options = GenerateOptions(max_new_tokens=8)
    alone = [generate(decoder, [p], options).rows[0].ids for p in prompts]
    together = generate(decoder, prompts, options)
    assert [r.ids for r in together.rows] == alone
    assert decoder.spec.padding == ("right" if (path / "genai_config.json").is_file() else "left")


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_a_stop_token_ends_its_row_only(model):
    _, path, npz = model
    stored = data(npz)
    tokens = stored["gen:tokens"].tolist()
    stop = tokens[0][5]
    result = generate(decoder_for(path), stored["gen:prompt"], GenerateOptions(max_new_tokens=16, stop_tokens=(stop,)))
    for row, want in zip(result.rows, tokens):
        if stop in want:
            assert row.ids == want[: want.index(stop) + 1] and row.finish_reason == "stop"
        else:
            assert row.ids == want and row.finish_reason == "length"
    assert result.rows[0].finish_reason == "stop" and len(result.rows[0].ids) <= 6


@needs_llm
def test_sampling_through_the_loop():
    """Same seed, same tokens; top-k 1 is greedy; a repetition penalty changes a greedy run that repeats."""
    decoder, stored = decoder_for(LLM / "llama-dynamo-op18.onnx"), data(LLM / "llama-dynamo-op18.npz")
    prompt = stored["gen:prompt"]

    def ids(**sampling):
        options = GenerateOptions(max_new_tokens=16, sampling=SamplingOptions(**sampling))
        return [r.ids for r in generate(decoder, prompt, options).rows]

    sampled = ids(do_sample=True, temperature=1.0, seed=3)
    assert sampled == ids(do_sample=True, temperature=1.0, seed=3)
    assert sampled != stored["gen:tokens"].tolist()
    assert ids(do_sample=True, top_k=1, seed=5) == stored["gen:tokens"].tolist()
    assert ids(do_sample=True, temperature=0.0, seed=5) == stored["gen:tokens"].tolist()
    penalized = ids(repetition_penalty=1.5)
    assert penalized[0] != stored["gen:tokens"][0].tolist()  # row 0 repeats 297 36 60 134 379 greedily
    assert len(set(penalized[0])) > len(set(stored["gen:tokens"][0].tolist()))


@needs_llm
def test_streaming_callback_sees_every_token_in_order():
    decoder, stored = decoder_for(LLM / "qwen2-dynamo-op18.onnx"), data(LLM / "qwen2-dynamo-op18.npz")
    seen: list[tuple[int, list[int], list[bool]]] = []
    generate(decoder, stored["gen:prompt"], GenerateOptions(max_new_tokens=4),
             on_token=lambda step, tokens, active: seen.append((step, tokens.tolist(), active.tolist())))
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and all(a == [True, True] for _, _, a in seen)
    assert np.array([t for _, t, _ in seen]).T.tolist() == stored["gen:tokens"][:, :4].tolist()


@needs_llm
def test_a_trtir_generates_what_its_onnx_does(tmp_path):
    from trtc.frontend import parse_onnx
    from trtc.ir import save_artifact

    artifact = parse_onnx(LLM / "llama-dynamo-op18.onnx")
    save_artifact(artifact.model, tmp_path / "llama.trtir", artifact.meta)
    stored = data(LLM / "llama-dynamo-op18.npz")
    decoder = open_decoder(tmp_path / "llama.trtir")
    try:
        result = generate(decoder, stored["gen:prompt"], GenerateOptions(max_new_tokens=16))
    finally:
        decoder.close()
    assert [r.ids for r in result.rows] == stored["gen:tokens"].tolist()


# --- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_cli_json_reproduces_hf_generate(model, capsys):
    _, path, npz = model
    stored = data(npz)
    args = [a for row in stored["gen:prompt"] for a in ("--prompt-ids", ",".join(map(str, row)))]
    rc, out, err = trtc_in_process(capsys, "generate", path, *args, "--max-new-tokens", "16", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert [r["ids"] for r in report["rows"]] == stored["gen:tokens"].tolist()
    assert [r["prompt_ids"] for r in report["rows"]] == stored["gen:prompt"].tolist()
    assert report["executor"] == "cpu-reference (onnxruntime)" and report["sampling"]["mode"] == "greedy"
    assert {"time_to_first_token_s", "tokens_per_s", "decode_tokens_per_s"} <= report["timings"].keys()


@needs_llm
def test_cli_streams_ids_and_prints_a_summary():
    """A real process: the ids on stdout, the summary line on stderr."""
    stored = data(LLM / "gpt2-dynamo-op18.npz")
    prompt = ",".join(map(str, stored["gen:prompt"][0]))
    proc = run_trtc("generate", LLM / "gpt2-dynamo-op18.onnx", "--prompt-ids", prompt, "--max-new-tokens", "16",
                    "--stop-token", "2")
    assert proc.returncode == 0, proc.stderr
    want = stored["gen:tokens"][0].tolist()
    assert proc.stdout.split() == [str(t) for t in want[: want.index(2) + 1]]
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("12 tokens (stop), time to first token ") and "tokens/s" in summary
    assert summary.endswith("cpu-reference (onnxruntime)")


@needs_llm
def test_cli_text_with_the_genai_folder_tokenizer(capsys):
    """--prompt TEXT with the folder's tokenizer.json (WordLevel over words t<id>): the text's ids are
    the words' ids, the tokens those of --prompt-ids, the text their words; a batch prints a line per row.
    (The corpus tokenizer declares its unk word "t3" a special token, so it splits any word starting
    with "t3": the prompts avoid those.)"""
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed (pip install -e '.[llm]')")
    prompts = [[188, 155, 402, 216, 236, 267], [295, 442, 215]]
    texts = [" ".join(f"t{t}" for t in row) for row in prompts]
    want = [r.ids for r in generate(decoder_for(GENAI), prompts, GenerateOptions(max_new_tokens=8)).rows]
    rc, out, err = trtc_in_process(capsys, "generate", GENAI, "--prompt", texts[0], "--prompt", texts[1],
                                   "--max-new-tokens", "8", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert [r["prompt_ids"] for r in report["rows"]] == prompts
    assert [r["ids"] for r in report["rows"]] == want
    assert [r["text"] for r in report["rows"]] == [" ".join(f"t{t}" for t in row) for row in want]
    assert report["tokenizer"].endswith("tokenizer.json")
    rc, out, err = trtc_in_process(capsys, "generate", GENAI, "--prompt", texts[0], "--prompt", texts[1],
                                   "--max-new-tokens", "2")
    assert rc == 0 and out.splitlines() == [f"[{i + 1}] t{row[0]} t{row[1]} (length)" for i, row in enumerate(want)]
    rc, out, err = trtc_in_process(capsys, "generate", GENAI, "--prompt", texts[0], "--max-new-tokens", "8")
    assert rc == 0 and out == " ".join(f"t{t}" for t in want[0]) + "\n"  # streamed word by word


# --- refusals, one line each --------------------------------------------------------------------


@needs_llm
@pytest.mark.parametrize("args, needles", [
    (["--prompt", "hello"], ["--prompt: text needs a tokenizer", "--tokenizer"]),
    (["--prompt-ids", "1,2", "--top-p", "1.5"], ["--top-p: 1.5 must be in (0, 1]"]),
    (["--prompt-ids", ""], ["--prompt-ids: the prompt is empty"]),
    (["--prompt-ids", "1,x"], ["not a list of token ids"]),
    (["--prompt-ids", "1,999"], ["token id 999 is outside the vocabulary [0, 512)"]),
    ([], ["no prompt given"]),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], ["--max-new-tokens: 0 must be >= 1"]),
    (["--prompt-ids", ",".join(["5"] * 300)], ["the prompt has 300 tokens", "at most 256 positions",
                                             "position table"]),
])
def test_cli_refusals(capsys, args, needles):
    one_error_line(trtc_in_process(capsys, "generate", LLM / "gpt2-dynamo-op18.onnx", *args), *needles)


@needs_llm
def test_a_prompt_near_the_context_stops_at_it():
    decoder = decoder_for(LLM / "gpt2-dynamo-op18.onnx")
    result = generate(decoder, [[5] * 250, [5] * 10], GenerateOptions(max_new_tokens=16))
    assert [len(r.ids) for r in result.rows] == [6, 16]
    assert [r.finish_reason for r in result.rows] == ["length", "length"]


def test_a_model_that_is_not_a_decoder(capsys):
    if not MLP.is_file():
        pytest.skip(f"corpus model {MLP} is missing (../shared/models)")
    one_error_line(trtc_in_process(capsys, "generate", MLP, "--prompt-ids", "1,2"),
                   "not a decoder trtc can drive: no 'logits' output (outputs: y)")


def test_an_engine_without_its_sidecar_is_refused(tmp_path, capsys):
    """Engines generate on the GPU (tests/llm/test_generate_static.py); one without a sidecar is one line."""
    (tmp_path / "model.plan").write_bytes(b"\0")
    one_error_line(trtc_in_process(capsys, "generate", tmp_path / "model.plan", "--prompt-ids", "1"),
                   "no sidecar model.plan.json beside the engine")


def test_an_empty_prompt_in_the_library():
    spec = DecoderSpec(input_ids="input_ids", logits="logits", past=(("k", "v"),), present=(("pk", "pv"),),
                       kv_heads=1, head_dim=2, cache_dtype=np.dtype(np.float32), ids_dtype=np.dtype(np.int64))
    decoder = Decoder(spec, lambda feeds: {}, executor="none")
    for prompts, text in (([[1], []], "prompt 2: the prompt is empty"), ([], "no prompt given")):
        with pytest.raises(TrtcError, match=text):
            generate(decoder, prompts)


def fake_model(inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> ir.Model:
    """A graph with these float inputs/outputs (input_ids int64) and nothing else of interest."""
    def info(name, shape):
        dtype = TensorProto.INT64 if name in ("input_ids", "attention_mask", "position_ids") else TensorProto.FLOAT
        return helper.make_tensor_value_info(name, dtype, shape)

    nodes = [helper.make_node("Identity", [inputs[-1][0]], [name]) for name, _ in outputs]
    graph = helper.make_graph(nodes, "g", [info(*i) for i in inputs], [info(*o) for o in outputs])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


IDS = ("input_ids", ["batch", "seq"])
LOGITS = ("logits", ["batch", "seq", 8])


def cache(prefix: str, layer: int, kind: str, shape=None) -> tuple[str, list]:
    return f"{prefix}.{layer}.{kind}", shape or ["batch", 2, "past", 4]


@pytest.mark.parametrize("inputs, outputs, text", [
    ([IDS, ("past_key_values.0", [2, "batch", 2, "past", 4])], [LOGITS, ("present.0", [2, "batch", 2, "s", 4])],
     "inputs it cannot feed: past_key_values.0"),
    ([IDS, ("attention_mask", ["batch", "total"])], [LOGITS], "no past key/value inputs"),
    ([IDS, cache("past_key_values", 0, "key"), cache("past_key_values", 0, "value")],
     [LOGITS, cache("present", 0, "key")], "cannot pair: past past_key_values.0.value has no present output"),
    ([IDS, cache("past_key_values", 0, "key"), cache("past_key_values", 1, "key"),
      cache("past_key_values", 1, "value")], [LOGITS], "no past value of layer 0"),
    ([IDS, cache("past_key_values", 0, "key"), cache("past_key_values", 0, "value")],
     [("logits", ["batch", 8]), cache("present", 0, "key"), cache("present", 0, "value")], "logits has rank 2"),
    ([IDS, cache("past_key_values", 0, "key", ["batch", 2, "past", "d"]), cache("past_key_values", 0, "value")],
     [LOGITS, cache("present", 0, "key"), cache("present", 0, "value")], "cannot tell head_dim"),
    ([IDS, ("token_type_ids", ["batch", "seq"]), cache("past_key_values", 0, "key"),
      cache("past_key_values", 0, "value")], [LOGITS, cache("present", 0, "key"), cache("present", 0, "value")],
     "inputs it cannot feed: token_type_ids"),
])
def test_variants_not_handled_are_one_line(inputs, outputs, text):
    with pytest.raises(TrtcError) as info:
        DecoderSpec.from_model(fake_model(inputs, outputs), where="m.onnx")
    line = info.value.one_line()
    assert text in line and line.startswith("m.onnx: ") and "\n" not in line


def test_a_decoder_spec_from_names_alone():
    """The roles come from the graph's names and dims: another spelling (past.0.key) pairs too."""
    model = fake_model([IDS, ("attention_mask", ["batch", "total"]), cache("past", 0, "key"),
                        cache("past", 0, "value")], [LOGITS, cache("present", 0, "key"), cache("present", 0, "value")])
    spec = DecoderSpec.from_model(model)
    assert spec.past == (("past.0.key", "past.0.value"),) and spec.present == (("present.0.key", "present.0.value"),)
    assert (spec.kv_heads, spec.head_dim, spec.vocab, spec.position_ids, spec.padding) == (2, 4, 8, None, "left")


@needs_llm
def test_genai_model_without_its_config_says_what_it_lacks(tmp_path, capsys):
    """genai writes head_dim as a symbolic kv_cache_dim: without genai_config.json it cannot be told."""
    shutil.copy(GENAI / "llama-genai-fp32.onnx", tmp_path / "model.onnx")
    one_error_line(trtc_in_process(capsys, "generate", tmp_path / "model.onnx", "--prompt-ids", "1,2"),
                   "cannot tell head_dim of 'past_key_values.0.key'", "genai_config.json")


@needs_llm
def test_genai_config_defaults(tmp_path, capsys):
    """A folder's config gives the stop tokens (eos) and sampling settings: do_sample with top_k 1 is
    greedy; an explicit --stop-token replaces eos."""
    for name in ("llama-genai-fp32.onnx", "tokenizer.json"):
        shutil.copy(GENAI / name, tmp_path / name)
    config = json.loads((GENAI / "genai_config.json").read_text())
    config["search"].update(do_sample=True, top_k=1, temperature=0.7)
    config["model"]["eos_token_id"] = [36, 2]
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    stored = data(GENAI / "llama-genai-fp32.npz")
    prompt = ",".join(map(str, stored["gen:prompt"][0]))
    rc, out, err = trtc_in_process(capsys, "generate", tmp_path, "--prompt-ids", prompt, "--max-new-tokens", "16",
                                   "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["sampling"]["mode"] == "sample" and report["sampling"]["top_k"] == 1
    assert report["rows"][0]["ids"] == [471, 70, 297, 36] and report["rows"][0]["finish_reason"] == "stop"
    rc, out, _ = trtc_in_process(capsys, "generate", tmp_path, "--prompt-ids", prompt, "--max-new-tokens", "16",
                                 "--stop-token", "60", "--json")
    assert json.loads(out)["rows"][0]["ids"] == [471, 70, 297, 36, 60]


def teardown_module() -> None:
    for decoder in _decoders.values():
        decoder.close()
    _decoders.clear()
