"""Standard-op arithmetic for the values of types TensorRT lacks (see `legalize.py`):
wrapping integers to a narrower range, rounding floats to a narrow float format, and
quantize/dequantize to or from such types. Everything is emitted as ONNX nodes into the IR,
so the CPU reference checks it exactly like any other graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, replace_with

D = ir.DataType

# bits, signed
INTEGER_RANGES = {D.INT16: (16, True), D.UINT16: (16, False), D.UINT32: (32, False), D.INT2: (2, True),
                  D.UINT2: (2, False), D.INT4: (4, True), D.UINT4: (4, False)}  # the carried integer types


class Emitter:
    """New nodes for one anchor node: either replacing its outputs (`commit(new_outputs)`),
    or wrapping some of them after it (`after_node_wrap`)."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node):
        self.graph, self.anchor = graph, anchor
        self.nodes: list[ir.Node] = []
        self._after: list[tuple[ir.Value, Callable[[ir.Value], ir.Value]]] = []

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], dtype: ir.DataType,
           shape: ir.Shape | None = None, **attrs: Any) -> ir.Value:
        name = f"{self.anchor.name or self.anchor.op_type}/{op_type.lower()}_{len(self.nodes)}"
        node = ir.node(op_type, list(inputs), attrs, name=name)
        out = node.outputs[0]
        out.type = ir.TensorType(dtype)
        out.shape = None if shape is None else ir.Shape(list(shape.dims))
        self.nodes.append(node)
        return out

    def like(self, op_type: str, x: ir.Value, *others: ir.Value, dtype: ir.DataType | None = None,
             **attrs: Any) -> ir.Value:
        """An elementwise op whose result has x's shape (others broadcast into it)."""
        return self.op(op_type, [x, *others], dtype or x.dtype, x.shape, **attrs)

    def where(self, cond: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        """Where(cond, a, b) with cond's shape and b's type."""
        return self.op("Where", [cond, a, b], b.dtype, cond.shape)

    def const(self, array: Any, dtype: ir.DataType) -> ir.Value:
        return add_constant(self.graph, np.asarray(array, dtype=dtype.numpy()), f"{self.anchor.name or 'emul'}_c")

    def cast(self, x: ir.Value, dtype: ir.DataType) -> ir.Value:
        return x if x.dtype == dtype else self.like("Cast", x, dtype=dtype, to=int(dtype))

    def after_node_wrap(self, value: ir.Value, build: Callable[[ir.Value], ir.Value]) -> None:
        self._after.append((value, build))

    def commit(self, new_outputs: Sequence[ir.Value] | None) -> None:
        if new_outputs is not None:
            # A value that is not new (a graph input, say) must not be renamed: copy it.
            new_outputs = [v if v.producer() in self.nodes else self.like("Identity", v) for v in new_outputs]
            replace_with(self.graph, self.anchor, self.nodes, self.anchor.outputs, new_outputs, dead=[self.anchor])
            return
        anchor = self.anchor
        for value, build in self._after:
            uses = list(value.uses())
            start = len(self.nodes)
            wrapped = build(value)
            self.graph.insert_after(anchor, self.nodes[start:])
            anchor = self.nodes[-1]
            for use in uses:
                use.node.replace_input_with(use.idx, wrapped)
            if value.is_graph_output():
                outputs = self.graph.outputs
                index = next(i for i, v in enumerate(outputs) if v is value)
                name, value.name = value.name, f"{value.name}_carried"
                wrapped.name = name
                outputs[index] = wrapped


def wrap_integer(em: Emitter, x: ir.Value, target: ir.DataType) -> ir.Value:
    """x modulo 2**bits into `target`'s range, computed in x's type (INT32/INT64; others via INT32),
    as casting between two's-complement integers does."""
    if target == D.UINT64:
        return x  # INT64 arithmetic wraps exactly like UINT64's
    bits, signed = INTEGER_RANGES[target]
    work = x.dtype if x.dtype in (D.INT32, D.INT64) else D.INT32
    if work == D.INT32 and bits >= 32:
        return x
    v = em.cast(x, work)
    half = 1 << (bits - 1)
    if signed:
        v = em.like("Add", v, em.const(half, work))
    v = em.like("Mod", v, em.const(1 << bits, work), fmod=0)
    if signed:
        v = em.like("Sub", v, em.const(half, work))
    return em.cast(v, x.dtype)


def float_format(dtype: ir.DataType) -> tuple[int, int, float]:
    """(mantissa bits, smallest normal exponent, largest finite value) of a narrow float type."""
    info = ml_dtypes.finfo(dtype.numpy())
    return int(info.nmant), int(info.minexp), float(info.max)


def round_to_float(em: Emitter, x: ir.Value, target: ir.DataType, saturate: bool) -> ir.Value:
    """FLOAT x rounded (to nearest even) to the values of narrow float `target`, still in FLOAT.

    The exponent comes from log2 and is corrected against powers of two (so a log off by one
    ulp cannot shift it); subnormals share the smallest normal exponent's spacing. Overflow
    saturates to the largest finite value, or gives Inf (E5M2) / NaN (types without Inf);
    FP4 has neither and always saturates. NaN stays NaN, zeros keep their sign."""
    F = D.FLOAT
    mant, emin, largest = float_format(target)
    a = em.like("Abs", x)
    log2 = em.like("Floor", em.like("Mul", em.like("Log", a), em.const(1 / np.log(2), F)))
    power = em.op("Pow", [em.const(2.0, F), log2], F, x.shape)
    one = em.const(1.0, F)
    too_small = em.like("GreaterOrEqual", a, em.like("Mul", power, em.const(2.0, F)), dtype=D.BOOL)
    log2 = em.where(too_small, em.like("Add", log2, one), log2)
    too_big = em.like("Less", a, power, dtype=D.BOOL)
    log2 = em.where(too_big, em.like("Sub", log2, one), log2)
    exponent = em.like("Min", em.like("Max", log2, em.const(float(emin), F)), em.const(float(emin + 64), F))
    ulp = em.op("Pow", [em.const(2.0, F), em.like("Sub", exponent, em.const(float(mant), F))], F, x.shape)
    rounded = em.like("Mul", em.like("Round", em.like("Div", a, ulp)), ulp)
    overflow = em.like("Greater", rounded, em.const(largest, F), dtype=D.BOOL)
    has_inf = target == D.FLOAT8E5M2
    limit = largest if saturate or target == D.FLOAT4E2M1 else (np.inf if has_inf else np.nan)
    rounded = em.where(overflow, em.const(limit, F), rounded)
    # x's sign (-0 included: 1/-0 = -inf) applied by multiplying with -1/1; Neg and Where may
    # compute 0 - x or blend arithmetically, which loses the sign of zero
    zero = em.const(0.0, F)
    negative = em.like("Or", em.like("Less", x, zero, dtype=D.BOOL),
                       em.like("Less", em.op("Div", [em.const(1.0, F), x], F, x.shape), zero, dtype=D.BOOL))
    signed = em.like("Mul", rounded, em.where(negative, em.const(-1.0, F), em.const(1.0, F)))
    return em.where(em.like("IsNaN", x, dtype=D.BOOL), x, signed)


def _layout(param: ir.Value | None, x: ir.Value, axis: int, block: int) -> str | None:
    """How a scale/zero point broadcasts against x: 'tensor', 'axis' or 'block'; None when
    shapes are not static enough to tell."""
    if param is None or param.shape is None or not all(isinstance(d, int) for d in param.shape.dims):
        return None
    if int(np.prod(param.shape.dims)) == 1:
        return "tensor"
    if x.shape is None:
        return None
    if block == 0:
        return "axis" if len(param.shape) == 1 else None
    return "block" if isinstance(x.shape[axis % len(x.shape)], int) else None


def qdq_issue(node: ir.Node) -> str | None:
    """Why a QuantizeLinear/DequantizeLinear cannot be rewritten into arithmetic, or None."""
    x = node.inputs[0]
    axis, block = node.attributes.get_int("axis", 1), node.attributes.get_int("block_size", 0)
    for param in node.inputs[1:3]:
        if param is not None and _layout(param, x, axis, block) is None:
            return (f"{param.name!r} needs a static shape (and {x.name!r} a known rank) to carry this type "
                    "in a TensorRT type")
    return None


def _broadcast_param(em: Emitter, param: ir.Value, x: ir.Value, axis: int, block: int) -> ir.Value:
    """A scale/zero point shaped to broadcast against x (per tensor, per axis or per block)."""
    layout = _layout(param, x, axis, block)
    if layout == "tensor":
        return param
    rank = len(x.shape)
    axis = axis % rank
    dims = list(param.shape.dims)
    if layout == "axis":
        target = [1] * rank
        target[axis] = dims[0]
        return em.op("Reshape", [param, em.const(target, D.INT64)], param.dtype, ir.Shape(target))
    size = x.shape[axis]
    dims[axis] = size
    return em.op("Gather", [param, em.const(np.arange(size) // block, D.INT64)], param.dtype, ir.Shape(dims),
                 axis=axis)


def _params(em: Emitter, node: ir.Node) -> tuple[ir.Value, ir.Value | None]:
    """Scale and zero point (or None) in FLOAT, shaped to broadcast against the data."""
    x = node.inputs[0]
    axis, block = node.attributes.get_int("axis", 1), node.attributes.get_int("block_size", 0)
    scale = em.cast(_broadcast_param(em, node.inputs[1], x, axis, block), D.FLOAT)
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    return scale, None if zero is None else em.cast(_broadcast_param(em, zero, x, axis, block), D.FLOAT)


def quantize(em: Emitter, node: ir.Node, target: ir.DataType) -> list[ir.Value]:
    """QuantizeLinear to a carried type: round(x / scale) + zero point, saturated to the type."""
    scale, zero = _params(em, node)
    carrier = node.outputs[0].dtype
    v = em.like("Div", em.cast(node.inputs[0], D.FLOAT), scale)
    is_float = target in (D.FLOAT8E4M3FN, D.FLOAT8E4M3FNUZ, D.FLOAT8E5M2, D.FLOAT8E5M2FNUZ, D.FLOAT4E2M1)
    if not is_float:
        v = em.like("Round", v)
    if zero is not None:  # a float type's zero point is 0, but adding it turns -0 into +0 as the spec does
        v = em.like("Add", v, zero)
    if is_float:
        return [em.cast(round_to_float(em, v, target, bool(node.attributes.get_int("saturate", 1))), carrier)]
    bits, signed = INTEGER_RANGES[target]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = em.like("Min", em.like("Max", v, em.const(float(low), D.FLOAT)), em.const(float(high), D.FLOAT))
    return [em.cast(v, carrier)]


def dequantize(em: Emitter, node: ir.Node, source: ir.DataType) -> list[ir.Value]:
    """DequantizeLinear from a carried type: (x - zero point) * scale."""
    scale, zero = _params(em, node)
    v = em.cast(node.inputs[0], D.FLOAT)
    if zero is not None:
        v = em.like("Sub", v, zero)
    return [em.cast(em.like("Mul", v, scale), node.outputs[0].dtype)]
