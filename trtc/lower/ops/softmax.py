"""Softmax, LogSoftmax and Hardmax along one axis (opset 13 semantics), and the opset 1-12
forms, which flatten the input to 2-D at `axis` first."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops.reduce import const_like, dim_size, reduce, squeeze, top_index
from trtc.lower.registry import converter, known_rank, tensor_types


def _softmax(ctx, x, axis: int):
    """ISoftMaxLayer, which needs rank >= 2 (a leading unit dim is added and removed)."""
    flat = ctx.rank(x) < 2
    if flat:
        x, axis = ctx.unsqueeze_to(x, 2), axis + 2 - ctx.rank(x)
    layer = ctx.check(ctx.network.add_softmax(x))
    layer.axes = 1 << axis
    out = layer.get_output(0)
    return squeeze(ctx, out, [0]) if flat else out


def _log_softmax(ctx, x, axis: int):
    """(x - max) - log(sum(exp(x - max))): finite where log(softmax(x)) would underflow to -inf."""
    E, R, U = ctx.trt.ElementWiseOperation, ctx.trt.ReduceOperation, ctx.trt.UnaryOperation
    shifted = ctx.elementwise(x, reduce(ctx, x, R.MAX, [axis]), E.SUB)
    total = reduce(ctx, ctx.unary(shifted, U.EXP), R.SUM, [axis])
    return ctx.elementwise(shifted, ctx.unary(total, U.LOG), E.SUB)


def _hardmax(ctx, x, axis: int):
    """One-hot of the first maximum along `axis`: TopK(k=1) indices -> IOneHotLayer."""
    index = squeeze(ctx, top_index(ctx, x, ctx.trt.TopKOperation.MAX, axis), [axis])
    off_on = const_like(ctx, [0, 1], x, shape=(2,))
    size = x.shape[axis]
    depth = ctx.constant(np.array(size, np.int32)) if size >= 0 else \
        ctx.reshape(ctx.cast(dim_size(ctx, x, axis), ctx.trt.int32), [])
    return ctx.check(ctx.network.add_one_hot(index, off_on, depth, axis)).get_output(0)


KERNELS = {"Softmax": _softmax, "LogSoftmax": _log_softmax, "Hardmax": _hardmax}


@converter(list(KERNELS), since=13, constraints=[tensor_types(), known_rank()])
def lower_softmax(ctx, node):
    """Softmax/LogSoftmax/Hardmax along `axis` (default -1)."""
    x = ctx.tensor(node.inputs[0])
    return [KERNELS[node.op_type](ctx, x, ctx.axis(node.attributes.get_int("axis", -1), ctx.rank(x)))]


@converter(list(KERNELS), since=1, until=12, constraints=[tensor_types(), known_rank()])
def lower_softmax_2d(ctx, node):
    """Opset 1-12: the input is seen as 2-D [prod(dims[:axis]), prod(dims[axis:])] (axis
    default 1), normalised along its second dim, and reshaped back."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    axis = ctx.axis(node.attributes.get_int("axis", 1), rank)
    if axis == rank - 1:
        return [KERNELS[node.op_type](ctx, x, axis)]
    R = ctx.trt.ReduceOperation
    shape = ctx.shape_of(x)

    def prod(start, stop):
        if start == stop:
            return ctx.constant(np.array([1], np.int64))
        part = ctx.check(ctx.network.add_slice(shape, (start,), (stop - start,), (1,))).get_output(0)
        return reduce(ctx, part, R.PROD, [0])

    dims = ctx.check(ctx.network.add_concatenation([prod(0, axis), prod(axis, rank)])).get_output(0)
    flat = ctx.reshape(x, dims, zero_is_placeholder=False)
    return [ctx.reshape(KERNELS[node.op_type](ctx, flat, 1), shape, zero_is_placeholder=False)]
