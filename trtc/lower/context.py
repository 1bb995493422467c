"""The lowering context: the TensorRT network under construction, the map from IR values
to TensorRT tensors, and the small helpers converters build with."""

from __future__ import annotations

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

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The data of a constant input, or None."""
        if value is None or value.const_value is None or value.is_graph_input():
            return None
        return value.const_value.numpy()

    def constant(self, array: np.ndarray, name: str = ""):
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        # Memory-mapped weights carry an explicit little-endian dtype ('<f4'), which TensorRT's
        # bindings do not take; native order is the same bytes on every platform TensorRT runs on.
        if array.dtype in (np.int8, np.uint8):
            # TensorRT takes (u)int8 constants only before a dequantize: build int32 and cast.
            return self.cast(self.constant(array.astype(np.int32), name), self.trt.int8 if array.dtype == np.int8
                             else self.trt.uint8)
        shape = array.shape  # ascontiguousarray makes 0-d arrays 1-d: keep the rank
        array = np.ascontiguousarray(array)
        array = array.view(np.dtype(array.dtype.type))  # same bytes, the canonical dtype object
        self._keepalive.append(array)
        layer = self.check(self.network.add_constant(shape, self._weights(array)))
        if name:
            layer.get_output(0).name = name
        return layer.get_output(0)

    def _weights(self, array: np.ndarray):
        """trt.Weights over `array` (numpy types directly; ml_dtypes' bfloat16/fp8 by pointer)."""
        special = {"bfloat16": self.trt.bfloat16, "float8_e4m3fn": self.trt.fp8}
        if array.dtype.name in special:
            return self.trt.Weights(special[array.dtype.name], array.ctypes.data, array.size)
        return self.trt.Weights(array)

    def check(self, layer):
        """A layer TensorRT refused comes back as None: raise with TensorRT's reason."""
        if layer is None:
            reason = self.logger.errors[-1] if self.logger.errors else "TensorRT returned no layer"
            raise TrtcError(f"TensorRT refused a layer: {reason}")
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
