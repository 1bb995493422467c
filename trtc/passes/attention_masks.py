"""What fuse-attention proves about masks: that one fits the scores, broadcasts over the query
axis (and how to expand it), is all zeros, or is causal (lower-triangular by Trilu or by
Range/LessOrEqual/Where), and whether a constant is large and negative enough to mask."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import const_array, const_scalar, is_op, producer_of

Dims = tuple  # a known-rank shape: ints and ir.SymbolicDim


def is_large_negative(value: ir.Value | None, dtype: ir.DataType) -> bool:
    """A constant scalar that masks a score: -inf, or <= half the dtype's lowest (exp(it + s - max) == 0)."""
    k = const_scalar(value)
    return k is not None and (k == -math.inf or k <= float(np.finfo(dtype.numpy()).min) / 2)


def mask_fits(mask: ir.Value, score_dims: Dims) -> bool:
    """The mask covers [Sq, Skv] exactly and broadcasts over [batch, heads] without growing the scores."""
    mask_dims = dims(mask)
    if mask_dims is None or not 2 <= len(mask_dims) <= 4:
        return False
    aligned = score_dims[4 - len(mask_dims):]
    return same_dim(mask_dims[-1], aligned[-1]) and same_dim(mask_dims[-2], aligned[-2]) and all(
        m == 1 or same_dim(m, s) for m, s in zip(mask_dims[:-2], aligned[:-2]))


def broadcasts_over_queries(mask: ir.Value, score_dims: Dims) -> bool:
    """A [.., 1, Skv] padding mask (BERT's `attention_mask` as exported) on square self-attention
    scores: Attention needs it expanded over the query axis (see `expand_over_queries`)."""
    mask_dims = dims(mask)
    return (mask_dims is not None and len(mask_dims) == 4 and mask_dims[-2] == 1
            and same_dim(score_dims[-2], score_dims[-1]) and same_dim(mask_dims[-1], score_dims[-1])
            and all(m == 1 or same_dim(m, s) for m, s in zip(mask_dims[:2], score_dims[:2])))


def expand_over_queries(mask: ir.Value, name: str) -> tuple[list[ir.Node], ir.Value]:
    """Expand(mask[b, h, 1, S], [1, 1, S, 1]) -> [b, h, S, S]: S read off the mask itself, which
    is valid because the scores are square (self-attention: q length == kv length)."""
    length = ir.node("Shape", [mask], {"start": 3}, name=f"{name}_mask_len")
    ones = ir.Value(name=f"{name}_mask_ones", const_value=ir.tensor(np.array([1, 1], np.int64)))
    one = ir.Value(name=f"{name}_mask_one", const_value=ir.tensor(np.array([1], np.int64)))
    target = ir.node("Concat", [ones, length.outputs[0], one], {"axis": 0}, name=f"{name}_mask_shape")
    expand = ir.node("Expand", [mask, target.outputs[0]], name=f"{name}_mask_expand")
    out = expand.outputs[0]
    out.type = mask.type
    out.shape = ir.Shape([*mask.shape.dims[:2], mask.shape[3], mask.shape[3]])
    return [length, target, expand], out


# ---- causal masks ------------------------------------------------------------------------------------

def peel_leading_broadcast(value: ir.Value) -> ir.Value:
    """Skip Expand/Unsqueeze producers that leave the last two dims as they are (they only add batch/heads)."""
    while (node := producer_of(value, "Expand", "Unsqueeze")) is not None:
        inner, outer = dims(node.inputs[0]), dims(value)
        if inner is None or outer is None or len(inner) < 2 or not all(map(same_dim, inner[-2:], outer[-2:])):
            break
        value = node.inputs[0]
    return value


def uniform_fill(value: ir.Value) -> float | bool | None:
    """The one value every element of `value` holds: ConstantOfShape's fill or a uniform constant."""
    node = producer_of(value, "ConstantOfShape")
    data = const_array(value) if node is None else (
        node.attributes["value"].value.numpy() if "value" in node.attributes else np.zeros(1, np.float32))
    if data is None or data.size == 0 or not np.all(data == data.flat[0]):
        return None
    return data.flat[0].item()


def arange_axis(value: ir.Value) -> tuple[ir.Value, int] | None:
    """(r, axis counted from the end) when `value` is Unsqueeze*(r), r = Range(0, n, 1), laid along one axis."""
    shape, source = dims(value), value
    while (node := producer_of(source, "Unsqueeze")) is not None:
        source = node.inputs[0]
    arange = producer_of(source, "Range")
    if arange is None or shape is None or const_scalar(arange.inputs[0]) != 0 or const_scalar(arange.inputs[2]) != 1:
        return None
    long_axes = [i for i, d in enumerate(shape) if d != 1]
    return (source, len(shape) - long_axes[0]) if len(long_axes) == 1 else None


def is_causal_condition(cond: ir.Value) -> bool:
    """`cond` [..., S, S] is True exactly where key j <= query i."""
    node = peel_leading_broadcast(cond).producer()
    if is_op(node, "LessOrEqual", "GreaterOrEqual"):
        key, query = node.inputs if node.op_type == "LessOrEqual" else node.inputs[::-1]
        key_axis, query_axis = arange_axis(key), arange_axis(query)
        return key_axis is not None and query_axis is not None and key_axis[0] is query_axis[0] \
            and key_axis[1] == 1 and query_axis[1] == 2
    if is_op(node, "Trilu"):  # the lower triangle, diagonal included, of all-True
        k = const_scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else 0
        return node.attributes.get_int("upper", 1) == 0 and k == 0 and uniform_fill(node.inputs[0]) is True
    return False


def is_zero_bias(mask: ir.Value) -> bool:
    """`mask` is all zeros: a zero constant, or Where(all-True, 0, _), broadcast by Expand/Unsqueeze."""
    node = producer_of(peel_broadcast(mask), "Where")
    if node is not None:
        return uniform_fill(peel_broadcast(node.inputs[0])) is True and uniform_fill(node.inputs[1]) == 0
    return uniform_fill(peel_broadcast(mask)) == 0


def peel_broadcast(value: ir.Value) -> ir.Value:
    """The value Expand/Unsqueeze producers broadcast (they repeat elements, so a uniform fill stays one)."""
    while (node := producer_of(value, "Expand", "Unsqueeze")) is not None:
        value = node.inputs[0]
    return value


def is_causal_bias(mask: ir.Value, dtype: ir.DataType) -> bool:
    """`mask` [..., S, S] is 0 where key j <= query i and a large negative above the diagonal."""
    node = peel_leading_broadcast(mask).producer()
    if is_op(node, "Where"):
        return uniform_fill(node.inputs[1]) == 0 and is_large_negative(node.inputs[2], dtype) \
            and is_causal_condition(node.inputs[0])
    if is_op(node, "Trilu"):  # the strict upper triangle of a large negative constant
        k = const_scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else 0
        fill = uniform_fill(node.inputs[0])
        return node.attributes.get_int("upper", 1) == 1 and k == 1 and fill is not None \
            and (fill == -math.inf or fill <= float(np.finfo(dtype.numpy()).min) / 2)
    return False
