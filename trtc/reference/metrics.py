"""How far an output is from its reference: the one definition every stage uses.

The *relative error* of an output is its largest absolute error divided by the reference's
range (max - min; max |ref| for a constant output; 1 for all zeros): a scale that does not
blow up near zero crossings, as an element-wise |a - b| / |b| does. NaN against NaN and
equal infinities count as no error.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def abs_errors(reference: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|predicted - reference| per element (float64, flattened); agreeing NaN/Inf positions are 0."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    got = np.asarray(predicted, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = np.abs(got - ref)
    diff[(np.isnan(ref) & np.isnan(got)) | (ref == got)] = 0.0
    return diff


def output_range(reference: np.ndarray) -> float:
    """The scale relative errors are measured against (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return 1.0
    return float(ref.max() - ref.min()) or float(np.abs(ref).max()) or 1.0


def error_metrics(reference: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """max abs error, relative error (max abs error / the reference's range), mean abs error,
    cosine similarity, and how many predicted values are NaN/Inf where the reference is not."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    got = np.asarray(predicted, dtype=np.float64).ravel()
    if ref.size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0, "mean_abs_error": 0.0, "cosine": 1.0, "nonfinite": 0}
    diff = abs_errors(ref, got)
    bad = int((~np.isfinite(diff)).sum())
    if bad:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "mean_abs_error": float("inf"),
                "cosine": float("nan"), "nonfinite": bad}
    finite = np.isfinite(ref) & np.isfinite(got)
    x, y = ref[finite], got[finite]
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    cosine = float(np.dot(x, y) / norm) if norm else (1.0 if not diff.any() else 0.0)
    return {"max_abs_error": float(diff.max()), "max_rel_error": float(diff.max() / output_range(ref)),
            "mean_abs_error": float(diff.mean()), "cosine": cosine, "nonfinite": 0}


def worst(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric worst case over several samples."""
    return {
        "max_abs_error": max(m["max_abs_error"] for m in metrics),
        "max_rel_error": max(m["max_rel_error"] for m in metrics),
        "mean_abs_error": max(m["mean_abs_error"] for m in metrics),
        "cosine": min((m["cosine"] for m in metrics), key=lambda c: -1.0 if np.isnan(c) else c),
        "nonfinite": max(m["nonfinite"] for m in metrics),
    }


def value_error(reference: np.ndarray | None, got: Any) -> float | None:
    """The error an intermediate value carries, for per-node contributions: its largest absolute error over
    max |reference| (floored at 1e-6), inf where any is not finite; None where the two cannot be compared."""
    if reference is None or not isinstance(got, np.ndarray) or reference.shape != got.shape or not reference.size:
        return None
    scale = max(float(np.abs(reference).max()), 1e-6)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: an infinite error
        diff = np.abs(got.astype(np.float64) - reference)
    return float("inf") if not np.isfinite(diff).all() else float(diff.max()) / scale
