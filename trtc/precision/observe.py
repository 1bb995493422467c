"""Observing a model on calibration data: the largest magnitude and the concrete shape of
every value of the main graph, and the graph outputs, from the fp32 CPU reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.ir.splat import is_splat
from trtc.runtime.reference import ReferenceRunner


@dataclasses.dataclass
class Observation:
    """Per value name: max |x| over all samples (finite floats only) and the last shape seen."""

    max_abs: dict[str, float]
    shapes: dict[str, tuple[int, ...]]
    samples: int
    first: dict[str, np.ndarray]  # every float value on the first sample
    outputs: list[dict[str, Any]]  # per sample, the graph outputs by name (the fp32 reference)

    def magnitude(self, value: ir.Value | None) -> float:
        if value is None:
            return 0.0
        tensor = value.const_value
        if tensor is not None and value.name not in self.max_abs:
            data = tensor.value if is_splat(tensor) else tensor.numpy()  # a splat: its one element
            if data.dtype.kind == "f" and tensor.size:
                self.max_abs[value.name] = float(np.abs(data.astype(np.float32)).max())
        return self.max_abs.get(value.name, 0.0)


def finite_peak(array: np.ndarray) -> float:
    """max |x| over the finite elements of a non-empty float array (0 when none is finite)."""
    low, high = float(array.min()), float(array.max())
    if np.isfinite(low) and np.isfinite(high):  # NaN or inf anywhere shows in min or max
        return max(abs(low), abs(high))
    finite = np.abs(array[np.isfinite(array)])
    return float(finite.max()) if finite.size else 0.0


def observe(model: ir.Model, samples: Sequence[Mapping[str, Any]]) -> Observation:
    """Run the fp32 reference on every sample, fetching every intermediate value."""
    values = [v for node in model.graph for v in node.outputs if v.name]
    values += [v for v in model.graph.inputs]
    output_names = [v.name for v in model.graph.outputs]
    runner = ReferenceRunner(model, fetch=values)
    max_abs: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    first: dict[str, np.ndarray] = {}
    outputs: list[dict[str, Any]] = []
    try:
        for feeds in samples:
            results = runner.run(feeds)
            outputs.append({name: results[name] for name in output_names})
            results.update({k: v for k, v in feeds.items() if k not in results})
            for name, array in results.items():
                if not isinstance(array, np.ndarray):
                    continue
                shapes[name] = array.shape
                if array.dtype.kind == "f" and len(outputs) == 1:
                    first[name] = array
                if array.dtype.kind == "f" and array.size:
                    max_abs[name] = max(max_abs.get(name, 0.0), finite_peak(array))
    finally:
        runner.close()
    return Observation(max_abs, shapes, len(samples), first, outputs)
