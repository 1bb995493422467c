"""The precision stage as the CLI drives it: options in, typed model and report out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trtc.errors import CheckFailed, TrtcError
from trtc.ir import Artifact
from trtc.precision import PrecisionOptions, apply_precision
from trtc.reference.feeds import calibration_samples, model_inputs


def precision_settings(**overrides: Any) -> dict[str, Any]:
    """The precision options as `run_precision` (and `trtc compile`) take them, with the CLI's
    defaults (from PrecisionOptions); `overrides` sets some, e.g. fp16=True."""
    defaults = PrecisionOptions()
    settings = {"fp16": False, "bf16": False, "calib": (), "calib_samples": 4, "keep_fp32": (), "keep_fp32_op": (),
                "force_fp16": (), "cast_io": defaults.cast_io, "data_max": defaults.data_max,
                "max_reduction": defaults.max_reduction, "tolerance": None}
    unknown = set(overrides) - set(settings)
    if unknown:
        raise TypeError(f"unknown precision settings: {', '.join(sorted(unknown))}")
    return {**settings, **overrides}


def run_precision(artifact: Artifact, opts: Mapping[str, Any], *, inputs: Sequence[str] = (), seed: int = 0,
                  ranges: Sequence[str] = (), shapes: Sequence[str] = ()) -> dict[str, Any]:
    """Type `artifact.model` in place per the CLI options; returns the report for the metadata.

    Raises CheckFailed when `opts["tolerance"]` is set and a predicted output error exceeds it.
    """
    if opts["fp16"] and opts["bf16"]:
        raise TrtcError("choose one of --fp16 and --bf16", where="--fp16/--bf16")
    if artifact.meta.get("precision"):
        raise TrtcError(f"the artifact is already typed for {artifact.meta['precision']['target']}",
                        where=str(artifact.path), hint="optimize the fp32 artifact instead")
    options = PrecisionOptions(
        target="bf16" if opts["bf16"] else "fp16",
        data_max=opts["data_max"], max_reduction=opts["max_reduction"],
        keep_fp32=opts["keep_fp32"], keep_fp32_ops=opts["keep_fp32_op"], force_fp16=opts["force_fp16"],
        cast_io=opts["cast_io"],
    )
    specs = model_inputs(artifact.model)
    samples = calibration_samples(specs, opts["calib"] or list(inputs), opts["calib_samples"], seed=seed,
                                  ranges=ranges, shapes=shapes)
    report = apply_precision(artifact.model, samples, options).as_dict()
    report["options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()}
    report["calibration"] = {"samples": len(samples), "source": "files" if opts["calib"] else "seeded random"}
    tolerance = opts.get("tolerance")
    if tolerance is not None:
        check_tolerance(report, tolerance)
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
    lines = [
        f"{report['target']}: {report['low_nodes']} nodes, {report['flop_share']:.1%} of FLOPs; "
        f"{len(report['fp32_nodes'])} nodes kept fp32 in {report['islands']} islands; "
        f"{report['counts']['casts']} casts inserted, {report['counts']['weights-converted']} weights converted"
    ]
    for name, m in report["predicted"].items():
        lines.append(f"  predicted {name}: max abs error {m['max_abs_error']:.3g}, relative to range "
                     f"{m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    return "\n".join(lines)


def precision_table(report: Mapping[str, Any]) -> str:
    """Every node kept in fp32, with its reason (for `trtc inspect --precision`)."""
    lines = [precision_summary_text(report), "", f"{'node':60} {'op':22} reason"]
    for name, entry in report["fp32_nodes"].items():
        lines.append(f"{name:60} {entry['op']:22} {entry['reason']}")
    return "\n".join(lines)
