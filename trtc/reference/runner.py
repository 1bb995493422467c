"""The CPU reference executor: onnxruntime, falling back to `onnx.reference` for
what onnxruntime cannot load or run. Every stage of trtc is checked against it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort

from trtc.ir.onnx_export import PROTO_LIMIT, to_model_proto
from trtc.ir.onnx_load import iter_tensor_protos
from trtc.ir.splat import dense_array
from trtc.ir.walk import weight_bytes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# Weights of at least this size reach onnxruntime as arrays. Smaller ones stay in the proto:
# onnxruntime's shape inference reads shape operands (Reshape's...) from the proto only.
HAND_OVER_BYTES = 64 << 10


def _handed_over(tensor: ir.TensorProtocol | None) -> bool:
    """Whether onnxruntime takes this weight as an array rather than as proto bytes."""
    return tensor is not None and tensor.nbytes >= HAND_OVER_BYTES and tensor.dtype.itemsize >= 1 \
        and tensor.dtype != ir.DataType.STRING


def _ort_value(tensor: ir.TensorProtocol) -> ort.OrtValue:
    array = dense_array(tensor)
    if array.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): the bytes, typed by ONNX's enum
        array = array.view(f"u{array.dtype.itemsize}")
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, int(tensor.dtype))


def ort_model(model: ir.Model, fetch: Sequence[ir.Value] = ()) -> tuple[onnx.ModelProto, dict[str, ort.OrtValue]]:
    """The model for onnxruntime without its weights' bytes: the main graph's initializers are
    placeholders, handed over as OrtValues (`SessionOptions.add_external_initializers`) that
    share memory with the arrays (memory-mapped files stay mapped, a splat is filled once).
    Serializing ~0.5 GB of weights into a proto and parsing it again costs seconds; this, none."""
    clone = model.clone()  # shares the tensors; only the clone's initializers are swapped
    weights = {}
    for value in list(clone.graph.initializers.values()):
        tensor = value.const_value
        if not (value.uses() or value.is_graph_input() or value.is_graph_output()):
            del clone.graph.initializers[value.name]  # onnxruntime would drop it (and refuse it handed over)
        elif _handed_over(tensor):
            weights[value.name] = _ort_value(tensor)
            value.const_value = ir.ExternalTensor("trtc-handed-over", offset=0, length=tensor.nbytes,
                                                  dtype=tensor.dtype, shape=tensor.shape, name=value.name)
    proto = ir.serde.serialize_model(clone)
    if any(tp.data_location == onnx.TensorProto.EXTERNAL and tp.name not in weights
           for tp in iter_tensor_protos(proto)):  # external data outside the main graph's initializers
        proto, weights = to_model_proto(model), {}
    proto.graph.output.extend(ir.serde.serialize_value(v) for v in fetch)
    return proto, weights


class ReferenceRunner:
    """Runs an IR model on the CPU. `backend` says which executor serves it and why.

    The model must not change while the runner is in use (`onnx.reference`, the fallback,
    serializes it when first needed)."""

    def __init__(self, model: ir.Model, *, threads: int | None = None, fetch: Sequence[ir.Value] = ()):
        """`fetch`: intermediate values of the main graph to return beside the outputs."""
        self._model = model
        self._weights: dict[str, ort.OrtValue] = {}
        self._evaluator: onnx.reference.ReferenceEvaluator | None = None
        self.fallback_reason: str | None = None
        outputs = {v.name for v in model.graph.outputs}
        self._fetch = [v for v in fetch if v.name not in outputs]
        self.output_names = [v.name for v in model.graph.outputs] + [v.name for v in self._fetch]
        options = ort.SessionOptions()
        # Execute each node as written: ORT's graph rewrites would fuse away the casts
        # that the precision simulation relies on.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # its errors come back as exceptions (and a fallback): no raw log lines
        if threads:
            options.intra_op_num_threads = threads
        try:
            proto, weights = ort_model(model, self._fetch)
            options.add_external_initializers(list(weights), list(weights.values()))
            self._weights = weights  # the session may read their memory: keep it alive
            self._session = ort.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for every failure
            self._session = None
            self.fallback_reason = f"onnxruntime cannot load the model: {_first_line(exc)}"

    @property
    def backend(self) -> str:
        return "onnx.reference" if self.fallback_reason else "onnxruntime"

    def _reference(self) -> onnx.reference.ReferenceEvaluator:
        if self._evaluator is None:
            proto = to_model_proto(self._model)
            proto.graph.output.extend(ir.serde.serialize_value(v) for v in self._fetch)
            self._evaluator = onnx.reference.ReferenceEvaluator(proto)
        return self._evaluator

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs by name for one set of feeds."""
        if self._session is not None:
            try:
                return dict(zip(self.output_names, self._session.run(self.output_names, dict(feeds))))
            except Exception as exc:
                if weight_bytes(self._model.graph) >= PROTO_LIMIT:  # too large for onnx.reference
                    raise
                self.fallback_reason = f"onnxruntime failed to run: {_first_line(exc)}"
                self._session = None
        results = self._reference().run(None, dict(feeds))
        return dict(zip(self.output_names, results))

    def warn_if_fallback(self, purpose: str) -> None:
        """Say on stderr that `purpose` ran on onnx.reference (slow, last-ulp differences)."""
        if self.fallback_reason:
            logging.getLogger("trtc").warning("%s ran on onnx.reference (slower): %s", purpose, self.fallback_reason)

    def close(self) -> None:
        """Release the session and the weights handed to it."""
        self._session = None
        self._weights = {}


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
