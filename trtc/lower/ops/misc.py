"""Remaining converters: sampling (GridSample, RoiAlign, DeformConv), NonMaxSuppression,
window functions, random generators, ImageScaler and ParametricSoftplus."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.lower.backend import available_backends
from trtc.lower.context import trt_dtype
from trtc.lower.ops.attention import arange, given, scalar
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types


def rank_is(index: int, ranks: tuple[int, ...], what: str) -> Constraint:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index]
        if value.shape is None or value.shape.rank() not in ranks:
            rank = "unknown" if value.shape is None else value.shape.rank()
            return f"{what} must be {' or '.join(f'{r}-D' for r in ranks)} (it is {rank}-D)"
        return None

    return Constraint(f"{what} rank in {ranks}", check)


def static_dims(index: int, axes: tuple[int, ...], what: str) -> Constraint:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index]
        if value.shape is None or any(not isinstance(value.shape[a], int) for a in axes):
            return f"{what} must have static dims {axes} (shape {value.shape})"
        return None

    return Constraint(f"{what} dims {axes} static", check)


def const_scalar(ctx, value: float, dtype):
    """A 0-D constant of TensorRT type `dtype`."""
    return ctx.reshape(scalar(ctx, value, dtype, 1), [])


def elementwise_chain(ctx, first, *steps):
    """first op1 b1 op2 b2 ... (steps are (operation name, operand) pairs)."""
    E = ctx.trt.ElementWiseOperation
    out = first
    for op, operand in steps:
        out = ctx.elementwise(out, operand, getattr(E, op))
    return out


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
    base = ctx.elementwise(ctx.reshape(arange(ctx, batch), [-1, 1, 1, 1]),
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


# ------------------------------------------------------------------ NonMaxSuppression

NMS_TOPK_LIMIT = 5000  # TensorRT considers at most this many boxes per batch item and class


NMS_ON_RTX = ("TensorRT-RTX has no NonMaxSuppression kernel (INMSLayer, like INonZeroLayer, has no implementation "
              "there: no data-dependent output shapes): build with full TensorRT")


def _check_nms(node: ir.Node) -> str | None:
    if "tensorrt" not in available_backends():
        return NMS_ON_RTX
    boxes = node.inputs[0]
    if boxes.shape is not None and isinstance(boxes.shape[1], int) and boxes.shape[1] > NMS_TOPK_LIMIT:
        return f"{boxes.shape[1]} boxes exceed TensorRT's NMS limit of {NMS_TOPK_LIMIT}"
    return None


NMS_CONSTRAINTS = [tensor_types(), known_rank(0), known_rank(1),
                   Constraint("a backend with NMS, at most 5000 boxes", _check_nms)]


@converter("NonMaxSuppression", since=10, constraints=NMS_CONSTRAINTS)
def lower_non_max_suppression(ctx, node):
    """NonMaxSuppression -> INMSLayer (scores transposed to [batch, boxes, classes]); rows come sorted by
    batch then score (ONNX fixes no order), indices as int64."""
    trt = ctx.trt
    if ctx.backend.is_rtx:
        raise TrtcError(NMS_ON_RTX)
    boxes = ctx.tensor(node.inputs[0])
    scores = ctx.check(ctx.network.add_shuffle(ctx.tensor(node.inputs[1])))
    scores.first_transpose = (0, 2, 1)
    if given(node.inputs, 2):
        limit = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), trt.int32), [])
    else:
        limit = ctx.reshape(ctx.constant(np.zeros(1, np.int32)), [])  # ONNX default: select nothing
    layer = ctx.check(ctx.network.add_nms(boxes, scores.get_output(0), limit))
    for index in (3, 4):
        if given(node.inputs, index):
            layer.set_input(index, ctx.reshape(ctx.cast(ctx.tensor(node.inputs[index]), trt.float32), []))
    if node.attributes.get_int("center_point_box", 0):
        layer.bounding_box_format = trt.BoundingBoxFormat.CENTER_SIZES
    layer.topk_box_limit = NMS_TOPK_LIMIT
    layer.indices_type = trt.int64
    return [layer.get_output(0)]


# ------------------------------------------------------------------ windows

WINDOWS = {  # w[n] = sum(a_k cos(2 pi k n / D))
    "HannWindow": (0.5, -0.5), "HammingWindow": (25.0 / 46.0, -(1.0 - 25.0 / 46.0)),
    "BlackmanWindow": (0.42, -0.5, 0.08),
}


@converter(list(WINDOWS), since=17, constraints=[tensor_types()])
def lower_window(ctx, node):
    """Hann/Hamming/BlackmanWindow(size): sum_k a_k cos(2 pi k n / D), D = size (periodic) or size - 1.
    A static output length (from shape inference) keeps `size` out of shape computations."""
    E = ctx.trt.ElementWiseOperation
    out_type = trt_dtype(ctx.trt, node.outputs[0].dtype)
    periodic = node.attributes.get_int("periodic", 1)
    coefficients = WINDOWS[node.op_type]
    size = ctx.const(node.inputs[0])
    if size is not None:
        n = np.arange(int(size.reshape(())), dtype=np.float64)
        denominator = max(float(size.reshape(())) - (0 if periodic else 1), 1e-30)
        window = sum(a * np.cos(2 * math.pi * k * n / denominator) for k, a in enumerate(coefficients))
        return [ctx.cast(ctx.constant(window.astype(np.float32)), out_type)]
    size_t = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[0]), ctx.trt.float32), [1])
    length = node.outputs[0].shape[0] if node.outputs[0].shape is not None else None
    if isinstance(length, int):
        n = ctx.constant(np.arange(length, dtype=np.float32))
    else:
        n = ctx.cast(arange(ctx, ctx.cast(ctx.reshape(ctx.tensor(node.inputs[0]), [1]), ctx.trt.int64)),
                     ctx.trt.float32)
    denominator = size_t if periodic else ctx.elementwise(size_t, scalar(ctx, 1.0, ctx.trt.float32, 1), E.SUB)
    phase = ctx.elementwise(ctx.elementwise(n, scalar(ctx, 2 * math.pi, ctx.trt.float32, 1), E.PROD), denominator,
                            E.DIV)
    window = scalar(ctx, coefficients[0], ctx.trt.float32, 1)
    for k, a in enumerate(coefficients[1:], start=1):
        term = ctx.unary(ctx.elementwise(phase, scalar(ctx, float(k), ctx.trt.float32, 1), E.PROD),
                         ctx.trt.UnaryOperation.COS)
        window = ctx.elementwise(window, ctx.elementwise(term, scalar(ctx, a, ctx.trt.float32, 1), E.PROD), E.SUM)
    return [ctx.cast(window, out_type)]


# ------------------------------------------------------------------ random generators

RANDOM = {"RandomUniform": ("RANDOM_UNIFORM", ("low", 0.0), ("high", 1.0)),
          "RandomNormal": ("RANDOM_NORMAL", ("mean", 0.0), ("scale", 1.0))}


@converter(["RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike"], constraints=[tensor_types()])
def lower_random(ctx, node):
    """Random* -> a random fill of the `shape` attribute's (or the input's) shape; TensorRT draws the
    numbers (the seed attribute cannot be honoured: no two runtimes share a generator)."""
    kind, (first, first_default), (second, second_default) = RANDOM[node.op_type.removesuffix("Like")]
    out_type = trt_dtype(ctx.trt, node.outputs[0].dtype)
    fill_type = ctx.trt.float16 if out_type == ctx.trt.float16 else ctx.trt.float32
    if node.op_type.endswith("Like"):
        shape = ctx.shape_of(ctx.tensor(node.inputs[0]))
        rank = ctx.rank(ctx.tensor(node.inputs[0]))
    else:
        dims = list(node.attributes.get_ints("shape"))
        shape, rank = ctx.constant(np.array(dims, np.int64)), len(dims)
    layer = ctx.check(ctx.network.add_fill((0,) * rank, getattr(ctx.trt.FillOperation, kind), fill_type))
    layer.set_input(0, shape)
    layer.set_input(1, const_scalar(ctx, node.attributes.get_float(first, first_default), fill_type))
    layer.set_input(2, const_scalar(ctx, node.attributes.get_float(second, second_default), fill_type))
    return [ctx.cast(layer.get_output(0), out_type)]


# ------------------------------------------------------------------ old experimental ops


@converter("ImageScaler", constraints=[tensor_types(), rank_is(0, (4,), "the input")])
def lower_image_scaler(ctx, node):
    """ImageScaler: scale * x + bias[c] (NCHW)."""
    x = ctx.tensor(node.inputs[0])
    bias = np.array(node.attributes.get_floats("bias", [0.0]), np.float32).reshape(1, -1, 1, 1)
    scaled = ctx.elementwise(x, scalar(ctx, node.attributes.get_float("scale", 1.0), x.dtype, 4),
                             ctx.trt.ElementWiseOperation.PROD)
    return [ctx.elementwise(scaled, ctx.cast(ctx.constant(bias), x.dtype), ctx.trt.ElementWiseOperation.SUM)]


@converter("ParametricSoftplus", constraints=[tensor_types()])
def lower_parametric_softplus(ctx, node):
    """ParametricSoftplus: alpha * ln(1 + exp(beta * x)) -> SOFTPLUS activation."""
    layer = ctx.check(ctx.network.add_activation(ctx.tensor(node.inputs[0]), ctx.trt.ActivationType.SOFTPLUS))
    layer.alpha = node.attributes.get_float("alpha", 1.0)
    layer.beta = node.attributes.get_float("beta", 1.0)
    return [layer.get_output(0)]


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
        position = ctx.elementwise(delta, ctx.cast(ctx.constant(base.astype(np.float32)), delta.dtype), E.SUM)
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


def pick_axis(ctx, tensor, index: int, axis: int):
    """tensor[..., index, ...] at `axis` (the axis is dropped)."""
    indices = ctx.reshape(ctx.constant(np.array([index], np.int32)), [])
    return ctx.check(ctx.network.add_gather(tensor, indices, axis)).get_output(0)


def concat_last(ctx, tensors):
    """Stack same-shape tensors along a new last axis."""
    axes = ctx.constant(np.array([ctx.rank(tensors[0])], np.int64))
    expanded = [ctx.check(ctx.network.add_unsqueeze(t, axes)).get_output(0) for t in tensors]
    layer = ctx.check(ctx.network.add_concatenation(expanded))
    layer.axis = ctx.rank(tensors[0])
    return layer.get_output(0)


# ------------------------------------------------------------------ STFT


def _stft_lengths(node: ir.Node) -> tuple[int | None, int | None]:
    """(frame length, frame count) when the IR fixes them: frame_length constant, else the window's
    static length, else the static signal length; frames from the output's static shape."""
    signal, out = node.inputs[0], node.outputs[0]
    length = None
    if given(node.inputs, 3) and node.inputs[3].const_value is not None and not node.inputs[3].is_graph_input():
        length = int(node.inputs[3].const_value.numpy().reshape(()))
    elif given(node.inputs, 2) and node.inputs[2].shape is not None and isinstance(node.inputs[2].shape[0], int):
        length = node.inputs[2].shape[0]
    elif not given(node.inputs, 3) and signal.shape is not None and isinstance(signal.shape[-2], int):
        length = signal.shape[-2]
    frames = out.shape[1] if out.shape is not None and isinstance(out.shape[1], int) else None
    return length, frames


def _check_stft(node: ir.Node) -> str | None:
    length, frames = _stft_lengths(node)
    if length is None:
        return "the frame length must be known while building (a constant frame_length or a static window length)"
    if frames is None:
        return "the number of frames must be static (a constant frame_step and a static signal length)"
    return None


@converter("STFT", since=17, constraints=[tensor_types(), rank_is(0, (3,), "the signal"),
                                          Constraint("static frame length and count", _check_stft)])
def lower_stft(ctx, node):
    """STFT: frames gathered at f * frame_step + k, windowed, and transformed by matmuls with the
    [L, bins] cos/sin DFT matrices (onesided keeps L // 2 + 1 bins); output [batch, frames, bins, 2]."""
    E, MO = ctx.trt.ElementWiseOperation, ctx.trt.MatrixOperation
    signal = ctx.tensor(node.inputs[0])
    length, frames = _stft_lengths(node)
    bins = length // 2 + 1 if node.attributes.get_int("onesided", 1) else length
    step = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[1]), ctx.trt.int64), [1, 1])
    starts = ctx.elementwise(ctx.constant(np.arange(frames, dtype=np.int64).reshape(-1, 1)), step, E.PROD)
    index = ctx.elementwise(starts, ctx.constant(np.arange(length, dtype=np.int64).reshape(1, -1)), E.SUM)
    framed = ctx.check(ctx.network.add_gather(signal, index, 1)).get_output(0)  # [B, F, L, C]
    if given(node.inputs, 2):
        framed = ctx.elementwise(framed, ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), signal.dtype),
                                                     [1, 1, -1, 1]), E.PROD)
    angle = 2 * np.pi * np.outer(np.arange(length), np.arange(bins)) / length
    cos, sin = (ctx.cast(ctx.constant(m.astype(np.float32)[None]), signal.dtype)
                for m in (np.cos(angle), np.sin(angle)))

    def times(part, matrix):
        return ctx.check(ctx.network.add_matrix_multiply(part, MO.NONE, matrix, MO.NONE)).get_output(0)

    real = pick_axis(ctx, framed, 0, 3)
    re, im = times(real, cos), ctx.unary(times(real, sin), ctx.trt.UnaryOperation.NEG)
    if int(signal.shape[2]) == 2:  # (a + ib)(cos - i sin) = a cos + b sin + i (b cos - a sin)
        imag = pick_axis(ctx, framed, 1, 3)
        re = ctx.elementwise(re, times(imag, sin), E.SUM)
        im = ctx.elementwise(im, times(imag, cos), E.SUM)
    return [concat_last(ctx, [re, im])]


# ------------------------------------------------------------------ DFT


def _dft_axis(node: ir.Node) -> int | None:
    """The DFT axis (an attribute up to opset 19, a constant input from 20), non-negative."""
    rank = node.inputs[0].shape.rank()
    if "axis" in node.attributes:
        axis = node.attributes.get_int("axis")
    elif given(node.inputs, 2):
        value = node.inputs[2]
        if value.const_value is None or value.is_graph_input():
            return None
        axis = int(value.const_value.numpy().reshape(()))
    else:  # the default moved from 1 to -2 when the axis became an input (opset 20)
        imports = node.graph.opset_imports if node.graph is not None else {}
        opset = node.version or imports.get("", imports.get("ai.onnx", 20))
        axis = -2 if opset >= 20 else 1
    return axis % rank


def _dft_length(node: ir.Node) -> int | None:
    """dft_length: the constant input, else the axis length (2 * (n - 1) for an inverse one-sided DFT)."""
    if given(node.inputs, 1):
        value = node.inputs[1]
        if value.const_value is None or value.is_graph_input():
            return None
        return int(value.const_value.numpy().reshape(()))
    size = node.inputs[0].shape[_dft_axis(node)]
    if not isinstance(size, int):
        return None
    attrs = node.attributes
    return 2 * (size - 1) if attrs.get_int("inverse", 0) and attrs.get_int("onesided", 0) else size


def _check_dft(node: ir.Node) -> str | None:
    if _dft_axis(node) is None:
        return "the axis must be a constant"
    axis = _dft_axis(node)
    if axis == node.inputs[0].shape.rank() - 1:
        return "the last axis holds the real/imaginary parts, not a signal"
    if not isinstance(node.inputs[0].shape[axis], int) or _dft_length(node) is None:
        return "the transformed axis and dft_length must be static"
    return None


@converter("DFT", since=17, constraints=[tensor_types(), known_rank(0), Constraint("constant axis and length",
                                                                                 _check_dft)])
def lower_dft(ctx, node):
    """DFT as matmuls with cos/sin matrices along the axis: forward, inverse (1/L), one-sided forward
    (L // 2 + 1 bins) and one-sided inverse (a real signal from the Hermitian half); dft_length pads
    or truncates through the matrices' rows."""
    E, MO = ctx.trt.ElementWiseOperation, ctx.trt.MatrixOperation
    x = ctx.tensor(node.inputs[0])
    rank, axis, length = ctx.rank(x), _dft_axis(node), _dft_length(node)
    inverse, onesided = node.attributes.get_int("inverse", 0), node.attributes.get_int("onesided", 0)
    size = int(x.shape[axis])
    outputs = length if inverse or not onesided else length // 2 + 1
    rows = np.arange(size)
    angle = 2 * np.pi * np.outer(rows, np.arange(outputs)) / length
    weight = (rows < length).astype(np.float64)[:, None]
    if inverse and onesided:  # bins 1 .. ceil(L/2)-1 stand for their conjugate twins too
        twins = np.where((rows == 0) | (2 * rows == length), 1.0, 2.0) * (2 * rows <= length)
        weight = weight * twins[:, None]
    if inverse:
        weight = weight / length
    sign = -1.0 if inverse else 1.0
    perm = [d for d in range(rank - 1) if d != axis] + [axis]  # the axis last, complex parts dropped

    def matrix(values):
        data = (weight * values).astype(np.float32).reshape((1,) * (rank - 3) + values.shape)
        return ctx.cast(ctx.constant(data), x.dtype)

    def times(part, values):
        moved = ctx.check(ctx.network.add_shuffle(part))
        moved.first_transpose = tuple(perm)
        return ctx.check(ctx.network.add_matrix_multiply(moved.get_output(0), MO.NONE, matrix(values),
                                                         MO.NONE)).get_output(0)

    real = pick_axis(ctx, x, 0, rank - 1)
    imag = pick_axis(ctx, x, 1, rank - 1) if int(x.shape[-1]) == 2 else None
    re = times(real, np.cos(angle))
    im = ctx.unary(times(real, sign * np.sin(angle)), ctx.trt.UnaryOperation.NEG)
    if imag is not None:
        re = ctx.elementwise(re, times(imag, sign * np.sin(angle)), E.SUM)
        im = ctx.elementwise(im, times(imag, np.cos(angle)), E.SUM)
    parts = [re] if inverse and onesided else [re, im]
    back = [perm.index(d) for d in range(rank - 1)]
    restored = []
    for part in parts:
        layer = ctx.check(ctx.network.add_shuffle(part))
        layer.first_transpose = tuple(back)
        restored.append(layer.get_output(0))
    return [concat_last(ctx, restored)]
