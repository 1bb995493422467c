"""`trtc generate`: token generation with an LLM decoder, streamed: the CPU reference for an .onnx,
.trtir or genai folder, the GPU for an engine built with --llm; one loop and one sampler for all."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from trtc.cli.options import echo_json, json_option

DEFAULT_MAX_NEW_TOKENS = 32
_SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path), metavar="ARTIFACT|GENAI_DIR")
@click.option("--prompt-ids", "prompt_ids", multiple=True, metavar="1,2,3",
              help="A prompt as token ids (repeatable: a batch; lengths may differ).")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="A prompt as text, encoded with --tokenizer (repeatable: a batch).")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="tokenizer.json for --prompt and for the output's text (default: a genai folder's own).")
@click.option("--max-new-tokens", type=int, help=f"New tokens per prompt (default {DEFAULT_MAX_NEW_TOKENS}).")
@click.option("--temperature", type=float, help="Sample at this temperature (0: greedy).")
@click.option("--top-k", type=int, help="Sample among the k most probable tokens (0: all).")
@click.option("--top-p", type=float, help="Sample among the most probable tokens holding this much probability.")
@click.option("--min-p", type=float, help="Sample among tokens at least this fraction as probable as the top one.")
@click.option("--repetition-penalty", type=float,
              help="HF's penalty on tokens already in a row's context (1: none); greedy too.")
@click.option("--seed", type=int, help="Seed of the sampler (same seed, same tokens).")
@click.option("--stop-token", "stop_tokens", multiple=True, type=int, metavar="ID",
              help="A token id that ends a row, kept in its output (repeatable; default: a genai folder's eos).")
@click.option("--pad-id", type=int, help="Token id at pad positions (default: a genai folder's, else 0).")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="An engine's decode step replayed from a CUDA graph.")
@json_option
def generate(artifact: Path, prompt_ids: tuple[str, ...], prompts: tuple[str, ...], tokenizer: Path | None,
             max_new_tokens: int | None, temperature: float | None, top_k: int | None, top_p: float | None,
             min_p: float | None, repetition_penalty: float | None, seed: int | None, stop_tokens: tuple[int, ...],
             pad_id: int | None, cuda_graph: bool, as_json: bool) -> None:
    """Generate tokens after prompts with a decoder-only LLM: an .onnx (as exported), a .trtir (one
    optimized with --llm runs its static cache) or an onnxruntime-genai folder (genai_config.json +
    model; its search settings are the defaults) on the CPU reference, or an engine built with --llm
    (.plan) on the GPU, its KV cache kept on the device. Greedy unless --temperature, --top-k, --top-p
    or --min-p is given (or the genai config samples). Tokens stream as they come for one prompt; a
    batch prints each row at the end. A summary (tokens, time to first token, tokens/s, executor) goes to stderr."""
    from trtc.errors import TrtcError
    from trtc.llm.decoder import open_decoder
    from trtc.llm.generate import GenerateOptions
    from trtc.llm.generate import generate as run_generate

    if prompt_ids and prompts:
        raise TrtcError("give prompts as --prompt-ids or as --prompt, not both", where="--prompt-ids/--prompt")
    if not (prompt_ids or prompts):
        raise TrtcError("no prompt given", hint="give --prompt-ids 1,2,3 or --prompt TEXT with --tokenizer")
    rows = [_parse_ids(text) for text in prompt_ids]
    decoder = open_decoder(artifact, cuda_graph=cuda_graph)
    try:
        genai = decoder.genai
        search = genai.search if genai else {}
        text_tokenizer = _tokenizer(tokenizer, genai, need=bool(prompts))
        if prompts:
            rows = [text_tokenizer.encode(p) for p in prompts]
        options = GenerateOptions(
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
            sampling=_sampling(search, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                               repetition_penalty=repetition_penalty, seed=seed),
            stop_tokens=tuple(stop_tokens) or (genai.eos_ids if genai else ()),
            pad_id=pad_id if pad_id is not None else (genai.pad_id if genai and genai.pad_id is not None else 0),
            max_length=search.get("max_length"))
        stream = None if as_json or len(rows) > 1 else _Stream(text_tokenizer)
        result = run_generate(decoder, rows, options, tokenizer=text_tokenizer, on_token=stream)
    finally:
        decoder.close()
    if as_json:
        echo_json({"artifact": str(artifact), **result.as_dict(), "decoder": decoder.spec.as_dict(),
                   "tokenizer": str(text_tokenizer.path) if text_tokenizer else None})
        return
    if stream:
        stream.end()
    else:
        for i, row in enumerate(result.rows):
            shown = row.text if row.text is not None else " ".join(map(str, row.ids))
            click.echo(f"[{i + 1}] {shown} ({row.finish_reason})")
    click.echo(_summary(result), err=True)


def _parse_ids(text: str, option: str = "--prompt-ids") -> list[int]:
    """Token ids written 1,2,3 (or space-separated), as `option` takes them (compare --llm's too)."""
    from trtc.errors import TrtcError

    what = "prompt" if option == "--prompt-ids" else "continuation"
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not tokens:
        raise TrtcError(f"the {what} is empty (no token ids)", where=option)
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise TrtcError(f"{text!r} is not a list of token ids like 1,2,3", where=option) from None


def _tokenizer(path: Path | None, genai: Any, need: bool):
    """The tokenizer: --tokenizer, else a genai folder's tokenizer.json (used for the output's text
    only when the `tokenizers` library is there, unless --prompt needs it)."""
    from trtc.errors import TrtcError
    from trtc.llm.text import load_tokenizer

    if path is not None:
        return load_tokenizer(path)
    default = genai.tokenizer if genai else None
    if default is None:
        if need:
            raise TrtcError("text needs a tokenizer", where="--prompt",
                            hint="give --tokenizer tokenizer.json, or token ids with --prompt-ids")
        return None
    try:
        return load_tokenizer(default)
    except TrtcError:
        if need:
            raise
        return None


def _sampling(search: dict[str, Any], **given: Any):
    """SamplingOptions: the flags given, else the genai config's search settings, else greedy."""
    from trtc.llm.sampling import SamplingOptions

    do_sample = any(given[k] is not None for k in _SAMPLING_FLAGS) or bool(search.get("do_sample", False))
    values: dict[str, Any] = {"do_sample": do_sample}
    for name in (*_SAMPLING_FLAGS, "repetition_penalty"):
        if given[name] is not None:
            values[name] = given[name]
        elif search.get(name) is not None and (do_sample or name == "repetition_penalty"):
            values[name] = search[name]
    return SamplingOptions(seed=given["seed"], **values)


class _Stream:
    """Prints one row's tokens as they come: the text's new part with a tokenizer, else the ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, step: int, tokens, active) -> None:
        if not active[0]:
            return
        self.ids.append(int(tokens[0]))
        if self.tokenizer is None:
            click.echo(("" if step == 0 else " ") + str(self.ids[-1]), nl=False)
            return
        text = self.tokenizer.decode(self.ids)
        new = text[len(self.shown):] if text.startswith(self.shown) else "\n" + text
        click.echo(new, nl=False)
        self.shown = text

    def end(self) -> None:
        click.echo("")


def _summary(result) -> str:
    t = result.timings
    rate = f"{t.tokens_per_s:.1f} tokens/s" if t.tokens_per_s else "-"
    decode = f", decode {t.decode_tokens_per_s:.1f} tokens/s" if t.decode_tokens_per_s else ""
    reasons = sorted({r.finish_reason for r in result.rows})
    rows = f" over {len(result.rows)} prompts" if len(result.rows) > 1 else ""
    tokens = f"{t.new_tokens} token{'' if t.new_tokens == 1 else 's'}"
    return (f"{tokens}{rows} ({', '.join(reasons)}), time to first token {t.prefill_s * 1e3:.1f} ms, "
            f"{rate}{decode}; {result.executor}")
