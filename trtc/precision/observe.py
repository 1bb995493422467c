"""Observing a model on calibration data: the largest magnitude and the concrete shape of
every value, of the main graph and of If/Loop/Scan bodies (through statistics threaded out of
the bodies, `subgraphs.instrument`), and the graph outputs, from the fp32 CPU reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.splat import is_splat
from trtc.ir.walk import has_subgraphs
from trtc.memory import unmap
from trtc.precision.subgraphs import MIN_OPSET, BodyStats, instrument
from trtc.reference.runner import ReferenceRunner


@dataclasses.dataclass
class Observation:
    """Per value name: max |x| over all samples (finite floats only) and the last shape seen."""

    max_abs: dict[str, float]
    shapes: dict[str, tuple[int, ...]]
    samples: int
    first: dict[str, np.ndarray]  # every float value on the first sample
    outputs: list[dict[str, Any]]  # per sample, the graph outputs by name (the fp32 reference)
    finite: bool  # no float value was inf or NaN on any sample
    # Values inside If/Loop/Scan bodies: how many times each was computed over all samples (0: its
    # body never ran); main-graph values are computed once per sample and are not listed.
    runs: dict[str, int] = dataclasses.field(default_factory=dict)
    body_error: str | None = None  # why the bodies' values could not be observed, where they could not

    def magnitude(self, value: ir.Value | None) -> float:
        if value is None:
            return 0.0
        tensor = value.const_value
        if tensor is not None and value.name not in self.max_abs:
            data = tensor.value if is_splat(tensor) else tensor.numpy()  # a splat: its one element
            if data.dtype.kind == "f" and tensor.size:
                self.max_abs[value.name] = float(np.abs(data.astype(np.float32)).max())
            del data
            unmap(tensor)  # a big model's fp32 weights, read once here: not resident from now on
        return self.max_abs.get(value.name, 0.0)


def finite_peak(array: np.ndarray) -> tuple[float, bool]:
    """max |x| over the finite elements of a non-empty float array (0 when none is finite), and
    whether all elements are finite."""
    low, high = float(array.min()), float(array.max())
    if np.isfinite(low) and np.isfinite(high):  # NaN or inf anywhere shows in min or max
        return max(abs(low), abs(high)), True
    finite = np.abs(array[np.isfinite(array)])
    return (float(finite.max()) if finite.size else 0.0), False


def observe(model: ir.Model, samples: Sequence[Mapping[str, Any]]) -> Observation:
    """Run the fp32 reference on every sample, fetching every intermediate value of the main graph
    and the statistics of every body's values. Value names must be unique over all graphs
    (`subgraphs.ensure_unique_names`)."""
    body_error = None
    if any(has_subgraphs(node) for node in model.graph):
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18))
        if opset < MIN_OPSET:
            body_error = f"opset {opset} is older than the {MIN_OPSET} the observation of bodies is written in"
        else:
            try:
                return _observe(model, samples, instrumented=True)
            except TrtcError as exc:
                # The statistics nodes are trtc's own, not the model's: when their copy fails, the
                # model itself is observed (and fails there if it is the inputs' fault), and the
                # bodies stay fp32 with this reason.
                body_error = f"the copy that observes them failed ({exc.message})"
    observation = _observe(model, samples, instrumented=False)
    observation.body_error = body_error
    return observation


def _observe(model: ir.Model, samples: Sequence[Mapping[str, Any]], instrumented: bool) -> Observation:
    stats: list[tuple[ir.Value, list[tuple[str, bool]]]] = []
    if instrumented:
        copy = instrument(model)
        model, stats = copy.model, copy.stats
    values = [v for node in model.graph for v in node.outputs if v.name]
    values += [v for v in model.graph.inputs]
    output_names = [v.name for v in model.graph.outputs]
    stat_names = {vector.name for vector, _ in stats}
    runner = ReferenceRunner(model, fetch=values)
    max_abs: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    first: dict[str, np.ndarray] = {}
    outputs: list[dict[str, Any]] = []
    bodies = BodyStats()
    all_finite = True
    try:
        for feeds in samples:
            results = runner.run(feeds)
            outputs.append({name: results[name] for name in output_names})
            for vector, layout in stats:
                bodies.add(results[vector.name], layout)
            results = {k: v for k, v in results.items() if k not in stat_names}
            results.update({k: v for k, v in feeds.items() if k not in results})
            for name, array in results.items():
                if not isinstance(array, np.ndarray):
                    continue
                shapes[name] = array.shape
                if array.dtype.kind == "f" and len(outputs) == 1:
                    first[name] = array
                if array.dtype.kind == "f" and array.size:
                    peak, finite = finite_peak(array)
                    max_abs[name] = max(max_abs.get(name, 0.0), peak)
                    all_finite &= finite
    finally:
        runner.warn_if_fallback("precision: the calibration run")
        runner.close()
    max_abs.update(bodies.max_abs)
    shapes.update(bodies.shapes)
    return Observation(max_abs, shapes, len(samples), first, outputs, all_finite and bodies.finite, bodies.runs)


def _times_power_of_two(array: np.ndarray, exponent: int) -> np.ndarray:
    return (array.astype(np.float64) * 2.0**exponent).astype(array.dtype)


def scaled_observation(obs: Observation, scaled: Mapping[str, tuple[str, int]]) -> Observation:
    """What observing a rescaled graph would give, from the observation of the original: value
    `name` holds value `origin` times 2^-e for every name -> (origin, e) in `scaled`, every other
    value is unchanged. Exact while the scaled numbers stay finite and normal (the caller knows
    `obs.finite`): products, sums and maxima of numbers scaled by a power of two are scaled alike."""
    max_abs, shapes, first = dict(obs.max_abs), dict(obs.shapes), dict(obs.first)
    for name, (origin, e) in scaled.items():
        if origin in obs.max_abs:
            max_abs[name] = obs.max_abs[origin] * 2.0**-e
        if origin in obs.shapes:
            shapes[name] = obs.shapes[origin]
        if origin in obs.first:
            first[name] = _times_power_of_two(obs.first[origin], -e)
    return Observation(max_abs, shapes, obs.samples, first, obs.outputs, obs.finite, obs.runs, obs.body_error)
