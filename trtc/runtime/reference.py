"""The CPU reference executor: onnxruntime, falling back to `onnx.reference` for
what onnxruntime cannot load or run. Every stage of trtc is checked against it."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort

from trtc.errors import TrtcError
from trtc.frontend.onnx_export import PROTO_LIMIT, export_onnx_file, to_model_proto
from trtc.ir.walk import weight_bytes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class ReferenceRunner:
    """Runs an IR model on the CPU. `backend` says which executor serves it and why."""

    def __init__(self, model: ir.Model, *, threads: int | None = None, fetch: Sequence[ir.Value] = ()):
        """`fetch`: intermediate values of the main graph to return beside the outputs."""
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._proto: onnx.ModelProto | None = None
        self._evaluator: onnx.reference.ReferenceEvaluator | None = None
        self.fallback_reason: str | None = None
        outputs = {v.name for v in model.graph.outputs}
        fetch = [v for v in fetch if v.name not in outputs]
        self.output_names = [v.name for v in model.graph.outputs] + [v.name for v in fetch]
        options = ort.SessionOptions()
        # Execute each node as written: ORT's graph rewrites would fuse away the casts
        # that the precision simulation relies on.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            if weight_bytes(model.graph) >= PROTO_LIMIT:
                if fetch:
                    raise TrtcError("fetching intermediate values of a model over 2 GB is not supported yet")
                self._tmpdir = tempfile.TemporaryDirectory(prefix="trtc-ref-")
                path = export_onnx_file(model, Path(self._tmpdir.name) / "model.onnx")
                self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            else:
                self._proto = to_model_proto(model)
                self._proto.graph.output.extend(ir.serde.serialize_value(v) for v in fetch)
                self._session = ort.InferenceSession(
                    self._proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for every failure
            self._session = None
            self.fallback_reason = f"onnxruntime cannot load the model: {_first_line(exc)}"
            if self._proto is None:
                self._proto = to_model_proto(model)
                self._proto.graph.output.extend(ir.serde.serialize_value(v) for v in fetch)

    @property
    def backend(self) -> str:
        return "onnxruntime" if self._session is not None else "onnx.reference"

    def _reference(self) -> onnx.reference.ReferenceEvaluator:
        if self._evaluator is None:
            self._evaluator = onnx.reference.ReferenceEvaluator(self._proto)
        return self._evaluator

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs by name for one set of feeds."""
        if self._session is not None:
            try:
                return dict(zip(self.output_names, self._session.run(self.output_names, dict(feeds))))
            except Exception as exc:
                if self._proto is None:
                    raise
                self.fallback_reason = f"onnxruntime failed to run: {_first_line(exc)}"
                self._session = None
        results = self._reference().run(None, dict(feeds))
        return dict(zip(self.output_names, results))

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()


def latency_summary(times_ms: Sequence[float], wall_s: float) -> dict[str, float]:
    """Latency percentiles (ms) of timed runs and throughput: runs per second of the timed loop's wall time."""
    arr = np.asarray(times_ms, dtype=np.float64)
    return {
        "iterations": int(arr.size),
        "min_ms": float(arr.min()),
        "median_ms": float(np.median(arr)),
        "mean_ms": float(arr.mean()),
        "p90_ms": float(np.percentile(arr, 90)),
        "p95_ms": float(np.percentile(arr, 95)),
        "p99_ms": float(np.percentile(arr, 99)),
        "throughput_per_s": float(arr.size / wall_s) if wall_s > 0 else float(1e3 / arr.mean()),
        "wall_s": float(wall_s),
    }


def time_runs(run, feeds: Mapping[str, Any], warmup: int, iterations: int) -> dict[str, float]:
    """Latency figures of `run(feeds)` over `iterations` timed runs after `warmup` untimed ones."""
    for _ in range(warmup):
        run(feeds)
    times = []
    loop_start = time.perf_counter()
    for _ in range(iterations):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return latency_summary(times, time.perf_counter() - loop_start)


def summarize(array: Any) -> dict[str, Any]:
    """Shape, dtype and value statistics of one output (non-tensors get a type only)."""
    if not isinstance(array, np.ndarray):
        return {"type": type(array).__name__}
    info: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size and (np.issubdtype(array.dtype, np.number) or array.dtype.kind == "V"
                       or array.dtype == np.bool_):
        values = array.astype(np.float64)
        finite = np.isfinite(values)
        info["nan"] = int(np.isnan(values).sum())
        info["inf"] = int(np.isinf(values).sum())
        if finite.any():
            v = values[finite]
            info.update(min=float(v.min()), max=float(v.max()), mean=float(v.mean()))
    return info
