"""The pipeline as typed library calls, the one place the stages are chained:

    artifact = open_model("model.onnx")                       # parse (or load a .trtir)
    optimize(artifact, OptimizeOptions(precision=PrecisionOptions(target="fp16")))
    build(artifact, "model.plan", BuildOptions(profiles=parse_profiles(["x:1x3x224x224"])))
    compile_model("model.onnx", "out/", ...)                  # all of it, stages reused

`build` of a model parsed on the fly runs the same `optimize` first, so equal options give
equal content hashes and one cached engine whichever way the user went. Options are typed
objects with their defaults here and in `PrecisionOptions`/`BuildOptions`/`FeedOptions`; the
CLI only turns flags into them and prints what comes back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

from trtc import __version__
from trtc.errors import TrtcError
from trtc.ir import Artifact
from trtc.ir.artifact import model_content_hash
from trtc.loading import open_model
from trtc.lower.build import BuildOptions, BuildResult
from trtc.lower.profiles import ProfileSpec, opt_shapes
from trtc.passes import PassContext
from trtc.passes.pipeline import OptimizeReport, optimized_meta, select_passes
from trtc.passes.static_kv_cache import LlmOptions
from trtc.precision.rules import PrecisionOptions
from trtc.reference.feeds import FeedOptions, frozen_inputs, load_feeds, make_feeds, model_inputs, validate_feeds

Progress = Callable[[str], None] | None

__all__ = ["BuildOptions", "FeedOptions", "LlmOptions", "OptimizeOptions", "PrecisionOptions", "build",
           "calibration_feeds",
           "compile_model", "open_model", "optimize", "prepare_for_lowering", "support"]


@dataclasses.dataclass(frozen=True)
class OptimizeOptions:
    """What `optimize` runs: the passes (None: the default pipeline), verification, and the
    precision pass (None: the model stays fp32)."""

    passes: tuple[str, ...] | None = None
    disable: tuple[str, ...] = ()
    fold_max_mb: float = 64.0
    verify: bool = False
    precision: PrecisionOptions | None = None
    llm: LlmOptions | None = None  # --llm: the decoder's growing KV cache made static (static-kv-cache)

    def record(self) -> dict[str, Any]:
        """What identifies this stage's work (calibration files by content)."""
        from trtc.precision.api import precision_record

        return {"passes": [p.name for p in select_passes(self.passes, self.disable)], "fold_max_mb": self.fold_max_mb,
                "precision": precision_record(self.precision) if self.precision else None,
                **({"llm": self.llm.record()} if self.llm else {})}


@dataclasses.dataclass
class OptimizeResult:
    report: OptimizeReport
    precision: dict[str, Any] | None


def calibration_feeds(feeds: FeedOptions, build_options: BuildOptions | None) -> FeedOptions:
    """Calibration and comparison inputs: as given, each dynamic input at its OPT shape unless
    `--shape` says otherwise."""
    if build_options is None or not build_options.profiles:
        return feeds
    return dataclasses.replace(feeds, shapes={**opt_shapes(build_options.profiles), **feeds.shapes})


def optimize(artifact: Artifact, options: OptimizeOptions = OptimizeOptions(), feeds: FeedOptions | None = None, *,
             progress: Progress = None, after_pass: Callable[[str, ir.Model], None] | None = None) -> OptimizeResult:
    """Run the passes on `artifact.model` in place, then the precision pass if asked; the
    artifact's metadata becomes the optimized stage's. `feeds` gives the inputs `verify` runs
    and the precision pass calibrates on."""
    from trtc.passes.pipeline import optimize as run_passes

    feeds = feeds or FeedOptions()
    if options.precision and artifact.meta.get("precision"):
        raise TrtcError(f"the artifact is already typed for {artifact.meta['precision']['target']}",
                        where=str(artifact.path), hint="optimize the fp32 artifact instead")
    chosen = select_passes(options.passes, options.disable)
    verify_feeds = None
    if options.verify:
        specs = model_inputs(artifact.model)
        # A saved run (.npz with the outputs too) verifies as it is; its outputs are not compared
        # here: --verify compares each pass with the model before it.
        verify_feeds = load_feeds(specs, feeds, [v.name for v in artifact.model.graph.outputs],
                                  frozen=frozen_inputs(artifact.model, artifact.meta)).arrays
        validate_feeds(specs, verify_feeds, where=str(artifact.path or "model"))
    ctx = PassContext(fold_max_bytes=int(options.fold_max_mb * 2**20), llm=options.llm)
    report = run_passes(artifact.model, passes=chosen, ctx=ctx, verify_feeds=verify_feeds, after_pass=after_pass,
                        progress=progress)
    llm = None
    if options.llm:
        report, llm = _make_static(artifact, chosen, ctx, verify_feeds, after_pass, progress, report)
        feeds = dataclasses.replace(feeds, shapes={**_opt_shapes(llm["profiles"][0]["shapes"]), **feeds.shapes})
    meta = optimized_meta(artifact.meta, report, {"verify": options.verify, **options.record()})
    if llm or artifact.meta.get("llm"):  # made here, or carried over from an --llm artifact
        meta["llm"] = llm or artifact.meta["llm"]
    precision = None
    if options.precision:
        from trtc.precision.api import run_precision

        if progress:
            progress("precision: observing calibration data")
        artifact.meta = meta
        precision = meta["precision"] = run_precision(artifact, options.precision, feeds)
        _type_caches(artifact)
    artifact.meta = meta
    return OptimizeResult(report, precision)


def _type_caches(artifact: Artifact) -> None:
    """An --llm artifact typed for fp16/bf16 keeps its KV cache in that type, in and out (written in place)."""
    from trtc.passes.kv_cache_io import cache_layout
    from trtc.passes.static_kv_cache import low_precision_caches

    if artifact.meta.get("llm") and low_precision_caches(artifact.model):
        artifact.meta["llm"] = {**artifact.meta["llm"], **cache_layout(artifact.model)}


def _make_static(artifact: Artifact, chosen, ctx: PassContext, verify_feeds: Mapping[str, Any] | None,
                 after_pass: Callable[[str, ir.Model], None] | None, progress: Progress,
                 report: OptimizeReport) -> tuple[OptimizeReport, dict[str, Any]]:
    """--llm: the static-kv-cache pass after the passes that fuse the attentions it rewrites, then those passes
    again to clean up. Under --verify, the static model is run on the verify inputs moved into its cache and
    must reproduce the model before it (the logits and each present in the slots it fills)."""
    from trtc.passes import PASSES
    from trtc.passes.kv_cache_io import cache_layout, llm_profiles
    from trtc.passes.pipeline import optimize as run_passes

    before = artifact.model.clone() if verify_feeds is not None else None
    before_inputs = list(artifact.model.graph.inputs)
    static = run_passes(artifact.model, passes=[PASSES["static-kv-cache"], *chosen], ctx=ctx, after_pass=after_pass,
                        progress=progress)
    layout = cache_layout(artifact.model)
    if layout is None:
        raise TrtcError("--llm: the model has no growing KV cache (present = Concat(past input, new) on the "
                        "sequence axis) to make static", where=str(artifact.path or "model"))
    if before is not None:
        check_static(before, artifact.model, layout, verify_feeds)
    merged = OptimizeReport(report.runs + static.runs, report.nodes_before, static.nodes_after,
                            report.iterations + static.iterations, report.seconds + static.seconds, report.verified)
    llm = {**ctx.llm.record(), **layout,
           "dropped_inputs": [v.name for v in before_inputs if v.name not in layout["inputs"]]}
    llm["profiles"] = llm_profiles(llm, ctx.llm.max_batch)
    return merged, llm


def check_static(before: ir.Model, after: ir.Model, layout: Mapping[str, Any], feeds: Mapping[str, Any]) -> None:
    """The static model on `feeds` moved into its cache reproduces `before` on `feeds` (CheckFailed if not):
    the logits and every present over the slots it fills, within 1e-5 of each output's largest magnitude."""
    import numpy as np

    from trtc.errors import CheckFailed
    from trtc.passes.kv_cache_io import comparable, to_static_feeds
    from trtc.reference.runner import ReferenceRunner

    if "attention_mask" in feeds:  # the static model has no padding: both run without (generated masks are 0/1)
        feeds = {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])}
    want = ReferenceRunner(before).run(feeds)
    got = ReferenceRunner(after).run(to_static_feeds(layout, feeds), validate=False)
    for name in want:
        expected, actual = comparable(want[name], got[name])
        error = float(np.max(np.abs(actual - expected), initial=0.0))
        bound = 1e-5 * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
        if not error <= bound:
            raise CheckFailed(f"pass 'static-kv-cache' changed output {name!r}: max abs error {error:.3g} exceeds "
                              f"{bound:.3g}", hint="rerun without --llm and report the model")


def _opt_shapes(profile: Mapping[str, tuple]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(rng[1]) for name, rng in profile.items()}


def llm_build_options(options: BuildOptions, meta: Mapping[str, Any]) -> BuildOptions:
    """An --llm artifact builds with its prefill and decode profiles unless profiles are given."""
    if options.profiles or not meta.get("llm"):
        return options
    return dataclasses.replace(options, profiles=[
        ProfileSpec({k: tuple(map(tuple, r)) for k, r in p["shapes"].items()}, f"--llm {p['name']} profile")
        for p in meta["llm"]["profiles"]])


def prepare_for_lowering(artifact: Artifact, options: BuildOptions | None = None, *,
                         optimize_options: OptimizeOptions = OptimizeOptions(), feeds: FeedOptions | None = None,
                         hash_content: bool = True, progress: Progress = None) -> Artifact:
    """The model `build` lowers: a model parsed on the fly from ONNX is optimized first
    (`optimize_options`); an fp32 artifact is typed when `optimize_options.precision` asks.
    `build --dry-run` and `inspect --support` check this model, so they judge what the build lowers."""
    options, feeds = options or BuildOptions(), feeds or FeedOptions()
    from_onnx = artifact.meta.get("content_hash") is None  # parsed on the fly, never saved
    made = artifact.meta.get("llm")
    if optimize_options.llm and not from_onnx and (not made or made["max_seq"] != optimize_options.llm.max_seq):
        raise TrtcError("--llm applies when a model is optimized; this artifact was optimized " +
                        (f"with --max-seq {made['max_seq']}" if made else "without it"), where=str(artifact.path),
                        hint="run `trtc optimize --llm --max-seq N` on the .onnx, or build the .onnx")
    wants_typing = optimize_options.precision is not None and not artifact.meta.get("precision")
    if from_onnx:
        optimize(artifact, optimize_options, calibration_feeds(feeds, options), progress=progress)
    elif wants_typing:  # an artifact optimized already: only the precision pass is missing
        from trtc.precision.api import run_precision

        if progress:
            progress("precision: observing calibration data")
        artifact.meta["precision"] = run_precision(artifact, optimize_options.precision,
                                                   calibration_feeds(feeds, llm_build_options(options, artifact.meta)))
        _type_caches(artifact)
    if (from_onnx or wants_typing) and hash_content:
        artifact.meta["content_hash"] = model_content_hash(artifact.model)
    return artifact


def build(artifact: Artifact, output: str | Path, options: BuildOptions | None = None, *,
          optimize_options: OptimizeOptions = OptimizeOptions(), feeds: FeedOptions | None = None,
          cache: bool = True, cache_dir: Path | None = None, progress: Progress = None) -> BuildResult:
    """An engine and its sidecar at `output`, from the model `prepare_for_lowering` makes."""
    from trtc.lower.api import build_artifact
    from trtc.precision.quantize import check_targets

    options = options or BuildOptions()
    check_targets(optimize_options.precision, artifact.meta.get("precision"), options.targets)
    prepare_for_lowering(artifact, options, optimize_options=optimize_options, feeds=feeds, progress=progress)
    options = llm_build_options(options, artifact.meta)
    return build_artifact(artifact, Path(output), options, cache=cache, cache_dir=cache_dir, progress=progress)


def support(artifact: Artifact, options: BuildOptions | None = None, *,
            optimize_options: OptimizeOptions = OptimizeOptions(), feeds: FeedOptions | None = None,
            progress: Progress = None) -> dict[str, Any]:
    """Every node of the model `build` would lower that `options.backend` cannot lower, by the
    same checks the lowering runs (no TensorRT needed)."""
    from trtc.lower.api import support_report

    options = options or BuildOptions()
    prepare_for_lowering(artifact, options, optimize_options=optimize_options, feeds=feeds, hash_content=False,
                         progress=progress)
    return support_report(artifact, options.backend)


# ---------------------------------------------------------------- compile: the stages in sequence, reused


def _reusable(path: Path, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The header of an artifact a stage wrote before, when it is still what it would write."""
    from trtc.ir.artifact import read_header

    if not path.exists():
        return None
    try:
        header = read_header(path)
    except TrtcError:
        return None  # unreadable: make it again
    return header if header.get("trtc_version") == __version__ and matches(header) else None


def _compile_parse(model: Path, out: Path, freeze: Mapping[str, Any], weightless: bool = False
                   ) -> tuple[dict[str, Any], bool]:
    from trtc.fileio import file_sha256
    from trtc.frontend import parse_onnx
    from trtc.frontend.freeze import freeze_fingerprints
    from trtc.frontend.parse import parse_input_hash
    from trtc.ir import save_artifact

    input_hash = parse_input_hash(file_sha256(model), freeze_fingerprints(freeze))
    header = _reusable(out, lambda h: h.get("input_hash") == input_hash and h["stage"] == "parse")
    if header:
        return header, True
    artifact = parse_onnx(model, freeze, weightless=weightless)
    return save_artifact(artifact.model, out, artifact.meta), False


def _compile_optimize(parsed: Path, parsed_header: Mapping[str, Any], out: Path, options: OptimizeOptions,
                      feeds: FeedOptions, progress: Progress) -> tuple[dict[str, Any], bool]:
    from trtc.ir import load_artifact, save_artifact

    record = {"optimize": options.record(), "calibration": feeds.record() if options.precision else None}
    header = _reusable(out, lambda h: h.get("input_hash") == parsed_header["content_hash"]
                       and h.get("optimize", {}).get("options", {}).get("compile") == record)
    if header:
        return header, True
    artifact = load_artifact(parsed)
    optimize(artifact, options, feeds, progress=progress)
    artifact.meta["optimize"]["options"]["compile"] = record
    return save_artifact(artifact.model, out, artifact.meta), False


def _compile_build(optimized: Path, header: Mapping[str, Any], out: Path, options: BuildOptions, *, cache: bool,
                   cache_dir: Path | None, progress: Progress) -> tuple[dict[str, Any], bool]:
    import json

    from trtc.ir import load_artifact

    options = llm_build_options(options, header)
    side = Path(f"{out}.json")
    if out.exists() and side.exists():
        sidecar = json.loads(side.read_text())
        if sidecar.get("ir_content_hash") == header["content_hash"] \
                and sidecar.get("build_options") == json.loads(json.dumps(options.key_fields())) \
                and sidecar.get("trtc_version") == __version__:
            return sidecar, True
    result = build(load_artifact(optimized), out, options, cache=cache, cache_dir=cache_dir, progress=progress)
    return result.sidecar, result.cached


def _compile_compare(parsed: Path, optimized: Path, feeds: FeedOptions) -> dict[str, Any]:
    """On the CPU: the fp32 reference of the parsed model against the optimized (and, when typed,
    simulated) model: what the engine is predicted to compute."""
    import numpy as np

    from trtc.compare import executable_for
    from trtc.memory import release_memory
    from trtc.reference.metrics import error_metrics

    # One model at a time: each CPU session holds its own copy of the weights (9.7 GB for the fp32 reference
    # of benchmarks/big_model.py's model, 12 GB for its fp16 simulation).
    reference = executable_for(parsed)
    try:
        inputs = make_feeds(reference.inputs, feeds)
        want = reference.run(inputs)
    finally:
        reference.close()
    del reference
    release_memory()
    candidate = executable_for(optimized)
    try:
        got = candidate.run(inputs)
    finally:
        candidate.close()
    outputs = {name: error_metrics(np.asarray(want[name]), np.asarray(got[name]))
               for name in want if isinstance(want[name], np.ndarray) and want[name].dtype.kind == "f"}
    return {"runs_on": candidate.how, "outputs": outputs}


def _compile_compare_llm(parsed: Path, optimized: Path, layout: Mapping[str, Any], feeds: FeedOptions
                         ) -> dict[str, Any]:
    """--llm: the parsed model with its growing cache against the static one, on a prefill of random ids and one
    decode step after it (batch 2, or 1 for --max-batch 1): the logits, and each present over the slots filled."""

    from trtc.compare import executable_for
    from trtc.passes.kv_cache_io import comparable, growing_feeds, to_static_feeds
    from trtc.reference.metrics import error_metrics

    reference, candidate = executable_for(parsed), executable_for(optimized)
    batch, seq = min(2, layout["max_batch"]), max(1, min(8, layout["max_seq"] // 2))
    outputs: dict[str, Any] = {}
    try:
        grown = growing_feeds(reference.inputs, batch, seq, feeds.seed)
        for step in ("prefill", "decode"):
            want = reference.run(grown)
            got = candidate.run(to_static_feeds(layout, grown))
            for name in want:
                outputs[f"{step}:{name}"] = error_metrics(*comparable(want[name], got[name]))
            grown = growing_feeds(reference.inputs, batch, 1, feeds.seed + 1, presents=want)
    finally:
        reference.close()
        candidate.close()
    return {"runs_on": candidate.how, "outputs": outputs}


def compile_model(model: str | Path, outdir: str | Path, *, optimize_options: OptimizeOptions = OptimizeOptions(),
                  build_options: BuildOptions | None = None, feeds: FeedOptions | None = None,
                  freeze: Mapping[str, Any] | None = None, cache: bool = True, cache_dir: Path | None = None,
                  progress: Progress = None, weightless: bool = False) -> dict[str, Any]:
    """parse -> optimize -> build -> compare into `outdir`, each stage reused while its input and
    options are unchanged (content hashes in the artifacts' headers and the engine's sidecar);
    returns the report, also written as report.json / report.md. Calibration uses `feeds` (each
    dynamic input at its OPT shape unless given); the comparison uses other seeds. `weightless`: a
    weight-stripped model (`parse_onnx`), whose comparison is skipped (there are no values to run)."""
    import json
    import time

    from trtc.report import report_markdown

    model, outdir = Path(model), Path(outdir)
    build_options = build_options or BuildOptions()
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"parse": outdir / f"{model.stem}.trtir", "optimize": outdir / f"{model.stem}.opt.trtir",
             "build": outdir / f"{model.stem}.plan"}
    feeds = calibration_feeds(feeds or FeedOptions(), build_options)
    stages: dict[str, Any] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if progress:
            progress(f"{name}...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        result, reused = result if isinstance(result, tuple) else (result, False)
        stages[name] = {"seconds": round(time.perf_counter() - start, 3), "reused": reused}
        if name in paths:
            stages[name]["output"] = str(paths[name])
        return result

    parsed = timed("parse", _compile_parse, model, paths["parse"], freeze or {}, weightless)
    optimized = timed("optimize", _compile_optimize, paths["parse"], parsed, paths["optimize"], optimize_options,
                      feeds, progress)
    sidecar = timed("build", _compile_build, paths["optimize"], optimized, paths["build"], build_options,
                    cache=cache, cache_dir=cache_dir, progress=progress)
    if optimized.get("weightless"):
        comparison = {"skipped": f"{len(optimized['weightless'])} weight(s) have no values (weight-stripped model)",
                      "outputs": {}}
    elif optimized.get("llm"):
        comparison = timed("compare", _compile_compare_llm, paths["parse"], paths["optimize"], optimized["llm"],
                           feeds.with_seed(feeds.seed + 1000))
    else:
        comparison = timed("compare", _compile_compare, paths["parse"], paths["optimize"],
                           feeds.with_seed(feeds.seed + 1000))
    opt = optimized["optimize"]
    report = {
        "model": str(model), "trtc_version": __version__, "stages": stages,
        "nodes": {"parsed": opt["nodes_before"], "optimized": opt["nodes_after"]},
        "fusions": {name: p["rewrites"] for name, p in opt["passes"].items() if p["rewrites"]},
        "precision": optimized.get("precision") and {k: optimized["precision"][k] for k in
                                                     ("target", "flop_share", "islands", "counts", "fp32_nodes")},
        "predicted": comparison,
        "engine": {k: sidecar[k] for k in ("backend", "backend_version", "targets", "network_layers", "plan_bytes",
                                           "build_seconds", "profiles")},
    }
    (outdir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (outdir / "report.md").write_text(report_markdown(report))
    return report
