"""The precision stage as the CLI drives it: options in, typed model and report out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtc.errors import CheckFailed, TrtcError
from trtc.ir import Artifact
from trtc.precision import PrecisionOptions, apply_precision
from trtc.reference.feeds import FeedOptions, calibration_samples, frozen_inputs, model_inputs


def precision_record(options: PrecisionOptions) -> dict[str, Any]:
    """What identifies a typing: every option, the calibration files by content, not path."""
    from trtc.fileio import file_sha256

    record = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(options).items()}
    record["calib"] = [file_sha256(Path(f)) for f in options.calib]
    return record


def run_precision(artifact: Artifact, options: PrecisionOptions, feeds: FeedOptions | None = None) -> dict[str, Any]:
    """Type `artifact.model` in place for `options.target`; returns the report for the metadata.
    Calibration: `options.calib` files, else the inputs `feeds` gives or generates.

    Raises CheckFailed when `options.tolerance` is set and a predicted output error exceeds it.
    """
    if artifact.meta.get("precision"):
        raise TrtcError(f"the artifact is already typed for {artifact.meta['precision']['target']}",
                        where=str(artifact.path), hint="optimize the fp32 artifact instead")
    specs = model_inputs(artifact.model)
    outputs = [v.name for v in artifact.model.graph.outputs]
    samples = calibration_samples(specs, options.calib, options.calib_samples, feeds, outputs,
                                  frozen_inputs(artifact.model, artifact.meta))
    if options.quantize or options.int4_weights:
        from trtc.precision.quantize import apply_quantization

        report = apply_quantization(artifact.model, samples, options).as_dict()
    else:
        report = apply_precision(artifact.model, samples, options).as_dict()
    report["options"] = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(options).items()}
    report["calibration"] = {"samples": len(samples), "source": "files" if options.calib or (feeds and feeds.files)
                             else "seeded random"}
    if options.tolerance is not None:
        check_tolerance(report, options.tolerance)
    return report


def check_tolerance(report: Mapping[str, Any], tolerance: float) -> None:
    bad = {name: m for name, m in report["predicted"].items()
           if not m["max_rel_error"] <= tolerance}  # NaN/inf fail too
    if bad:
        worst = ", ".join(f"{name} (relative error {m['max_rel_error']:.3g}, cosine {m['cosine']:.6f})"
                          for name, m in bad.items())
        nodes = ", ".join(f"{c['node']} ({c['op']}, +{c['added']:.3g})" for c in report["contributions"][:5])
        raise CheckFailed(
            f"predicted {report['target']} error exceeds --tolerance {tolerance:g} for {worst}; "
            f"largest contributions: {nodes or 'none measured'}",
            hint="keep those nodes in fp32 with --keep-fp32 NAME, or calibrate with real data (--calib)",
        )


def precision_summary_text(report: Mapping[str, Any]) -> str:
    if "quantization" in report:
        from trtc.precision.quant_report import quantization_summary_text

        return quantization_summary_text(report)
    lines = [
        f"{report['target']}: {report['low_nodes']} nodes, {report['flop_share']:.1%} of FLOPs; "
        f"{len(report['fp32_nodes'])} nodes kept fp32 in {report['islands']} islands; "
        f"{report['counts']['casts']} casts inserted, {report['counts']['weights-converted']} weights converted"
    ]
    for body in report.get("subgraphs", []):  # reports written before bodies were typed have none
        where = f"  {body['body']} of {body['op']} {body['node']!r}"
        if body["reason"]:
            lines.append(f"{where}: fp32 ({body['fp32_nodes']} nodes), {body['reason']}")
        else:
            lines.append(f"{where}: {body['low_nodes']} of {body['nodes']} nodes {report['target']}, "
                         f"{body['flop_share']:.1%} of its FLOPs")
    if report.get("search"):
        from trtc.precision.accuracy import search_text

        lines += search_text(report["search"], report["target"])
    for name, m in report["predicted"].items():
        lines.append(f"  predicted {name}: max abs error {m['max_abs_error']:.3g}, relative to range "
                     f"{m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    return "\n".join(lines)


def precision_table(report: Mapping[str, Any]) -> str:
    """Every node kept in fp32, with its reason (for `trtc inspect --precision`)."""
    if "quantization" in report:
        from trtc.precision.quant_report import quantization_table

        return quantization_table(report)
    lines = [precision_summary_text(report), "", f"{'node':60} {'op':22} reason"]
    for name, entry in report["fp32_nodes"].items():
        lines.append(f"{name:60} {entry['op']:22} {entry['reason']}")
    return "\n".join(lines)
