"""Sampling converters: GridSample, RoiAlign and DeformConv (bilinear gathers built from
TensorRT's grid-sample, gather and elementwise layers)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from trtc.lower.ops._helpers import concat_last, elementwise_chain, pick_axis, rank_is, static_dims
from trtc.lower.ops.attention import arange, given, scalar
from trtc.lower.registry import Constraint, attribute_in, converter, tensor_types

# ------------------------------------------------------------------ GridSample

GRID_MODES = {"linear": "LINEAR", "bilinear": "LINEAR", "nearest": "NEAREST", "cubic": "CUBIC", "bicubic": "CUBIC"}
PADDING_MODES = {"zeros": "FILL", "border": "CLAMP", "reflection": "REFLECT"}


def _check_volumetric(node: ir.Node) -> str | None:
    x = node.inputs[0]
    if x.shape is None or x.shape.rank() != 5:
        return None
    mode, padding = node.attributes.get_string("mode", "linear"), node.attributes.get_string("padding_mode", "zeros")
    if GRID_MODES.get(mode) == "CUBIC" or padding == "reflection":
        return f"5-D GridSample supports linear/nearest with zeros/border padding, not {mode}/{padding}"
    if any(not isinstance(d, int) for d in x.shape.dims[1:]):
        return f"5-D GridSample needs static channel and spatial dims (input {x.shape})"
    return None


GRID_SAMPLE_CONSTRAINTS = [
    tensor_types(), rank_is(0, (4, 5), "the input"), Constraint("a 5-D sampling we can express", _check_volumetric),
    attribute_in("mode", tuple(GRID_MODES), "linear"), attribute_in("padding_mode", tuple(PADDING_MODES), "zeros")]


@converter("GridSample", since=16, constraints=GRID_SAMPLE_CONSTRAINTS)
def lower_grid_sample(ctx, node):
    """GridSample: 4-D -> IGridSampleLayer (nearest rounds as TensorRT does); 5-D (volumetric, which
    TensorRT lacks) -> gathers of the 8 (linear) or 1 (nearest) neighbours, see volumetric_grid_sample."""
    if node.inputs[0].shape.rank() == 5:
        return [volumetric_grid_sample(ctx, node)]
    x = ctx.tensor(node.inputs[0])
    grid = ctx.cast(ctx.tensor(node.inputs[1]), x.dtype)
    layer = ctx.check(ctx.network.add_grid_sample(x, grid))
    layer.interpolation_mode = getattr(ctx.trt.InterpolationMode,
                                       GRID_MODES[node.attributes.get_string("mode", "linear")])
    layer.sample_mode = getattr(ctx.trt.SampleMode, PADDING_MODES[node.attributes.get_string("padding_mode", "zeros")])
    layer.align_corners = bool(node.attributes.get_int("align_corners", 0))
    return [layer.get_output(0)]


def volumetric_grid_sample(ctx, node):
    """ONNX GridSample on [N, C, D, H, W]: each grid point (x, y, z) is unnormalized per axis (align_corners),
    clamped into the volume for border padding, rounded half to even for nearest, and its neighbours are
    gathered from the [N*D*H*W, C] volume with their linear weights (zero outside for zeros padding)."""
    E, trt = ctx.trt.ElementWiseOperation, ctx.trt
    x = ctx.tensor(node.inputs[0])
    dims = [int(d) for d in x.shape[2:]]  # D, H, W
    align = bool(node.attributes.get_int("align_corners", 0))
    nearest = GRID_MODES[node.attributes.get_string("mode", "linear")] == "NEAREST"
    border = node.attributes.get_string("padding_mode", "zeros") == "border"
    f32 = trt.float32
    grid = ctx.cast(ctx.tensor(node.inputs[1]), f32)  # [N, Do, Ho, Wo, 3] as (x, y, z)
    neighbours = []  # per axis D, H, W: [(index, weight, inside)]
    for axis, size in enumerate(dims):
        g = pick_axis(ctx, grid, 2 - axis, 4)  # [N, Do, Ho, Wo]
        scale, shift = ((size - 1) / 2.0, (size - 1) / 2.0) if align else (size / 2.0, (size - 1) / 2.0)
        p = elementwise_chain(ctx, g, ("PROD", scalar(ctx, scale, f32, 4)), ("SUM", scalar(ctx, shift, f32, 4)))
        if nearest:
            p = ctx.unary(p, trt.UnaryOperation.ROUND)
        if border:
            p = elementwise_chain(ctx, p, ("MAX", scalar(ctx, 0.0, f32, 4)), ("MIN", scalar(ctx, size - 1.0, f32, 4)))
        low = p if nearest else ctx.unary(p, trt.UnaryOperation.FLOOR)
        steps = [(low, None)]
        if not nearest:
            steps = [(low, 0.0), (ctx.elementwise(low, scalar(ctx, 1.0, f32, 4), E.SUM), 1.0)]
        options = []
        for index, offset in steps:
            weight = None
            if offset is not None:  # 1 - |p - index|
                distance = ctx.unary(ctx.elementwise(p, index, E.SUB), trt.UnaryOperation.ABS)
                weight = ctx.elementwise(scalar(ctx, 1.0, f32, 4), distance, E.SUB)
            inside = ctx.unary(outside_range(ctx, index, size), trt.UnaryOperation.NOT)
            clamped = elementwise_chain(ctx, index, ("MAX", scalar(ctx, 0.0, f32, 4)),
                                        ("MIN", scalar(ctx, size - 1.0, f32, 4)))
            options.append((ctx.cast(clamped, trt.int64), weight, inside))
        neighbours.append(options)
    batch = ctx.check(ctx.network.add_slice(ctx.shape_of(grid), (0,), (1,), (1,))).get_output(0)
    volume = int(np.prod(dims))
    base = ctx.elementwise(arange(ctx, batch, [-1, 1, 1, 1]),
                           ctx.constant(np.full((1, 1, 1, 1), volume, np.int64)), E.PROD)
    flat = ctx.check(ctx.network.add_shuffle(x))
    flat.first_transpose = (0, 2, 3, 4, 1)
    flat.reshape_dims = (-1, int(x.shape[1]))  # [N*D*H*W, C]
    total = None
    for (zi, zw, zin), (yi, yw, yin), (xi, xw, xin) in itertools.product(*neighbours):
        index = elementwise_chain(ctx, zi, ("PROD", ctx.constant(np.full((1, 1, 1, 1), dims[1] * dims[2], np.int64))),
                                  ("SUM", ctx.elementwise(yi, ctx.constant(np.full((1, 1, 1, 1), dims[2], np.int64)),
                                                          E.PROD)), ("SUM", xi), ("SUM", base))
        values = ctx.check(ctx.network.add_gather(flat.get_output(0), index, 0)).get_output(0)  # [N, Do, Ho, Wo, C]
        weight = ctx.cast(elementwise_chain(ctx, zin, ("AND", yin), ("AND", xin)), f32)
        for w in (zw, yw, xw):
            if w is not None:
                weight = ctx.elementwise(weight, w, E.PROD)
        term = ctx.elementwise(values, ctx.reshape(ctx.cast(weight, x.dtype), [0, 0, 0, 0, 1]), E.PROD)
        total = term if total is None else ctx.elementwise(total, term, E.SUM)
    out = ctx.check(ctx.network.add_shuffle(total))
    out.first_transpose = (0, 4, 1, 2, 3)
    return out.get_output(0)


def outside_range(ctx, index, size: int):
    """index < 0 or index > size - 1 (float indices)."""
    E = ctx.trt.ElementWiseOperation
    low = ctx.elementwise(index, scalar(ctx, 0.0, index.dtype, ctx.rank(index)), E.LESS)
    high = ctx.elementwise(index, scalar(ctx, size - 1.0, index.dtype, ctx.rank(index)), E.GREATER)
    return ctx.elementwise(low, high, E.OR)


# ------------------------------------------------------------------ RoiAlign


def _check_roi_align(node: ir.Node) -> str | None:
    if node.attributes.get_int("sampling_ratio", 0) <= 0:
        return "sampling_ratio must be positive (the adaptive count ceil(roi_size / output_size) is data-dependent)"
    return None


ROI_ALIGN_CONSTRAINTS = [
    tensor_types(), rank_is(0, (4,), "the input"), static_dims(0, (2, 3), "the input"),
    attribute_in("mode", ("avg", "max"), "avg"),
    attribute_in("coordinate_transformation_mode", ("half_pixel", "output_half_pixel"), "half_pixel"),
    Constraint("a fixed sampling ratio", _check_roi_align),
]


@converter("RoiAlign", since=16, constraints=ROI_ALIGN_CONSTRAINTS)
def lower_roi_align(ctx, node):
    """RoiAlign by gathers: each bin's sampling_ratio^2 points are interpolated from their four
    neighbours (gathered from the [N*H*W, C] image at the roi's batch), then averaged, or for
    mode=max the largest weighted neighbour is taken (ONNX's definition)."""
    E, trt = ctx.trt.ElementWiseOperation, ctx.trt
    f32 = trt.float32
    attrs = node.attributes
    x = ctx.tensor(node.inputs[0])
    height, width = int(x.shape[2]), int(x.shape[3])
    out_h, out_w = attrs.get_int("output_height", 1), attrs.get_int("output_width", 1)
    ratio = attrs.get_int("sampling_ratio", 0)
    half_pixel = attrs.get_string("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    rois = ctx.elementwise(ctx.cast(ctx.tensor(node.inputs[1]), f32),
                           scalar(ctx, attrs.get_float("spatial_scale", 1.0), f32, 2), E.PROD)
    if half_pixel:
        rois = ctx.elementwise(rois, scalar(ctx, 0.5, f32, 2), E.SUB)
    x1, y1, x2, y2 = (column(ctx, rois, k) for k in range(4))  # [R, 1]

    def axis_points(start, end, bins, along_y):
        extent = ctx.elementwise(end, start, E.SUB)
        if not half_pixel:
            extent = ctx.elementwise(extent, scalar(ctx, 1.0, f32, 2), E.MAX)
        step = ctx.elementwise(extent, scalar(ctx, float(bins), f32, 2), E.DIV)
        grid = np.add.outer(np.arange(bins), (np.arange(ratio) + 0.5) / ratio)  # bin + sample offset
        layout = (out_h, ratio, 1, 1) if along_y else (1, 1, out_w, ratio)
        offsets = np.broadcast_to(grid.reshape(layout), (out_h, ratio, out_w, ratio)).reshape(1, -1)
        return ctx.elementwise(start, ctx.elementwise(step, ctx.constant(offsets.astype(np.float32)), E.PROD), E.SUM)

    ys = axis_points(y1, y2, out_h, True)  # [R, P], points ordered (ph, iy, pw, ix)
    xs = axis_points(x1, x2, out_w, False)
    corners = [bilinear_axis(ctx, ys, height), bilinear_axis(ctx, xs, width)]
    valid = ctx.cast(ctx.unary(elementwise_chain(
        ctx, outside(ctx, ys, height), ("OR", outside(ctx, xs, width))), trt.UnaryOperation.NOT), f32)
    batch = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), trt.int64), [-1, 1])
    base = ctx.elementwise(batch, ctx.constant(np.array([[height * width]], np.int64)), E.PROD)
    image = ctx.check(ctx.network.add_shuffle(x))
    image.first_transpose = (0, 2, 3, 1)
    image.reshape_dims = (-1, int(x.shape[1]))  # [N*H*W, C]
    terms = []
    for y_index, y_weight in corners[0]:
        for x_index, x_weight in corners[1]:
            flat = elementwise_chain(ctx, y_index, ("PROD", ctx.constant(np.array([[width]], np.int64))),
                                     ("SUM", x_index), ("SUM", base))
            values = ctx.check(ctx.network.add_gather(image.get_output(0), flat, 0)).get_output(0)  # [R, P, C]
            weight = elementwise_chain(ctx, y_weight, ("PROD", x_weight), ("PROD", valid))
            terms.append(ctx.elementwise(values, ctx.reshape(ctx.cast(weight, x.dtype), [0, 0, 1]), E.PROD))
    mode_max = attrs.get_string("mode", "avg") == "max"
    combined = terms[0]
    for term in terms[1:]:
        combined = ctx.elementwise(combined, term, E.MAX if mode_max else E.SUM)
    bins = ctx.reshape(combined, [0, out_h, ratio, out_w, ratio, -1])
    reduce = trt.ReduceOperation.MAX if mode_max else trt.ReduceOperation.AVG
    pooled = ctx.check(ctx.network.add_reduce(bins, reduce, (1 << 2) | (1 << 4), False))
    out = ctx.check(ctx.network.add_shuffle(pooled.get_output(0)))
    out.first_transpose = (0, 3, 1, 2)
    return [out.get_output(0)]


def column(ctx, tensor, index: int):
    """tensor[:, index:index+1] of a [R, K] tensor."""
    indices = ctx.constant(np.array([index], np.int32))
    return ctx.check(ctx.network.add_gather(tensor, indices, 1)).get_output(0)


def outside(ctx, coordinate, size: int):
    """coordinate < -1 or coordinate > size (ONNX's empty sample)."""
    E = ctx.trt.ElementWiseOperation
    low = ctx.elementwise(coordinate, scalar(ctx, -1.0, coordinate.dtype, 2), E.LESS)
    high = ctx.elementwise(coordinate, scalar(ctx, float(size), coordinate.dtype, 2), E.GREATER)
    return ctx.elementwise(low, high, E.OR)


def bilinear_axis(ctx, coordinate, size: int):
    """[(low index, weight), (high index, weight)] along one axis, the coordinate clamped to [0, size-1]."""
    E = ctx.trt.ElementWiseOperation
    f32 = coordinate.dtype
    clamped = elementwise_chain(ctx, coordinate, ("MAX", scalar(ctx, 0.0, f32, 2)),
                                ("MIN", scalar(ctx, float(size - 1), f32, 2)))
    low = ctx.unary(clamped, ctx.trt.UnaryOperation.FLOOR)
    high = ctx.elementwise(ctx.elementwise(low, scalar(ctx, 1.0, f32, 2), E.SUM), scalar(ctx, float(size - 1), f32, 2),
                           E.MIN)
    fraction = ctx.elementwise(clamped, low, E.SUB)
    keep = ctx.elementwise(scalar(ctx, 1.0, f32, 2), fraction, E.SUB)
    return [(ctx.cast(low, ctx.trt.int64), keep), (ctx.cast(high, ctx.trt.int64), fraction)]


# ------------------------------------------------------------------ DeformConv


DEFORM_CONSTRAINTS = [
    tensor_types(), rank_is(0, (4,), "the input (2-D deformable convolution)"), static_dims(0, (1, 2, 3), "the input"),
    static_dims(1, (0, 1, 2, 3), "the weight"), static_dims(2, (1, 2, 3), "the offset"),
]


@converter("DeformConv", since=19, constraints=DEFORM_CONSTRAINTS)
def lower_deform_conv(ctx, node):
    """DeformConv: every kernel tap of every output position is bilinearly sampled at its offset
    position (IGridSampleLayer, zeros outside, one grid per offset group), scaled by the mask, and
    the [C*kH*kW, OH*OW] columns are multiplied by the weights per group, plus the bias."""
    E = ctx.trt.ElementWiseOperation
    attrs = node.attributes
    x, weight, offset = (ctx.tensor(node.inputs[i]) for i in range(3))
    _, channels, height, width = (int(d) for d in x.shape)
    out_channels, _, kernel_h, kernel_w = (int(d) for d in weight.shape)
    out_h, out_w = int(offset.shape[2]), int(offset.shape[3])
    taps = kernel_h * kernel_w
    groups, offset_groups = attrs.get_int("group", 1), attrs.get_int("offset_group", 1)
    pad_top, pad_left = list(attrs.get_ints("pads", [0, 0, 0, 0]))[:2]
    stride_h, stride_w = attrs.get_ints("strides", [1, 1])
    dilation_h, dilation_w = attrs.get_ints("dilations", [1, 1])
    # Sampling positions: tap (i, j) of output (oh, ow) reads (oh*s - pad + i*d + dy, ow*s - pad + j*d + dx).
    base_y = (np.arange(out_h) * stride_h - pad_top)[None, :, None] + (np.arange(kernel_h) * dilation_h)[:, None, None]
    base_x = (np.arange(out_w) * stride_w - pad_left)[None, None, :] + (np.arange(kernel_w) * dilation_w)[:, None, None]
    base_y = np.broadcast_to(base_y[:, None], (kernel_h, kernel_w, out_h, out_w)).reshape(1, 1, taps, out_h, out_w)
    base_x = np.broadcast_to(base_x[None], (kernel_h, kernel_w, out_h, out_w)).reshape(1, 1, taps, out_h, out_w)
    pairs = ctx.reshape(offset, [0, offset_groups, taps, 2, out_h, out_w])
    dy, dx = (pick_axis(ctx, pairs, k, 3) for k in range(2))  # [N, G, taps, OH, OW]

    def normalized(delta, base, size):  # align_corners=0: pixel p -> (2p + 1) / size - 1
        position = ctx.elementwise(delta, ctx.constant_as(base.astype(np.float32), delta.dtype), E.SUM)
        return elementwise_chain(ctx, position, ("PROD", scalar(ctx, 2.0 / size, delta.dtype, 5)),
                                 ("SUM", scalar(ctx, 1.0 / size - 1.0, delta.dtype, 5)))

    grid = concat_last(ctx, [normalized(dx, base_x, width), normalized(dy, base_y, height)])  # (x, y) pairs
    grid = ctx.reshape(grid, [-1, taps * out_h, out_w, 2])
    images = ctx.reshape(x, [-1, channels // offset_groups, height, width])
    layer = ctx.check(ctx.network.add_grid_sample(images, ctx.cast(grid, x.dtype)))
    layer.interpolation_mode = ctx.trt.InterpolationMode.LINEAR
    layer.sample_mode = ctx.trt.SampleMode.FILL
    layer.align_corners = False
    columns = ctx.reshape(layer.get_output(0), [-1, offset_groups, channels // offset_groups, taps, out_h * out_w])
    if given(node.inputs, 4):
        mask = ctx.reshape(ctx.tensor(node.inputs[4]), [-1, offset_groups, 1, taps, out_h * out_w])
        columns = ctx.elementwise(columns, ctx.cast(mask, columns.dtype), E.PROD)
    columns = ctx.reshape(columns, [-1, groups, channels // groups * taps, out_h * out_w])
    kernels = ctx.reshape(weight, [1, groups, out_channels // groups, -1])
    y = ctx.check(ctx.network.add_matrix_multiply(kernels, ctx.trt.MatrixOperation.NONE, columns,
                                                  ctx.trt.MatrixOperation.NONE)).get_output(0)
    y = ctx.reshape(y, [-1, out_channels, out_h, out_w])
    if given(node.inputs, 3):
        y = ctx.elementwise(y, ctx.reshape(ctx.tensor(node.inputs[3]), [1, -1, 1, 1]), E.SUM)
    return [y]



