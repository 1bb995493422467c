"""SmoothQuant-style scale migration: outlier channels of a normalisation's output moved into the
weights of the linear layers that read it, so that one per-tensor int8 scale fits the activation.

Before (x [.., C] with a few channels far larger than the rest; every reader a linear layer):
    x = LayerNormalization(h, gamma, beta)          (or RMSNormalization(h, gamma))
    y_i = MatMul(x, W_i)  |  Gemm(x, W_i, b_i)      W_i [C, N] (Gemm transB: [N, C])
After (s [C] = max|x_j|^a / max_i max|W_i[j, :]|^(1-a), a = 0.5, clipped to 1e-4..1e4):
    x' = LayerNormalization(h, gamma / s, beta / s)
    y_i = MatMul(x', s[:, None] * W_i)              the same y_i in exact arithmetic
Applied only where the activation has outliers: its largest channel peak is at least OUTLIER_RATIO
times the median channel's. Not applied (with the reason) where x is read by anything else (a
residual Add, as in post-LN BERT), is a graph output, or gamma, beta or a weight is shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_array
from trtc.reference.runner import ReferenceRunner

NORMS = ("LayerNormalization", "RMSNormalization")
OUTLIER_RATIO = 16.0
ALPHA = 0.5


def _reader_weight(node: ir.Node, x: ir.Value) -> tuple[np.ndarray, int] | None:
    """The weight of a linear reader of `x` and its input-channel axis, if it is one."""
    if node.op_type not in ("MatMul", "Gemm") or node.inputs[0] is not x or len(node.inputs) < 2:
        return None
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return None
    w = const_array(node.inputs[1])
    if w is None or w.ndim != 2 or len(node.inputs[1].uses()) != 1:
        return None
    return w, (1 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 0)


def why_not(norm: ir.Node) -> str | None:
    """Why the output of normalisation `norm` cannot be smoothed (None: it can)."""
    x = norm.outputs[0]
    if x.is_graph_output():
        return "its output is a graph output"
    readers = x.consumers()
    if not readers or any(_reader_weight(r, x) is None for r in readers):
        others = sorted({r.op_type for r in readers if _reader_weight(r, x) is None})
        return f"its output is also read by {', '.join(others) or 'nothing'} (not only linear layers)"
    for value in norm.inputs[1:3]:
        if value is not None and (const_array(value) is None or len(value.uses()) != 1):
            return f"its {value.name!r} is not a constant of its own"
    return None


def channel_peaks(model: ir.Model, samples: Sequence[Mapping[str, Any]], values: Sequence[ir.Value]
                  ) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each of `values` over the samples."""
    peaks: dict[str, np.ndarray] = {}
    runner = ReferenceRunner(model, fetch=values)
    try:
        for feeds in samples:
            results = runner.run(feeds)
            for v in values:
                data = np.abs(results[v.name].astype(np.float32)).reshape(-1, results[v.name].shape[-1])
                data = np.where(np.isfinite(data), data, 0.0).max(axis=0)
                peaks[v.name] = np.maximum(peaks.get(v.name, data), data)
    finally:
        runner.close()
    return peaks


def outlier_ratio(peaks: np.ndarray) -> float:
    return float(peaks.max() / max(float(np.median(peaks)), 1e-12))


def migrate(model: ir.Model, norm: ir.Node, peaks: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Rewrite `norm` and its readers' weights (see the module docstring); returns s."""
    x = norm.outputs[0]
    readers = [(r, *_reader_weight(r, x)) for r in x.consumers()]
    w_peak = np.max([np.abs(w).max(axis=1 - axis) for _, w, axis in readers], axis=0)
    s = np.clip(np.maximum(peaks, 1e-12) ** alpha / np.maximum(w_peak, 1e-12) ** (1 - alpha), 1e-4, 1e4)
    s = s.astype(np.float32)
    graph = model.graph
    for index in (1, 2):
        if index < len(norm.inputs) and norm.inputs[index] is not None:
            old = norm.inputs[index]
            norm.replace_input_with(index, add_constant(graph, const_array(old) / s, f"{old.name}__smoothed"))
    for reader, w, axis in readers:
        scaled = w * (s[:, None] if axis == 0 else s[None, :])
        reader.replace_input_with(1, add_constant(graph, scaled.astype(w.dtype), f"{reader.inputs[1].name}__smoothed"))
    return s


def smooth(model: ir.Model, samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Migrate the outliers of every normalisation whose output only linear layers read and whose
    channels have outliers; returns what was done (and, for outliers that could not be moved, why)."""
    norms = [n for n in model.graph if n.op_type in NORMS and n.domain in ("", "ai.onnx")
             and not n.outputs[0].is_graph_output()]
    if not norms:
        return []
    peaks = channel_peaks(model, samples, [n.outputs[0] for n in norms])
    done = []
    for norm in norms:
        ratio = outlier_ratio(peaks[norm.outputs[0].name])
        if ratio < OUTLIER_RATIO:
            continue
        reason = why_not(norm)
        entry = {"node": norm.name, "outlier_ratio": ratio, "readers": [r.name for r in norm.outputs[0].consumers()]}
        if reason is None:
            s = migrate(model, norm, peaks[norm.outputs[0].name])
            entry.update(alpha=ALPHA, scale_range=[float(s.min()), float(s.max())])
        else:
            entry["not_smoothed"] = reason
        done.append(entry)
    from trtc.passes import PASSES, PassContext

    PASSES["dead-code"].fn(model, PassContext())  # the original weights
    return done
