"""What fuse-attention proves about masks: that one fits the scores, broadcasts over the query
axis (and how to expand it), is all zeros, or is causal (lower-triangular by Trilu or by
Range/LessOrEqual/Where), whether a constant is large and negative enough to mask, and how a
shifted-window mask added to the scores viewed per window becomes a 4-D one (`match_windows`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import add_constant, const_array, const_scalar, is_op, producer_of, sole_reader

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


# ---- shifted-window masks ----------------------------------------------------------------------------
# Swin (timm and transformers alike) adds its shifted-window mask [nW, N, N] to the scores
# [B*nW, H, N, N] through a 5-D view:
#     s5 = Reshape(scores, [B, nW, H, N, N]);  s5 = s5 + Unsqueeze(Unsqueeze(mask, 1), 0);  Reshape(s5, [-1, H, N, N])
# Attention's attn_mask broadcasts to [B*nW, H, N, N] only, so the mask is tiled over the images:
# row b*nW + w of the scores is row w of the mask (Reshape is row-major), i.e. Tile(mask, [B, 1, 1, 1]).

WINDOW_MASK_MAX_ELEMENTS = 1 << 24  # nW * H * N * N per image: 64 MiB in fp32, fold-constants' own cap


@dataclasses.dataclass
class WindowMasks:
    """The 5-D view around the masks: `scores` [X, H, Sq, Skv] is what the view was made of."""

    scores: ir.Value
    windows: int | ir.SymbolicDim  # nW, the view's second dim
    masks: list[ir.Value]  # each broadcasts to [X / nW, nW, H, Sq, Skv]
    nodes: list[ir.Node]  # the view, the Adds, the view back


def match_windows(back: ir.Node) -> WindowMasks | str:
    """`back` = Reshape(Add*(Reshape(scores [X, H, Sq, Skv], [X/nW, nW, H, Sq, Skv]), masks), [X, H, Sq, Skv]).

    Reshape keeps the element count, so a view whose last three dims are the scores' last three and
    whose second is nW splits the batch axis into [X/nW, nW], and a view back to [_, H, Sq, Skv]
    restores X: the dims alone prove it, whatever computed the targets (a -1, or Shape/Div)."""
    found = _trace_view(back.inputs[0], back)
    if found is None:
        return "the scores come from Reshape, not MatMul(Q, K^T)"
    split, masks, adds = found
    value = split.outputs[0]
    inner, view, out = dims(split.inputs[0]), dims(value), dims(back.outputs[0])
    if inner is None or view is None or out is None or (len(inner), len(view), len(out)) != (4, 5, 4) \
            or not all(map(same_dim, view[2:], inner[1:])) or not all(map(same_dim, out[1:], inner[1:])):
        return "the scores are masked in a 5-D view that is not [batch/nW, nW, heads, q, kv]"
    return WindowMasks(split.inputs[0], view[1], masks, [back, *adds[::-1], split])


def _trace_view(value: ir.Value, reader: ir.Node) -> tuple[ir.Node, list[ir.Value], list[ir.Node]] | None:
    """(the Reshape making the 5-D view, the masks, the Adds) when `value`, read only by `reader`, is
    Add*(Reshape(4-D scores), masks) in 5-D: each Add is tried both ways round, as exporters write either."""
    if sole_reader(value) is not reader or len(dims(value) or ()) != 5:
        return None
    node = value.producer()
    if is_op(node, "Reshape") and len(dims(node.inputs[0]) or ()) == 4:
        return node, [], []
    if is_op(node, "Add"):
        for scores, mask in (node.inputs, node.inputs[::-1]):
            if (found := _trace_view(scores, node)) is not None:
                found[1].append(mask)
                found[2].append(node)
                return found
    return None


def window_mask_issue(windows: WindowMasks, score_dims: Dims, dtype: ir.DataType) -> str | None:
    """Why the window masks cannot become one attn_mask tiled to [X, H, Sq, Skv] (None: they can)."""
    nw, (_, heads, sq, skv) = windows.windows, score_dims
    if not isinstance(nw, int) or nw < 1:
        return "the number of windows of a window mask is not static"
    if not all(isinstance(d, int) for d in (heads, sq, skv)):
        return "the heads or window size of a window mask are not static"
    for mask in windows.masks:
        mask_dims = dims(mask)
        if mask.dtype != dtype or mask_dims is None or len(mask_dims) > 5:
            return "a window mask is not of the scores' type or of known rank <= 5"
        m = (1,) * (5 - len(mask_dims)) + mask_dims
        if m[0] != 1:  # [X/nW, ...]: a mask per image as well, which no static tiling makes
            return "a window mask varies per image as well as per window"
        if m[1] not in (1, nw) or m[2] not in (1, heads) or (m[3], m[4]) != (sq, skv):
            return "a window mask does not broadcast over [windows, heads] or does not cover [q, kv] exactly"
    if nw * heads * sq * skv > WINDOW_MASK_MAX_ELEMENTS:
        return f"a window mask tiled to [nW={nw}, H={heads}, {sq}, {skv}] per image exceeds " \
               f"{WINDOW_MASK_MAX_ELEMENTS} elements"
    return None


def tile_window_mask(graph: ir.Graph, mask: ir.Value, windows: int, q: ir.Value, name: str
                     ) -> tuple[list[ir.Node], ir.Value]:
    """A window mask broadcasting to [1, nW, h, Sq, Skv] as a 4-D attn_mask: [nW, h, Sq, Skv] tiled
    to [X, h, Sq, Skv] (X = Q's batch = images * nW), or [h, Sq, Skv] when it is the same for
    every window. The Unsqueezes that made it 5-D are skipped (Reshape takes any view of it)."""
    m = (1,) * (5 - len(mask.shape)) + tuple(mask.shape)
    source = mask
    while (node := producer_of(source, "Unsqueeze")) is not None:
        source = node.inputs[0]
    per_window = m[1] == windows and windows != 1
    target = [windows, *m[2:]] if per_window else list(m[2:])
    nodes, out = [], source
    if dims(source) != tuple(target):
        shape = add_constant(graph, np.array(target, np.int64), f"{name}_window_shape")
        nodes.append(ir.node("Reshape", [source, shape], name=f"{name}_window_mask"))
        out = nodes[-1].outputs[0]
        out.type, out.shape = mask.type, ir.Shape(target)
    if not per_window:
        return nodes, out
    batch = q.shape[0]
    if isinstance(batch, int):
        repeats = add_constant(graph, np.array([batch // windows, 1, 1, 1], np.int64), f"{name}_window_repeats")
    else:  # images = Q's batch / nW, known only when the engine runs
        nodes.append(ir.node("Shape", [q], {"start": 0, "end": 1}, name=f"{name}_window_batch"))
        nw = add_constant(graph, np.array([windows], np.int64), f"{name}_window_count")
        nodes.append(ir.node("Div", [nodes[-1].outputs[0], nw], name=f"{name}_window_images"))
        ones = add_constant(graph, np.array([1, 1, 1], np.int64), f"{name}_window_ones")
        nodes.append(ir.node("Concat", [nodes[-1].outputs[0], ones], {"axis": 0}, name=f"{name}_window_repeats"))
        repeats = nodes[-1].outputs[0]
        for node, length in zip(nodes[-3:], (1, 1, 4), strict=True):
            node.outputs[0].type, node.outputs[0].shape = ir.TensorType(ir.DataType.INT64), ir.Shape([length])
    nodes.append(ir.node("Tile", [out, repeats], name=f"{name}_window_tile"))
    tiled = nodes[-1].outputs[0]
    tiled.type, tiled.shape = mask.type, ir.Shape([batch, *m[2:]])
    return nodes, tiled
