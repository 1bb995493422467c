"""The LLM decoders of ../shared/models/llm, in one run: build time and network layers of trtc
(parse + optimize + build through the library) against TensorRT-RTX's own ONNX parser on the same
export (build_vs_parser's contenders, each build in a fresh process), the KV cache's bytes per
token, and CPU tokens/s of trtc's generation loop against onnxruntime-genai on the genai export.

    python benchmarks/llm.py [--filter NAME] [--fp16] [--prompt-tokens 16] [--new-tokens 64]
                             [--repeats 50] [--build-repeats 5] [--write]

Builds: one profile for every model and both sides, batch 1..4, new tokens 1..128 (OPT 1: a
decode step), cached tokens 0..positions-1 (OPT 64); median of --build-repeats fresh processes.
With --fp16, trtc also builds its fp16 network (calibrated on the prefill case of the model's .npz);
the parser has no fp16 flag. A side that cannot build a model gets the reason in its cell.

Generation: the same seeded random prompt for every model and both sides, greedy, at most
--new-tokens new tokens, stopping at the model's eos (as onnxruntime-genai does), batch 1; one
warm-up run, then the median wall time of --repeats runs (prefill included) gives tokens/s. trtc
runs its generate loop on its CPU reference (onnxruntime with graph optimizations off, growing
past/present tensors) over the export as written, and over the graph trtc's optimizer makes of it
(fused RMSNorm/rotary/attention: the ops its engine gets); onnxruntime-genai runs its own loop
(optimized graph, a shared past/present buffer). Both must produce the same tokens ("same tokens").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from trtc.llm.decoder import Decoder, DecoderSpec

REPO = Path(__file__).resolve().parents[1]
LLM = REPO.parent / "shared" / "models" / "llm"
MAX_BATCH = 4
MAX_NEW = 128  # new tokens per step the profile allows (a prefill of up to 128 tokens)
OPT_PAST = 64


def models(filter_text: str = "") -> list[SimpleNamespace]:
    """manifest.json's models: name, its .onnx, what trtc generates with (a genai model's folder),
    its eos ids and whether onnxruntime-genai runs it."""
    found = []
    for entry in json.loads((LLM / "manifest.json").read_text())["models"]:
        path = LLM / entry["file"]
        if filter_text not in entry["name"] or not path.is_file():
            continue
        genai = (path.parent / "genai_config.json").is_file()
        eos = entry.get("config", {}).get("eos_token_id")
        found.append(SimpleNamespace(name=entry["name"], path=path, generate_path=path.parent if genai else path,
                                     genai=genai, eos=() if eos is None else tuple(np.atleast_1d(eos).tolist())))
    return found


def decoder_spec(model: SimpleNamespace) -> DecoderSpec:
    """The model's DecoderSpec, read as trtc generate reads it (genai's config for its names and dims)."""
    import onnx_ir as ir

    from trtc.llm.decoder import DecoderSpec
    from trtc.llm.genai import find_genai

    model_file, genai = find_genai(model.generate_path)
    return DecoderSpec.from_model(ir.load(model_file), genai, str(model_file))


def build_profile(spec: DecoderSpec) -> dict[str, list[list[int]]]:
    """{input: [min, opt, max]} for one profile covering prefill and decode."""
    positions = spec.max_positions or 256
    new = [[1, 1], [1, 1], [MAX_BATCH, MAX_NEW]]
    profile = {spec.input_ids: new}
    if spec.position_ids:
        profile[spec.position_ids] = new
    if spec.attention_mask:
        profile[spec.attention_mask] = [[1, 1], [1, OPT_PAST + 1], [MAX_BATCH, positions]]
    for name in (n for pair in spec.past for n in pair):
        profile[name] = [[1, spec.kv_heads, past, spec.head_dim] for past in (0, OPT_PAST)] + \
            [[MAX_BATCH, spec.kv_heads, positions - 1, spec.head_dim]]
    return profile


def cache_bytes_per_token(spec: DecoderSpec) -> int:
    """Key and value, every layer: 2 x layers x kv_heads x head_dim x the cache dtype's bytes."""
    return 2 * spec.layers * spec.kv_heads * spec.head_dim * np.dtype(spec.cache_dtype).itemsize


def build_median(tool: str, model: SimpleNamespace, profile: dict, fp16: bool, repeats: int) -> dict[str, Any]:
    """build_vs_parser's contender `repeats` times (fresh processes): the median time, or the first failure."""
    from build_vs_parser import run

    runs = []
    for _ in range(repeats):
        result = run(tool, model, profile, fp16)
        if "seconds" not in result:
            return result
        runs.append(result)
    return {"seconds": statistics.median(r["seconds"] for r in runs), "layers": runs[0]["layers"]}


def timed(runs: dict[str, Callable[[], list[int]]], repeats: int) -> dict[str, dict[str, Any]]:
    """Each contender's median seconds over `repeats` rounds (after one warm-up each), the contenders
    taking turns within a round so that all see the same machine; the tokens of the last run."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    tokens: dict[str, list[int]] = {}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            tokens[key] = run()
            times[key].append(time.perf_counter() - start)
    results = {}
    for key in runs:
        seconds = statistics.median(times[key])
        results[key] = {"seconds": seconds, "tokens": tokens[key], "tokens_per_s": len(tokens[key]) / seconds}
    return results


def trtc_decoder(model: SimpleNamespace, optimized: bool) -> Decoder:
    """trtc's decoder over the export as written, or (`optimized`) over trtc's parsed and optimized graph."""
    from trtc.llm.decoder import open_decoder, reference_decoder

    if not optimized:
        return open_decoder(model.generate_path)
    from trtc.frontend import parse_onnx
    from trtc.passes.pipeline import optimize

    artifact = parse_onnx(model.path)
    optimize(artifact.model)
    return reference_decoder(artifact.model, where=str(model.path))


def genai_runner(model: SimpleNamespace, prompt: list[int], new: int) -> Callable[[], list[int]]:
    """onnxruntime-genai's own greedy loop on the folder: the new tokens."""
    import onnxruntime_genai as og

    genai_model = og.Model(str(model.generate_path))

    def run() -> list[int]:
        params = og.GeneratorParams(genai_model)
        params.set_search_options(max_length=len(prompt) + new, do_sample=False)
        generator = og.Generator(genai_model, params)
        generator.append_tokens(prompt)
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)[len(prompt):]]

    return run


def generation(model: SimpleNamespace, prompt: list[int], new: int, repeats: int) -> dict[str, dict[str, Any]]:
    """tokens/s of trtc's loop (export, optimized graph) and, on a genai folder, onnxruntime-genai's;
    a contender that cannot start says why."""
    from trtc.errors import TrtcError
    from trtc.llm.generate import GenerateOptions, generate

    options = GenerateOptions(max_new_tokens=new, stop_tokens=model.eos)
    runs: dict[str, Callable[[], list[int]]] = {}
    failed: dict[str, dict[str, Any]] = {}
    decoders = []
    for key, optimized in (("trtc_gen", False), ("trtc_opt_gen", True)):
        try:
            decoder = trtc_decoder(model, optimized)
        except TrtcError as exc:
            failed[key] = {"error": exc.one_line()}
            continue
        decoders.append(decoder)
        runs[key] = lambda decoder=decoder: generate(decoder, [prompt], options).rows[0].ids
    if model.genai:
        try:
            runs["genai_gen"] = genai_runner(model, prompt, new)
        except ImportError:
            failed["genai_gen"] = {"error": "onnxruntime-genai is not installed (pip install -c requirements.lock "
                                            "-e '.[bench]')"}
    try:
        return {**timed(runs, repeats), **failed}
    finally:
        for decoder in decoders:
            decoder.close()


def _short(error: str, model: SimpleNamespace) -> str:
    """A failure's reason for a table cell: without the exception's class and the model's path."""
    text = error.removeprefix("trtc.errors.TrtcError: ").replace(f"{model.path}: ", "")
    return text if len(text) <= 140 else text[:139] + "…"


def _build_cell(result: dict[str, Any], model: SimpleNamespace) -> list[str]:
    if "seconds" in result:
        return [f"{result['seconds']:.2f}", str(result["layers"])]
    layers = result.get("layers")
    return [f"failed: {_short(result['error'], model)}", "-" if layers is None else f"{layers} (parsed)"]


def build_table(rows: list[tuple[SimpleNamespace, dict]], fp16: bool) -> list[str]:
    head = "| model | trtc s | trtc layers | parser s | parser layers |"
    rule = "|---|---|---|---|---|"
    if fp16:
        head, rule = head + " trtc fp16 s | trtc fp16 layers |", rule + "---|---|"
    lines = [head, rule]
    for model, r in rows:
        cells = [*_build_cell(r["trtc"], model), *_build_cell(r["parser"], model),
                 *(_build_cell(r["trtc_fp16"], model) if fp16 else [])]
        lines.append(f"| {model.name} | " + " | ".join(cells) + " |")
    both = [(r["trtc"], r["parser"]) for _, r in rows if "seconds" in r["trtc"] and "seconds" in r["parser"]]
    ours, theirs = sum(t["seconds"] for t, _ in both), sum(p["seconds"] for _, p in both)
    ok = {side: sum("seconds" in r[side] for _, r in rows) for side in ("trtc", "parser")}
    ratio = f"{ours / theirs:.2f}x" if theirs else "-"
    layers = f"{sum(t['layers'] for t, _ in both)} against {sum(p['layers'] for _, p in both)}"
    return lines + ["", f"Builds: trtc {ok['trtc']}/{len(rows)}, parser {ok['parser']}/{len(rows)}. Where both build "
                    f"({len(both)}): trtc {ours:.2f}s, parser {theirs:.2f}s, ratio {ratio}; layers {layers}."]


def _rate_cell(result: dict[str, Any], model: SimpleNamespace, same_as: list[int] | None = None) -> str:
    if "tokens_per_s" not in result:
        return f"failed: {_short(result['error'], model)}"
    differs = same_as is not None and result["tokens"] != same_as
    return f"{result['tokens_per_s']:.0f} ({len(result['tokens'])} tokens{', other tokens' if differs else ''})"


def generation_table(rows: list[tuple[SimpleNamespace, dict]]) -> list[str]:
    lines = ["| model | KV bytes/token | trtc tokens/s (export) | trtc tokens/s (optimized) | onnxruntime-genai "
             "tokens/s | trtc / genai | same tokens |", "|---|---|---|---|---|---|---|"]
    for model, r in rows:
        ours, theirs = r["trtc_gen"], r.get("genai_gen")
        mine = _rate_cell(ours, model) + " | " + _rate_cell(r["trtc_opt_gen"], model, ours.get("tokens"))
        if theirs is None:
            cells = ["- (no genai export)", "-", "-"]
        elif "tokens_per_s" not in theirs:
            cells = [f"failed: {_short(theirs['error'], model)}", "-", "-"]
        else:
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"] if "tokens_per_s" in ours else float("nan")
            same = "yes" if ours.get("tokens") == theirs["tokens"] else "no"
            cells = [f"{theirs['tokens_per_s']:.0f} ({len(theirs['tokens'])} tokens)", f"{ratio:.2f}x", same]
        lines.append(f"| {model.name} | {r['cache_bytes']} | {mine} | " + " | ".join(cells) + " |")
    return lines


def measure(model: SimpleNamespace, args: argparse.Namespace, prompt: list[int]) -> dict[str, Any]:
    spec = decoder_spec(model)
    profile = build_profile(spec)
    row: dict[str, Any] = {"cache_bytes": cache_bytes_per_token(spec)}
    for key, tool, fp16 in (("trtc", "trtc", False), ("parser", "parser", False), ("trtc_fp16", "trtc", True)):
        if fp16 and not args.fp16:
            continue
        row[key] = build_median(tool, model, profile, fp16, args.build_repeats)
    row.update(generation(model, prompt, args.new_tokens, args.repeats))
    return row


def trtc_provenance() -> str:
    """`trtc at COMMIT` of the checkout trtc was imported from (a worktree of a commit: PYTHONPATH=DIR),
    and whether its trtc/ has uncommitted changes; else where it came from."""
    import trtc

    where = Path(trtc.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"trtc from {where}"
    dirty = " with uncommitted changes under trtc/" if git("status", "--porcelain", "--", "trtc") else ""
    return f"trtc at {commit}{dirty}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--fp16", action="store_true", help="Also build trtc's fp16 network.")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=50, help="Timed generations per side (after one warm-up).")
    ap.add_argument("--build-repeats", type=int, default=5, help="Builds per side and model (median).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="Write the section of benchmarks/RESULTS.md.")
    args = ap.parse_args()
    if not (LLM / "manifest.json").is_file():
        print(f"no LLM corpus at {LLM}", file=sys.stderr)
        return 1
    chosen = models(args.filter)
    vocab = min(m["vocab"] for m in json.loads((LLM / "manifest.json").read_text())["models"])  # one prompt for all
    prompt = np.random.default_rng(args.seed).integers(3, vocab, args.prompt_tokens).tolist()
    rows = []
    for model in chosen:
        row = measure(model, args, prompt)
        rows.append((model, row))
        print(model.name, {k: {kk: vv for kk, vv in v.items() if kk != "tokens"} if isinstance(v, dict) else v
                           for k, v in row.items()}, flush=True)
    provenance = trtc_provenance()
    lines = [f"TensorRT-RTX, no GPU; {provenance}. Builds: one profile for both sides (batch "
             f"1..{MAX_BATCH}, new tokens 1..{MAX_NEW} OPT 1, cached tokens 0..positions-1 OPT {OPT_PAST}), trtc fp32"
             f"{' and fp16' if args.fp16 else ''} through the library against TensorRT-RTX's ONNX parser on the "
             f"same export (parser: fp32), median of {args.build_repeats} fresh processes each; layers: the network "
             "handed to the builder.", "", *build_table(rows, args.fp16), "",
             f"Generation on the CPU: one seeded random prompt of {args.prompt_tokens} tokens, greedy, up to "
             f"{args.new_tokens} new tokens, stop at eos, batch 1; median of {args.repeats} runs after a warm-up "
             "(prefill included). trtc: its generate loop on its CPU reference (onnxruntime, graph optimizations "
             "off, growing past/present) over the export as written and over trtc's optimized graph of it; "
             "onnxruntime-genai: its own loop on the genai folder. KV bytes/token: 2 x layers x kv_heads x head_dim "
             "x cache dtype bytes (DecoderSpec).", "",
             *generation_table(rows)]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results import write_section

        write_section("LLM decoders: build vs TensorRT-RTX's parser, tokens/s vs onnxruntime-genai "
                      "(benchmarks/llm.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
