"""Normalisations: LayerNormalization/GroupNormalization/InstanceNormalization ->
INormalizationLayer; RMSNormalization, BatchNormalization, LpNormalization and
MeanVarianceNormalization as reductions and elementwise layers; LRN -> ILRNLayer."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops.reduce import const_like, float_input, reduce, square, unused_outputs
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types


def _stash(ctx, node, x):
    """The type the statistics are computed in: float32 for fp16/bf16 `x` when stash_type=1."""
    low = x.dtype in (ctx.trt.float16, ctx.trt.bfloat16)
    return ctx.trt.float32 if low and node.attributes.get_int("stash_type", 1) == 1 else x.dtype


def _normalize(ctx, x, scale, bias, axes, epsilon: float, groups: int = 1):
    """INormalizationLayer: (x - mean) / sqrt(var + eps) * scale + bias over `axes`."""
    layer = ctx.check(ctx.network.add_normalization_v2(x, scale, bias, ctx.axes_mask(axes, ctx.rank(x))))
    layer.epsilon = epsilon
    layer.num_groups = groups
    return layer.get_output(0)


def _optional(node, index):
    return node.inputs[index] if index < len(node.inputs) and node.inputs[index] is not None else None


def _channel_param(ctx, tensor, rank: int, dtype):
    """A per-channel [C] parameter as [1, C, 1, ...] of `dtype`."""
    return ctx.reshape(ctx.cast(tensor, dtype), [1, -1] + [1] * (rank - 2))


@converter("LayerNormalization", since=17, constraints=[tensor_types(), known_rank()])
def lower_layer_norm(ctx, node):
    """Native normalization over axes [axis, rank); scale/bias broadcast to x's rank (bias zeros
    when absent); fp16/bf16 with stash_type=1 computed in float32 and cast back. The Mean and
    InvStdDev outputs, when used, come from their own reductions."""
    x = ctx.tensor(node.inputs[0])
    rank, dtype = ctx.rank(x), x.dtype
    axes = list(range(ctx.axis(node.attributes.get_int("axis", -1), rank), rank))
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    stash = _stash(ctx, node, x)
    scale = ctx.operand(node.inputs[1], rank, stash)  # a constant is made at x's rank, in the stash type
    bias_value = _optional(node, 2)
    scale_data = ctx.constant_data(scale)
    if bias_value is None and scale_data is not None:
        bias = ctx.constant(np.zeros_like(scale_data))
    elif bias_value is None:
        bias = ctx.elementwise(scale, const_like(ctx, 0, scale), ctx.trt.ElementWiseOperation.PROD)
    else:
        bias = ctx.operand(bias_value, rank, stash)
    if tuple(scale.shape) != tuple(bias.shape):  # the layer wants one shape for both
        E = ctx.trt.ElementWiseOperation
        zeros = ctx.elementwise(ctx.elementwise(scale, bias, E.SUM), const_like(ctx, 0, scale), E.PROD)
        scale, bias = ctx.elementwise(scale, zeros, E.SUM), ctx.elementwise(bias, zeros, E.SUM)
    xs = ctx.cast(x, stash)
    out = _normalize(ctx, xs, scale, bias, axes, epsilon)
    return [ctx.cast(out, dtype), *_layer_norm_statistics(ctx, node, xs, axes, epsilon)]


def _layer_norm_statistics(ctx, node, x, axes, epsilon: float):
    """The optional Mean and InvStdDev outputs (None when absent or unused)."""
    from trtc.lower.context import trt_dtype

    wanted = [v if v is not None and v.name and (v.uses() or v.is_graph_output()) else None
              for v in node.outputs[1:3]]
    if not any(wanted):
        return [None, None]
    E, R, U = ctx.trt.ElementWiseOperation, ctx.trt.ReduceOperation, ctx.trt.UnaryOperation
    mean = reduce(ctx, x, R.AVG, axes)
    variance = reduce(ctx, square(ctx, ctx.elementwise(x, mean, E.SUB)), R.AVG, axes)
    inv_std = ctx.unary(ctx.unary(ctx.elementwise(variance, const_like(ctx, epsilon, variance), E.SUM), U.SQRT),
                        U.RECIP)
    return [None if v is None else ctx.cast(t, trt_dtype(ctx.trt, v.dtype)) for v, t in zip(wanted, (mean, inv_std))]


@converter("RMSNormalization", since=23, constraints=[tensor_types(), known_rank(), float_input()])
def lower_rms_norm(ctx, node):
    """x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale (the first stage in float32 for
    fp16/bf16 when stash_type=1; TensorRT has no native RMS normalization). Y has scale's type."""
    from trtc.lower.context import trt_dtype

    E, U = ctx.trt.ElementWiseOperation, ctx.trt.UnaryOperation
    x = ctx.tensor(node.inputs[0])
    rank, out_dtype = ctx.rank(x), trt_dtype(ctx.trt, node.outputs[0].dtype)
    axis = ctx.axis(node.attributes.get_int("axis", -1), rank)
    xs = ctx.cast(x, _stash(ctx, node, x))
    mean_square = reduce(ctx, square(ctx, xs), ctx.trt.ReduceOperation.AVG, list(range(axis, rank)))
    eps = const_like(ctx, node.attributes.get_float("epsilon", 1e-5), mean_square)
    rms = ctx.unary(ctx.elementwise(mean_square, eps, E.SUM), U.SQRT)
    normalized = ctx.cast(ctx.elementwise(xs, rms, E.DIV), out_dtype)
    return [ctx.elementwise(normalized, ctx.operand(node.inputs[1], rank, out_dtype), E.PROD)]


def _group_norm(ctx, node, scale, bias):
    """Native normalization over the spatial axes with num_groups; [C] scale/bias."""
    x = ctx.tensor(node.inputs[0])
    rank, dtype, stash = ctx.rank(x), x.dtype, _stash(ctx, node, x)
    out = _normalize(ctx, ctx.cast(x, stash), _channel_param(ctx, scale, rank, stash),
                     _channel_param(ctx, bias, rank, stash), range(2, rank),
                     node.attributes.get_float("epsilon", 1e-5), node.attributes.get_int("num_groups", 1))
    return [ctx.cast(out, dtype)]


@converter("GroupNormalization", since=21, constraints=[tensor_types(), known_rank()])
def lower_group_norm(ctx, node):
    """GroupNormalization-21: per-channel scale/bias. (GroupNormalization-18's per-group
    scale is deprecated: onnx's checker refuses it, so the frontend never passes it on.)"""
    return _group_norm(ctx, node, ctx.tensor(node.inputs[1]), ctx.tensor(node.inputs[2]))


@converter("InstanceNormalization", constraints=[tensor_types(), known_rank()])
def lower_instance_norm(ctx, node):
    """Native normalization over the spatial axes with [1, C, 1, ...] scale/bias."""
    x = ctx.tensor(node.inputs[0])
    rank = ctx.rank(x)
    scale = _channel_param(ctx, ctx.tensor(node.inputs[1]), rank, x.dtype)
    bias = _channel_param(ctx, ctx.tensor(node.inputs[2]), rank, x.dtype)
    return [_normalize(ctx, x, scale, bias, range(2, rank), node.attributes.get_float("epsilon", 1e-5))]


# ---------------------------------------------------------------- BatchNormalization


def _batch_norm_training(node):
    return node.attributes.get_int("training_mode", 0) == 1


def _inference_outputs(node):
    """Inference BatchNormalization has one output; training mode produces all three."""
    return None if _batch_norm_training(node) else unused_outputs(1, 2, 3, 4).check(node)


@converter("BatchNormalization", since=9, constraints=[
    tensor_types(), known_rank(), Constraint("extra outputs only in training mode", _inference_outputs)])
def lower_batch_norm(ctx, node):
    """Inference: x * w + b with w = scale / sqrt(var + eps), b = bias - mean * w (folded when the
    parameters are constants). training_mode=1: batch statistics over all axes but 1."""
    x = ctx.tensor(node.inputs[0])
    if _batch_norm_training(node):
        return _batch_norm_training_mode(ctx, node, x)
    E, rank = ctx.trt.ElementWiseOperation, ctx.rank(x)
    eps = node.attributes.get_float("epsilon", 1e-5)
    params = [ctx.const(value) for value in node.inputs[1:5]]
    if all(p is not None for p in params):
        scale, bias, mean, var = (p.astype(np.float64) for p in params)
        weight = scale / np.sqrt(var + eps)
        shift = bias - mean * weight
        if x.dtype in (ctx.trt.float32, ctx.trt.float16) and rank >= 2:
            # One per-channel IScaleLayer (x * w + b), holding w and b itself, as TensorRT's ONNX parser
            # builds it: no constant or elementwise layers.
            dtype = ctx.trt.nptype(x.dtype)
            layer = ctx.check(ctx.network.add_scale_nd(
                x, ctx.trt.ScaleMode.CHANNEL, ctx.weights(node.inputs[1], shift.astype(dtype)),
                ctx.weights(node.inputs[1], weight.astype(dtype)), ctx.trt.Weights(), 1))
            return [layer.get_output(0)]
        shape = (1, weight.size) + (1,) * (rank - 2)
        w, b = const_like(ctx, weight, x, shape), const_like(ctx, shift, x, shape)
        return [ctx.elementwise(ctx.elementwise(x, w, E.PROD), b, E.SUM)]
    scale, bias, mean, var = (_channel_param(ctx, ctx.tensor(v), rank, x.dtype) for v in node.inputs[1:5])
    std = ctx.unary(ctx.elementwise(var, const_like(ctx, eps, var), E.SUM), ctx.trt.UnaryOperation.SQRT)
    out = ctx.elementwise(ctx.elementwise(x, mean, E.SUB), std, E.DIV)
    return [ctx.elementwise(ctx.elementwise(out, scale, E.PROD), bias, E.SUM)]


def _batch_norm_training_mode(ctx, node, x):
    """Y from the batch's mean and (population) variance, computed in float32; running_mean/var
    = input * momentum + batch * (1 - momentum)."""
    from trtc.lower.context import trt_dtype

    E, R = ctx.trt.ElementWiseOperation, ctx.trt.ReduceOperation
    rank, f32 = ctx.rank(x), ctx.trt.float32
    axes = [0, *range(2, rank)]
    xs = ctx.cast(x, f32)
    mean = reduce(ctx, xs, R.AVG, axes)
    centered = ctx.elementwise(xs, mean, E.SUB)
    var = reduce(ctx, square(ctx, centered), R.AVG, axes)
    eps = const_like(ctx, node.attributes.get_float("epsilon", 1e-5), var)
    out = ctx.elementwise(centered, ctx.unary(ctx.elementwise(var, eps, E.SUM), ctx.trt.UnaryOperation.SQRT), E.DIV)
    scale, bias = (_channel_param(ctx, ctx.tensor(v), rank, f32) for v in node.inputs[1:3])
    outputs = [ctx.cast(ctx.elementwise(ctx.elementwise(out, scale, E.PROD), bias, E.SUM), x.dtype)]
    momentum = node.attributes.get_float("momentum", 0.9)
    for stat, running, value in ((mean, node.inputs[3], node.outputs[1:2]), (var, node.inputs[4], node.outputs[2:3])):
        if not value or not value[0].name:
            outputs.append(None)
            continue
        old = ctx.elementwise(ctx.cast(ctx.tensor(running), f32), ctx.constant(np.array([momentum], np.float32)),
                              E.PROD)
        new = ctx.elementwise(ctx.reshape(stat, [-1]), ctx.constant(np.array([1 - momentum], np.float32)), E.PROD)
        outputs.append(ctx.cast(ctx.elementwise(old, new, E.SUM), trt_dtype(ctx.trt, value[0].dtype)))
    return outputs


# ---------------------------------------------------------------- Lp / mean-variance / LRN


@converter("LpNormalization", constraints=[tensor_types(), known_rank(), attribute_in("p", (1, 2), 2)])
def lower_lp_norm(ctx, node):
    """x / ||x||_p along `axis`: p=1 sums |x|, p=2 is sqrt(sum(x^2))."""
    R, U = ctx.trt.ReduceOperation, ctx.trt.UnaryOperation
    x = ctx.tensor(node.inputs[0])
    axis = [ctx.axis(node.attributes.get_int("axis", -1), ctx.rank(x))]
    if node.attributes.get_int("p", 2) == 1:
        norm = reduce(ctx, ctx.unary(x, U.ABS), R.SUM, axis)
    else:
        norm = ctx.unary(reduce(ctx, square(ctx, x), R.SUM, axis), U.SQRT)
    return [ctx.elementwise(x, norm, ctx.trt.ElementWiseOperation.DIV)]


@converter("MeanVarianceNormalization", constraints=[tensor_types(), known_rank(), float_input()])
def lower_mean_variance_norm(ctx, node):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9) over `axes` (default 0, 2, 3), as ONNX's function."""
    E, R = ctx.trt.ElementWiseOperation, ctx.trt.ReduceOperation
    x = ctx.tensor(node.inputs[0])
    axes = sorted({ctx.axis(a, ctx.rank(x)) for a in node.attributes.get_ints("axes", [0, 2, 3])})
    mean = reduce(ctx, x, R.AVG, axes)
    variance = ctx.elementwise(reduce(ctx, square(ctx, x), R.AVG, axes), square(ctx, mean), E.SUB)
    std = ctx.elementwise(ctx.unary(variance, ctx.trt.UnaryOperation.SQRT), const_like(ctx, 1e-9, mean), E.SUM)
    return [ctx.elementwise(ctx.elementwise(x, mean, E.SUB), std, E.DIV)]


def _lrn_native(ctx, x, size: int, alpha: float, beta: float, bias: float) -> bool:
    """ILRNLayer takes odd windows up to 15, beta in [0.01, 1e5], k in [1e-5, 1e10], float32/fp16,
    and sums over the third dim from the end: the channels only for NCHW."""
    return (size % 2 == 1 and size <= 15 and 0.01 <= beta <= 1e5 and 1e-5 <= bias <= 1e10
            and x.dtype in (ctx.trt.float32, ctx.trt.float16) and ctx.rank(x) == 4)


@converter("LRN", constraints=[tensor_types(), known_rank(), float_input()])
def lower_lrn(ctx, node):
    """ILRNLayer (the same alpha/size scaling as ONNX) when its ranges allow; else
    x / (bias + alpha / size * sum of x^2 over the channel window) ^ beta from shifted slices."""
    x = ctx.tensor(node.inputs[0])
    size = node.attributes.get_int("size", 1)
    alpha, beta = node.attributes.get_float("alpha", 1e-4), node.attributes.get_float("beta", 0.75)
    bias = node.attributes.get_float("bias", 1.0)
    if _lrn_native(ctx, x, size, alpha, beta, bias):
        return [ctx.check(ctx.network.add_lrn(x, size, alpha, beta, bias)).get_output(0)]
    E = ctx.trt.ElementWiseOperation
    squares = square(ctx, x)
    before = (size - 1) // 2
    total = None
    for offset in range(-before, size - before):
        shifted = _shift_channels(ctx, squares, offset)
        total = shifted if total is None else ctx.elementwise(total, shifted, E.SUM)
    scaled = ctx.elementwise(ctx.elementwise(total, const_like(ctx, alpha / size, x), E.PROD),
                             const_like(ctx, bias, x), E.SUM)
    return [ctx.elementwise(x, ctx.elementwise(scaled, const_like(ctx, beta, x), E.POW), E.DIV)]


def _shift_channels(ctx, x, offset: int):
    """y[:, c] = x[:, c + offset], zero outside the channels (a FILL-mode slice)."""
    rank = ctx.rank(x)
    start = (0, offset) + (0,) * (rank - 2)
    layer = ctx.check(ctx.network.add_slice(x, start, (1,) * rank, (1,) * rank))
    layer.set_input(2, ctx.shape_of(x))
    layer.mode = ctx.trt.SampleMode.FILL
    layer.set_input(4, const_like(ctx, 0, x, ()))
    return layer.get_output(0)
