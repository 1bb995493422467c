"""Shape manipulation: Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat, Shape, Expand."""

from __future__ import annotations

import numpy as np

from trtc.lower.registry import Constraint, constant_input, converter, known_rank, tensor_types


@converter("Reshape", since=5, constraints=[tensor_types()])
def lower_reshape(ctx, node):
    """Reshape with ONNX's 0 (copy dim, unless allowzero) and -1 (infer)."""
    x = ctx.tensor(node.inputs[0])
    allowzero = node.attributes.get_int("allowzero", 0)
    shape = ctx.const(node.inputs[1])
    if shape is not None:
        return [ctx.reshape(x, [int(d) for d in shape], zero_is_placeholder=not allowzero)]
    return [ctx.reshape(x, ctx.tensor(node.inputs[1]), zero_is_placeholder=not allowzero)]


@converter("Transpose", constraints=[tensor_types(), known_rank()])
def lower_transpose(ctx, node):
    x = ctx.tensor(node.inputs[0])
    perm = node.attributes.get_ints("perm", list(reversed(range(ctx.rank(x)))))
    layer = ctx.check(ctx.network.add_shuffle(x))
    layer.first_transpose = tuple(int(p) for p in perm)
    return [layer.get_output(0)]


@converter("Flatten", constraints=[tensor_types(), known_rank()])
def lower_flatten(ctx, node):
    """Flatten(x, axis) -> [prod(dims[:axis]), prod(dims[axis:])] from the runtime shape."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    axis = ctx.axis(node.attributes.get_int("axis", 1), rank)
    shape = ctx.shape_of(x)
    R = ctx.trt.ReduceOperation

    def prod(start, stop):
        if start == stop:
            return ctx.constant(np.array([1], np.int64))
        part = ctx.check(ctx.network.add_slice(shape, (start,), (stop - start,), (1,))).get_output(0)
        return ctx.check(ctx.network.add_reduce(part, R.PROD, 1, True)).get_output(0)

    dims = ctx.check(ctx.network.add_concatenation([prod(0, axis), prod(axis, rank)])).get_output(0)
    return [ctx.reshape(x, dims)]


def _axes(ctx, node, index: int) -> list[int] | None:
    if index < len(node.inputs) and node.inputs[index] is not None:
        data = ctx.const(node.inputs[index])
        return None if data is None else [int(a) for a in np.atleast_1d(data)]
    attr = node.attributes.get("axes")
    return list(attr.value) if attr is not None else None


@converter("Squeeze", since=13, constraints=[tensor_types(), known_rank(), constant_input(1, "the axes")])
def lower_squeeze(ctx, node):
    x = ctx.tensor(node.inputs[0])
    axes = _axes(ctx, node, 1)
    if axes is None:  # all size-1 dims, which must be static
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes_t = ctx.constant(np.array([ctx.axis(a, ctx.rank(x)) for a in axes], np.int64))
    return [ctx.check(ctx.network.add_squeeze(x, axes_t)).get_output(0)]


@converter("Unsqueeze", since=13, constraints=[tensor_types(), known_rank(), constant_input(1, "the axes")])
def lower_unsqueeze(ctx, node):
    x = ctx.tensor(node.inputs[0])
    axes = _axes(ctx, node, 1)
    out_rank = ctx.rank(x) + len(axes)
    axes_t = ctx.constant(np.array(sorted(ctx.axis(a, out_rank) for a in axes), np.int64))
    return [ctx.check(ctx.network.add_unsqueeze(x, axes_t)).get_output(0)]


@converter("Concat", constraints=[tensor_types(), known_rank()])
def lower_concat(ctx, node):
    tensors = [ctx.tensor(v) for v in node.inputs if v is not None]
    layer = ctx.check(ctx.network.add_concatenation(tensors))
    layer.axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(tensors[0]))
    return [layer.get_output(0)]


@converter("Shape", constraints=[tensor_types(), known_rank()])
def lower_shape(ctx, node):
    """Shape(x)[start:end] as int64."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start, end = (max(0, min(rank, a + rank if a < 0 else a)) for a in (start, end))
    shape = ctx.shape_of(x)
    if (start, end) == (0, rank):
        return [shape]
    return [ctx.check(ctx.network.add_slice(shape, (start,), (max(0, end - start),), (1,))).get_output(0)]


def _output_rank_known(node) -> str | None:
    if node.outputs[0].shape is None:
        return f"Expand's output {node.outputs[0].name!r} has an unknown rank"
    return None


@converter("Expand", constraints=[tensor_types(), known_rank(), Constraint("known output rank", _output_rank_known)])
def lower_expand(ctx, node):
    """Expand(x, shape): broadcast both ways (x's dims of 1 and shape's dims of 1)."""
    x = ctx.tensor(node.inputs[0])
    shape = ctx.tensor(node.inputs[1])
    out_rank = node.outputs[0].shape.rank()
    x = ctx.unsqueeze_to(x, out_rank)
    shape = ctx.cast(shape, ctx.trt.int64)
    target_len = shape.shape[0]
    if target_len < out_rank:  # shape shorter than x: left-pad with ones
        ones = ctx.constant(np.ones(out_rank - target_len, np.int64))
        shape = ctx.check(ctx.network.add_concatenation([ones, shape])).get_output(0)
    out_shape = ctx.elementwise(ctx.shape_of(x), shape, ctx.trt.ElementWiseOperation.MAX)
    zeros = ctx.constant(np.zeros(out_rank, np.int64))
    layer = ctx.check(ctx.network.add_slice(x, (0,) * out_rank, (1,) * out_rank, (1,) * out_rank))
    layer.set_input(1, zeros)
    layer.set_input(2, out_shape)
    layer.set_input(3, _broadcast_strides(ctx, x))
    return [layer.get_output(0)]


def _broadcast_strides(ctx, x):
    """Stride 1 where x's dim is > 1, stride 0 where it is 1 (repeat the single element)."""
    E = ctx.trt.ElementWiseOperation
    shape = ctx.shape_of(x)
    one = ctx.constant(np.array([1], np.int64))
    is_big = ctx.elementwise(shape, one, E.GREATER)
    return ctx.cast(is_big, ctx.trt.int64)
