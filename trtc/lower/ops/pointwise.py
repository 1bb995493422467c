"""Elementwise ops built from a few layers: Where, IsNaN, Shrink, Mish, Swish, CastLike, and
Dropout in inference (the identity, with an all-true mask)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops._shape_math import ShapeMath, broadcast_scalar, constant
from trtc.lower.registry import Constraint, converter, tensor_types


def select(ctx, condition, when_true, when_false):
    """ISelectLayer with numpy broadcasting."""
    condition, when_true, when_false = ctx.broadcast(condition, when_true, when_false)
    return ctx.check(ctx.network.add_select(condition, when_true, when_false)).get_output(0)


@converter("Where", constraints=[tensor_types()])
def lower_where(ctx, node):
    """Where(condition, x, y) -> ISelectLayer (all three broadcast)."""
    return [select(ctx, *ctx.operands(node.inputs))]


@converter("IsNaN", constraints=[tensor_types()])
def lower_is_nan(ctx, node):
    """IsNaN(x) -> the ISNAN unary."""
    return [ctx.unary(ctx.tensor(node.inputs[0]), ctx.trt.UnaryOperation.ISNAN)]


@converter("Shrink", constraints=[tensor_types()])
def lower_shrink(ctx, node):
    """Shrink(x, lambd, bias): x + bias where x < -lambd, x - bias where x > lambd, else 0."""
    x = ctx.tensor(node.inputs[0])
    dtype = node.inputs[0].dtype.numpy()
    lambd, bias = node.attributes.get_float("lambd", 0.5), node.attributes.get_float("bias", 0.0)
    E = ctx.trt.ElementWiseOperation

    def scalar(value):  # at x's rank: no broadcast layer
        return constant(ctx, np.full((1,) * ctx.rank(x), value).astype(dtype))

    below = ctx.elementwise(x, scalar(-lambd), E.LESS)
    above = ctx.elementwise(x, scalar(lambd), E.GREATER)
    shrunk = select(ctx, above, ctx.elementwise(x, scalar(bias), E.SUB), scalar(0))
    return [select(ctx, below, ctx.elementwise(x, scalar(bias), E.SUM), shrunk)]


@converter("Mish", constraints=[tensor_types()])
def lower_mish(ctx, node):
    """Mish(x) = x * tanh(softplus(x))."""
    x = ctx.tensor(node.inputs[0])
    A = ctx.trt.ActivationType
    softplus = ctx.check(ctx.network.add_activation(x, A.SOFTPLUS))
    softplus.alpha, softplus.beta = 1.0, 1.0
    tanh = ctx.check(ctx.network.add_activation(softplus.get_output(0), A.TANH)).get_output(0)
    return [ctx.elementwise(x, tanh, ctx.trt.ElementWiseOperation.PROD)]


@converter("Swish", constraints=[tensor_types()])
def lower_swish(ctx, node):
    """Swish(x, alpha) = x * sigmoid(alpha * x)."""
    x = ctx.tensor(node.inputs[0])
    E = ctx.trt.ElementWiseOperation
    alpha = node.attributes.get_float("alpha", 1.0)
    scaled = x if alpha == 1.0 else ctx.elementwise(
        x, constant(ctx, np.array(alpha, node.inputs[0].dtype.numpy())), E.PROD)
    gate = ctx.check(ctx.network.add_activation(scaled, ctx.trt.ActivationType.SIGMOID)).get_output(0)
    return [ctx.elementwise(x, gate, E.PROD)]


QUANTIZED = {ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4}


def cast_to(ctx, tensor, dtype: ir.DataType):
    """Cast to an ONNX type; TensorRT reaches FP8 only by a quantize layer and leaves FP8/INT4
    only by a dequantize layer, so those casts go through them with a scale of 1."""
    trt = ctx.trt

    def scale():  # only where a (de)quantize layer needs it
        return constant(ctx, np.ones((), np.float32))

    if tensor.dtype in (trt.fp8, trt.int4):
        tensor = ctx.check(ctx.network.add_dequantize(tensor, scale(), trt.float32)).get_output(0)
    if dtype == ir.DataType.FLOAT8E4M3FN:
        if tensor.dtype not in (trt.float32, trt.float16, trt.bfloat16):
            tensor = ctx.cast(tensor, trt.float32)
        return ctx.check(ctx.network.add_quantize(tensor, scale(), trt.fp8)).get_output(0)
    return ctx.cast(tensor, trt_dtype(trt, dtype))


def _castable(node) -> str | None:
    target = node.outputs[0].dtype
    if target == ir.DataType.INT4 and node.inputs[0].dtype != ir.DataType.INT4:
        return "a cast to INT4 is not supported (TensorRT reaches INT4 only by quantizing)"
    source = node.inputs[0]
    if source.dtype == ir.DataType.INT4 and source.shape is not None and source.shape.is_static():
        if int(np.prod(source.shape.numpy())) % 2:
            return "an INT4 tensor with an odd element count cannot be dequantized by TensorRT"
    saturate = node.attributes.get_int("saturate", 1)
    if target == ir.DataType.FLOAT8E4M3FN and not saturate:
        return "saturate=0 is not supported (TensorRT's FP8 quantization saturates)"
    return None


@converter("CastLike", constraints=[tensor_types(), Constraint("cast TensorRT can express", _castable)])
def lower_cast_like(ctx, node):
    """CastLike(x, like) -> ICastLayer to like's type (FP8/INT4 via quantize/dequantize); a constant x
    is cast while building."""
    from trtc.lower.ops.unary import cast_data

    folded = cast_data(ctx.const(node.inputs[0]), node.outputs[0].dtype)
    if folded is not None:
        return [folded]
    return [cast_to(ctx, ctx.tensor(node.inputs[0]), node.outputs[0].dtype)]


def _dropout_is_identity(node) -> str | None:
    """Dropout is deterministic without training, or in training with a ratio of exactly 0."""
    def constant_of(index):
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            return None, True
        if value.const_value is None or value.is_graph_input():
            return value, False
        return value.const_value.numpy(), True

    training, known = constant_of(2)
    if not known:
        hint = f": give its value with --freeze {training.name}=false" if training.is_graph_input() else ""
        return f"training_mode ({training.name!r}) must be a constant (random dropout cannot be built){hint}"
    if training is None or not bool(np.asarray(training)):
        return None
    ratio, known = constant_of(1)
    if known and ratio is not None and float(np.asarray(ratio)) == 0.0:
        return None
    return "training-mode Dropout with a nonzero ratio is random; TensorRT builds inference only"


@converter("Dropout", since=12, constraints=[tensor_types(), Constraint("inference dropout", _dropout_is_identity)])
def lower_dropout(ctx, node):
    """Dropout in inference (or with ratio 0): output = data, mask = all true."""
    x = ctx.tensor(node.inputs[0])
    out = ctx.check(ctx.network.add_identity(x)).get_output(0)
    mask = None
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].name:
        mask = broadcast_scalar(ctx, np.ones((), np.bool_), ShapeMath(ctx).dims(x))
    return [out, mask]
