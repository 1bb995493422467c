"""`trtc compile model.onnx -o OUTDIR`: parse -> optimize (+ precision) -> build -> compare,
every artifact in OUTDIR, with a report. A stage whose input and options are unchanged
(content hashes in the artifacts' headers and the engine's sidecar) is reused, so a second
run is near-instant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trtc import __version__
from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.frontend.freeze import FreezeValue, freeze_fingerprints
from trtc.frontend.parse import file_sha256, parse_input_hash
from trtc.ir import load_artifact, save_artifact
from trtc.ir.artifact import read_header
from trtc.lower.api import build_artifact, calibration_file_hashes
from trtc.lower.build import BuildOptions
from trtc.passes.pipeline import optimize, optimized_meta, select_passes
from trtc.reference.feeds import make_feeds, model_inputs
from trtc.reference.metrics import error_metrics
from trtc.reference.runner import ReferenceRunner


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _stage_parse(model: Path, out: Path, freeze: Mapping[str, FreezeValue]) -> tuple[dict[str, Any], bool]:
    input_hash = parse_input_hash(file_sha256(model), freeze_fingerprints(freeze))
    if out.exists():
        try:
            header = read_header(out)
            if header.get("input_hash") == input_hash and header["trtc_version"] == __version__ \
                    and header["stage"] == "parse":
                return header, True
        except TrtcError:
            pass  # unreadable: rebuild it
    artifact = parse_onnx(model, freeze)
    return save_artifact(artifact.model, out, artifact.meta), False


def _stage_optimize(parsed: Path, parsed_header: Mapping[str, Any], out: Path, options: Mapping[str, Any],
                    precision: Mapping[str, Any], calib: Mapping[str, Any],
                    progress: Callable[[str], None] | None) -> tuple[dict[str, Any], bool]:
    record = _json_safe({"passes": options, "precision": precision, "calibration": calib,
                         "calibration_files": calibration_file_hashes(precision, calib)})
    if out.exists():
        try:
            header = read_header(out)
            if header.get("input_hash") == parsed_header["content_hash"] \
                    and header.get("optimize", {}).get("options", {}).get("compile") == record:
                return header, True
        except TrtcError:
            pass
    artifact = load_artifact(parsed)
    report = optimize(artifact.model, passes=select_passes(), progress=progress)
    meta = optimized_meta(artifact.meta, report, {"compile": record})
    if precision.get("fp16") or precision.get("bf16"):
        from trtc.precision.api import run_precision

        artifact.meta = meta
        meta["precision"] = run_precision(artifact, precision, **calib)
    return save_artifact(artifact.model, out, meta), False


def _stage_build(optimized: Path, header: Mapping[str, Any], out: Path, options: BuildOptions, *, cache: bool,
                 progress: Callable[[str], None] | None) -> tuple[dict[str, Any], bool]:
    side = Path(f"{out}.json")
    if out.exists() and side.exists():
        sidecar = json.loads(side.read_text())
        if sidecar.get("ir_content_hash") == header["content_hash"] \
                and sidecar.get("build_options") == _json_safe(options.key_fields()) \
                and sidecar.get("trtc_version") == __version__:
            return sidecar, True
    artifact = load_artifact(optimized)
    result = build_artifact(artifact, out, options, cache=cache, progress=progress)
    return result.sidecar, result.cached


def _stage_compare(parsed: Path, optimized: Path, feeds_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """On the CPU: the fp32 reference of the parsed model against the optimized (and, when typed,
    simulated) model: what the engine is predicted to compute."""
    from trtc.compare import executable_for

    reference = load_artifact(parsed)
    feeds = make_feeds(model_inputs(reference.model), **feeds_kwargs)
    runner = ReferenceRunner(reference.model)
    want = runner.run(feeds)
    runner.close()
    candidate = executable_for(optimized)
    try:
        got = candidate.run(feeds)
    finally:
        candidate.close()
    outputs = {name: error_metrics(np.asarray(want[name]), np.asarray(got[name]))
               for name in want if isinstance(want[name], np.ndarray) and want[name].dtype.kind == "f"}
    return {"runs_on": candidate.how, "outputs": outputs}


def compile_model(model: str | Path, outdir: str | Path, *, build_options: BuildOptions,
                  precision: Mapping[str, Any], calib: Mapping[str, Any], feeds_kwargs: Mapping[str, Any],
                  freeze: Mapping[str, FreezeValue] | None = None, cache: bool = True,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every stage into `outdir`; return the report (also written as report.json / report.md).
    `freeze` makes graph inputs constants when parsing (see `trtc.frontend.freeze`)."""
    model, outdir = Path(model), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = model.stem
    paths = {"parse": outdir / f"{stem}.trtir", "optimize": outdir / f"{stem}.opt.trtir",
             "build": outdir / f"{stem}.plan"}
    stages: dict[str, Any] = {}

    def timed(name, fn, *args, **kwargs):
        if progress:
            progress(f"{name}...")
        start = time.perf_counter()
        result, reused = fn(*args, **kwargs)
        stages[name] = {"seconds": round(time.perf_counter() - start, 3), "reused": reused,
                        "output": str(paths[name])}
        return result

    parsed = timed("parse", _stage_parse, model, paths["parse"], freeze or {})
    optimized = timed("optimize", _stage_optimize, paths["parse"], parsed, paths["optimize"],
                      {"pipeline": "default"}, precision, calib, progress)
    sidecar = timed("build", _stage_build, paths["optimize"], optimized, paths["build"], build_options,
                    cache=cache, progress=progress)
    start = time.perf_counter()
    comparison = _stage_compare(paths["parse"], paths["optimize"], feeds_kwargs)
    stages["compare"] = {"seconds": round(time.perf_counter() - start, 3), "reused": False}
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


def report_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# trtc compile report: {report['model']}", "", f"trtc {report['trtc_version']}", "",
             "| stage | seconds | reused |", "|---|---|---|"]
    lines += [f"| {name} | {s['seconds']:.3f} | {'yes' if s['reused'] else 'no'} |"
              for name, s in report["stages"].items()]
    lines += ["", f"Nodes: {report['nodes']['parsed']} parsed -> {report['nodes']['optimized']} optimized.", "",
              "## Rewrites", ""]
    lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r.items()) for name, r in report["fusions"].items()]
    precision = report["precision"]
    lines += ["", "## Precision", ""]
    if precision:
        lines.append(f"{precision['target']}: {precision['flop_share']:.1%} of FLOPs, {len(precision['fp32_nodes'])} "
                     f"nodes kept fp32 in {precision['islands']} islands, {precision['counts']['casts']} casts.")
        lines += [f"- `{n}` ({e['op']}): {e['reason']}" for n, e in list(precision["fp32_nodes"].items())[:50]]
    else:
        lines.append("fp32 (no precision pass requested).")
    lines += ["", f"## Predicted error ({report['predicted']['runs_on']} vs fp32 reference)", "",
              "| output | max abs error | max error / range | cosine |", "|---|---|---|---|"]
    lines += [f"| {n} | {m['max_abs_error']:.3g} | {m['max_rel_error']:.3g} | {m['cosine']:.6f} |"
              for n, m in report["predicted"]["outputs"].items()]
    engine = report["engine"]
    lines += ["", "## Engine", "", f"{engine['backend']} {engine['backend_version']}, targets "
              f"{','.join(engine['targets']) or 'default'}, {engine['network_layers']} layers, "
              f"{engine['plan_bytes'] / 2**20:.1f} MiB, built in {engine['build_seconds']:.1f}s.", ""]
    return "\n".join(lines)
