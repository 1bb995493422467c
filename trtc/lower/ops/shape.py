"""Shape manipulation: Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat, Shape, Expand."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops._shape_math import ShapeMath
from trtc.lower.ops.slice import shape_input, slice_axes
from trtc.lower.registry import Constraint, constant_input, converter, known_rank, tensor_types


@converter("Reshape", since=5, constraints=[tensor_types()])
def lower_reshape(ctx, node):
    """Reshape with ONNX's 0 (copy dim, unless allowzero) and -1 (infer)."""
    allowzero = node.attributes.get_int("allowzero", 0)
    shape = ctx.const(node.inputs[1])
    data = ctx.const(node.inputs[0])
    if data is not None and shape is not None:  # reshaped while building: data, no layer
        dims = [data.shape[i] if d == 0 and not allowzero else int(d) for i, d in enumerate(shape)]
        return [np.asarray(data).reshape(dims)]
    x = ctx.tensor(node.inputs[0])
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
    static = _flat_dims(tuple(x.shape), axis)
    if static is not None:
        return [ctx.reshape(x, static)]
    shape = ctx.shape_of(x)
    R = ctx.trt.ReduceOperation

    def prod(start, stop):
        if start == stop:
            return ctx.constant(np.array([1], np.int64))
        part = ctx.check(ctx.network.add_slice(shape, (start,), (stop - start,), (1,))).get_output(0)
        return ctx.check(ctx.network.add_reduce(part, R.PROD, 1, True)).get_output(0)

    dims = ctx.check(ctx.network.add_concatenation([prod(0, axis), prod(axis, rank)])).get_output(0)
    return [ctx.reshape(x, dims)]


def _flat_dims(dims: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """Flatten's [prod(dims[:axis]), prod(dims[axis:])] as static reshape dims (0 copies dim 0, -1 is
    inferred) when at most one of them is unknown before run time, so one shuffle layer does it without
    shape arithmetic; None otherwise."""
    head, tail = dims[:axis], dims[axis:]
    head_size = -1 if any(d < 0 for d in head) else int(np.prod(head, dtype=np.int64))
    tail_size = -1 if any(d < 0 for d in tail) else int(np.prod(tail, dtype=np.int64))
    if head_size == -1 and len(head) == 1:
        head_size = 0  # dim 0 as it is
    if head_size == 0 and len(head) != 1 or tail_size == 0:
        return None  # an empty tensor: a literal 0 would read as "copy"
    if head_size == -1 and tail_size == -1:
        return None
    return head_size, tail_size


def _axes(ctx, node, index: int) -> list[int] | None:
    if index < len(node.inputs) and node.inputs[index] is not None:
        data = ctx.const(node.inputs[index])
        return None if data is None else [int(a) for a in np.atleast_1d(data)]
    attr = node.attributes.get("axes")
    return list(attr.value) if attr is not None else None


@converter("Squeeze", since=13, constraints=[tensor_types(), known_rank(), constant_input(1, "the axes")])
def lower_squeeze(ctx, node):
    """Squeeze: one shuffle layer; a constant is squeezed while building."""
    data = ctx.const(node.inputs[0])
    axes = _axes(ctx, node, 1)
    if data is not None:
        data = np.asarray(data)
        return [data.reshape([d for i, d in enumerate(data.shape)
                              if (i not in [a % data.ndim for a in axes] if axes is not None else d != 1)])]
    x = ctx.tensor(node.inputs[0])
    if axes is None:  # all size-1 dims, which must be static
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [ctx.squeeze(x, [ctx.axis(a, ctx.rank(x)) for a in axes])]


@converter("Unsqueeze", since=13, constraints=[tensor_types(), known_rank(), constant_input(1, "the axes")])
def lower_unsqueeze(ctx, node):
    """Unsqueeze: one shuffle layer; a constant is unsqueezed while building."""
    axes = _axes(ctx, node, 1)
    data = ctx.const(node.inputs[0])
    if data is not None:
        data = np.asarray(data)
        return [np.expand_dims(data, tuple(sorted(a % (data.ndim + len(axes)) for a in axes)))]
    x = ctx.tensor(node.inputs[0])
    out_rank = ctx.rank(x) + len(axes)
    return [ctx.unsqueeze(x, [ctx.axis(a, out_rank) for a in axes])]


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
    if all(d >= 0 for d in x.shape):  # static dims: data, made a constant only where a tensor is needed
        return [np.array(tuple(x.shape)[start:max(start, end)], np.int64)]
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
    out_rank = node.outputs[0].shape.rank()
    x = ctx.operand(node.inputs[0], out_rank)  # a constant is made at the output's rank
    math = ShapeMath(ctx)
    shape = shape_input(ctx, node, 1)
    if len(shape) < out_rank if math.is_static(shape) else shape.shape[0] < out_rank:
        shape = math.concat([np.ones(out_rank - (len(shape) if math.is_static(shape) else shape.shape[0]),
                                     np.int64), shape])  # shape shorter than x: left-pad with ones
    # Sizes and strides fold to static dims where the dims and the shape allow (then the slice is the
    # only layer); what is known only at run time is computed with shape arithmetic.
    out_shape = math.max(math.dims(x), shape)
    strides = _static_strides(node, out_rank)
    if strides is None:
        strides = _broadcast_strides(ctx, x)
    return [slice_axes(ctx, x, list(range(out_rank)), np.zeros(out_rank, np.int64), out_shape, strides)]


def _static_strides(node, out_rank: int) -> np.ndarray | None:
    """Expand's slice strides from the IR's dims: 0 where x's dim is 1, 1 where it is known to be the
    output's (the same static size or the same named dim); None when a dim could be either at run time."""
    x_dims = [1] * (out_rank - node.inputs[0].shape.rank()) + list(node.inputs[0].shape.dims)
    strides = []
    for x_dim, out_dim in zip(x_dims, node.outputs[0].shape.dims):
        if x_dim == 1:
            strides.append(0)
        elif isinstance(x_dim, int) or (x_dim.value is not None and x_dim == out_dim):
            strides.append(1)  # a static size above 1 can only be kept; a named dim equal to the output's too
        else:
            return None
    return np.array(strides, np.int64)


def _broadcast_strides(ctx, x):
    """Stride 1 where x's dim is > 1, stride 0 where it is 1 (repeat the single element)."""
    E = ctx.trt.ElementWiseOperation
    shape = ctx.shape_of(x)
    one = ctx.constant(np.array([1], np.int64))
    is_big = ctx.elementwise(shape, one, E.GREATER)
    return ctx.cast(is_big, ctx.trt.int64)
