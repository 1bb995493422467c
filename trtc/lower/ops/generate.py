"""Ops that generate tensors from shapes: ConstantOfShape, Range, EyeLike, Trilu, OneHot, Size.
Static shapes and constant inputs fold to constants; run-time ones use fill (LINSPACE) layers
and shape-tensor arithmetic."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops._shape_math import ShapeMath, broadcast_scalar, constant, integral_shape_source, tensor_of
from trtc.lower.registry import Constraint, converter, known_rank, tensor_types


def _static_length(node) -> str | None:
    shape = node.inputs[0]
    if shape.shape is None or shape.shape.rank() != 1 or not isinstance(shape.shape.dims[0], int):
        return f"the shape input ({shape.name!r}) must have a static length (the output rank)"
    return None


@converter("ConstantOfShape", since=9, constraints=[tensor_types(), Constraint("static output rank", _static_length)])
def lower_constant_of_shape(ctx, node):
    """ConstantOfShape(shape, value): the one-element `value` (default float 0) broadcast to shape."""
    attr = node.attributes.get("value")
    value = attr.value.numpy().reshape(()) if attr is not None else np.zeros((), np.float32)
    shape = ctx.const(node.inputs[0])
    shape = np.asarray(shape, np.int64) if shape is not None else ctx.cast(ctx.tensor(node.inputs[0]), ctx.trt.int64)
    return [broadcast_scalar(ctx, np.asarray(value), shape)]


@converter("Range", since=11, constraints=[tensor_types(), integral_shape_source((0, 1, 2), "the element count")])
def lower_range(ctx, node):
    """Range(start, limit, delta): n = max(ceil((limit - start) / delta), 0) elements start + i * delta;
    constant inputs fold to a constant, others become a LINSPACE fill (float16/double via float32)."""
    consts = [ctx.const(v) for v in node.inputs]
    dtype = node.outputs[0].dtype
    if all(c is not None for c in consts):
        start, limit, delta = (c.reshape(()) for c in consts)
        return [np.arange(start, limit, delta, dtype=dtype.numpy())]  # data (`LowerCtx.known`)
    compute = ctx.trt.int64 if dtype == ir.DataType.INT64 else ctx.trt.int32 if dtype == ir.DataType.INT32 \
        else ctx.trt.float32
    start, limit, delta = (ctx.reshape(ctx.cast(ctx.tensor(v), compute), []) for v in node.inputs)
    E = ctx.trt.ElementWiseOperation
    span = ctx.elementwise(limit, start, E.SUB)
    if compute == ctx.trt.float32:
        count = ctx.cast(ctx.unary(ctx.elementwise(span, delta, E.DIV), ctx.trt.UnaryOperation.CEIL), ctx.trt.int64)
    else:
        math = ShapeMath(ctx)
        count = math.ceil_div(ctx.cast(span, ctx.trt.int64), ctx.cast(delta, ctx.trt.int64))
    count = ctx.elementwise(ctx.reshape(count, [1]), ctx.constant(np.zeros(1, np.int64)), E.MAX)
    layer = ctx.check(ctx.network.add_fill((0,), ctx.trt.FillOperation.LINSPACE, compute))
    layer.set_input(0, count)
    layer.set_input(1, start)
    layer.set_input(2, ctx.reshape(delta, [1]))
    return [ctx.cast(layer.get_output(0), trt_dtype(ctx.trt, dtype))]


def iota(ctx, length, rank: int, axis: int):
    """0, 1, ..., length-1 (int64) laid along `axis` of a rank-`rank` tensor of ones elsewhere;
    `length` is a 1-element shape value."""
    shape = [1] * rank
    if ShapeMath.is_static(length):
        shape[axis] = int(length[0])
        return ctx.constant(np.arange(int(length[0]), dtype=np.int64).reshape(shape))
    layer = ctx.check(ctx.network.add_fill((0,), ctx.trt.FillOperation.LINSPACE, ctx.trt.int64))
    layer.set_input(0, length)
    layer.set_input(1, constant(ctx, np.zeros((), np.int64)))
    layer.set_input(2, ctx.constant(np.ones(1, np.int64)))
    shape[axis] = -1
    return ctx.reshape(layer.get_output(0), shape)


def diagonal_offset(ctx, tensor):
    """col - row over the last two dims of `tensor` ([rows, cols], int64; numpy when static)."""
    math = ShapeMath(ctx)
    rank = ctx.rank(tensor)
    rows, cols = math.dims(tensor, [rank - 2]), math.dims(tensor, [rank - 1])
    if math.is_static(rows) and math.is_static(cols):
        return np.arange(cols[0])[None, :] - np.arange(rows[0])[:, None]
    return ctx.elementwise(iota(ctx, cols, 2, 1), iota(ctx, rows, 2, 0), ctx.trt.ElementWiseOperation.SUB)


def _k(ctx, node, index: int):
    """The diagonal offset k (a 0-d shape value; 0 when absent)."""
    if index < len(node.inputs) and node.inputs[index] is not None:
        data = ctx.const(node.inputs[index])
        if data is not None:
            return np.asarray(data, np.int64).reshape(())
        return ctx.reshape(ctx.cast(ctx.tensor(node.inputs[index]), ctx.trt.int64), [])
    return np.zeros((), np.int64)


@converter("Trilu", since=14, constraints=[tensor_types(), known_rank(0)])
def lower_trilu(ctx, node):
    """Trilu(x, k): keep x where col - row >= k (upper) or col - row <= k (lower), else 0."""
    x = ctx.tensor(node.inputs[0])
    math = ShapeMath(ctx)
    offset, k = diagonal_offset(ctx, x), _k(ctx, node, 1)
    if math.is_static(offset) and offset.size == 0:  # an empty matrix: nothing to zero (no empty constants)
        return [ctx.check(ctx.network.add_identity(x)).get_output(0)]
    dropped = math.less(offset, k) if node.attributes.get_int("upper", 1) else math.less(k, offset)
    rank = ctx.rank(x)
    if math.is_static(dropped):
        dropped = ctx.constant(dropped.reshape((1,) * (rank - dropped.ndim) + dropped.shape))
    zero = constant(ctx, np.zeros((1,) * rank, node.inputs[0].dtype.numpy()))  # at x's rank: no broadcast layer
    dropped, zero, x = ctx.broadcast(dropped, zero, x)
    return [ctx.check(ctx.network.add_select(dropped, zero, x)).get_output(0)]


@converter("EyeLike", constraints=[tensor_types(), known_rank(0)])
def lower_eye_like(ctx, node):
    """EyeLike(x, k, dtype): ones where col - row == k, in the output's type."""
    offset = diagonal_offset(ctx, ctx.tensor(node.inputs[0]))
    k = node.attributes.get_int("k", 0)
    dtype = node.outputs[0].dtype
    if ShapeMath.is_static(offset):
        return [ctx.constant((offset == k).astype(dtype.numpy()))]
    on = ctx.elementwise(offset, constant(ctx, np.array(k, np.int64)), ctx.trt.ElementWiseOperation.EQUAL)
    one, zero = constant(ctx, np.ones((), dtype.numpy())), constant(ctx, np.zeros((), dtype.numpy()))
    on, one, zero = ctx.broadcast(on, one, zero)
    return [ctx.check(ctx.network.add_select(on, one, zero)).get_output(0)]


@converter("OneHot", since=9, constraints=[tensor_types(), known_rank(0), integral_shape_source((1,), "depth")])
def lower_one_hot(ctx, node):
    """OneHot(indices, depth, values=[off, on], axis): on where iota(depth) along axis equals the
    index (cast to int64, negatives + depth), off elsewhere; out-of-range indices give all off."""
    indices = ctx.cast(tensor_of(ctx, node.inputs[0]), ctx.trt.int64)
    rank = ctx.rank(indices) + 1
    axis = ctx.axis(node.attributes.get_int("axis", -1), rank)
    math = ShapeMath(ctx)
    depth = ctx.const(node.inputs[1])
    if depth is not None:
        depth = np.asarray(depth).astype(np.int64).reshape(1)
    else:
        depth = ctx.cast(ctx.reshape(ctx.tensor(node.inputs[1]), [1]), ctx.trt.int64)
    indices = math.where(math.less(indices, np.zeros((), np.int64)), math.add(indices, depth.reshape(())
                         if math.is_static(depth) else ctx.reshape(depth, [])), indices)
    indices = ctx.check(ctx.network.add_unsqueeze(indices, constant(ctx, np.array([axis], np.int64)))).get_output(0)
    hot = ctx.elementwise(indices, iota(ctx, depth, rank, axis), ctx.trt.ElementWiseOperation.EQUAL)
    values = ctx.reshape(ctx.tensor(node.inputs[2]), [2])
    off, on = (ctx.check(ctx.network.add_gather(values, constant(ctx, np.array(i, np.int64)), 0)).get_output(0)
               for i in (0, 1))
    hot, on, off = ctx.broadcast(hot, on, off)
    return [ctx.check(ctx.network.add_select(hot, on, off)).get_output(0)]


@converter("Size", constraints=[tensor_types(), known_rank(0)])
def lower_size(ctx, node):
    """Size(x): the element count as an int64 scalar."""
    count = ShapeMath(ctx).product(ShapeMath(ctx).dims(ctx.tensor(node.inputs[0])))
    if ShapeMath.is_static(count):
        return [count.reshape(()).astype(np.int64)]  # data (`LowerCtx.known`)
    return [ctx.reshape(count, [])]
