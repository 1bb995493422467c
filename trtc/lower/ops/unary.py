"""Unary math ops -> IUnaryLayer, and activations -> IActivationLayer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.registry import attribute_in, converter, tensor_types

UNARY = {
    "Abs": "ABS", "Neg": "NEG", "Sqrt": "SQRT", "Exp": "EXP", "Log": "LOG", "Reciprocal": "RECIP",
    "Sin": "SIN", "Cos": "COS", "Tan": "TAN", "Sinh": "SINH", "Cosh": "COSH", "Asin": "ASIN",
    "Acos": "ACOS", "Atan": "ATAN", "Asinh": "ASINH", "Acosh": "ACOSH", "Atanh": "ATANH",
    "Ceil": "CEIL", "Floor": "FLOOR", "Erf": "ERF", "Not": "NOT", "Sign": "SIGN", "Round": "ROUND",
    "IsInf": "ISINF",
}


@converter(list(UNARY), constraints=[tensor_types()])
def lower_unary(ctx, node):
    """Elementwise unary math."""
    return [ctx.unary(ctx.tensor(node.inputs[0]), getattr(ctx.trt.UnaryOperation, UNARY[node.op_type]))]


ACTIVATIONS = {
    "Relu": ("RELU", None, None), "Sigmoid": ("SIGMOID", None, None), "Tanh": ("TANH", None, None),
    "LeakyRelu": ("LEAKY_RELU", ("alpha", 0.01), None), "Elu": ("ELU", ("alpha", 1.0), None),
    "Selu": ("SELU", ("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
    "Softsign": ("SOFTSIGN", None, None), "Softplus": ("SOFTPLUS", None, None),
    "HardSigmoid": ("HARD_SIGMOID", ("alpha", 0.2), ("beta", 0.5)),
    "ThresholdedRelu": ("THRESHOLDED_RELU", ("alpha", 1.0), None),
    "ScaledTanh": ("SCALED_TANH", ("alpha", 1.0), ("beta", 1.0)),
}


@converter(list(ACTIVATIONS), constraints=[tensor_types()])
def lower_activation(ctx, node):
    """Activations with their alpha/beta attributes."""
    kind, alpha, beta = ACTIVATIONS[node.op_type]
    layer = ctx.check(ctx.network.add_activation(ctx.tensor(node.inputs[0]), getattr(ctx.trt.ActivationType, kind)))
    if node.op_type == "Softplus":
        layer.alpha, layer.beta = 1.0, 1.0  # TensorRT: alpha*log(exp(beta*x)+1)
    if alpha:
        layer.alpha = node.attributes.get_float(alpha[0], alpha[1])
    if beta:
        layer.beta = node.attributes.get_float(beta[0], beta[1])
    return [layer.get_output(0)]


@converter("Celu", constraints=[tensor_types()])
def lower_celu(ctx, node):
    """Celu(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (TensorRT-RTX has no CELU activation)."""
    E, U = ctx.trt.ElementWiseOperation, ctx.trt.UnaryOperation
    x = ctx.tensor(node.inputs[0])
    dtype = node.outputs[0].dtype.numpy()
    shape = (1,) * ctx.rank(x)  # constants at x's rank: no broadcast layers
    alpha = ctx.constant(np.full(shape, node.attributes.get_float("alpha", 1.0), dtype=dtype))
    zero, one = ctx.constant(np.zeros(shape, dtype=dtype)), ctx.constant(np.ones(shape, dtype=dtype))
    negative = ctx.elementwise(alpha, ctx.elementwise(ctx.unary(ctx.elementwise(x, alpha, E.DIV), U.EXP), one, E.SUB),
                               E.PROD)
    return [ctx.elementwise(ctx.elementwise(x, zero, E.MAX), ctx.elementwise(negative, zero, E.MIN), E.SUM)]


@converter("Gelu", since=20, constraints=[tensor_types(), attribute_in("approximate", ("none", "tanh"), "none")])
def lower_gelu(ctx, node):
    """Gelu -> GELU_ERF or GELU_TANH activation."""
    kind = "GELU_TANH" if node.attributes.get_string("approximate", "none") == "tanh" else "GELU_ERF"
    layer = ctx.check(ctx.network.add_activation(ctx.tensor(node.inputs[0]), getattr(ctx.trt.ActivationType, kind)))
    return [layer.get_output(0)]


@converter("PRelu", constraints=[tensor_types()])
def lower_prelu(ctx, node):
    """PRelu(x, slope) with the slope broadcast to x's rank."""
    x, slope = ctx.operands(node.inputs[:2])
    return [ctx.check(ctx.network.add_parametric_relu(x, slope)).get_output(0)]


@converter("Clip", since=11, constraints=[tensor_types()])
def lower_clip(ctx, node):
    """Clip(x, min, max) (min/max optional inputs): one CLIP activation for a float x with constant finite
    bounds, as TensorRT's ONNX parser builds it; an absent bound is the type's lowest/largest finite value,
    ONNX's default (so an infinity becomes it, as in onnxruntime). Otherwise Max and/or Min, the bounds made
    at x's rank."""
    E, trt = ctx.trt.ElementWiseOperation, ctx.trt
    x = ctx.tensor(node.inputs[0])
    bounds = [node.inputs[i] if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].name
              else None for i in (1, 2)]
    data = [None if b is None else ctx.const(b) for b in bounds]
    if x.dtype in (trt.float32, trt.float16, trt.bfloat16) and all(
            b is None or (d is not None and d.size == 1 and np.isfinite(d).all()) for b, d in zip(bounds, data)):
        largest = float(_finfo(x.dtype, trt).max)
        layer = ctx.check(ctx.network.add_activation(x, trt.ActivationType.CLIP))
        # TensorRT refuses infinite bounds: the layer's parameters must be finite.
        layer.alpha = -largest if data[0] is None else float(np.asarray(data[0], np.float64).reshape(()))
        layer.beta = largest if data[1] is None else float(np.asarray(data[1], np.float64).reshape(()))
        return [layer.get_output(0)]
    out, rank = x, ctx.rank(x)
    for bound, op in zip(bounds, (E.MAX, E.MIN)):
        if bound is not None:
            out = ctx.elementwise(out, ctx.operand(bound, rank), op)
    return [out]


def _finfo(dtype, trt):
    """numpy's finfo of a TensorRT float type."""
    if dtype == trt.bfloat16:
        import ml_dtypes

        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(trt.nptype(dtype))


@converter("Identity", constraints=[tensor_types()])
def lower_identity(ctx, node):
    return [ctx.check(ctx.network.add_identity(ctx.tensor(node.inputs[0]))).get_output(0)]


@converter("Cast", constraints=[tensor_types()])
def lower_cast(ctx, node):
    """Cast -> ICastLayer (to the output's TensorRT type); a constant is made in that type."""
    from trtc.lower.context import trt_dtype

    folded = cast_data(ctx.const(node.inputs[0]), node.outputs[0].dtype)
    if folded is not None:
        return [folded]
    return [ctx.tensor_as(node.inputs[0], trt_dtype(ctx.trt, node.outputs[0].dtype))]


# Casts of constants computed while building (numpy converts as TensorRT's cast does: floats round to nearest
# even, towards zero into integers); the others stay cast layers.
FOLDED_CASTS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.INT32, ir.DataType.INT64}


def cast_data(data: np.ndarray | None, dtype: ir.DataType) -> np.ndarray | None:
    """`data` cast to `dtype` while building (no layer), or None when it is not known or not so cast."""
    if data is None or dtype not in FOLDED_CASTS:
        return None
    return np.asarray(data).astype(dtype.numpy())


@converter("HardSwish", constraints=[tensor_types()])
def lower_hard_swish(ctx, node):
    """x * HardSigmoid(x; alpha=1/6, beta=0.5)."""
    x = ctx.tensor(node.inputs[0])
    layer = ctx.check(ctx.network.add_activation(x, ctx.trt.ActivationType.HARD_SIGMOID))
    layer.alpha, layer.beta = 1.0 / 6.0, 0.5
    return [ctx.elementwise(x, layer.get_output(0), ctx.trt.ElementWiseOperation.PROD)]


