"""`trtc debug precision`: which nodes' fp16/bf16 makes each output's error, for a model as `optimize` would
type it, or for an artifact typed already (re-traced from its source ONNX with the options and calibration
it records, its fp32 nodes taken as they are).

    report = debug_precision("model.opt.trtir")                       # a typed artifact
    report = debug_precision("model.onnx", PrecisionOptions("fp16"))   # as optimize --fp16 would type it

The measurements are trtc.precision.contribution's; node names are mapped back to the source ONNX's.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir import Artifact
from trtc.loading import open_model
from trtc.precision import plan_precision
from trtc.precision.contribution import explain
from trtc.precision.rules import PrecisionOptions
from trtc.reference.feeds import FeedOptions, calibration_samples, frozen_inputs, model_inputs


def source_names(model: ir.Model, path: Path) -> dict[str, str | None]:
    """Each node's name in the source ONNX file: its own name where the source has it, else the name of the
    source node that made the same output value ('OP #i', the i-th node, where that one has none), else None
    (a node the passes made)."""
    proto = onnx.load(str(path), load_external_data=False)
    names = {n.name for n in proto.graph.node if n.name}
    made = {out: n.name or f"{n.op_type} #{i}" for i, n in enumerate(proto.graph.node) for out in n.output}
    return {node.name: node.name if node.name in names else
            next((made[v.name] for v in node.outputs if v.name in made), None) for node in model.graph}


def _recorded_options(report: Mapping[str, Any], calib: tuple[str, ...]) -> PrecisionOptions:
    """The options an artifact was typed with, the accuracy search's moves as exact --keep-fp32 names (its
    trials are not run again), calibration files replaced by `calib` when given."""
    fields = {f.name for f in dataclasses.fields(PrecisionOptions)}
    recorded = {k: (tuple(v) if isinstance(v, list) else v) for k, v in report["options"].items() if k in fields}
    moved = [glob.escape(m["node"]) for m in (report.get("search") or {}).get("moved", [])]
    recorded.update(accuracy=(), check=None, keep_fp32=(*recorded.get("keep_fp32", ()), *moved))
    if calib:
        recorded["calib"] = calib
    return PrecisionOptions(**recorded)


def _retrace(artifact: Artifact, freeze: Mapping[str, Any] | None) -> Artifact:
    """The optimized fp32 graph a typed artifact was made from: its source ONNX parsed and optimized again
    with the passes it records."""
    from trtc.fileio import file_sha256
    from trtc.pipeline import OptimizeOptions, optimize

    where = str(artifact.path)
    source = artifact.meta.get("source") or {}
    path = Path(source.get("path", ""))
    if artifact.meta.get("llm") or source.get("format") != "onnx":
        raise TrtcError("only artifacts optimized from an .onnx without --llm are re-traced", where=where,
                        hint="debug the .onnx with the options it was optimized with")
    if not path.is_file() or file_sha256(path) != source.get("sha256"):
        raise TrtcError(f"its source {str(path)!r} is {'changed' if path.is_file() else 'missing'}", where=where,
                        hint="debug the .onnx with the options the artifact was optimized with")
    fresh = open_model(path, freeze)
    if fresh.meta.get("input_hash") != artifact.meta.get("input_hash"):
        raise TrtcError("the source was parsed with other --freeze values", where=where,
                        hint="give the --freeze values the artifact was parsed with")
    recorded = artifact.meta["optimize"]["options"]
    optimize(fresh, OptimizeOptions(passes=tuple(recorded["passes"]), fold_max_mb=recorded["fold_max_mb"]))
    return fresh


def debug_precision(path: str | Path, options: PrecisionOptions | None = None, feeds: FeedOptions | None = None, *,
                    freeze: Mapping[str, Any] | None = None, calib: tuple[str, ...] = (), top: int = 10,
                    trials: int = 64) -> dict[str, Any]:
    """The precision debugger's report (contribution.explain's, plus where it came from). A typed artifact
    uses its recorded options (`options` must be None; `calib` may replace its calibration files); any other
    model is optimized (an .onnx) and planned with `options` (default fp16)."""
    from trtc.loading import artifact_kind

    artifact = open_model(path, None if artifact_kind(Path(path)) == "trtir" else freeze)
    typed = artifact.meta.get("precision")
    if typed and options is not None:
        raise TrtcError(f"the artifact is typed for {typed['target']} already: its recorded options are used",
                        where=str(path), hint="give --calib alone, or debug the .onnx with other options")
    if options is not None and (options.quantize or options.int4_weights):
        raise TrtcError("the precision debugger explains fp16/bf16 typing, not quantized graphs", where=str(path),
                        hint="drop --int8/--fp8/--int4-weights")
    if typed and "quantization" in typed:
        raise TrtcError("the precision debugger explains fp16/bf16 typing, not quantized graphs", where=str(path))
    if typed:
        options = _recorded_options(typed, calib)
        artifact = _retrace(artifact, freeze)
    else:
        options = dataclasses.replace(options or PrecisionOptions(), **({"calib": calib} if calib else {}))
        if artifact.meta.get("content_hash") is None:  # parsed on the fly: optimized as build would
            from trtc.pipeline import OptimizeOptions, optimize

            optimize(artifact, OptimizeOptions())
    model = artifact.model
    samples = calibration_samples(model_inputs(model), options.calib, options.calib_samples, feeds,
                                  [v.name for v in model.graph.outputs], frozen_inputs(model, artifact.meta))
    plan = plan_precision(model, samples, options)
    for moved in (typed or {}).get("search", {}).get("moved", []) if typed and typed.get("search") else []:
        plan.decision.reasons[moved["node"]] = moved["reason"]  # the search's reason, not the --keep-fp32 one
    source = Path(artifact.meta.get("source", {}).get("path") or path)
    sources = source_names(model, source) if source.suffix == ".onnx" and source.is_file() else {}
    report = explain(model, plan, samples, options, sources=sources, top=top, budget=trials)
    fp32 = sorted(name for name, c in plan.decision.compute.items() if c == "fp32")
    return {"model": str(path), "source": str(source), "typed": bool(typed), "samples": len(samples),
            "retraced_as_recorded": fp32 == sorted(typed["fp32_nodes"]) if typed else None, **report}


def debug_text(report: Mapping[str, Any]) -> str:
    """The report as lines of text: per output the top contributors, then the first bad layer."""
    lines = [f"{report['model']}: {report['target']} with {report['low_nodes']} nodes low, "
             f"{len(report['fp32_nodes'])} fp32 (--json gives their reasons); {report['trials']} trials on "
             f"{report['samples']} sample(s), {report['seconds']:.1f}s",
             "alone: the output's squared error with only that node low, as a share of the plan's; "
             "if fp32: the plan's cosine with only that node moved to fp32"]
    if report["retraced_as_recorded"] is False:
        lines.append("  note: re-traced from the source, the fp32 nodes differ from the artifact's")
    for output, info in report["outputs"].items():
        m = info["predicted"]
        lines += [f"{output}: predicted cosine {m['cosine']:.6f}, max error {m['max_rel_error']:.3g} of its range",
                  f"  {'alone':>7} {'cosine alone':>12} {'if fp32':>10}  {'node':28} {'op':12} {'source':28} "
                  f"observed max |x|"]
        for c in info["contributors"]:
            peak = max(c["ranges"]["outputs"].values(), default=0.0)
            lines.append(f"  {c['share']:7.1%} {c['alone']['cosine']:12.8f} {c['kept_fp32']['cosine']:10.8f}  "
                         f"{c['node']:28} {c['op']:12} {c['source'] or '(made by a pass)':28} {peak:.4g}")
        for r in info["unresolved"][:3]:
            lines.append(f"  {r['share']:7.1%} {'':23}  {r['nodes']} nodes {r['first']} .. {r['last']} together")
    if report["first_bad"]:
        f = report["first_bad"]
        lines.append(f"first node whose output is off by more than {f['threshold']:g} of its range: {f['node']} "
                     f"({f['op']}, source {f['source']}): {f['output_error']:.3g}, {f['compute']}")
    return "\n".join(lines)
