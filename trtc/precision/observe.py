"""Observing a model on calibration data: the largest magnitude and the concrete shape of
every value of the main graph, from the fp32 CPU reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.runtime.reference import ReferenceRunner


@dataclasses.dataclass
class Observation:
    """Per value name: max |x| over all samples (finite floats only) and the last shape seen."""

    max_abs: dict[str, float]
    shapes: dict[str, tuple[int, ...]]
    samples: int
    first: dict[str, np.ndarray]  # every float value on the first sample

    def magnitude(self, value: ir.Value | None) -> float:
        if value is None:
            return 0.0
        if value.const_value is not None and value.name not in self.max_abs:
            data = value.const_value.numpy()
            if data.dtype.kind == "f" and data.size:
                self.max_abs[value.name] = float(np.abs(data.astype(np.float32)).max())
        return self.max_abs.get(value.name, 0.0)


def observe(model: ir.Model, samples: Sequence[Mapping[str, Any]]) -> Observation:
    """Run the fp32 reference on every sample, fetching every intermediate value."""
    values = [v for node in model.graph for v in node.outputs if v.name]
    values += [v for v in model.graph.inputs]
    runner = ReferenceRunner(model, fetch=values)
    max_abs: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    first: dict[str, np.ndarray] = {}
    try:
        for feeds in samples:
            results = runner.run(feeds)
            results.update({k: v for k, v in feeds.items() if k not in results})
            for name, array in results.items():
                if not isinstance(array, np.ndarray):
                    continue
                shapes[name] = array.shape
                if array.dtype.kind == "f" and not first.get("__done__"):
                    first[name] = array
                if array.dtype.kind == "f" and array.size:
                    finite = np.abs(array[np.isfinite(array)]) if not np.isfinite(array).all() else np.abs(array)
                    peak = float(finite.max()) if finite.size else 0.0
                    max_abs[name] = max(max_abs.get(name, 0.0), peak)
            first["__done__"] = True
    finally:
        runner.close()
    first.pop("__done__", None)
    return Observation(max_abs, shapes, len(samples), first)
