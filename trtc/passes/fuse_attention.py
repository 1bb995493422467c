"""Fuse scaled-dot-product attention into ONNX Attention (opset 23).

Before (Q, K, V [batch, heads, seq, head_dim]; a, b, c scalar constants; m1..mn masks):
    scores = MatMul(Q * a, Transpose(K * b, perm=[0,1,3,2]))      or K^T = Transpose(x, [0,2,3,1]), or K^T itself
    scores = scores * c                                           Mul or Div, any number, before the masks
    scores = scores + m1 + ... | Where(bool_mask, scores, -inf)   additive masks in any order, or one Where
    Y = MatMul(Softmax(scores, axis=-1), V)                       same-type Casts in between allowed
After:
    Y = Attention(Q, K, V, m1 + ... + mn, scale=a*b*c)            is_causal=1 for a mask proven lower-triangular
                                                                  (Trilu, or Range/LessOrEqual/Where)
GQA: K, V = Reshape(Expand(Unsqueeze(kv, 2), [1,1,rep,1,1]), [B, kv*rep, S, D]) -> Attention(Q, k, v):
Attention repeats the kv heads itself. Heads (second rule, also for Attention nodes already there):
when Q, K, V are Transpose(Reshape(x [B,S,H*D], [B,S,H,D]), [0,2,1,3]) and Y is read only by
Transpose(0,2,1,3) -> Reshape to [B,S,H*Dv] or [B*S,H*Dv] (Shape readers aside, as TorchScript
exports compute that target), the 3-D form takes x directly:
    Y3 = Attention(q3, k3, v3, mask, q_num_heads=H, kv_num_heads=Hkv)    [B, S, H*Dv]

Dims are proven equal from shapes (equal ints or the same named symbol). A mask must cover exactly
the query and key dims (ONNX Attention pads a short key axis with -inf rather than broadcasting it;
onnxruntime also rejects a broadcast query axis) and broadcast over batch and heads. A Where mask
must fill -inf: a finite fill differs from Attention's -inf bias on fully masked rows. Zero masks
are dropped. `why_not(node)` says why a Softmax does not start a fusion.

onnxruntime's CPU Attention zeroes a query row whose float mask is float32-lowest everywhere, where
the decomposed Softmax (and the ONNX reference) average V uniformly: rows with no key to attend to
(an all-padding sequence) are the one place the fused graph can differ when run there.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.walk import all_graphs
from trtc.passes.registry import PassContext, register_pass
from trtc.passes.rewrite import (
    add_constant,
    const_array,
    const_scalar,
    is_op,
    producer_of,
    replace_with,
    require_opset,
    sole_reader,
)

log = logging.getLogger(__name__)

ATTENTION_OPSET = 23
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
Dims = tuple  # a known-rank shape: ints and ir.SymbolicDim


def perm_of(node: ir.Node | None) -> tuple[int, ...] | None:
    return tuple(node.attributes.get_ints("perm", ())) if is_op(node, "Transpose") else None


def scalar_factor(node: ir.Node, x: ir.Value) -> float | None:
    """The factor `node` (Mul(x, c), Mul(c, x) or Div(x, c)) multiplies x by, c a one-element constant."""
    if not is_op(node, "Mul", "Div") or x not in node.inputs[:1 if node.op_type == "Div" else 2]:
        return None
    c = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
    k, data, x_dims = const_scalar(c), const_array(c), dims(x)
    if k is None or c.dtype != x.dtype or x_dims is None or data.ndim > len(x_dims):
        return None  # a rank-raising constant would change the shape
    if not math.isfinite(k) or k == 0:
        return None
    return float(k) if node.op_type == "Mul" else 1.0 / float(k)


def peel_scale(value: ir.Value) -> tuple[ir.Value, float, list[ir.Node]]:
    """Follow scalar Mul/Div producers up from `value`: (unscaled value, product of factors, the nodes)."""
    factor, nodes = 1.0, []
    while (node := value.producer()) is not None:
        x = next((i for i in node.inputs[:2] if scalar_factor(node, i) is not None), None) \
            if is_op(node, "Mul", "Div") else None
        if x is None:
            break
        factor *= scalar_factor(node, x)
        nodes.append(node)
        value = x
    return value, factor, nodes


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


# ---- scaled dot-product attention -> 4-D Attention ---------------------------------------------------

@dataclasses.dataclass
class Scores:
    """Softmax's input traced back to Q.K^T: the scale and masks applied on the way."""

    qk: ir.Node
    scale: float = 1.0
    masks: list[ir.Value] = dataclasses.field(default_factory=list)
    wheres: list[ir.Node] = dataclasses.field(default_factory=list)  # Where(mask, scores, -inf)
    nodes: list[ir.Node] = dataclasses.field(default_factory=list)


def match_scores(value: ir.Value, scaled: bool = False) -> Scores | str:
    """Trace `value` up to the MatMul Q.K^T through scalar scales and masks, every step single-use."""
    if sole_reader(value) is None:
        return f"score {value.name} has other users"
    node = value.producer()
    if is_op(node, "MatMul"):
        return Scores(node, nodes=[node])
    if is_op(node, "Mul", "Div"):
        x = next((i for i in node.inputs[:2] if scalar_factor(node, i) is not None), None)
        if x is None:
            return f"{node.op_type} {node.name} scales the scores by a non-constant"
        found = match_scores(x, True)
        if not isinstance(found, str):
            found.scale *= scalar_factor(node, x)
            found.nodes.append(node)
        return found
    if scaled and is_op(node, "Add", "Where"):
        return f"{node.op_type} {node.name} masks the scores before they are scaled"
    if is_op(node, "Add"):
        reasons = []
        for scores, mask in (node.inputs, node.inputs[::-1]):
            found = match_scores(scores)
            if not isinstance(found, str):
                found.masks.append(mask)
                found.nodes.append(node)
                return found
            reasons.append(found)
        return reasons[0]
    if is_op(node, "Where"):
        found = match_scores(node.inputs[1])
        if not isinstance(found, str):
            found.wheres.append(node)
            found.nodes.append(node)
        return found
    return f"the scores come from {node.op_type if node else 'a graph input'}, not MatMul(Q, K^T)"


def peel_repeat(value: ir.Value) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """(kv, rep, nodes) when `value` is Reshape(Expand(Unsqueeze(kv, 2), [.., rep, ..]), [B, kv_heads*rep, S, D])."""
    reshape = producer_of(value, "Reshape")
    expand = producer_of(reshape.inputs[0], "Expand") if reshape else None
    unsqueeze = producer_of(expand.inputs[0], "Unsqueeze") if expand else None
    if unsqueeze is None or const_array(unsqueeze.inputs[1]) is None:
        return None
    kv = unsqueeze.inputs[0]
    src, big, out = dims(kv), dims(expand.outputs[0]), dims(value)
    if np.ravel(const_array(unsqueeze.inputs[1])).tolist() not in ([2], [-3]) or src is None or big is None \
            or out is None or (len(src), len(big), len(out)) != (4, 5, 4):
        return None
    rep = big[2]
    if not (isinstance(rep, int) and isinstance(src[1], int) and out[1] == src[1] * rep
            and all(map(same_dim, (big[0], big[1], big[3], big[4]), src))
            and all(map(same_dim, (out[0], out[2], out[3]), (src[0], src[2], src[3])))):
        return None
    return kv, rep, [reshape, expand, unsqueeze]


@dataclasses.dataclass
class AttentionMatch:
    q: ir.Value
    k: ir.Value
    k_perm: tuple[int, ...] | None  # K = Transpose(k, k_perm) when only K^T-like layouts exist
    v: ir.Value
    scale: float
    masks: list[ir.Value]  # additive, summed into attn_mask
    condition: ir.Value | None  # a boolean attn_mask (from Where(mask, scores, -inf))
    causal: bool
    kv_repeat: int
    output: ir.Value
    nodes: list[ir.Node]  # the matched nodes, the last one (MatMul(P, V)) the anchor
    dropped_masks: list[ir.Value]  # zero or causal masks Attention does without


def match_key(kt: ir.Value) -> tuple[ir.Value, tuple[int, ...] | None, float, list[ir.Node]]:
    """K^T as (k, perm making K from k or None, scale factor, nodes)."""
    kt, factor, nodes = peel_scale(kt)
    transpose = kt.producer()
    perm = perm_of(transpose)
    if perm in ((0, 1, 3, 2), (0, 2, 3, 1)):
        k, inner, inner_nodes = peel_scale(transpose.inputs[0])
        return k, (None if perm == (0, 1, 3, 2) else (0, 2, 1, 3)), factor * inner, nodes + [transpose] + inner_nodes
    return kt, (0, 1, 3, 2), factor, nodes


def match_attention(softmax: ir.Node) -> AttentionMatch | str:
    """The attention that `softmax` is the core of, or why there is none."""
    if not is_op(softmax, "Softmax"):
        return "not a Softmax"
    score_dims = dims(softmax.inputs[0])
    if score_dims is None or len(score_dims) != 4 or softmax.attributes.get_int("axis", -1) not in (-1, 3):
        return "Softmax is not over the last axis of rank-4 scores"
    dtype = softmax.inputs[0].dtype
    if dtype not in FLOAT_TYPES:
        return f"scores of type {dtype}"
    probs, casts = softmax.outputs[0], []
    while is_op(user := sole_reader(probs), "Cast") and user.attributes.get_int("to") == dtype:
        casts.append(user)
        probs = user.outputs[0]
    if not is_op(user, "MatMul") or user.inputs[0] is not probs:
        return "the probabilities are not used only by MatMul(P, V)"
    pv = user
    scores = match_scores(softmax.inputs[0])
    if isinstance(scores, str):
        return scores
    q, q_scale, q_nodes = peel_scale(scores.qk.inputs[0])
    k, k_perm, k_scale, k_nodes = match_key(scores.qk.inputs[1])
    v, repeat = pv.inputs[1], 1
    k_dims = dims(k)
    if k_perm is None and (k_rep := peel_repeat(k)) and (v_rep := peel_repeat(v)) and k_rep[1] == v_rep[1]:
        (k, repeat, k_rep_nodes), (v, _, v_rep_nodes) = k_rep, v_rep
        k_nodes += k_rep_nodes + v_rep_nodes
        k_dims = dims(k)
    elif k_perm is not None and k_dims is not None and len(k_dims) == 4:
        k_dims = tuple(k_dims[i] for i in k_perm)
    q_dims, v_dims = dims(q), dims(v)
    if any(d is None or len(d) != 4 for d in (q_dims, k_dims, v_dims)):
        return "Q, K or V is not of known rank 4"
    if {q.dtype, k.dtype, v.dtype} != {dtype}:
        return "Q, K, V and the scores differ in type"
    heads_ok = same_dim(q_dims[1], k_dims[1]) if repeat == 1 else \
        isinstance(k_dims[1], int) and q_dims[1] == k_dims[1] * repeat
    if not (heads_ok and same_dim(q_dims[0], k_dims[0]) and same_dim(q_dims[0], v_dims[0])
            and same_dim(k_dims[1], v_dims[1]) and same_dim(q_dims[3], k_dims[3]) and same_dim(k_dims[2], v_dims[2])):
        return "Q, K and V do not agree on batch, heads and dims without broadcasting"
    if any(m.dtype != dtype or not (mask_fits(m, score_dims) or broadcasts_over_queries(m, score_dims))
           for m in scores.masks):
        return "an additive mask is not of the scores' type or does not cover [q, kv] exactly"
    square = same_dim(score_dims[2], score_dims[3])
    masks = [m for m in scores.masks if not is_zero_bias(m)]  # a zero bias adds nothing
    causal_masks = [m for m in masks if square and is_causal_bias(m, dtype)]
    causal_wheres = [w for w in scores.wheres if square and is_large_negative(w.inputs[2], dtype)
                     and mask_fits(w.inputs[0], score_dims) and is_causal_condition(w.inputs[0])]
    masks = [m for m in masks if m not in causal_masks]
    wheres = [w for w in scores.wheres if w not in causal_wheres]
    causal = bool(causal_masks or causal_wheres)
    dropped = [m for m in scores.masks if m not in masks] + [w.inputs[0] for w in causal_wheres]
    condition = None
    if wheres:
        where = wheres[0]
        if len(wheres) > 1 or masks or where.inputs[0].dtype != ir.DataType.BOOL:
            return "a Where mask is combined with other masks"
        if const_scalar(where.inputs[2]) != -math.inf or not mask_fits(where.inputs[0], score_dims):
            return "Where does not mask with -inf, or its mask does not cover [q, kv] exactly"
        condition = where.inputs[0]
    scale = scores.scale * q_scale * k_scale
    if not scale > 0:  # Attention scales Q and K by sqrt(scale) each
        return f"the combined scale {scale} is not positive"
    nodes = scores.nodes + q_nodes + k_nodes + [softmax, *casts, pv]
    return AttentionMatch(q, k, k_perm, v, scale, masks, condition, causal, repeat, pv.outputs[0], nodes, dropped)


def why_not(node: ir.Node) -> str | None:
    """Why `node` (a Softmax) does not start an attention fusion (None: it does)."""
    result = match_attention(node)
    return result if isinstance(result, str) else None


def fuse(graph: ir.Graph, match: AttentionMatch, name: str) -> None:
    new_nodes = []
    k = match.k
    if match.k_perm is not None:
        new_nodes.append(ir.node("Transpose", [k], {"perm": list(match.k_perm)}, name=f"{name}_key"))
        k = new_nodes[-1].outputs[0]
        k.type = match.k.type
        k.shape = ir.Shape([match.k.shape[i] for i in match.k_perm])
    attn_mask = match.condition
    for mask in match.masks:  # one attn_mask: the sum of the additive ones
        if mask.shape is not None and len(mask.shape) == 4 and mask.shape[2] == 1 and mask.shape[3] != 1:
            expand_nodes, mask = expand_over_queries(mask, name)
            for value in expand_nodes[1].inputs[::2]:
                graph.register_initializer(value)
            new_nodes += expand_nodes
        if attn_mask is None:
            attn_mask = mask
            continue
        new_nodes.append(ir.node("Add", [attn_mask, mask], name=f"{name}_mask"))
        attn_mask = new_nodes[-1].outputs[0]
        attn_mask.type = mask.type
    attributes = {"scale": float(match.scale)}
    if match.causal:
        attributes["is_causal"] = 1
    inputs = [match.q, k, match.v] + ([attn_mask] if attn_mask is not None else [])
    new_nodes.append(ir.node("Attention", inputs, attributes, name=name))
    replace_with(graph, match.nodes[-1], new_nodes, [match.output], new_nodes[-1].outputs, dead=match.nodes[::-1])
    remove_dead_cone(graph, match.dropped_masks)


def remove_dead_cone(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Remove the producers of `values` that nothing reads any more, and theirs in turn."""
    pending = [v.producer() for v in values]
    while pending:
        node = pending.pop()
        if node is None or node.graph is not graph or any(v.uses() or v.is_graph_output() for v in node.outputs):
            continue
        pending += [v.producer() for v in node.inputs if v is not None]
        graph.remove(node, safe=True)


# ---- 4-D Attention between head split/merge -> 3-D Attention --------------------------------------------

def split_heads(value: ir.Value) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """(x, heads, nodes) when `value` is Transpose(Reshape(x [B, S, H*D], [B, S, H, D]), [0, 2, 1, 3])."""
    transpose = value.producer()
    reshape = producer_of(transpose.inputs[0], "Reshape") if perm_of(transpose) == (0, 2, 1, 3) else None
    if reshape is None:
        return None
    x = reshape.inputs[0]
    x_dims, split = dims(x), dims(reshape.outputs[0])
    if x_dims is None or split is None or (len(x_dims), len(split)) != (3, 4):
        return None
    if not (same_dim(split[0], x_dims[0]) and same_dim(split[1], x_dims[1])
            and all(isinstance(d, int) for d in (*split[2:], x_dims[2])) and x_dims[2] == split[2] * split[3]):
        return None
    return x, split[2], [transpose, reshape]


@dataclasses.dataclass
class HeadMerge:
    """Y [B, H, S, D] -> Transpose(0, 2, 1, 3) -> Reshape to [B, S, H*D] or [B*S, H*D], Shape readers aside."""

    transpose: ir.Node
    reshape: ir.Node
    shape_readers: list[ir.Node]
    split_dims: Dims  # [B, S, H, D]


def merge_heads(value: ir.Value) -> HeadMerge | None:
    transpose = sole_reader(value)
    if perm_of(transpose) != (0, 2, 1, 3) or transpose.outputs[0].is_graph_output():
        return None
    users = transpose.outputs[0].consumers()
    reshapes = [u for u in users if is_op(u, "Reshape") and u.inputs[0] is transpose.outputs[0]]
    # TorchScript computes the merged shape from Shape(transpose): those readers get it from the 3-D output.
    readers = [u for u in users if is_op(u, "Shape") and not u.attributes]
    if len(reshapes) != 1 or len(reshapes) + len(readers) != len(users):
        return None
    split, merged = dims(transpose.outputs[0]), dims(reshapes[0].outputs[0])
    if split is None or merged is None or len(split) != 4 or len(merged) not in (2, 3):
        return None
    if not all(isinstance(d, int) for d in (*split[2:], merged[-1])) or merged[-1] != split[2] * split[3]:
        return None
    if len(merged) == 3 and not (same_dim(merged[0], split[0]) and same_dim(merged[1], split[1])):
        return None
    return HeadMerge(transpose, reshapes[0], readers, split)


def absorb_heads(graph: ir.Graph, attention: ir.Node) -> bool:
    """Rewrite a 4-D Attention whose inputs and output only split and merge heads into the 3-D form."""
    if not is_op(attention, "Attention") or len(attention.outputs) != 1 or len(attention.inputs) > 4 \
            or "q_num_heads" in attention.attributes or "kv_num_heads" in attention.attributes:
        return False
    splits = [split_heads(v) for v in attention.inputs[:3]]
    merge = merge_heads(attention.outputs[0])
    if merge is None or None in splits or splits[1][1] != splits[2][1]:
        return False
    (q, q_heads, q_nodes), (k, kv_heads, k_nodes), (v, _, v_nodes) = splits
    attributes = {**{a.name: a.value for a in attention.attributes.values()},
                  "q_num_heads": q_heads, "kv_num_heads": kv_heads}
    fused = ir.node("Attention", [q, k, v, *attention.inputs[3:]], attributes, name=attention.name)
    output = fused.outputs[0]
    batch, seq, heads, head_dim = merge.split_dims
    output.type, output.shape = attention.outputs[0].type, ir.Shape([batch, seq, heads * head_dim])
    new_nodes, readers_new = [fused], []
    if merge.shape_readers:  # Shape([B, S, H, D]) = Concat(Shape(y3)[:2], [H, D])
        head = ir.node("Shape", [output], {"start": 0, "end": 2}, name=f"{attention.name}_batch_seq")
        heads_dims = add_constant(graph, np.array([heads, head_dim], np.int64), f"{attention.name}_heads_dims")
        new_nodes += [head, ir.node("Concat", [head.outputs[0], heads_dims], {"axis": 0},
                                    name=f"{attention.name}_shape")]
        readers_new = [new_nodes[-1].outputs[0]] * len(merge.shape_readers)
    replace_with(graph, attention, new_nodes, [r.outputs[0] for r in merge.shape_readers], readers_new)
    merged = [] if len(dims(merge.reshape.outputs[0])) == 3 else [ir.node(
        "Reshape", [output, merge.reshape.inputs[1]], {"allowzero": merge.reshape.attributes.get_int("allowzero", 0)},
        name=merge.reshape.name)]  # [B*S, H*D]: the same target reads the same from [B, S, H*D]
    dead = [merge.reshape, merge.transpose, *merge.shape_readers, attention, *q_nodes, *k_nodes, *v_nodes]
    target = merge.reshape.inputs[1]
    replace_with(graph, merge.reshape, merged, [merge.reshape.outputs[0]], [merged[0].outputs[0] if merged else output],
                 dead=dead)
    remove_dead_cone(graph, [target])
    return True


@register_pass("fuse-attention", order=70)
def fuse_attention(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse MatMul/Scale/Mask/Softmax/MatMul attention into Attention (heads split/merge absorbed)."""
    counts = {"attention": 0, "causal": 0, "grouped-query": 0, "heads-absorbed": 0}
    for graph in list(all_graphs(model.graph)):
        for softmax in [n for n in graph if is_op(n, "Softmax")]:
            if softmax.graph is not graph:
                continue
            match = match_attention(softmax)
            if isinstance(match, str):
                log.debug("fuse-attention: %s: %s", softmax.name, match)
                continue
            require_opset(model, ATTENTION_OPSET)
            fuse(graph, match, f"{softmax.name or 'softmax'}_attention")
            counts["attention"] += 1
            counts["causal"] += match.causal
            counts["grouped-query"] += match.kv_repeat > 1
        for attention in [n for n in graph if is_op(n, "Attention")]:
            counts["heads-absorbed"] += absorb_heads(graph, attention)
    return {k: n for k, n in counts.items() if n}
