"""Calibration for quantization: the range (amax) of each quantized activation, from its values on
the calibration data, by one of four methods.

    max             the largest |x| seen: nothing clips, the step is widest
    percentile[:P]  the P-th percentile of |x| (default 99.99): the rarest values clip
    entropy         TensorRT's KL-divergence threshold: the 128-level distribution closest to the
                    observed one (int8's legacy calibrator)
    mse             the threshold with the least mean squared quantization error, clipping included

Statistics stream over the samples: the exact max of |x|, and a 2048-bin histogram of |x| over
[0, top] whose top grows with the values (old counts re-binned). Values beyond HUGE and non-finite
ones (the -3.4e38 of a causal mask) are counted but kept out of the range and the histogram: they
saturate. ModelOpt's entropy calibration fails on them ("Too many bins for data range").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.reference.runner import ReferenceRunner

BINS = 2048
HUGE = 1e30  # beyond this a value is a mask or a sentinel, not data
METHODS = ("max", "percentile", "entropy", "mse")
INT8_MAX = 127.0
FP8_MAX = 448.0  # float8 e4m3fn


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    percentile: float = 99.99

    @classmethod
    def parse(cls, text: str, where: str = "--calib-method") -> Method:
        """'max', 'percentile', 'percentile:99.9', 'entropy' or 'mse'."""
        name, _, arg = text.strip().lower().partition(":")
        if name not in METHODS or (arg and name != "percentile"):
            raise TrtcError(f"unknown calibration method {text!r}", where=where,
                            hint="use max, percentile[:P], entropy or mse")
        if not arg:
            return cls(name)
        try:
            p = float(arg)
        except ValueError:
            p = -1.0
        if not 0 < p <= 100:
            raise TrtcError(f"percentile {arg!r} is not in (0, 100]", where=where, hint="e.g. percentile:99.99")
        return cls(name, p)

    def __str__(self) -> str:
        return f"percentile:{self.percentile:g}" if self.name == "percentile" else self.name


class TensorStats:
    """Streaming statistics of |x| for one tensor."""

    def __init__(self) -> None:
        self.amax = 0.0  # of the values kept (finite, below HUGE)
        self.count = 0
        self.left_out = 0  # non-finite or beyond HUGE
        self.top = 0.0  # the histogram covers [0, top]
        self.hist = np.zeros(BINS, np.float64)

    def add(self, array: np.ndarray) -> None:
        data = np.abs(np.asarray(array, np.float32).ravel())
        kept = data < HUGE  # False for NaN and inf too
        if not kept.all():
            self.left_out += int((~kept).sum())
            data = data[kept]
        if not data.size:
            return
        self.count += data.size
        peak = float(data.max())
        self.amax = max(self.amax, peak)
        if peak > self.top:
            self._grow(peak)
        if self.top > 0:
            self.hist += np.histogram(data, BINS, (0.0, self.top))[0]

    def _grow(self, peak: float) -> None:
        """Widen the range to `peak`, moving the old counts to the bins their centres fall in."""
        if self.top > 0 and self.hist.any():
            centres = (np.arange(BINS) + 0.5) * (self.top / BINS)
            index = np.minimum((centres / peak * BINS).astype(np.int64), BINS - 1)
            self.hist = np.bincount(index, weights=self.hist, minlength=BINS).astype(np.float64)
        self.top = peak

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, BINS + 1)

    def range(self, method: Method, fmt: str = "int8") -> float:
        """The amax `method` chooses for quantizing to `fmt` ('int8' or 'fp8')."""
        if method.name == "max" or self.amax == 0.0 or not self.hist.any():
            return self.amax
        if method.name == "percentile":
            return min(self.amax, percentile_amax(self.hist, self.edges, method.percentile))
        if method.name == "entropy":
            return min(self.amax, entropy_amax(self.hist, self.edges))
        return min(self.amax, mse_amax(self.hist, self.edges, fmt))

    def summary(self) -> dict[str, Any]:
        return {"max": self.amax, "values": self.count, "left_out": self.left_out}


def percentile_amax(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    cdf = np.cumsum(hist) / hist.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(index + 1, len(edges) - 1)])


def entropy_amax(hist: np.ndarray, edges: np.ndarray, levels: int = 128, stride: int = 8) -> float:
    """TensorRT's entropy calibration: for each threshold bin i, the reference distribution is
    hist[:i] with the clipped tail added to its last bin, the candidate is hist[:i] merged into
    `levels` groups and spread back evenly over each group's non-empty bins; the threshold with
    the least KL divergence wins (the last of equals)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]  # the spike of exact zeros (after a ReLU) says nothing about the range
    total = bins.sum()
    best, best_i = np.inf, len(bins)
    for i in range(levels, len(bins) + 1, stride):
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        group = (np.arange(i) * levels) // i
        nonzero = bins[:i] > 0
        sums = np.bincount(group, weights=bins[:i], minlength=levels)
        counts = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        cand = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        p, q = ref / total, cand / max(cand.sum(), 1e-300)
        mask = p > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if not np.isfinite(kl):
            continue
        if kl <= best:
            best, best_i = kl, i
    return float(edges[best_i])


def _fp8_round(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return np.clip(x, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


def mse_amax(hist: np.ndarray, edges: np.ndarray, fmt: str = "int8", candidates: int = 128) -> float:
    """The threshold among `candidates` (from 1/16 of the range to all of it) with the least
    squared error over the histogram's bin centres, each weighted by its count."""
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_t = np.inf, float(edges[-1])
    for t in np.linspace(edges[-1] / 16, edges[-1], candidates):
        if fmt == "fp8":
            q = _fp8_round(centres / (t / FP8_MAX)) * (t / FP8_MAX)
        else:
            step = t / INT8_MAX
            q = np.minimum(np.round(centres / step), INT8_MAX) * step
        err = float(np.dot(hist, (centres - q) ** 2))
        if err < best:
            best, best_t = err, float(t)
    return best_t


def collect(model: ir.Model, samples: Sequence[Mapping[str, Any]],
            values: Sequence[ir.Value]) -> dict[str, TensorStats]:
    """Statistics of each of `values` (main-graph values or graph inputs) over the samples, by name."""
    stats = {v.name: TensorStats() for v in values}
    computed = [v for v in values if not v.is_graph_input()]
    runner = ReferenceRunner(model, fetch=computed)
    try:
        for feeds in samples:
            results = runner.run(feeds)
            for name, s in stats.items():
                array = results.get(name, feeds.get(name))
                if isinstance(array, np.ndarray) and array.dtype.kind == "f":
                    s.add(array)
    finally:
        runner.warn_if_fallback("quantization: the calibration run")
        runner.close()
    return stats
