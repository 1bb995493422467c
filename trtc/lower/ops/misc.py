"""Remaining converters: NonMaxSuppression, random generators, ImageScaler and ParametricSoftplus."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops._helpers import const_scalar, rank_is
from trtc.lower.ops.attention import given, scalar
from trtc.lower.registry import Constraint, converter, known_rank, tensor_types

# ------------------------------------------------------------------ NonMaxSuppression

NMS_TOPK_LIMIT = 5000  # TensorRT considers at most this many boxes per batch item and class


NMS_ON_RTX = ("TensorRT-RTX has no NonMaxSuppression kernel (INMSLayer, like INonZeroLayer, has no implementation "
              "there: no data-dependent output shapes): build with full TensorRT")


def _check_nms(node: ir.Node, backend: str) -> str | None:
    if backend == "tensorrt-rtx":
        return NMS_ON_RTX
    boxes = node.inputs[0]
    if boxes.shape is not None and isinstance(boxes.shape[1], int) and boxes.shape[1] > NMS_TOPK_LIMIT:
        return f"{boxes.shape[1]} boxes exceed TensorRT's NMS limit of {NMS_TOPK_LIMIT}"
    return None


NMS_CONSTRAINTS = [tensor_types(), known_rank(0), known_rank(1),
                   Constraint("a backend with NMS, at most 5000 boxes", _check_nms, on_backend=True)]


@converter("NonMaxSuppression", since=10, constraints=NMS_CONSTRAINTS)
def lower_non_max_suppression(ctx, node):
    """NonMaxSuppression -> INMSLayer (scores transposed to [batch, boxes, classes]); rows come sorted by
    batch then score (ONNX fixes no order), indices as int64."""
    trt = ctx.trt
    boxes = ctx.tensor(node.inputs[0])
    scores = ctx.check(ctx.network.add_shuffle(ctx.tensor(node.inputs[1])))
    scores.first_transpose = (0, 2, 1)
    if given(node.inputs, 2):
        limit = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), trt.int32), [])
    else:
        limit = ctx.constant(np.zeros((), np.int32))  # ONNX default: select nothing
    layer = ctx.check(ctx.network.add_nms(boxes, scores.get_output(0), limit))
    for index in (3, 4):
        if given(node.inputs, index):
            layer.set_input(index, ctx.reshape(ctx.cast(ctx.tensor(node.inputs[index]), trt.float32), []))
    if node.attributes.get_int("center_point_box", 0):
        layer.bounding_box_format = trt.BoundingBoxFormat.CENTER_SIZES
    layer.topk_box_limit = NMS_TOPK_LIMIT
    layer.indices_type = trt.int64
    return [layer.get_output(0)]


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
    return [ctx.elementwise(scaled, ctx.constant_as(bias, x.dtype), ctx.trt.ElementWiseOperation.SUM)]


@converter("ParametricSoftplus", constraints=[tensor_types()])
def lower_parametric_softplus(ctx, node):
    """ParametricSoftplus: alpha * ln(1 + exp(beta * x)) -> SOFTPLUS activation."""
    layer = ctx.check(ctx.network.add_activation(ctx.tensor(node.inputs[0]), ctx.trt.ActivationType.SOFTPLUS))
    layer.alpha = node.attributes.get_float("alpha", 1.0)
    layer.beta = node.attributes.get_float("beta", 1.0)
    return [layer.get_output(0)]
