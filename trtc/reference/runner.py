"""The CPU reference executor: onnxruntime, falling back to `onnx.reference` for what onnxruntime
cannot load or does not implement. Every stage of trtc is checked against it.

A fallback is never silent (`ReferenceRunner.fallback_reason`, said by every caller) and never
turns an input error into a result: onnxruntime refusing the inputs (their names, dtypes, shapes,
or values a node cannot take) is `InputRejected`, the user's error, because `onnx.reference`
would either fail with a traceback or compute a meaningless output on the same inputs."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort

from trtc.errors import TrtcError
from trtc.ir.onnx_export import PROTO_LIMIT, to_model_proto
from trtc.ir.onnx_load import FileViewTensor, iter_tensor_protos
from trtc.ir.splat import dense_array
from trtc.ir.walk import weight_bytes
from trtc.memory import release_memory
from trtc.reference.feeds import memory_limit, model_inputs, oversized_values, validate_feeds

# onnxruntime's `[ONNXRuntimeError] : 9 : ` before each message.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ")


def _first_line(exc: BaseException) -> str:
    """The message's first line, without onnxruntime's `[ONNXRuntimeError] : 9 :` prefix."""
    text = str(exc).strip().splitlines()
    return _ORT_PREFIX.sub("", text[0])[:300] if text else type(exc).__name__


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """The whole message on one line (onnxruntime puts the useful part, `index: 2 Got: 1
    Expected: 3`, on the lines after the first), without its `[ONNXRuntimeError] : 2 :` prefix."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _ORT_PREFIX.sub("", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputRejected(TrtcError):
    """The CPU reference refused the inputs: missing or unknown names, dtypes, ranks, dims, or
    values a node cannot take (a reflect pad longer than the input, a reshape that does not
    divide). The user's error (exit 2), said where the caller knows the artifact."""

    def __init__(self, message: str, *, input_name: str | None = None, where: str | None = None,
                 hint: str | None = None):
        self.input_name = input_name
        super().__init__(message, where=where, hint=hint)

    def located(self, where: str, hint: str | None = None) -> InputRejected:
        """The same error at `where` (the artifact), with `hint` added to its own."""
        hints = "; ".join(h for h in (self.hint, hint) if h) or None
        return InputRejected(self.message, input_name=self.input_name, where=where, hint=hints)


class ReferenceFailed(TrtcError):
    """Neither executor could compute the outputs: onnxruntime lacks an op or type and
    `onnx.reference` (the fallback) failed too, or the model is too large for it."""


# onnxruntime's words for "I do not implement this" (an op, an op version, a type): the only
# run-time refusals `onnx.reference` may stand in for. Everything else it says at run time is
# about the inputs it was given.
# ... or cannot take the inputs' type at all (ml_dtypes' bfloat16/fp8/int4 arrays: "Numpy_type 26
# can't be converted to MLDataType"): also what onnxruntime lacks, not the inputs' fault.
_NOT_IMPLEMENTED = re.compile(r"NOT_IMPLEMENTED|Could not find an implementation|not implemented|"
                              r"can't be converted to MLDataType|No corresponding Numpy type", re.IGNORECASE)
# onnxruntime's words for inputs that do not fit the model: never a reason to try another executor.
_INPUT_ERROR = re.compile(r"Got invalid dimensions|Invalid rank for input|Unexpected input data type|"
                          r"Missing Input|Invalid input name|for input:", re.IGNORECASE)
# Where onnxruntime names the input it refuses ("... for input: x ...", "Missing Input: sr").
_INPUT_NAMED = re.compile(r"(?:for input:|Missing Input:|Invalid input name:)\s*([^\s,]+)")


def _named_input(message: str) -> str | None:
    """The input a feed check names first (`input 'x' has dtype ...`), if one."""
    found = re.search(r"input(?:\(s\))? '([^']+)'", message)
    return found[1] if found else None


def ort_reason(exc: BaseException, limit: int = 300) -> str:
    """onnxruntime's message cut to what helps: for a failing node (inside an If, a Loop...), the
    innermost node and its own message (`Pad node 'node_pad': Pad reflect requires axis length >= 2
    after slicing. Input shape:{1,1}`), without source paths and error-code prefixes."""
    text = " ".join(str(exc).split())
    nodes = re.findall(r"running (\S+) node\. Name:'([^']*)'", text)
    if nodes and "Status Message: " in text:
        message = text.rpartition("Status Message: ")[2]
        message = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", message)[-1]
        op, name = nodes[-1]
        text = f"{op} node {name!r}: {message}"
    else:
        text = _one_line(exc, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def lacks_implementation(exc: BaseException) -> bool:
    """Whether onnxruntime failed because it does not implement something (a fallback may
    help), as opposed to refusing the model's inputs or failing on their values."""
    return type(exc).__name__ == "NotImplemented" or bool(_NOT_IMPLEMENTED.search(str(exc)))


# Weights of at least this size reach onnxruntime as arrays. Smaller ones stay in the proto:
# onnxruntime's shape inference reads shape operands (Reshape's...) from the proto only.
HAND_OVER_BYTES = 64 << 10
# From this many bytes of weights stored in files, onnxruntime maps the files instead (the weights'
# pages are the page cache's, shared, never copied). Below it they are handed over: onnxruntime then
# copies them, and prepacks the MatMul/Conv ones (faster runs) -- a copy a big model cannot afford.
MAP_FILE_BYTES = 512 << 20


def _handed_over(tensor: ir.TensorProtocol | None) -> bool:
    """Whether onnxruntime takes this weight as an array rather than as proto bytes."""
    return tensor is not None and tensor.nbytes >= HAND_OVER_BYTES and tensor.dtype.itemsize >= 1 \
        and tensor.dtype != ir.DataType.STRING


def _ort_value(tensor: ir.TensorProtocol) -> ort.OrtValue:
    array = dense_array(tensor)
    if array.dtype.kind == "V":  # ml_dtypes (bfloat16, float8...): the bytes, typed by ONNX's enum
        array = array.view(f"u{array.dtype.itemsize}")
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, int(tensor.dtype))


def file_span(tensor: ir.TensorProtocol) -> tuple[str, int, int] | None:
    """(real path, offset, length) of a weight whose bytes lie in a file as ONNX stores them (a .trtir's
    data, an .onnx file's external data or embedded raw_data still the file mapped); None otherwise."""
    if isinstance(tensor, FileViewTensor):
        return (tensor.path, tensor.offset, tensor.nbytes) if tensor.is_current() else None
    if isinstance(tensor, ir.ExternalTensor) and tensor.base_dir is not None:
        path = os.path.realpath(os.path.join(tensor.base_dir, tensor.location))
        return path, tensor.offset or 0, tensor.nbytes
    return None


@dataclasses.dataclass
class OrtModel:
    """A model as onnxruntime loads it: the proto without its large weights' bytes, the weights handed over
    as OrtValues, and the folder whose files hold the mapped ones (None: none mapped)."""

    proto: onnx.ModelProto
    weights: dict[str, ort.OrtValue]
    folder: str | None = None

    def session_options(self, options: ort.SessionOptions) -> None:
        """Set what loading it takes: the handed-over weights, the mapped files' folder."""
        options.add_external_initializers(list(self.weights), list(self.weights.values()))
        if self.folder is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", self.folder)
            # Prepacking copies every MatMul/Conv weight into onnxruntime's own layout: the mapped file's
            # pages would be read, then held twice.
            options.add_session_config_entry("session.disable_prepacking", "1")
            # Its arena grows in regions that a fetched value kept by the caller pins whole (observing a
            # 1.2 B-parameter model's 0.6 GB of values held 2.2 GB): each value gets its own block instead.
            options.enable_cpu_mem_arena = False


def _mapped_folder(spans: Mapping[str, tuple[str, int, int]]) -> str | None:
    """The folder whose files hold most of the weights' bytes, when they are enough to be mapped
    (onnxruntime maps files of one folder, named relative to it)."""
    if sum(length for _, _, length in spans.values()) < MAP_FILE_BYTES:
        return None
    by_folder: collections.Counter[str] = collections.Counter()
    for path, _, length in spans.values():
        by_folder[os.path.dirname(path)] += length
    return by_folder.most_common(1)[0][0]


def ort_model(model: ir.Model, fetch: Sequence[ir.Value] = ()) -> OrtModel:
    """The model for onnxruntime without its weights' bytes. The main graph's large initializers are
    mapped by onnxruntime from the files that hold them (big models: `MAP_FILE_BYTES`) or handed over
    as OrtValues (`SessionOptions.add_external_initializers`: onnxruntime copies them; a splat is
    filled once). Serializing ~0.5 GB of weights into a proto and parsing it again costs seconds; this, none."""
    clone = model.clone()  # shares the tensors; only the clone's initializers are swapped
    large = {v.name: v for v in clone.graph.initializers.values()
             if (v.uses() or v.is_graph_input() or v.is_graph_output()) and _handed_over(v.const_value)}
    spans = {name: span for name, v in large.items() if (span := file_span(v.const_value)) is not None}
    folder = _mapped_folder(spans)
    weights, mapped = {}, set()
    for value in list(clone.graph.initializers.values()):
        tensor = value.const_value
        if not (value.uses() or value.is_graph_input() or value.is_graph_output()):
            del clone.graph.initializers[value.name]  # onnxruntime would drop it (and refuse it handed over)
        elif folder is not None and value.name in spans and os.path.dirname(spans[value.name][0]) == folder:
            path, offset, length = spans[value.name]
            value.const_value = ir.ExternalTensor(os.path.basename(path), offset=offset, length=length,
                                                  dtype=tensor.dtype, shape=tensor.shape, name=value.name)
            mapped.add(value.name)
        elif value.name in large:
            weights[value.name] = _ort_value(tensor)
            value.const_value = ir.ExternalTensor("trtc-handed-over", offset=0, length=tensor.nbytes,
                                                  dtype=tensor.dtype, shape=tensor.shape, name=value.name)
        elif isinstance(tensor, ir.ExternalTensor):  # a small one read from a file: into the proto, or the
            # whole model would go the slow way below (every weight copied into a proto, then into onnxruntime)
            value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
    proto = ir.serde.serialize_model(clone)
    if any(tp.data_location == onnx.TensorProto.EXTERNAL and tp.name not in weights and tp.name not in mapped
           for tp in iter_tensor_protos(proto)):  # external data outside the main graph's initializers
        return OrtModel(to_model_proto(model), {})
    proto.graph.output.extend(ir.serde.serialize_value(v) for v in fetch)
    return OrtModel(proto, weights, folder if mapped else None)


def _only(results: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: results[name] for name in names}


class ReferenceRunner:
    """Runs an IR model on the CPU. `backend` says which executor serves it and why.

    The model must not change while the runner is in use (`onnx.reference`, the fallback,
    serializes it when first needed)."""

    def __init__(self, model: ir.Model, *, threads: int | None = None, fetch: Sequence[ir.Value] = (),
                 spin: bool = True, max_memory: int | None = None):
        """`fetch`: intermediate values of the main graph to return beside the outputs. `spin=False`:
        onnxruntime's idle threads sleep instead of busy-waiting (a server's model between requests).
        `max_memory`: what one value may take (default `feeds.memory_limit()`); a model with a larger
        static value is refused when run."""
        self._model = model
        self._oversized = oversized_values(model, max_memory if max_memory is not None else memory_limit())
        self._weights: dict[str, ort.OrtValue] = {}
        self._evaluator: onnx.reference.ReferenceEvaluator | None = None
        self.fallback_reason: str | None = None
        outputs = {v.name for v in model.graph.outputs}
        self._fetch = [v for v in fetch if v.name not in outputs]
        self.output_names = [v.name for v in model.graph.outputs] + [v.name for v in self._fetch]
        # What the feeds are checked against before either executor sees them: onnxruntime's own
        # rules, said in trtc's words (and onnx.reference, which checks none, gets no bad feed).
        self.inputs = model_inputs(model)
        # Graph inputs with an initializer are defaults a feed may override (onnxruntime allows it).
        self._defaults = {v.name for v in model.graph.inputs if v.is_initializer()}
        options = ort.SessionOptions()
        # Execute each node as written: ORT's graph rewrites would fuse away the casts
        # that the precision simulation relies on.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # its errors come back as exceptions (and a fallback): no raw log lines
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            loaded = ort_model(model, self._fetch)
            loaded.session_options(options)
            self._weights = loaded.weights  # the session may read their memory: keep it alive
            self._session = ort.InferenceSession(
                loaded.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for every failure
            # Loading sees no inputs: a refusal here is about what onnxruntime supports (ops, op
            # versions, types), so onnx.reference may stand in; where the model itself is broken,
            # onnx.reference fails too, and says so in one line (ReferenceFailed).
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

    def run(self, feeds: Mapping[str, Any], *, validate: bool = True,
            names: Sequence[str] | None = None) -> dict[str, Any]:
        """Outputs by name for one set of feeds. InputRejected when the feeds do not fit the model
        or onnxruntime fails on their values; ReferenceFailed when no executor can run it.
        `validate=False` skips the feed checks, for timed runs of feeds that passed them once.
        `names`: only these of `output_names` (onnxruntime keeps no other fetched value alive)."""
        names = self.output_names if names is None else list(names)
        if self._oversized:
            raise ReferenceFailed(f"{len(self._oversized)} value(s) of the model would be larger than the memory "
                                  f"limit ({', '.join(self._oversized[:3])}); the CPU reference does not run it",
                                  hint="raise the limit with --max-memory (or TRTC_MAX_MEMORY) if the machine has it")
        if validate:
            try:
                validate_feeds(self.inputs, {k: v for k, v in feeds.items() if k not in self._defaults},
                               where="inputs")
            except TrtcError as exc:
                raise InputRejected(exc.message, input_name=_named_input(exc.message), hint=exc.hint) from None
        if self._session is not None:
            try:
                return dict(zip(names, self._session.run(names, dict(feeds))))
            except Exception as exc:  # ORT raises its own exception types for every failure
                if _INPUT_ERROR.search(str(exc)):
                    raise self._rejected(exc) from None
                if not lacks_implementation(exc):
                    # An op kernel's own limit (ConvInteger's per-channel zero point...) or the values:
                    # the spec's executor decides which, and says so either way (never silently).
                    return _only(self._reference_run(feeds, exc), names)
                if weight_bytes(self._model.graph) >= PROTO_LIMIT:
                    raise ReferenceFailed(f"onnxruntime does not implement part of the model ({_one_line(exc)}) and "
                                          "it is too large for onnx.reference, the fallback") from None
                self.fallback_reason = f"onnxruntime failed to run: {_first_line(exc)}"
                self._session = None
        try:
            results = self._reference().run(None, dict(feeds))
        except Exception as exc:  # onnx.reference raises whatever its op implementations raise
            # onnxruntime's reason first: it names the node and the type or op; onnx.reference's is an op
            # implementation's own exception, said after it.
            raise ReferenceFailed(f"{self.fallback_reason}; onnx.reference cannot run it either: {_one_line(exc)}",
                                  hint="check the inputs' shapes and the model (trtc inspect MODEL); if both are "
                                       "right, report it with the model") from None
        return _only(dict(zip(self.output_names, results)), names)

    def _reference_run(self, feeds: Mapping[str, Any], ort_error: BaseException) -> dict[str, Any]:
        """onnxruntime failed on these feeds for a reason other than the inputs' shapes or types:
        `onnx.reference` (the spec's executor) runs them once. When it also fails, the inputs are
        what neither accepts: onnxruntime's refusal is the error. The session stays for the next feeds."""
        if weight_bytes(self._model.graph) >= PROTO_LIMIT:
            raise self._rejected(ort_error) from None
        try:
            results = self._reference().run(None, dict(feeds))
        except Exception:  # onnx.reference raises whatever its op implementations raise
            raise self._rejected(ort_error) from None
        self.fallback_reason = f"onnxruntime failed on these inputs ({ort_reason(ort_error)}); onnx.reference ran them"
        return dict(zip(self.output_names, results))

    def _rejected(self, exc: BaseException) -> InputRejected:
        """onnxruntime's run-time refusal as the input error it is, naming the input when it does."""
        named = _INPUT_NAMED.search(str(exc))
        name = named[1] if named and named[1] in {s.name for s in self.inputs} else None
        what = f"input {name!r}" if name else "these inputs"
        return InputRejected(f"onnxruntime refuses {what}: {ort_reason(exc)}", input_name=name,
                             hint="check them against the model's inputs (trtc inspect MODEL)")

    def warn_if_fallback(self, purpose: str) -> None:
        """Say on stderr that `purpose` ran on onnx.reference (slow, last-ulp differences)."""
        if self.fallback_reason:
            logging.getLogger("trtc").warning("%s ran on onnx.reference (slower): %s", purpose, self.fallback_reason)

    def close(self) -> None:
        """Release the session and the weights handed to it, and give the memory back (a big model's next
        stage needs it)."""
        self._session = None
        self._weights = {}
        release_memory()


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
