"""The thin CUDA layer under the engine runner: device and pinned host buffers, a stream,
events, async copies and CUDA graph capture, over cuda-python's `cuda.bindings.runtime`.

`cuda.bindings` is imported lazily (it is an optional extra), every call's error code is
checked, and a failure becomes a one-line `TrtcError` naming the CUDA error
(e.g. "cudaErrorInsufficientDriver"). Every resource is a small object with `close()`
(idempotent) and context-manager support, so callers free them deterministically.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from trtc.errors import TrtcError

INSTALL_HINT = 'install cuda-python with `pip install "trtc[gpu]"` (or `pip install cuda-python`)'


def runtime() -> ModuleType:
    """`cuda.bindings.runtime`, imported on first use; TrtcError when cuda-python is missing."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        raise TrtcError("cuda-python is not installed", hint=INSTALL_HINT) from None


def error_name(err: Any) -> str:
    """`cudaErrorNoDevice` for a cudaError_t (its enum name when the lookup itself fails)."""
    rt = runtime()
    status, name = rt.cudaGetErrorName(err)
    if status == rt.cudaError_t.cudaSuccess and name:
        return name.decode() if isinstance(name, bytes) else str(name)
    return getattr(err, "name", str(err))


def check(result: tuple, what: str) -> Any:
    """The value(s) of a cuda-python call returning `(err, *values)`; TrtcError unless cudaSuccess."""
    rt = runtime()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        name = error_name(err)
        hint = "check the NVIDIA driver and GPU with nvidia-smi" if "Driver" in name or "Device" in name else None
        raise TrtcError(f"CUDA error {name} in {what}", hint=hint)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# ---------------------------------------------------------------- device queries


def driver_version() -> int:
    """CUDA version the installed driver supports (12040 for 12.4); 0 without a driver."""
    rt = runtime()
    err, version = rt.cudaDriverGetVersion()
    return int(version) if err == rt.cudaError_t.cudaSuccess else 0


def runtime_version() -> int:
    """CUDA runtime version cuda-python was built against (13000 for 13.0)."""
    return int(check(runtime().cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))


def version_text(version: int) -> str:
    """12040 -> '12.4'."""
    return f"{version // 1000}.{version % 1000 // 10}"


def device_count() -> int:
    return int(check(runtime().cudaGetDeviceCount(), "cudaGetDeviceCount"))


def set_device(device: int) -> None:
    check(runtime().cudaSetDevice(device), f"cudaSetDevice({device})")


def compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) of a device, e.g. (9, 0) for H100."""
    rt = runtime()
    attr = rt.cudaDeviceAttr
    major = check(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute")
    minor = check(rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute")
    return int(major), int(minor)


def device_name(device: int = 0) -> str:
    props = check(runtime().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    return (name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)).strip()


# ---------------------------------------------------------------- resources


class _Resource:
    """Base of the owned CUDA objects: `close()` once, usable as a context manager."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stream(_Resource):
    """A non-blocking CUDA stream (TensorRT asks for a non-default stream)."""

    def __init__(self):
        rt = runtime()
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The raw cudaStream_t, as TensorRT's `execute_async_v3` takes it."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(runtime().cudaStreamDestroy(handle), "cudaStreamDestroy")


class Event(_Resource):
    """A timing event."""

    def __init__(self):
        self.handle = check(runtime().cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(runtime().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(runtime().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from `start` to this event (both recorded and complete)."""
        return float(check(runtime().cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(runtime().cudaEventDestroy(handle), "cudaEventDestroy")


class DeviceBuffer(_Resource):
    """`nbytes` of device memory (at least one byte, so an empty tensor still has an address)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr: int | None = int(check(runtime().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes})"))

    def close(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            check(runtime().cudaFree(ptr), "cudaFree")


class PinnedBuffer(_Resource):
    """`nbytes` of page-locked host memory, seen from numpy as a uint8 array (`.array`)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        size = max(self.nbytes, 1)
        self.ptr: int | None = int(check(runtime().cudaMallocHost(size), f"cudaMallocHost({self.nbytes})"))
        self.array = np.ctypeslib.as_array((ctypes.c_ubyte * size).from_address(self.ptr))

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The first bytes as an array of `dtype` and `shape` (no copy)."""
        count = int(np.prod(shape, dtype=np.int64))
        return self.array[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.array = None
            check(runtime().cudaFreeHost(ptr), "cudaFreeHost")


# ---------------------------------------------------------------- copies


def copy_htod_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    """Host (pinned for true asynchrony) -> device."""
    rt = runtime()
    if nbytes:
        check(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
              "cudaMemcpyAsync (host to device)")


def copy_dtoh_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    """Device -> host (pinned for true asynchrony)."""
    rt = runtime()
    if nbytes:
        check(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
              "cudaMemcpyAsync (device to host)")


def memset_async(dst: int, value: int, nbytes: int, stream: Stream) -> None:
    """`nbytes` of device memory at `dst` set to the byte `value` (a static KV cache zeroed once)."""
    if nbytes:
        check(runtime().cudaMemsetAsync(dst, value, nbytes, stream.handle), "cudaMemsetAsync")


# ---------------------------------------------------------------- CUDA graphs


class Graph(_Resource):
    """The work `enqueue()` puts on `stream`, captured once and replayed with `launch()`."""

    def __init__(self, stream: Stream, enqueue: Callable[[], None]):
        rt = runtime()
        self.stream = stream
        self._graph = self._exec = None
        check(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
              "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:  # end the capture anyway, or the stream stays unusable
            err, graph = rt.cudaStreamEndCapture(stream.handle)
            if err == rt.cudaError_t.cudaSuccess and graph is not None:
                rt.cudaGraphDestroy(graph)
            raise
        self._graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self._exec = check(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")
        except TrtcError:
            self.close()
            raise

    def launch(self) -> None:
        check(runtime().cudaGraphLaunch(self._exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = runtime()
        if self._exec is not None:
            handle, self._exec = self._exec, None
            check(rt.cudaGraphExecDestroy(handle), "cudaGraphExecDestroy")
        if self._graph is not None:
            handle, self._graph = self._graph, None
            check(rt.cudaGraphDestroy(handle), "cudaGraphDestroy")
