"""Slicing family -> ISliceLayer: Slice (ONNX clamping, negative steps), Split, Pad (FILL /
REFLECT / CLAMP / WRAP sample modes) and Tile (WRAP). Starts and sizes fold to static Dims
where the model's constants and dims allow, and become shape tensors where they do not."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops._shape_math import ShapeMath
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types


def _present(node, index: int) -> bool:
    return index < len(node.inputs) and node.inputs[index] is not None


def shape_input(ctx, node, index: int, default=None):
    """An integer input as a shape value: numpy int64 when constant, an int64 tensor otherwise."""
    if not _present(node, index):
        return default
    data = ctx.const(node.inputs[index])
    if data is not None:
        return np.asarray(data, np.int64).reshape(-1)
    tensor = ctx.tensor(node.inputs[index])
    if ctx.rank(tensor) != 1:  # a 1-D one needs no shuffle layer
        tensor = ctx.reshape(tensor, [-1])
    return ctx.cast(tensor, ctx.trt.int64)


def slice_axes(ctx, tensor, axes, start, size, stride, mode=None, fill=None):
    """ISliceLayer over `axes` only (other dims untouched); axes/start/size/stride are shape values."""
    if isinstance(axes, (list, tuple)):
        axes = np.array(axes, np.int64)
    count = len(axes) if ShapeMath.is_static(axes) else axes.shape[0]
    static = [v if ShapeMath.is_static(v) else np.zeros(count, np.int64) for v in (start, size, stride)]
    layer = ctx.check(ctx.network.add_slice(tensor, *(tuple(int(d) for d in v) for v in static)))
    for index, value in enumerate((start, size, stride), start=1):
        if not ShapeMath.is_static(value):
            layer.set_input(index, value)
    if ShapeMath.is_static(axes):
        layer.axes = tuple(int(a) for a in axes)
    else:
        layer.set_input(5, axes)
    if mode is not None:
        layer.mode = mode
    if fill is not None:
        layer.set_input(4, fill)
    return layer.get_output(0)


def axes_input(ctx, node, index: int, rank: int, count: int):
    """The axes input (default: the first `count` axes) with negatives counted from the end."""
    axes = shape_input(ctx, node, index, np.arange(count, dtype=np.int64))
    math = ShapeMath(ctx)
    return _from_end(math, axes, np.full((), rank, np.int64))


def _static_length(node, index: int, what: str) -> str | None:
    value = node.inputs[index]
    if value.shape is None or value.shape.rank() != 1 or not isinstance(value.shape.dims[0], int):
        return f"{what} ({value.name!r}) must have a static length"
    return None


def _slice_axes_known(node) -> str | None:
    if _present(node, 3):
        return _static_length(node, 3, "axes")
    return _static_length(node, 1, "starts")


SLICE_AXES = Constraint("axes (or, without axes, starts) of static length", _slice_axes_known)


@converter("Slice", since=10, constraints=[tensor_types(), known_rank(0), SLICE_AXES])
def lower_slice(ctx, node):
    """Slice(data, starts, ends, axes, steps) with ONNX's clamping: negative starts/ends count
    from the end; with step > 0 both clamp to [0, dim]; with step < 0 start clamps to
    [0, dim-1] and end to [-1, dim-1]; size = max(0, ceil((end - start) / step))."""
    x = ctx.tensor(node.inputs[0])
    math = ShapeMath(ctx)
    count = node.inputs[3 if _present(node, 3) else 1].shape.dims[0]
    axes = axes_input(ctx, node, 3, ctx.rank(x), count)
    starts, ends = shape_input(ctx, node, 1), shape_input(ctx, node, 2)
    steps = shape_input(ctx, node, 4, np.ones(count, np.int64))
    dims = math.dims(x, axes)
    zero, minus_one = np.zeros((), np.int64), np.full((), -1, np.int64)
    forward = math.less(zero, steps)
    start = _from_end(math, math.clamp(starts, math.sub(zero, dims), dims), dims)
    end = _from_end(math, math.clamp(ends, math.sub(minus_one, dims), dims), dims)
    last = math.sub(dims, np.ones((), np.int64))
    start = math.clamp(start, zero, math.where(forward, dims, last))
    end = math.clamp(end, math.where(forward, zero, minus_one), math.where(forward, dims, last))
    size = math.max(math.ceil_div(math.sub(end, start), steps), zero)
    return [slice_axes(ctx, x, axes, start, size, steps)]


def _from_end(math, index, dims):
    """index + dim where index < 0."""
    return math.where(math.less(index, np.zeros((), np.int64)), math.add(index, dims), index)


@converter("Split", since=13, constraints=[tensor_types(), known_rank(0)])
def lower_split(ctx, node):
    """Split(x, split) along axis: consecutive slices of the given sizes, or (no split input)
    num_outputs chunks of ceil(dim / n), the last one smaller."""
    x = ctx.tensor(node.inputs[0])
    axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(x))
    math = ShapeMath(ctx)
    count = len(node.outputs)
    sizes = shape_input(ctx, node, 1)
    if sizes is None:
        dim = math.dims(x, [axis])
        chunk = math.ceil_div(dim, np.array([count], np.int64))
        sizes = [math.clamp(math.sub(dim, math.mul(chunk, np.array([i], np.int64))), np.zeros(1, np.int64), chunk)
                 for i in range(count)]
    else:
        sizes = [math.gather(sizes, np.array([i], np.int64)) for i in range(count)]
    outputs, start = [], np.zeros(1, np.int64)
    for size in sizes:
        outputs.append(slice_axes(ctx, x, [axis], start, size, np.ones(1, np.int64)))
        start = math.add(start, size)
    return outputs


PAD_MODES = {"constant": "FILL", "reflect": "REFLECT", "edge": "CLAMP", "wrap": "WRAP"}


def _pad_axes_known(node) -> str | None:
    return _static_length(node, 3, "axes") if _present(node, 3) else None


PAD_AXES = Constraint("axes of static length", _pad_axes_known)


@converter("Pad", since=11, constraints=[tensor_types(), known_rank(0), PAD_AXES,
                                         attribute_in("mode", tuple(PAD_MODES), "constant")])
def lower_pad(ctx, node):
    """Pad(data, pads, constant_value, axes) as a slice starting at -pad_begin with size
    dim + pad_begin + pad_end (negative pads crop); the mode picks the out-of-bounds sampling:
    constant -> FILL, reflect -> REFLECT, edge -> CLAMP, wrap -> WRAP."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    math = ShapeMath(ctx)
    count = node.inputs[3].shape.dims[0] if _present(node, 3) else rank
    axes = axes_input(ctx, node, 3, rank, count)
    pads = shape_input(ctx, node, 1)
    begin = math.gather(pads, np.arange(count, dtype=np.int64))
    end = math.gather(pads, np.arange(count, 2 * count, dtype=np.int64))
    start = math.sub(np.zeros((), np.int64), begin)
    size = math.add(math.add(math.dims(x, axes), begin), end)
    mode_name = node.attributes.get_string("mode", "constant")
    mode = getattr(ctx.trt.SampleMode, PAD_MODES[mode_name])
    fill = None
    if mode_name == "constant":
        if _present(node, 2) and ctx.const(node.inputs[2]) is not None:
            fill = ctx.constant(np.asarray(ctx.const(node.inputs[2])).reshape(()))  # 0-D as the layer takes it
        elif _present(node, 2):
            fill = ctx.reshape(ctx.tensor(node.inputs[2]), [])
        else:
            fill = ctx.constant(np.zeros((), node.inputs[0].dtype.numpy()))
    return [slice_axes(ctx, x, axes, start, size, np.ones(count, np.int64), mode=mode, fill=fill)]


@converter("Tile", constraints=[tensor_types(), known_rank(0)])
def lower_tile(ctx, node):
    """Tile(x, repeats): a WRAP-mode slice from 0 with size dims * repeats."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    math = ShapeMath(ctx)
    size = math.mul(math.dims(x), shape_input(ctx, node, 1))
    axes = list(range(rank))
    return [slice_axes(ctx, x, axes, np.zeros(rank, np.int64), size, np.ones(rank, np.int64),
                       mode=ctx.trt.SampleMode.WRAP)]
