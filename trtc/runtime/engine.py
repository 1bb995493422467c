"""Running a built engine (`trtc run model.plan`): feed validation against the sidecar and
profile choice (no GPU needed), compatibility checks, and `EngineRunner`, which
deserializes the plan, binds device buffers, runs it on a CUDA stream and benchmarks it
with CUDA events (optionally replayed from a CUDA graph).

Everything before `EngineRunner` works from the `model.plan.json` sidecar alone, so a
wrong feed is reported as one line before any GPU work. The CUDA calls live in
`trtc.runtime.cuda`; the TensorRT module comes from `trtc.lower.backend`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import TrtcError
from trtc.lower.backend import RTX_TARGETS, Backend
from trtc.reference.feeds import check_feed_dtype, check_feed_names
from trtc.reference.runner import latency_summary
from trtc.runtime import cuda
from trtc.runtime.sidecar import EngineTensorSpec, dims_text, sidecar_specs, verify_plan_bytes

Shape = tuple[int, ...]
DEFAULT_ITERATIONS = 100
_BACKEND_LABEL = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


def _profile_text(profile: Mapping[str, Sequence[Sequence[int]]]) -> str:
    return ", ".join(f"{name} {dims_text(lo)}..{dims_text(hi)}" for name, (lo, _, hi) in profile.items())


# ---------------------------------------------------------------- validation and profile choice


def _fits(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> bool:
    return len(shape) == len(lo) and all(a <= d <= b for d, a, b in zip(shape, lo, hi))


def choose_profile(sidecar: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], where: str = "") -> int:
    """Index of the first profile whose MIN..MAX ranges hold every given input shape.

    An engine without dynamic inputs has no recorded profile and runs with profile 0.
    """
    profiles = sidecar.get("profiles") or []
    if not profiles:
        return 0
    for index, profile in enumerate(profiles):
        if all(_fits(shapes[name], lo, hi) for name, (lo, _, hi) in profile.items() if name in shapes):
            return index
    given = ", ".join(f"{name} {dims_text(shape)}" for name, shape in shapes.items())
    listed = "; ".join(f"profile {i}: {_profile_text(p)}" for i, p in enumerate(profiles))
    raise TrtcError(f"no profile of the engine takes these input shapes together ({given}); {listed}", where=where,
                    hint="use shapes from one profile, or rebuild with a --profile that covers them")


def _checkdims_text(sidecar: Mapping[str, Any], spec: EngineTensorSpec, shape: Shape, where: str) -> None:
    if len(shape) != len(spec.shape):
        raise TrtcError(f"input {spec.name!r} has rank {len(shape)} but the engine expects rank {len(spec.shape)} "
                        f"({spec.describe()})", where=where)
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if want >= 0 and want != got:
            raise TrtcError(f"input {spec.name!r} dim {axis} is {got} but the engine fixes it to {want} "
                            f"({spec.describe()})", where=where)
        if want < 0:
            _check_dynamic_dim(sidecar, spec.name, axis, got, where)


def _check_dynamic_dim(sidecar: Mapping[str, Any], name: str, axis: int, value: int, where: str) -> None:
    ranges = [(index, profile[name][0][axis], profile[name][2][axis])
              for index, profile in enumerate(sidecar.get("profiles") or []) if name in profile]
    if ranges and not any(lo <= value <= hi for _, lo, hi in ranges):
        allowed = ", ".join(f"{lo}..{hi} (profile {index})" for index, lo, hi in ranges)
        raise TrtcError(f"input {name!r} dim {axis} is {value} but the engine's profiles allow {allowed}", where=where,
                        hint="give a shape inside a profile, or rebuild with --shapes/--profile covering it")


def validate_engine_feeds(sidecar: Mapping[str, Any], feeds: Mapping[str, Any], where: str) -> None:
    """Check feeds against the engine before any GPU work: names, dtypes, ranks, static dims,
    dynamic dims against the profiles' MIN..MAX, and one profile taking all shapes together.
    Raises a one-line TrtcError naming the first bad input."""
    specs = sidecar_specs(sidecar["inputs"])
    check_feed_names([s.name for s in specs], feeds, where, owner="engine")
    for spec in specs:
        check_feed_dtype(spec.name, feeds[spec.name], spec.dtype, where, "engine", f" ({spec.describe()})")
        _checkdims_text(sidecar, spec, feeds[spec.name].shape, where)
    choose_profile(sidecar, {s.name: feeds[s.name].shape for s in specs}, where)


# ---------------------------------------------------------------- GPU and version checks


def no_gpu_reason() -> str | None:
    """None when cuda-python finds a usable CUDA driver and device, else a short reason."""
    try:
        rt = cuda.runtime()
    except TrtcError:
        return "cuda-python is not installed"
    except Exception as exc:  # a broken install: shared libraries that do not load
        return f"cuda-python cannot be loaded ({type(exc).__name__})"
    driver = cuda.driver_version()
    if driver == 0:
        return "no CUDA driver"
    err, count = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaErrorInsufficientDriver:
        needed = cuda.version_text(cuda.runtime_version())
        return f"CUDA driver too old (it supports CUDA {cuda.version_text(driver)}; cuda-python needs {needed})"
    if err == rt.cudaError_t.cudaErrorNoDevice or (err == rt.cudaError_t.cudaSuccess and count == 0):
        return "no CUDA device"
    if err != rt.cudaError_t.cudaSuccess:
        return f"CUDA is unusable ({cuda.error_name(err)})"
    return None


def current_sm(device: int = 0) -> str:
    """The device's compute capability as a target name, e.g. 'sm89'."""
    major, minor = cuda.compute_capability(device)
    return f"sm{major}{minor}"


def check_engine_compat(sidecar: Mapping[str, Any], backend: Backend, *, where: str = "",
                        compute_capability: str | None = None) -> None:
    """The engine can run here: same backend and version as built it, and for TensorRT-RTX a
    GPU among its targets. `compute_capability` ('sm89') is queried from device 0 when not given."""
    built, built_version = sidecar.get("backend"), sidecar.get("backend_version")
    if built != backend.name:
        raise TrtcError(f"the engine was built with {built} {built_version} but the runtime is {backend.name} "
                        f"{backend.version}", where=where, hint=f"run it with --backend {built}")
    if built_version != backend.version:
        label = _BACKEND_LABEL.get(backend.name, backend.name)
        raise TrtcError(f"the engine was built by {label} {built_version} but this runtime is {label} "
                        f"{backend.version}", where=where,
                        hint=f"rebuild it with `trtc build` under {label} {backend.version}")
    if backend.is_rtx:
        _check_rtx_target(sidecar, compute_capability or current_sm(), where)


def _check_rtx_target(sidecar: Mapping[str, Any], sm: str, where: str) -> None:
    targets = [str(t).lower() for t in sidecar.get("targets") or []]
    if targets and sm not in targets:
        hint = (f"rebuild with --target {sm}" if sm in RTX_TARGETS
                else f"TensorRT-RTX does not run on {sm}; build with --backend tensorrt for this GPU")
        raise TrtcError(f"the engine was built for {','.join(targets)} but this GPU is {sm}", where=where, hint=hint)
    if sm not in RTX_TARGETS:
        raise TrtcError(f"TensorRT-RTX engines run on {','.join(RTX_TARGETS)} but this GPU is {sm}", where=where,
                        hint="build with --backend tensorrt (full TensorRT) for this GPU")


# ---------------------------------------------------------------- timing figures


def _check_counts(warmup: int, iterations: int | None, duration: float | None) -> None:
    if warmup < 0:
        raise TrtcError(f"warmup must be >= 0, got {warmup}", where="--warmup")
    if iterations is not None and iterations < 1:
        raise TrtcError(f"iterations must be >= 1, got {iterations}", where="--iterations")
    if duration is not None and duration <= 0:
        raise TrtcError(f"duration must be > 0 seconds, got {duration}", where="--duration")


# ---------------------------------------------------------------- the runner


def to_engine_type(name: str, array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """An input in the engine's type: the model's own, or the type carrying it (float64 as
    float32, uint16 as int32, float8 as float16: see trtc/lower/legalize.py). Integers must
    arrive unchanged (UINT64 rides in INT64, so values from 2**63 on cannot)."""
    if array.dtype == np.uint64 and dtype == np.int64 and array.size and int(array.max()) >= 2**63:
        raise TrtcError(f"input {name!r} has {array.dtype} values the engine's {dtype} cannot hold",
                        where=where, hint="the engine carries this type in a narrower one; keep values below 2**63")
    return np.ascontiguousarray(array, dtype=dtype)


def _trt_numpy_dtype(trt, dtype) -> np.dtype | None:
    """numpy dtype of a TensorRT DataType, None for types numpy cannot hold (FP8, INT4, FP4)."""
    import ml_dtypes

    table = {"FLOAT": np.float32, "HALF": np.float16, "BF16": ml_dtypes.bfloat16, "INT8": np.int8,
             "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
    for name, np_type in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return np.dtype(np_type)
    return None


@dataclasses.dataclass(frozen=True)
class _IOTensor:
    """An engine I/O tensor as TensorRT reports it."""

    name: str
    is_input: bool
    dtype: np.dtype
    on_host: bool  # shape-tensor I/O lives in host memory


def _make_output_allocator(trt):
    """An IOutputAllocator for outputs whose shape depends on data (NonZero, ...): TensorRT asks
    for memory during `execute_async_v3` and then tells the shape."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, cuda.DeviceBuffer] = {}
            self.shapes: dict[str, Shape] = {}
            self.error: str | None = None

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self._reallocate(tensor_name, size)

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self._reallocate(tensor_name, size)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def _reallocate(self, name: str, size: int) -> int:
            try:  # an exception must not cross into TensorRT: returning 0 makes it fail cleanly
                buffer = self.buffers.get(name)
                if buffer is None or buffer.nbytes < size:
                    if buffer is not None:
                        self.buffers.pop(name).close()
                    self.buffers[name] = buffer = cuda.DeviceBuffer(size)
                return buffer.ptr
            except TrtcError as exc:
                self.error = exc.message
                return 0

        def close(self) -> None:
            while self.buffers:
                self.buffers.popitem()[1].close()

    return OutputAllocator()


class EngineRunner:
    """A deserialized engine with its execution context, stream and buffers.

    The engine is checked against this runtime and GPU first (`check_engine_compat`), and
    every `run`/`benchmark` validates its feeds (`validate_engine_feeds`) before GPU work.

    Use as a context manager (or call `close()`): everything is freed in order, and a
    TensorRT-RTX runtime cache given as `runtime_cache` is loaded at start (JIT-compiled
    kernels reused) and written back on close.
    """

    def __init__(self, plan_path: str | Path, sidecar: Mapping[str, Any], backend: Backend,
                 runtime_cache: str | Path | None = None, *, device: int = 0, where: str | None = None,
                 trust_plan: bool = False):
        self.plan_path = Path(plan_path)
        self.sidecar = sidecar
        self.backend = backend
        self.where = where if where is not None else str(plan_path)
        self.runtime_cache_path = Path(runtime_cache) if runtime_cache else None
        self.trust_plan = trust_plan
        self.runtime_cache_loaded = False
        self.runtime_cache_note: str | None = None
        self.profile: int | None = None
        self.info: dict[str, Any] = {}
        self._output_specs = sidecar_specs(sidecar["outputs"])
        self._check_cache_path()
        self._closed = False
        self.stream: cuda.Stream | None = None
        self._runtime = self._engine = self._context = self._graph_context = None
        self._config = self._graph_config = self._cache = self._allocator = None
        self._device: dict[str, cuda.DeviceBuffer] = {}
        self._host: dict[str, cuda.PinnedBuffer] = {}
        self._data_dependent: set[str] = set()
        try:
            self._open(device)
        except BaseException:
            self.close(save_cache=False)
            raise

    # ---- setup

    def _check_cache_path(self) -> None:
        path = self.runtime_cache_path
        if path is None:
            return
        if not self.backend.is_rtx:
            raise TrtcError("a runtime cache is TensorRT-RTX only (full TensorRT compiles no kernels at run time)",
                            where="--runtime-cache", hint="drop --runtime-cache")
        if not path.resolve().parent.is_dir():
            raise TrtcError("the folder of the runtime cache does not exist", where=f"--runtime-cache {path}")

    def _open(self, device: int) -> None:
        from trtc.lower.context import RecordingLogger

        trt = self.backend.trt
        cuda.set_device(device)
        self.stream = cuda.Stream()  # also makes the device's CUDA context current
        self.info = {"device": cuda.device_name(device), "compute_capability": current_sm(device),
                     "backend": self.backend.name, "backend_version": self.backend.version}
        check_engine_compat(self.sidecar, self.backend, where=self.where,
                            compute_capability=self.info["compute_capability"])
        self._logger = RecordingLogger(trt)
        self._runtime = trt.Runtime(self._logger)
        data = self.plan_path.read_bytes()
        verify_plan_bytes(data, self.sidecar, self.where, trust=self.trust_plan)  # the bytes deserialized, checked
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise TrtcError(self._load_failure(data), where=self.where)
        self._io = self._engine_io()
        if self.backend.is_rtx:
            self._config = self._engine.create_runtime_config()
            if self.runtime_cache_path is not None:
                self._cache = self._load_runtime_cache(self._config)
        self._context = self._new_context(self._config)
        self._allocator = _make_output_allocator(trt)

    def _errors(self) -> str:
        errors = self._logger.errors[-2:] if getattr(self, "_logger", None) else []
        return "; ".join(errors) or "no reason given"

    def _load_failure(self, data: bytes) -> str:
        """Why deserialization failed, from TensorRT's validity check where it has one."""
        trt = self.backend.trt
        text = "TensorRT could not load the engine"
        validity = getattr(self._runtime, "get_engine_validity", None)
        if validity is not None and hasattr(trt, "EngineInvalidityDiagnostics"):
            try:
                _, bits = validity(data)
                causes = [name.lower().replace("_", " ") for name, flag in
                          trt.EngineInvalidityDiagnostics.__members__.items() if int(bits) & int(flag)]
            except Exception:  # diagnostics are a bonus: never hide the load failure behind them
                causes = []
            if causes:
                text += f" ({', '.join(causes)})"
        return f"{text}: {self._errors()}"

    def _engine_io(self) -> list[_IOTensor]:
        trt, engine = self.backend.trt, self._engine
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            if mode not in (trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT):
                continue
            trt_dtype = engine.get_tensor_dtype(name)
            dtype = _trt_numpy_dtype(trt, trt_dtype)
            if dtype is None:
                raise TrtcError(f"engine tensor {name!r} has type {trt_dtype.name}, which trtc run cannot hold in "
                                "numpy", where=self.where)
            on_host = engine.get_tensor_location(name) == trt.TensorLocation.HOST
            tensors.append(_IOTensor(name, mode == trt.TensorIOMode.INPUT, dtype, on_host))
        return tensors

    def _load_runtime_cache(self, config):
        cache = config.create_runtime_cache()
        path = self.runtime_cache_path
        if path.is_file() and path.stat().st_size:
            if cache.deserialize(path.read_bytes()):
                self.runtime_cache_loaded = True
            else:
                self.runtime_cache_note = ("the runtime cache was made for another GPU, driver or TensorRT-RTX "
                                           "version; it is rebuilt")
        if not config.set_runtime_cache(cache):
            raise TrtcError(f"TensorRT-RTX did not take the runtime cache: {self._errors()}",
                            where=f"--runtime-cache {path}")
        return cache

    def _new_context(self, config):
        engine = self._engine
        context = engine.create_execution_context() if config is None else engine.create_execution_context(config)
        if context is None:
            raise TrtcError(f"TensorRT could not create an execution context: {self._errors()}", where=self.where)
        return context

    def _rtx_graph_context(self):
        """TensorRT-RTX's own CUDA graph capture (WHOLE_GRAPH_CAPTURE) needs its own context;
        RTX engines allocate memory internally, so plain stream capture is not possible."""
        if self._graph_context is None:
            trt = self.backend.trt
            config = self._engine.create_runtime_config()
            if self._cache is not None:
                config.set_runtime_cache(self._cache)
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self._graph_config = config
            self._graph_context = self._new_context(config)
        return self._graph_context

    # ---- binding shapes and buffers

    def _engine_arrays(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated feeds in the engine's own types (e.g. float64 inputs lowered to float32)."""
        validate_engine_feeds(self.sidecar, feeds, self.where)
        arrays = {}
        for tensor in self._io:
            if not tensor.is_input:
                continue
            if tensor.name not in feeds:
                raise TrtcError(f"the engine takes input {tensor.name!r}, which its sidecar does not list",
                                where=self.where, hint="rebuild the engine with `trtc build`")
            arrays[tensor.name] = to_engine_type(tensor.name, feeds[tensor.name], tensor.dtype, self.where)
        return arrays

    def _grow(self, pool: dict, name: str, nbytes: int, kind) -> Any:
        buffer = pool.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                pool.pop(name).close()
            pool[name] = buffer = kind(nbytes)
        return buffer

    def _bind(self, context, shapes: Mapping[str, Shape]) -> None:
        """Profile, input shapes and every tensor's address, for these input shapes."""
        profile = choose_profile(self.sidecar, shapes, self.where)
        if profile >= self._engine.num_optimization_profiles:
            raise TrtcError(f"the sidecar lists profile {profile} but the engine has "
                            f"{self._engine.num_optimization_profiles}", where=self.where)
        if context.active_optimization_profile != profile:
            if not context.set_optimization_profile_async(profile, self.stream.ptr):
                raise TrtcError(f"TensorRT could not switch to profile {profile}: {self._errors()}", where=self.where)
        self.profile = profile
        for tensor in self._io:
            if tensor.is_input:
                if not context.set_input_shape(tensor.name, shapes[tensor.name]):
                    shape = dims_text(shapes[tensor.name])
                    raise TrtcError(f"TensorRT rejected shape {shape} for input {tensor.name!r}: {self._errors()}",
                                    where=self.where)
                self._set_address(context, tensor, shapes[tensor.name])
        try:
            unresolved = context.infer_shapes()
        except RuntimeError as exc:  # shape inference failed outright (e.g. an impossible input shape)
            raise TrtcError(f"TensorRT cannot infer the output shapes: {exc}; {self._errors()}",
                            where=self.where) from None
        if unresolved:
            raise TrtcError(f"TensorRT cannot infer the shapes of {', '.join(unresolved)}: {self._errors()}",
                            where=self.where)
        self._data_dependent = set()
        for tensor in self._io:
            if tensor.is_input:
                continue
            shape = tuple(context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in shape):  # known only after the run: TensorRT asks the allocator
                self._data_dependent.add(tensor.name)
                if not context.set_output_allocator(tensor.name, self._allocator):
                    raise TrtcError(f"TensorRT did not take an output allocator for {tensor.name!r}", where=self.where)
            else:
                self._set_address(context, tensor, shape)

    def _set_address(self, context, tensor: _IOTensor, shape: Shape) -> None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize
        host = self._grow(self._host, tensor.name, nbytes, cuda.PinnedBuffer)
        address = host.ptr if tensor.on_host else self._grow(self._device, tensor.name, nbytes, cuda.DeviceBuffer).ptr
        if not context.set_tensor_address(tensor.name, address):
            raise TrtcError(f"TensorRT did not take the address of {tensor.name!r}: {self._errors()}",
                            where=self.where)

    # ---- copies and execution

    def _stage(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inputs into their pinned host buffers (the source of every upload)."""
        for name, array in arrays.items():
            np.copyto(self._host[name].view(array.dtype, array.shape), array)

    def _upload(self, arrays: Mapping[str, np.ndarray]) -> None:
        for tensor in self._io:
            if tensor.is_input and not tensor.on_host:
                cuda.copy_htod_async(self._device[tensor.name].ptr, self._host[tensor.name].ptr,
                                     arrays[tensor.name].nbytes, self.stream)

    def _execute(self, context) -> None:
        if not context.execute_async_v3(self.stream.ptr):
            reason = self._allocator.error or self._errors()
            raise TrtcError(f"TensorRT failed to run the engine: {reason}", where=self.where)

    def _output_shapes(self, context) -> dict[str, Shape]:
        shapes = {}
        for tensor in self._io:
            if tensor.is_input:
                continue
            if tensor.name in self._data_dependent:
                if tensor.name not in self._allocator.shapes:
                    raise TrtcError(f"TensorRT gave no shape for output {tensor.name!r}", where=self.where)
                shapes[tensor.name] = self._allocator.shapes[tensor.name]
            else:
                shapes[tensor.name] = tuple(context.get_tensor_shape(tensor.name))
        return shapes

    def _download(self, shapes: Mapping[str, Shape]) -> None:
        for tensor in self._io:
            if tensor.is_input or tensor.on_host:
                continue
            shape = shapes[tensor.name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize
            source = (self._allocator.buffers[tensor.name] if tensor.name in self._data_dependent
                      else self._device[tensor.name])
            host = self._grow(self._host, tensor.name, nbytes, cuda.PinnedBuffer)
            cuda.copy_dtoh_async(host.ptr, source.ptr, nbytes, self.stream)

    def _collect(self, shapes: Mapping[str, Shape]) -> dict[str, np.ndarray]:
        """Copies of the outputs out of pinned memory, in the sidecar's order and dtypes."""
        by_name = {t.name: t for t in self._io if not t.is_input}
        outputs = {}
        for spec in self._output_specs:
            tensor = by_name.get(spec.name)
            if tensor is None:
                continue
            array = np.array(self._host[spec.name].view(tensor.dtype, shapes[spec.name]))
            outputs[spec.name] = array if array.dtype == spec.dtype else array.astype(spec.dtype)
        return outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference: outputs by name, as host arrays."""
        self._require_open()
        arrays = self._engine_arrays(feeds)
        self._bind(self._context, {n: a.shape for n, a in arrays.items()})
        self._stage(arrays)
        self._upload(arrays)
        self._execute(self._context)
        shapes = self._output_shapes(self._context)
        self._download(shapes)
        self.stream.synchronize()
        return self._collect(shapes)

    # ---- benchmarking

    def benchmark(self, feeds: Mapping[str, np.ndarray], warmup: int = 10, iterations: int | None = None,
                  duration: float | None = None, cuda_graph: bool = False,
                  include_transfers: bool = False) -> dict[str, Any]:
        """Latency figures (ms) of repeated inference, each run timed with CUDA events on the stream.

        Runs `warmup` untimed inferences, then at least `iterations` and for at least `duration`
        seconds (100 iterations when neither is given). `include_transfers` times the host-device
        copies with each run; `cuda_graph` replays the run from a CUDA graph (stream capture for
        TensorRT, TensorRT-RTX's own whole-graph capture for RTX).
        """
        self._require_open()
        _check_counts(warmup, iterations, duration)
        if iterations is None and duration is None:
            iterations = DEFAULT_ITERATIONS
        arrays = self._engine_arrays(feeds)
        context = self._rtx_graph_context() if cuda_graph and self.backend.is_rtx else self._context
        self._bind(context, {n: a.shape for n, a in arrays.items()})
        if cuda_graph and self._data_dependent:
            raise TrtcError(f"a CUDA graph cannot replay an engine whose output shapes depend on data "
                            f"({', '.join(sorted(self._data_dependent))})", where=self.where,
                            hint="benchmark without --cuda-graph")
        self._stage(arrays)
        self._upload(arrays)
        shapes: dict[str, Shape] = {}

        def enqueue() -> None:
            if include_transfers:
                self._upload(arrays)
            self._execute(context)
            if include_transfers:
                self._download(shapes)

        self._execute(context)  # first run: flushes deferred setup (and RTX's JIT) before any capture
        shapes.update(self._output_shapes(context))
        self._download(shapes)  # pinned buffers for the outputs exist before a capture
        self.stream.synchronize()
        graph, mode = None, "off"
        if cuda_graph and not self.backend.is_rtx:
            capturable = getattr(context, "is_stream_capturable", None)
            if capturable is not None and not capturable(self.stream.ptr):
                raise TrtcError("this engine cannot be captured in a CUDA graph", where=self.where,
                                hint="benchmark without --cuda-graph")
            graph, mode = cuda.Graph(self.stream, enqueue), "stream capture"
        elif cuda_graph:
            mode = "tensorrt-rtx whole-graph capture"
        try:
            figures = self._time(graph.launch if graph else enqueue, warmup, iterations, duration)
        finally:
            if graph is not None:
                graph.close()
        figures.update(timing="cuda events", cuda_graph=mode, include_transfers=include_transfers,
                       profile=self.profile, warmup=warmup)
        return figures

    def _time(self, step: Callable[[], None], warmup: int, iterations: int | None,
              duration: float | None) -> dict[str, Any]:
        for _ in range(warmup):
            step()
        self.stream.synchronize()
        times: list[float] = []
        with cuda.Event() as start, cuda.Event() as end:
            began = time.perf_counter()
            while True:
                start.record(self.stream)
                step()
                end.record(self.stream)
                end.synchronize()
                times.append(end.elapsed_ms(start))
                done_count = iterations is None or len(times) >= iterations
                if done_count and (duration is None or time.perf_counter() - began >= duration):
                    break
            wall = time.perf_counter() - began
        return latency_summary(times, wall)

    # ---- runtime cache and teardown

    def save_runtime_cache(self) -> None:
        """Write the TensorRT-RTX runtime cache (JIT-compiled kernels) to its file, atomically."""
        if self._cache is None or self.runtime_cache_path is None:
            return
        from trtc.lower.build import write_atomic

        blob = self._cache.serialize()
        data = bytes(memoryview(blob)) if blob is not None else b""
        try:
            write_atomic(self.runtime_cache_path, data)
        except OSError as exc:
            raise TrtcError(f"cannot write the runtime cache ({exc.strerror or exc})",
                            where=f"--runtime-cache {self.runtime_cache_path}") from None

    def _require_open(self) -> None:
        if self._closed:
            raise TrtcError("the engine runner is closed", where=self.where)

    def close(self, save_cache: bool = True) -> None:
        """Free everything, in order: contexts before the engine, the engine before the
        buffers, the stream last. Saves the runtime cache first (unless `save_cache` is False)."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []

        def release(action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as exc:  # keep freeing; report the first failure at the end
                errors.append(exc)

        if self.stream is not None:
            release(self.stream.synchronize)
        if save_cache:
            release(self.save_runtime_cache)
        # TensorRT objects die with their last reference: contexts, configs, cache, engine, runtime.
        self._graph_context = self._context = None
        self._graph_config = self._config = self._cache = None
        self._engine = self._runtime = None
        if self._allocator is not None:
            release(self._allocator.close)
        self._allocator = None
        for pool in (self._device, self._host):
            while pool:
                release(pool.popitem()[1].close)
        if self.stream is not None:
            release(self.stream.close)
        self.stream = None
        if errors:
            raise errors[0]

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(save_cache=exc_type is None)

    def __del__(self):  # a forgotten close() still frees GPU memory
        if not getattr(self, "_closed", True):
            try:
                self.close(save_cache=False)
            except Exception:
                pass

