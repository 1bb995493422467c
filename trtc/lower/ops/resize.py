"""Resize (and Upsample, which the frontend's opset upgrade turns into Resize) -> IResizeLayer.

ONNX -> TensorRT: mode nearest/linear/cubic -> NEAREST/LINEAR/CUBIC; coordinate transformation
half_pixel / align_corners / asymmetric map directly, pytorch_half_pixel is HALF_PIXEL with the
UPPER selector for one-pixel outputs, tf_half_pixel_for_nn is HALF_PIXEL with CEIL rounding,
half_pixel_symmetric is HALF_PIXEL where the two agree (whole output sizes);
nearest_mode round_prefer_floor/round_prefer_ceil/floor/ceil -> HALF_DOWN/HALF_UP/FLOOR/CEIL.
Constant scales are set as scales (so coordinates use them exactly); sizes, and scales known only
at run time, become the output shape (TensorRT then maps coordinates by output/input)."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops._shape_math import ShapeMath, integral_shape_source
from trtc.lower.ops.slice import shape_input
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types

MODES = {"nearest": "NEAREST", "linear": "LINEAR", "cubic": "CUBIC"}
TRANSFORMS = {"half_pixel": ("HALF_PIXEL", "FORMULA"), "pytorch_half_pixel": ("HALF_PIXEL", "UPPER"),
              "align_corners": ("ALIGN_CORNERS", "FORMULA"), "asymmetric": ("ASYMMETRIC", "FORMULA"),
              "tf_half_pixel_for_nn": ("HALF_PIXEL", "FORMULA"), "half_pixel_symmetric": ("HALF_PIXEL", "FORMULA")}
ROUNDING = {"round_prefer_floor": "HALF_DOWN", "round_prefer_ceil": "HALF_UP", "floor": "FLOOR", "ceil": "CEIL"}
INNERMOST = {"nearest": 3, "linear": 3, "cubic": 2}


def _present(node, index: int) -> bool:
    return index < len(node.inputs) and node.inputs[index] is not None


def _resize_axes(node, rank: int) -> list[int]:
    attr = node.attributes.get("axes")
    return [a + rank if a < 0 else a for a in attr.value] if attr is not None else list(range(rank))


def _resized_axes(node) -> str | None:
    """TensorRT resizes only the innermost 3 dims (2 for cubic): check what constants reveal."""
    x = node.inputs[0]
    if x.shape is None:
        return None
    rank = x.shape.rank()
    axes = _resize_axes(node, rank)
    changed: list[int] = []
    if _present(node, 3) and node.inputs[3].const_value is not None:
        sizes = node.inputs[3].const_value.numpy().reshape(-1)
        changed = [a for a, s in zip(axes, sizes) if x.shape.dims[a] != int(s)]
    elif _present(node, 2) and node.inputs[2].const_value is not None:
        scales = node.inputs[2].const_value.numpy().reshape(-1)
        changed = [a for a, s in zip(axes, scales) if float(s) != 1.0]
    mode = node.attributes.get_string("mode", "nearest")
    limit = INNERMOST.get(mode, 3)
    outer = [a for a in changed if a < rank - limit]
    if outer:
        return f"{mode} resize of axis {outer[0]}: TensorRT resizes only the innermost {limit} dims"
    return None


def _no_antialias(node) -> str | None:
    if node.attributes.get_int("antialias", 0):
        return "antialias=1 is not supported (TensorRT's resize has no antialiasing filter)"
    return None


def _symmetric_is_half_pixel(node) -> str | None:
    """half_pixel_symmetric shifts coordinates by center * (1 - floor(dim * scale) / (dim * scale)),
    which is 0 (plain half_pixel) when dim * scale is whole: always with sizes, and with constant
    scales that are integers or whose products with static dims are."""
    if node.attributes.get_string("coordinate_transformation_mode", "half_pixel") != "half_pixel_symmetric":
        return None
    if _present(node, 3):
        return None
    x, scales = node.inputs[0], node.inputs[2] if _present(node, 2) else None
    if scales is not None and scales.const_value is not None and x.shape is not None:
        axes = _resize_axes(node, x.shape.rank())
        products = [(x.shape.dims[a], float(s)) for a, s in zip(axes, scales.const_value.numpy().reshape(-1))]
        if all(s.is_integer() or (isinstance(d, int) and float(d * s).is_integer()) for d, s in products):
            return None
    return ("half_pixel_symmetric is supported only where dim * scale is a whole number (sizes, or constant "
            "scales over static dims): TensorRT has no symmetric offset")


@converter("Resize", since=11, constraints=[
    tensor_types(), known_rank(0), attribute_in("mode", tuple(MODES), "nearest"),
    attribute_in("coordinate_transformation_mode", tuple(TRANSFORMS), "half_pixel"),
    attribute_in("nearest_mode", tuple(ROUNDING), "round_prefer_floor"),
    attribute_in("keep_aspect_ratio_policy", ("stretch", "not_larger", "not_smaller"), "stretch"),
    Constraint("no antialias", _no_antialias), Constraint("innermost resized axes", _resized_axes),
    Constraint("half_pixel_symmetric equal to half_pixel", _symmetric_is_half_pixel),
    integral_shape_source((2,), "scales")])
def lower_resize(ctx, node):
    """Resize(X, roi, scales, sizes) with the attribute mapping in the module docstring."""
    x = ctx.tensor(node.inputs[0])
    layer = ctx.check(ctx.network.add_resize(x))
    _set_modes(ctx, layer, node)
    rank = ctx.rank(x)
    axes = _resize_axes(node, rank)
    if _present(node, 3):
        _set_shape(ctx, layer, _sizes(ctx, node, x, axes))
        return [layer.get_output(0)]
    scales = ctx.const(node.inputs[2])
    if scales is not None:
        full = [1.0] * rank
        for axis, scale in zip(axes, np.asarray(scales, np.float64).reshape(-1)):
            full[axis] = float(scale)
        layer.scales = full
    else:
        _set_shape(ctx, layer, _scaled_dims(ctx, node, x, axes))
    return [layer.get_output(0)]


def _set_modes(ctx, layer, node):
    trt = ctx.trt
    attrs = node.attributes
    mode = attrs.get_string("mode", "nearest")
    transform, selector = TRANSFORMS[attrs.get_string("coordinate_transformation_mode", "half_pixel")]
    layer.resize_mode = getattr(trt.InterpolationMode, MODES[mode])
    layer.coordinate_transformation = getattr(trt.ResizeCoordinateTransformation, transform)
    layer.selector_for_single_pixel = getattr(trt.ResizeSelector, selector)
    rounding = ROUNDING[attrs.get_string("nearest_mode", "round_prefer_floor")]
    if attrs.get_string("coordinate_transformation_mode", "half_pixel") == "tf_half_pixel_for_nn":
        rounding = "CEIL"
    layer.nearest_rounding = getattr(trt.ResizeRoundMode, rounding)
    layer.exclude_outside = bool(attrs.get_int("exclude_outside", 0))
    if mode == "cubic":
        layer.cubic_coeff = attrs.get_float("cubic_coeff_a", -0.75)


def _set_shape(ctx, layer, shape):
    if ShapeMath.is_static(shape):
        layer.shape = tuple(int(d) for d in shape)
    else:
        layer.set_input(1, shape)


def _interlace(ctx, dims, values, axes: list[int]):
    """dims with dims[axes[i]] replaced by values[i] (1-D shape values)."""
    math = ShapeMath(ctx)
    rank = len(dims) if math.is_static(dims) else dims.shape[0]
    if axes == list(range(rank)):
        return values
    index = np.arange(rank, dtype=np.int64)
    for position, axis in enumerate(axes):
        index[axis] = rank + position
    return math.gather(math.concat([dims, values]), index)


def _sizes(ctx, node, x, axes):
    """The output shape from `sizes`, with keep_aspect_ratio_policy applied: one scale for all
    resized axes, min (not_larger) or max (not_smaller) of sizes / dims, and round(scale * dim)."""
    math = ShapeMath(ctx)
    sizes = shape_input(ctx, node, 3)
    dims = math.dims(x)
    policy = node.attributes.get_string("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        axis_dims = math.gather(dims, np.array(axes, np.int64))
        if math.is_static(sizes) and math.is_static(axis_dims):
            ratios = sizes / axis_dims
            scale = ratios.min() if policy == "not_larger" else ratios.max()
            sizes = np.round(scale * axis_dims).astype(np.int64)
        else:
            sizes = _policy_sizes(ctx, math.tensor(sizes), math.tensor(axis_dims), policy)
    return _interlace(ctx, dims, sizes, axes)


def _policy_sizes(ctx, sizes, dims, policy: str):
    trt = ctx.trt
    E = trt.ElementWiseOperation
    sizes_f, dims_f = ctx.cast(sizes, trt.float32), ctx.cast(dims, trt.float32)
    ratios = ctx.elementwise(sizes_f, dims_f, E.DIV)
    op = trt.ReduceOperation.MIN if policy == "not_larger" else trt.ReduceOperation.MAX
    scale = ctx.check(ctx.network.add_reduce(ratios, op, 1, True)).get_output(0)
    return ctx.cast(ctx.unary(ctx.elementwise(scale, dims_f, E.PROD), trt.UnaryOperation.ROUND), trt.int64)


def _scaled_dims(ctx, node, x, axes):
    """floor(dim * scale) on the resized axes, for scales known only at run time."""
    trt = ctx.trt
    math = ShapeMath(ctx)
    dims = math.dims(x)
    axis_dims = ctx.cast(math.tensor(math.gather(dims, np.array(axes, np.int64))), trt.float32)
    scales = ctx.cast(ctx.reshape(ctx.tensor(node.inputs[2]), [-1]), trt.float32)
    scaled = ctx.elementwise(axis_dims, scales, trt.ElementWiseOperation.PROD)
    sizes = ctx.cast(ctx.unary(scaled, trt.UnaryOperation.FLOOR), trt.int64)
    return _interlace(ctx, dims, sizes, axes)
