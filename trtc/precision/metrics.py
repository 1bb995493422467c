"""Error metrics between a reference output and a predicted one."""

from __future__ import annotations

from typing import Any

import numpy as np


def compare_outputs(reference: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """max abs error, max error relative to the output's range, mean abs error, cosine
    similarity, NaN/Inf count of the prediction."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    got = np.asarray(predicted, dtype=np.float64).ravel()
    bad = int((~np.isfinite(got)).sum())
    if ref.size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0, "mean_abs_error": 0.0, "cosine": 1.0,
                "nonfinite": bad}
    with np.errstate(invalid="ignore"):  # inf - inf: `bad` reports it
        diff = np.abs(got - ref)
    if bad:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "mean_abs_error": float("inf"),
                "cosine": float("nan"), "nonfinite": bad}
    span = float(ref.max() - ref.min()) or float(np.abs(ref).max()) or 1.0
    norm = float(np.linalg.norm(ref) * np.linalg.norm(got))
    cosine = float(np.dot(ref, got) / norm) if norm else (1.0 if not diff.any() else 0.0)
    return {"max_abs_error": float(diff.max()), "max_rel_error": float(diff.max() / span),
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
