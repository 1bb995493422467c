"""Fold a per-output-channel affine op that follows a convolution into its weights and bias.

    y = Conv(x, W, b)                          y = Conv(x, W * s, b * s + t)
    z = BatchNormalization(y, scale, B,   =>   with s = scale / sqrt(var + eps), t = B - mean * s
                           mean, var)
    z = Mul(y, c)  (c scalar, [C,1,1], [1,C,1,1], ...)   =>   s = c, t = 0
    z = Add(y, c)  (same shapes)                         =>   s = 1, t = c

The same holds after ConvTranspose, whose weight is [C_in, C_out / group, k...]: output
channel g * (C_out / group) + j is W[g-th block of C_in, j]. The folded weights are new
initializers (computed in float64, cast back to the weight's dtype), so a weight shared
with another node is never changed; the old ones are left to dead-code.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_array, is_op, only_user, producer_of, replace_with
from trtc.passes.registry import PassContext, register_pass

CONV_OPS = ("Conv", "ConvTranspose")
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})
BN_DEFAULT_EPSILON = 1e-5


@register_pass("fold-batchnorm", order=40)
def fold_batchnorm(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fold BatchNormalization, and Mul/Add by a per-channel constant, into a preceding Conv/ConvTranspose or BN."""
    graph = model.graph
    counts: dict[str, int] = {}
    # In graph order, so a chain Conv -> BN -> Mul -> Add folds in one run: each fold's new
    # Conv is inserted before the op it absorbed, where the next op of the chain finds it.
    for node in list(graph):
        pattern = _fold(graph, node)
        if pattern:
            counts[pattern] = counts.get(pattern, 0) + 1
    return counts


def _fold_into_batchnorm(graph: ir.Graph, node: ir.Node) -> str | None:
    """BatchNormalization(x) * c + d (per-channel constants, as Caffe's Scale layer exports) -> one
    BatchNormalization with scale * c and bias * c + d."""
    bn, constant = None, None
    for side in (0, 1):
        bn = producer_of(node.inputs[side], "BatchNormalization")
        constant = const_array(node.inputs[1 - side])
        if bn is not None and constant is not None:
            break
    if bn is None or constant is None or only_user(bn.outputs[0]) is not node or bn.inputs[0].shape is None:
        return None
    channels = bn.inputs[1].shape[0] if bn.inputs[1].shape is not None else None
    if not isinstance(channels, int) or _batchnorm_affine(bn, channels) is None:
        return None
    affine = _elementwise_affine(node.op_type, constant, channels, len(bn.inputs[0].shape), bn.inputs[1].dtype)
    if affine is None or not (np.isfinite(affine[0]).all() and np.isfinite(affine[1]).all()):
        return None
    c, d = affine
    gamma, beta = (const_array(v).astype(np.float64) for v in bn.inputs[1:3])
    dtype = const_array(bn.inputs[1]).dtype
    new_scale = add_constant(graph, (gamma * c).astype(dtype), f"{bn.inputs[1].name}_folded")
    new_bias = add_constant(graph, (beta * c + d).astype(dtype), f"{bn.inputs[2].name}_folded")
    new_bn = ir.Node(bn.domain, bn.op_type, [bn.inputs[0], new_scale, new_bias, bn.inputs[3], bn.inputs[4]],
                     [ir.Attr(a.name, a.type, a.value) for a in bn.attributes.values()], name=bn.name,
                     version=bn.version)
    replace_with(graph, node, [new_bn], [node.outputs[0]], [new_bn.outputs[0]], dead=[node, bn])
    return f"bn-{node.op_type.lower()}"


def _fold(graph: ir.Graph, node: ir.Node) -> str | None:
    """Fold `node` into the convolution (or BatchNormalization) producing its input; the pattern name, or None."""
    if is_op(node, "Mul", "Add") and len(node.inputs) == 2 and (pattern := _fold_into_batchnorm(graph, node)):
        return pattern
    if is_op(node, "BatchNormalization"):
        conv, constant = producer_of(node.inputs[0], *CONV_OPS), None
    elif is_op(node, "Mul", "Add") and len(node.inputs) == 2:
        conv, constant = _conv_and_constant(node)
    else:
        return None
    if conv is None or only_user(conv.outputs[0]) is not node:
        return None
    weights = _conv_weights(conv)
    if weights is None:
        return None
    weight, bias, channels = weights
    if is_op(node, "BatchNormalization"):
        affine = _batchnorm_affine(node, channels)
    else:
        affine = _elementwise_affine(node.op_type, constant, channels, weight.ndim, conv.inputs[1].dtype)
    if affine is None:
        return None
    scale, shift = affine
    if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
        return None  # inf * 0 differs before and after folding

    w_value = conv.inputs[1]
    dtype = w_value.const_value.numpy().dtype
    if np.all(scale == 1):
        new_weight = w_value  # an Add changes only the bias
    else:
        new_weight = add_constant(graph, _scale_output_channels(conv, weight, scale).astype(dtype),
                                  f"{w_value.name}_folded")
    new_bias = add_constant(graph, (bias * scale + shift).astype(dtype), f"{w_value.name}_bias_folded")
    new_conv = ir.Node(conv.domain, conv.op_type, [conv.inputs[0], new_weight, new_bias],
                       [ir.Attr(a.name, a.type, a.value) for a in conv.attributes.values()],
                       name=conv.name, version=conv.version)
    replace_with(graph, node, [new_conv], [node.outputs[0]], [new_conv.outputs[0]], dead=[node, conv])
    kind = "bn" if node.op_type == "BatchNormalization" else node.op_type.lower()
    return f"{conv.op_type.lower()}-{kind}"


def _conv_and_constant(node: ir.Node) -> tuple[ir.Node | None, np.ndarray | None]:
    """(the convolution feeding one operand, the other operand's constant data) of a Mul/Add."""
    for conv_side in (0, 1):
        conv = producer_of(node.inputs[conv_side], *CONV_OPS)
        constant = const_array(node.inputs[1 - conv_side])
        if conv is not None and constant is not None:
            return conv, constant
    return None, None


def _conv_weights(conv: ir.Node) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(weight, bias, output channels) in float64 when both are constant floats, else None."""
    if conv.domain not in ("", "ai.onnx") or len(conv.inputs) not in (2, 3):
        return None
    w_value = conv.inputs[1]
    weight = const_array(w_value)
    if weight is None or w_value.dtype not in FLOAT_TYPES or weight.ndim < 3:
        return None
    group = conv.attributes.get_int("group", 1)
    if conv.op_type == "Conv":
        channels = weight.shape[0]
    elif weight.shape[0] % group == 0:
        channels = weight.shape[1] * group
    else:
        return None
    b_value = conv.inputs[2] if len(conv.inputs) == 3 else None
    if b_value is None:
        bias = np.zeros(channels)
    else:
        bias = const_array(b_value)
        if bias is None or b_value.dtype != w_value.dtype or bias.shape != (channels,):
            return None
    return weight.astype(np.float64), bias.astype(np.float64), channels


def _batchnorm_affine(bn: ir.Node, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(y) = y * s + t per channel, for an inference-form BN with constant parameters."""
    if len(bn.outputs) != 1 or len(bn.inputs) != 5 or bn.attributes.get_int("training_mode", 0) != 0:
        return None
    params = []
    for value in bn.inputs[1:]:
        data = const_array(value)
        if data is None or value.dtype not in FLOAT_TYPES or data.shape != (channels,):
            return None
        params.append(data.astype(np.float64))
    gamma, beta, mean, var = params
    epsilon = bn.attributes.get_float("epsilon", BN_DEFAULT_EPSILON)
    with np.errstate(divide="ignore", invalid="ignore"):  # the caller refuses non-finite factors
        scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale


def _elementwise_affine(op_type: str, constant: np.ndarray, channels: int, rank: int,
                        dtype: ir.DataType | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) for Mul/Add by `constant` when it is a scalar or per-channel ([C,1,1], [1,C,1,1]) of the conv's dtype."""
    if ir.DataType.from_numpy(constant.dtype) != dtype or constant.ndim > rank:
        return None  # a higher-rank constant would broadcast the output to a larger shape
    aligned = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for axis, d in enumerate(aligned) if axis != 1) or aligned[1] not in (1, channels):
        return None
    per_channel = np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,))
    if op_type == "Mul":
        return per_channel, np.zeros(channels)
    return np.ones(channels), per_channel


def _scale_output_channels(conv: ir.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """`weight` with each output channel's slice multiplied by its `scale`."""
    spatial = (1,) * (weight.ndim - 2)
    if conv.op_type == "Conv":  # [C_out, C_in / group, k...]
        return weight * scale.reshape(-1, 1, *spatial)
    group = conv.attributes.get_int("group", 1)  # ConvTranspose: [C_in, C_out / group, k...]
    c_in, c_out_per_group = weight.shape[:2]
    grouped = weight.reshape(group, c_in // group, c_out_per_group, *weight.shape[2:])
    grouped = grouped * scale.reshape(group, 1, c_out_per_group, *spatial)
    return grouped.reshape(weight.shape)
