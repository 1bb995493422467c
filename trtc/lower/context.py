"""The lowering context: the TensorRT network under construction, the map from IR values
to TensorRT tensors, and the small helpers converters build with."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.lower.backend import Backend


class RecordingLogger:
    """A TensorRT logger that keeps errors so failures can be reported with their cause."""

    def __new__(cls, trt):
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    self.warnings.append(msg)

        return _Logger()


def first_error(messages: Sequence[str]) -> str | None:
    """TensorRT's first error of `messages`, without its source location. The first is the cause:
    TensorRT-RTX follows every refused API call with a CUDA error of its own (`cudaError 35: CUDA
    driver version is insufficient` on a machine without a GPU), which says nothing about the model."""
    if not messages:
        return None
    message = re.sub(r"(\.?\s*In \w+ at /\S+:\d+)+\)", ")", messages[0].strip())
    return re.sub(r"Error Code \d+: ", "", message)


def trt_dtype(trt, dtype: ir.DataType):
    """TensorRT's type for an ONNX type; DOUBLE is lowered as FLOAT (as onnx-tensorrt does)."""
    table = {
        ir.DataType.FLOAT: trt.float32, ir.DataType.DOUBLE: trt.float32, ir.DataType.FLOAT16: trt.float16,
        ir.DataType.BFLOAT16: trt.bfloat16, ir.DataType.INT32: trt.int32, ir.DataType.INT64: trt.int64,
        ir.DataType.INT8: trt.int8, ir.DataType.UINT8: trt.uint8, ir.DataType.BOOL: trt.bool,
        ir.DataType.FLOAT8E4M3FN: trt.fp8, ir.DataType.INT4: trt.int4,
    }
    if dtype not in table:
        raise TrtcError(f"type {dtype.name} has no TensorRT equivalent")
    return table[dtype]


# numpy types (by kind and size: numpy has two int64 types, `long` and onnxruntime's `longlong`, and
# TensorRT's bindings take only the first) -> the type TensorRT holds them in: the carriers of
# docs/design.md's table. Wider floats are float32 (`held_array` clamps them to its range).
HELD_BY_KIND = {
    ("b", 1): np.bool_, ("f", 2): np.float16, ("f", 4): np.float32, ("f", 8): np.float32, ("f", 12): np.float32,
    ("f", 16): np.float32, ("i", 1): np.int8, ("i", 2): np.int32, ("i", 4): np.int32, ("i", 8): np.int64,
    ("u", 1): np.uint8, ("u", 2): np.int32, ("u", 4): np.int64, ("u", 8): np.int64,
}
# ml_dtypes' narrow types TensorRT has no constant of, by name -> their carrier.
HELD_BY_NAME = {"float8_e5m2": np.float16, "float8_e4m3fnuz": np.float16, "float8_e5m2fnuz": np.float16,
                "float4_e2m1fn": np.float16, "uint4": np.int8, "int2": np.int8, "uint2": np.int8}
OWN_TYPES = ("bfloat16", "float8_e4m3fn", "int4")  # ml_dtypes' types TensorRT holds as they are
FLOAT32_MAX = float(np.finfo(np.float32).max)


def held_array(array: np.ndarray) -> np.ndarray:
    """`array` as TensorRT can hold it: C order, native byte order, the canonical numpy type object of
    its carrier. Integer carriers hold every value (uint64 wraps into int64, as legalize's carrier
    does); floats wider than 32 bits keep their infinities and NaNs, and finite values beyond
    float32's range become its largest value (a -1e300 mask stays a very negative number, not -inf)."""
    name = array.dtype.name
    if name in OWN_TYPES:
        return array.astype(array.dtype, order="C", copy=False)
    target = HELD_BY_NAME.get(name) or HELD_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if target is None:
        raise TrtcError(f"a constant of type {array.dtype} has no TensorRT type")
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        array = np.where(np.isfinite(array), np.clip(array, -FLOAT32_MAX, FLOAT32_MAX), array)
    return array.astype(target, order="C", copy=False).view(np.dtype(target))


def packed_int4(array: np.ndarray) -> np.ndarray:
    """int4 values two to a byte, the first in the low nibble (ONNX's packing, which TensorRT reads)."""
    nibbles = array.reshape(-1).astype(np.int8).view(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << 4)


class LowerCtx:
    """State shared by the converters while one network is built."""

    def __init__(self, backend: Backend, network, logger):
        self.backend = backend
        self.trt = backend.trt
        self.network = network
        self.logger = logger
        self.tensors: dict[ir.Value, Any] = {}
        self._keepalive: list[np.ndarray] = []  # TensorRT reads weights at build time
        self.node: ir.Node | None = None  # the node being lowered (for messages)
        self._first_message = 0  # TensorRT's errors before this index belong to earlier nodes

    # ------------------------------------------------------------ values
    def tensor(self, value: ir.Value):
        """The TensorRT tensor of an IR value (constants become constant layers on first use)."""
        if value in self.tensors:
            return self.tensors[value]
        if value.const_value is not None:
            tensor = self.constant(value.const_value.numpy(), value.name)
            self.tensors[value] = tensor
            return tensor
        raise TrtcError(f"value {value.name!r} has no TensorRT tensor (its producer was not lowered)")

    def tensor_as(self, value: ir.Value, dtype):
        """`tensor(value)` as TensorRT type `dtype`; a constant is made in `dtype` directly, as a
        (u)int8 constant cast afterwards would leave a (u)int8 tensor inside the network, which
        TensorRT refuses."""
        data = self.const(value)
        if data is not None and value not in self.tensors and dtype in (self.trt.float32, self.trt.float16,
                                                                         self.trt.int32, self.trt.int64):
            return self.constant(data.astype(self.trt.nptype(dtype)))
        return self.cast(self.tensor(value), dtype)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The data of a constant input, or None."""
        if value is None or value.const_value is None or value.is_graph_input():
            return None
        return value.const_value.numpy()

    def constant(self, array: Any, name: str = ""):
        """A constant layer holding `array`, of any numpy type: `held_array` converts it to the type
        TensorRT holds it in, here, once for every converter."""
        array = held_array(np.asarray(array))
        if array.dtype in (np.int8, np.uint8):
            # TensorRT takes (u)int8 constants only before a dequantize: build int32 and cast.
            return self.cast(self.constant(array.astype(np.int32), name), self.trt.int8 if array.dtype == np.int8
                             else self.trt.uint8)
        layer = self.check(self.network.add_constant(array.shape, self._weights(array)))
        if name:
            layer.get_output(0).name = name
        return layer.get_output(0)

    def _weights(self, array: np.ndarray):
        """trt.Weights over `array` (numpy types directly; bfloat16, fp8 and packed int4 by pointer; no
        pointer at all for no values, as TensorRT requires)."""
        trt = self.trt
        dtype = {"bfloat16": trt.bfloat16, "float8_e4m3fn": trt.fp8, "int4": trt.int4}.get(array.dtype.name)
        if array.size == 0:
            return trt.Weights(dtype or getattr(trt, array.dtype.name))
        data = packed_int4(array) if dtype == trt.int4 else array
        self._keepalive.append(data)  # TensorRT reads weights at build time
        return trt.Weights(array) if dtype is None else trt.Weights(dtype, data.ctypes.data, array.size)

    def begin(self, node: ir.Node) -> None:
        """Start lowering `node`: TensorRT's messages from here on are its."""
        self.node = node
        self._first_message = len(self.logger.errors)

    def tensorrt_error(self) -> str | None:
        """TensorRT's first error since the current node began, or None."""
        return first_error(self.logger.errors[self._first_message:])

    def check(self, layer):
        """A layer TensorRT refused comes back as None: raise with TensorRT's first error for the node."""
        if layer is None:
            raise TrtcError(f"TensorRT refused a layer: {self.tensorrt_error() or 'no reason logged'}")
        return layer

    # ------------------------------------------------------------ shapes
    def rank(self, tensor) -> int:
        return len(tensor.shape)

    def unsqueeze_to(self, tensor, rank: int):
        """Prepend size-1 dims up to `rank` (numpy broadcasting, as ONNX does)."""
        missing = rank - self.rank(tensor)
        if missing <= 0:
            return tensor
        axes = self.constant(np.arange(missing, dtype=np.int64))
        return self.check(self.network.add_unsqueeze(tensor, axes)).get_output(0)

    def broadcast(self, *tensors):
        rank = max(self.rank(t) for t in tensors)
        return [self.unsqueeze_to(t, rank) for t in tensors]

    def shape_of(self, tensor):
        """The shape as an int64 1-D tensor."""
        shape = self.check(self.network.add_shape(tensor)).get_output(0)
        return self.cast(shape, self.trt.int64)

    def reshape(self, tensor, shape: Sequence[int] | Any, zero_is_placeholder: bool = True):
        layer = self.check(self.network.add_shuffle(tensor))
        if isinstance(shape, (list, tuple)):
            layer.reshape_dims = tuple(int(d) for d in shape)
        else:
            layer.set_input(1, shape)
        layer.zero_is_placeholder = zero_is_placeholder
        return layer.get_output(0)

    def cast(self, tensor, dtype):
        if tensor.dtype == dtype:
            return tensor
        return self.check(self.network.add_cast(tensor, dtype)).get_output(0)

    # ------------------------------------------------------------ layers
    def elementwise(self, a, b, op):
        a, b = self.broadcast(a, b)
        return self.check(self.network.add_elementwise(a, b, op)).get_output(0)

    def unary(self, tensor, op):
        return self.check(self.network.add_unary(tensor, op)).get_output(0)

    def axis(self, axis: int, rank: int) -> int:
        return axis + rank if axis < 0 else axis

    def axes_mask(self, axes: Sequence[int], rank: int) -> int:
        mask = 0
        for axis in axes:
            mask |= 1 << self.axis(int(axis), rank)
        return mask
