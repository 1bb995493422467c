"""The lowering context: the TensorRT network under construction, the map from IR values
to TensorRT tensors, and the small helpers converters build with."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.weightless import is_weightless
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


# Constants up to this many elements are shared by content (one layer for every equal axes list, shape
# vector or scalar in the network); larger ones only per IR value, as hashing their bytes would cost more
# build time than the rare duplicate saves.
SHARED_CONSTANT_ELEMENTS = 4096


class LowerCtx:
    """State shared by the converters while one network is built.

    The network is kept lean at the source, since TensorRT's network API cannot remove a layer once
    added: a constant is made once per content (small ones) or per IR value and form (`operand`), in
    the rank and type its consumer needs; reshapes, casts and broadcasts of a constant give another
    constant instead of a layer after it; broadcasting a computed tensor is one shuffle layer."""

    def __init__(self, backend: Backend, network, logger):
        self.backend = backend
        self.trt = backend.trt
        self.network = network
        self.logger = logger
        self.tensors: dict[ir.Value, Any] = {}
        # Values a converter computed while building (a Cast or Shape of what is known): their data, made a
        # constant layer only when a consumer needs a tensor, in the form it needs (`operand`), so that a
        # constant feeding a broadcast or a static reshape leaves no layer behind.
        self.known: dict[ir.Value, np.ndarray] = {}
        self._keepalive: list[np.ndarray] = []  # TensorRT reads weights at build time
        self.node: ir.Node | None = None  # the node being lowered (for messages)
        self._first_message = 0  # TensorRT's errors before this index belong to earlier nodes
        # id(tensor) -> (tensor, its data) for every constant layer's output: reshapes and casts of it fold.
        self._constant_data: dict[int, tuple[Any, np.ndarray]] = {}
        # The constants that may be shared: by content and by (IR value, rank, type). A subgraph lowered
        # into a conditional or loop gets its own (`constant_scope`), as TensorRT places a layer inside
        # or outside such a body by what it reads and what reads it.
        self._shared: dict[Any, Any] = {}

    # ------------------------------------------------------------ values
    def tensor(self, value: ir.Value):
        """The TensorRT tensor of an IR value (constants become constant layers on first use)."""
        if value in self.tensors:
            return self.tensors[value]
        data = self.const(value)
        if data is not None or is_weightless(value.const_value):
            key = ("value", value)  # in `_shared`, so that a subgraph's scope keeps its own
            if key not in self._shared:
                self._shared[key] = self.constant(data, value.name) if data is not None else self.refittable(value)
            return self._shared[key]
        raise TrtcError(f"value {value.name!r} has no TensorRT tensor (its producer was not lowered)")

    def refittable(self, value: ir.Value):
        """A constant layer for a weight the model leaves out (`--weightless`): zeros of its type and shape, its
        weights named as the initializer and marked refittable, so that the plan is built without them and
        refitted with them by that name. Never shared by content nor known as data (`constant_data`): no
        reshape, cast or fold here may turn the zeros into a value of the engine."""
        tensor = value.const_value
        zeros = np.zeros(tuple(tensor.shape.numpy()), tensor.dtype.numpy())
        if held_array(zeros).dtype != zeros.dtype or zeros.dtype.name == "int4":
            raise TrtcError(f"weight {value.name!r} is {tensor.dtype.name.lower()}, which TensorRT holds in another "
                            "type: it cannot be left out of the plan to be refitted under its own name",
                            hint="give the model with this weight's values")
        layer = self.check(self.network.add_constant(zeros.shape, self._weights(zeros)))
        layer.get_output(0).name = value.name
        if not (self.network.set_weights_name(layer.weights, value.name)
                and self.network.mark_weights_refittable(value.name)):
            raise TrtcError(f"TensorRT refused weight {value.name!r} as refittable: "
                            f"{self.tensorrt_error() or 'no reason logged'}")
        return layer.get_output(0)

    def tensor_as(self, value: ir.Value, dtype):
        """`tensor(value)` as TensorRT type `dtype`; a constant is made in `dtype` directly, as a
        (u)int8 constant cast afterwards would leave a (u)int8 tensor inside the network, which
        TensorRT refuses."""
        return self.operand(value, dtype=dtype)

    def operand(self, value: ir.Value, rank: int | None = None, dtype=None):
        """`tensor(value)` with at least `rank` dims (leading unit dims, numpy broadcasting) and of
        TensorRT type `dtype`, as a broadcasting layer takes it. A constant is made in that form
        directly, once for every consumer asking the same, rather than as a constant layer followed by
        unsqueeze and cast layers."""
        data = self.const(value)
        if data is not None and value not in self.tensors:
            key = ("operand", value, rank, dtype)
            if key not in self._shared:
                array = np.asarray(data)
                if dtype is not None:
                    # Converted from the data as given (a float64 constant rounds to float16 once).
                    converted = self._convert(array, dtype)
                    if converted is None:  # a type no constant holds: cast the constant
                        self._shared[key] = self.unsqueeze_to(self.cast(self.tensor(value), dtype), rank or 0)
                        return self._shared[key]
                    array = converted
                if rank is not None and array.ndim < rank:
                    array = array.reshape((1,) * (rank - array.ndim) + array.shape)
                self._shared[key] = self.constant(array)
            return self._shared[key]
        tensor = self.tensor(value)
        if dtype is not None:
            tensor = self.cast(tensor, dtype)
        return self.unsqueeze_to(tensor, rank) if rank is not None else tensor

    def operands(self, values: Sequence[ir.Value], dtype=None) -> list:
        """`operand` of each value, all at the highest rank among them (numpy broadcasting)."""
        rank = max(np.ndim(self.const(v)) if self.const(v) is not None and v not in self.tensors
                   else self.rank(self.tensor(v)) for v in values)
        return [self.operand(v, rank, dtype) for v in values]

    def _convert(self, array: np.ndarray, dtype) -> np.ndarray | None:
        """`array` as TensorRT type `dtype` computes it, for the types a constant is made in directly (a
        conversion numpy does as TensorRT's cast does: floats round to nearest even, towards zero into
        integers, nonzero is true); None for the others."""
        trt = self.trt
        if dtype == trt.bfloat16:
            import ml_dtypes

            return array.astype(ml_dtypes.bfloat16)
        if dtype in (trt.float32, trt.float16, trt.int32, trt.int64, trt.bool):
            return array.astype(trt.nptype(dtype))
        return None

    def constant_as(self, array: Any, dtype, rank: int | None = None):
        """A constant holding `array` in TensorRT type `dtype` (converted here; a cast layer only for a type no
        constant is made in), with at least `rank` dims (leading unit dims, to broadcast without a layer)."""
        array = np.asarray(array)
        if rank is not None and array.ndim < rank:
            array = array.reshape((1,) * (rank - array.ndim) + array.shape)
        held = held_array(array)
        converted = self._convert(held, dtype)
        if converted is not None:
            return self.constant(converted)
        return self.cast(self.constant(held), dtype)

    def constant_data(self, tensor) -> np.ndarray | None:
        """The data of a tensor made by `constant`, or None."""
        entry = self._constant_data.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The data of a constant input (or of a value computed while building), or None."""
        if value is None:
            return None
        if value in self.known:
            return self.known[value]
        if value.const_value is None or value.is_graph_input() or is_weightless(value.const_value):
            return None  # a weight the model leaves out is no constant to any converter: its values are unknown
        return value.const_value.numpy()

    def bind(self, value: ir.Value, output) -> None:
        """Record a converter's output for `value`: a TensorRT tensor, or (numpy) data known while building."""
        if isinstance(output, np.ndarray):
            self.known[value] = output
        else:
            self.tensors[value] = output

    def constant(self, array: Any, name: str = ""):
        """A constant layer holding `array`, of any numpy type: `held_array` converts it to the type
        TensorRT holds it in, here, once for every converter. Small arrays share one layer per content."""
        array = held_array(np.asarray(array))
        key = None
        if array.size <= SHARED_CONSTANT_ELEMENTS:
            key = ("content", array.dtype.name, array.shape, array.tobytes())
            if key in self._shared:
                return self._shared[key]
        if array.dtype in (np.int8, np.uint8):
            # TensorRT takes (u)int8 constants only before a dequantize: build int32 and cast.
            tensor = self.check(self.network.add_cast(self.constant(array.astype(np.int32), name),
                                                      self.trt.int8 if array.dtype == np.int8 else self.trt.uint8))
            tensor = tensor.get_output(0)
        else:
            layer = self.check(self.network.add_constant(array.shape, self._weights(array)))
            tensor = layer.get_output(0)
            if name:
                tensor.name = name
            self._constant_data[id(tensor)] = (tensor, array)
        if key is not None:
            self._shared[key] = tensor
        return tensor

    def weights(self, value: ir.Value, data: np.ndarray | None = None):
        """trt.Weights holding a constant input's data (a convolution's kernel or bias; `data`: that data
        reshaped), which the layer keeps itself: no constant layer in the network."""
        return self._weights(held_array(np.asarray(self.const(value) if data is None else data)))

    @contextlib.contextmanager
    def constant_scope(self):
        """Constants made inside (a conditional's branch, a loop's body) are not shared with outside."""
        shared, self._shared = self._shared, {}
        try:
            yield
        finally:
            self._shared = shared

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
        return self.unsqueeze(tensor, list(range(missing)))

    def unsqueeze(self, tensor, axes: Sequence[int]):
        """Unit dims inserted at `axes` (of the result, non-negative). A constant gives a constant; any
        other tensor one shuffle layer, whatever its dims: the reshape appends the unit dims (0 copies
        each existing dim at its own index) and the second transpose moves them into place, where
        IUnsqueezeLayer would need a constant axes layer beside it."""
        rank = self.rank(tensor)
        out_rank = rank + len(axes)
        new = sorted(set(int(a) for a in axes))
        data = self.constant_data(tensor)
        if data is not None:
            shape, dims = [], iter(data.shape)
            for i in range(out_rank):
                shape.append(1 if i in new else next(dims))
            return self.constant(data.reshape(shape))
        layer = self.check(self.network.add_shuffle(tensor))
        layer.reshape_dims = (0,) * rank + (1,) * len(new)
        old = iter(range(rank))
        fresh = iter(range(rank, out_rank))
        layer.second_transpose = tuple(next(fresh) if i in new else next(old) for i in range(out_rank))
        return layer.get_output(0)

    def squeeze(self, tensor, axes: Sequence[int]):
        """Unit dims at `axes` (non-negative) removed: a constant gives a constant; any other tensor one
        shuffle layer (the first transpose moves the unit dims last, the reshape drops them)."""
        rank = self.rank(tensor)
        gone = sorted(set(int(a) for a in axes))
        kept = [i for i in range(rank) if i not in gone]
        data = self.constant_data(tensor)
        if data is not None:
            return self.constant(data.reshape([data.shape[i] for i in kept]))
        layer = self.check(self.network.add_shuffle(tensor))
        if gone != list(range(len(kept), rank)):
            layer.first_transpose = tuple(kept + gone)
        layer.reshape_dims = (0,) * len(kept)
        return layer.get_output(0)

    def broadcast(self, *tensors):
        rank = max(self.rank(t) for t in tensors)
        return [self.unsqueeze_to(t, rank) for t in tensors]

    def shape_of(self, tensor):
        """The shape as an int64 1-D tensor."""
        shape = self.check(self.network.add_shape(tensor)).get_output(0)
        return self.cast(shape, self.trt.int64)

    def reshape(self, tensor, shape: Sequence[int] | Any, zero_is_placeholder: bool = True):
        """IShuffleLayer reshaping to static `shape` (0 copies the input's dim there when
        `zero_is_placeholder`, -1 is inferred) or to a shape tensor; a constant gives a constant."""
        data = self.constant_data(tensor)
        if data is not None and isinstance(shape, (list, tuple)):
            dims = [data.shape[i] if d == 0 and zero_is_placeholder and i < data.ndim else int(d)
                    for i, d in enumerate(shape)]
            return self.constant(data.reshape(dims))
        layer = self.check(self.network.add_shuffle(tensor))
        if isinstance(shape, (list, tuple)):
            layer.reshape_dims = tuple(int(d) for d in shape)
        else:
            layer.set_input(1, shape)
        layer.zero_is_placeholder = zero_is_placeholder
        return layer.get_output(0)

    def cast(self, tensor, dtype):
        """`tensor` as TensorRT type `dtype`: itself when it has it, a converted constant for a constant."""
        if tensor.dtype == dtype:
            return tensor
        data = self.constant_data(tensor)
        if data is not None:
            converted = self._convert(data, dtype)
            if converted is not None:
                return self.constant(converted)
        return self.check(self.network.add_cast(tensor, dtype)).get_output(0)

    # ------------------------------------------------------------ layers
    def elementwise(self, a, b, op):
        """IElementWiseLayer with numpy broadcasting. An operand may be numpy data: a constant made at the
        other operand's rank (no broadcast layer after it)."""
        if isinstance(a, np.ndarray):
            a = self.constant(a.reshape((1,) * (self.rank(b) - a.ndim) + a.shape))
        if isinstance(b, np.ndarray):
            b = self.constant(b.reshape((1,) * (self.rank(a) - b.ndim) + b.shape))
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
