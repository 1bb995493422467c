"""Fuse scaled-dot-product attention into ONNX Attention (opset 23).

Before (Q, K, V [batch, heads, seq, head_dim]; a, b, c scalar constants; m1..mn masks):
    scores = MatMul(Q * a, Transpose(K * b, perm=[0,1,3,2]))      or K^T = Transpose(x, [0,2,3,1]), or K^T itself
    scores = scores * c                                           Mul or Div, any number, before the masks
    scores = scores * r                                           Mul or Div by a constant r [.., Sq, 1] (Swin V2's
                                                                  per-head logit scale [H, 1, 1]), before the masks
    scores = scores + m1 + ... | Where(bool_mask, scores, -inf)   additive masks in any order, or one Where
    scores = Reshape(Reshape(scores, [B, nW, H, N, N]) + w, [-1, H, N, N])   Swin's shifted-window mask w
    Y = MatMul(Softmax(scores, axis=-1), V)                       same-type Casts in between allowed
After:
    Y = Attention(Q * r, K, V, m1 + ... + mn, scale=a*b*c)        is_causal=1 for a mask proven lower-triangular
                                                                  (Trilu, or Range/LessOrEqual/Where)
A mask may differ per head: T5's relative position bias [1, H, S, S] or [H, S, S], Swin's bias table
gathered into [H, N, N] (attn_mask broadcasts to [B, H, Sq, Skv]). A window mask w [1, nW, h, N, N]
becomes Tile(w as [nW, h, N, N], [B, 1, 1, 1]) (Q's batch is B*nW, split row-major) when nW, h and N
are static and nW*H*N*N is at most attention_masks.WINDOW_MASK_MAX_ELEMENTS; else it stays decomposed.
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
are dropped. `why_not(node)` says why a Softmax does not start a fusion; the pass's report counts
the attentions left decomposed by reason ("attention left decomposed: <reason>") in every run that
changes something (a run that changes nothing must report nothing, or the pipeline would not settle).

onnxruntime's CPU Attention zeroes a query row whose float mask is float32-lowest everywhere, where
the decomposed Softmax (and the ONNX reference) average V uniformly: rows with no key to attend to
(an all-padding sequence) are the one place the fused graph can differ when run there.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import (
    const_array,
    const_scalar,
    fuse_matches,
    is_op,
    producer_of,
    replace_with,
    sole_reader,
)
from trtc.ir.walk import all_graphs
from trtc.passes.attention_heads import absorb_heads, perm_of, remove_dead_cone
from trtc.passes.attention_masks import (
    WindowMasks,
    broadcasts_over_queries,
    expand_over_queries,
    is_causal_bias,
    is_causal_condition,
    is_large_negative,
    is_zero_bias,
    mask_fits,
    match_windows,
    tile_window_mask,
    window_mask_issue,
)
from trtc.passes.registry import PassContext, register_pass

ATTENTION_OPSET = 23
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
Dims = tuple  # a known-rank shape: ints and ir.SymbolicDim


class Miss(str):
    """Why a Softmax does not start a fusion. The text may name nodes and values (for the debug log
    and `why_not`); `summary` names none, so the report can count the same miss across layers."""

    summary: str

    def __new__(cls, text: str, summary: str) -> Miss:
        miss = super().__new__(cls, text)
        miss.summary = summary
        return miss


def summary_of(reason: str) -> str:
    return getattr(reason, "summary", reason)


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


def row_factor(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(x, c) when `node` is Mul(x, c), Mul(c, x) or Div(x, c) with c a constant, not one element, that is
    constant along x's last axis (its last dim 1) and broadcasts into x without growing it: Swin V2's
    per-head logit scale [H, 1, 1]. Scores [.., Sq, Skv] times c [.., Sq, 1] is (Q * c).K^T."""
    if not is_op(node, "Mul", "Div"):
        return None
    for x, c in (node.inputs[:2], node.inputs[1::-1]) if node.op_type == "Mul" else (node.inputs[:2],):
        data, x_dims, c_dims = const_array(c), dims(x), dims(c)
        if data is None or data.size == 1 or c.dtype != x.dtype or x_dims is None or c_dims is None \
                or not 1 <= len(c_dims) <= len(x_dims) or c_dims[-1] != 1:
            continue
        if not all(m == 1 or same_dim(m, d) for m, d in zip(c_dims, x_dims[len(x_dims) - len(c_dims):])):
            continue
        if np.all(np.isfinite(data)) and (node.op_type == "Mul" or np.all(data != 0)):
            return x, c
    return None


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


# ---- scaled dot-product attention -> 4-D Attention ---------------------------------------------------

@dataclasses.dataclass
class Scores:
    """Softmax's input traced back to Q.K^T: the scale and masks applied on the way."""

    qk: ir.Node
    scale: float = 1.0
    masks: list[ir.Value] = dataclasses.field(default_factory=list)
    wheres: list[ir.Node] = dataclasses.field(default_factory=list)  # Where(mask, scores, -inf)
    windows: list[WindowMasks] = dataclasses.field(default_factory=list)  # masks added in a per-window view
    q_factors: list[tuple[str, ir.Value]] = dataclasses.field(default_factory=list)  # (Mul or Div, c) for Q
    nodes: list[ir.Node] = dataclasses.field(default_factory=list)


def match_scores(value: ir.Value, scaled: bool = False) -> Scores | str:
    """Trace `value` up to the MatMul Q.K^T through scalar scales and masks, every step single-use."""
    if sole_reader(value) is None:
        return Miss(f"score {value.name} has other users", "the scores have other users")
    node = value.producer()
    if is_op(node, "MatMul"):
        return Scores(node, nodes=[node])
    if is_op(node, "Mul", "Div"):
        x = next((i for i in node.inputs[:2] if scalar_factor(node, i) is not None), None)
        row = row_factor(node) if x is None else None
        if x is None and row is None:
            return Miss(f"{node.op_type} {node.name} scales the scores by a non-constant (or by a constant that "
                        f"varies along the keys)", "the scores are scaled by a non-constant or along the keys")
        found = match_scores(x if row is None else row[0], True)
        if not isinstance(found, str):
            if row is None:
                found.scale *= scalar_factor(node, x)
            else:
                found.q_factors.append((node.op_type, row[1]))
            found.nodes.append(node)
        return found
    windows = match_windows(node) if is_op(node, "Reshape") else None
    if scaled and (is_op(node, "Add", "Where") or isinstance(windows, WindowMasks)):
        return Miss(f"{node.op_type} {node.name} masks the scores before they are scaled",
                    "the scores are masked before they are scaled")
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
    if windows is not None:  # the view back from Swin's per-window 5-D view of the scores, or no attention
        if isinstance(windows, str):
            return windows
        found = match_scores(windows.scores)
        if not isinstance(found, str):
            found.windows.append(windows)
            found.nodes += windows.nodes
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
    windows: list[WindowMasks] = dataclasses.field(default_factory=list)  # tiled into attn_mask
    q_factors: list[tuple[str, ir.Value]] = dataclasses.field(default_factory=list)  # applied to Q: Q * c or Q / c


def nan_guard(probs: ir.Value) -> list[ir.Node] | None:
    """[IsNaN, Where] when the probabilities' readers are exactly Where(IsNaN(P), 0, P): the guard torch's
    SDPA export puts on rows with no key to attend to (Softmax of all -inf is NaN), which zeroes them as
    Attention does itself."""
    users = probs.consumers()
    if probs.is_graph_output() or len(users) != 2:
        return None
    isnan = next((u for u in users if is_op(u, "IsNaN")), None)
    where = next((u for u in users if is_op(u, "Where")), None)
    if isnan is None or where is None or sole_reader(isnan.outputs[0]) is not where:
        return None
    if list(where.inputs) != [isnan.outputs[0], where.inputs[1], probs] or const_scalar(where.inputs[1]) != 0 \
            or dims(where.inputs[1]) is None or len(dims(where.inputs[1])) > len(dims(probs) or ()):
        return None
    return [isnan, where]


def peel_flat_transpose(kt: ir.Value) -> tuple[ir.Value, list[ir.Node]] | None:
    """(k, nodes) when `kt` is k [B, H, T, D] transposed on its last two axes through a 3-D view:
    Reshape(Transpose(Reshape(k, [-1, T, D]), [0, 2, 1]), [B, H, D, T]) (torch's SDPA decomposition)."""
    outer = producer_of(kt, "Reshape")
    transpose = producer_of(outer.inputs[0], "Transpose") if outer else None
    inner = producer_of(transpose.inputs[0], "Reshape") if perm_of(transpose) == (0, 2, 1) else None
    if inner is None:
        return None
    k = inner.inputs[0]
    k_dims, flat, out = dims(k), dims(inner.outputs[0]), dims(kt)
    if k_dims is None or flat is None or out is None or (len(k_dims), len(flat), len(out)) != (4, 3, 4):
        return None
    if not (same_dim(flat[1], k_dims[2]) and same_dim(flat[2], k_dims[3])
            and all(map(same_dim, out, (k_dims[0], k_dims[1], k_dims[3], k_dims[2])))):
        return None
    return k, [outer, transpose, inner]


def match_key(kt: ir.Value) -> tuple[ir.Value, tuple[int, ...] | None, float, list[ir.Node]]:
    """K^T as (k, perm making K from k or None, scale factor, nodes)."""
    kt, factor, nodes = peel_scale(kt)
    if (flat := peel_flat_transpose(kt)) is not None:
        k, inner, inner_nodes = peel_scale(flat[0])
        return k, None, factor * inner, nodes + flat[1] + inner_nodes
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
    while True:
        user = sole_reader(probs)
        if is_op(user, "Cast") and user.attributes.get_int("to") == dtype:
            casts.append(user)
            probs = user.outputs[0]
        elif (guard := nan_guard(probs)) is not None:
            casts += guard
            probs = guard[-1].outputs[0]
        else:
            break
    if not is_op(user, "MatMul") or user.inputs[0] is not probs:
        return "the probabilities are not used only by MatMul(P, V)"
    pv = user
    scores = match_scores(softmax.inputs[0])
    if isinstance(scores, str):
        return scores
    # The masks must fit Q.K^T itself: Softmax's input may have been grown by a mask's broadcast
    # (Attention's attn_mask cannot grow the batch or heads) or come from a view back with a new dim.
    qk_dims = dims(scores.qk.outputs[0])
    if qk_dims is not None and len(qk_dims) == 4:
        score_dims = qk_dims
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
    for windows in scores.windows:
        if (issue := window_mask_issue(windows, score_dims, dtype)) is not None:
            return issue
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
    return AttentionMatch(q, k, k_perm, v, scale, masks, condition, causal, repeat, pv.outputs[0], nodes, dropped,
                          scores.windows, scores.q_factors)


def why_not(node: ir.Node) -> str | None:
    """Why `node` (a Softmax) does not start an attention fusion (None: it does)."""
    result = match_attention(node)
    return result if isinstance(result, str) else None


def broadcast_dims(a: Dims | None, b: Dims | None) -> Dims | None:
    """The shape of a + b when the dims prove it (each pair equal, or one of them 1)."""
    if a is None or b is None:
        return None
    a, b = (1,) * (len(b) - len(a)) + a, (1,) * (len(a) - len(b)) + b
    out = tuple(y if x == 1 else x for x, y in zip(a, b, strict=True) if x == 1 or y == 1 or same_dim(x, y))
    return out if len(out) == len(a) else None


def fuse(graph: ir.Graph, match: AttentionMatch, name: str) -> None:
    new_nodes = []
    k = match.k
    if match.k_perm is not None:
        new_nodes.append(ir.node("Transpose", [k], {"perm": list(match.k_perm)}, name=f"{name}_key"))
        k = new_nodes[-1].outputs[0]
        k.type = match.k.type
        k.shape = ir.Shape([match.k.shape[i] for i in match.k_perm])
    attn_mask, masks = match.condition, list(match.masks)
    for windows in match.windows:  # each window mask as a 4-D one, tiled over the images
        for window_mask in windows.masks:
            tile_nodes, mask = tile_window_mask(graph, window_mask, windows.windows, match.q, name)
            new_nodes += tile_nodes
            masks.append(mask)
    for mask in masks:  # one attn_mask: the sum of the additive ones
        if mask.shape is not None and len(mask.shape) == 4 and mask.shape[2] == 1 and mask.shape[3] != 1:
            expand_nodes, mask = expand_over_queries(mask, name)
            for value in expand_nodes[1].inputs[::2]:
                graph.register_initializer(value)
            new_nodes += expand_nodes
        if attn_mask is None:
            attn_mask = mask
            continue
        new_nodes.append(ir.node("Add", [attn_mask, mask], name=f"{name}_mask"))
        total = broadcast_dims(dims(attn_mask), dims(mask))
        attn_mask = new_nodes[-1].outputs[0]
        attn_mask.type = mask.type
        attn_mask.shape = None if total is None else ir.Shape(total)
    attributes = {"scale": float(match.scale)}
    if match.causal:
        attributes["is_causal"] = 1
    q = match.q
    for op_type, factor in match.q_factors:  # (Q * c).K^T: c is constant along the keys
        new_nodes.append(ir.node(op_type, [q, factor], name=f"{name}_query_scale"))
        q = new_nodes[-1].outputs[0]
        q.type, q.shape = match.q.type, match.q.shape
    inputs = [q, k, match.v] + ([attn_mask] if attn_mask is not None else [])
    new_nodes.append(ir.node("Attention", inputs, attributes, name=name))
    # Besides dropped masks: the Unsqueezes that made window masks 5-D (the tiling reads below them)
    # and what computed the targets of the per-window views (Shape/Div/Concat in transformers' export).
    dead_inputs = match.dropped_masks + [m for w in match.windows for m in w.masks] \
        + [n.inputs[1] for w in match.windows for n in w.nodes if is_op(n, "Reshape")]
    replace_with(graph, match.nodes[-1], new_nodes, [match.output], new_nodes[-1].outputs, dead=match.nodes[::-1])
    remove_dead_cone(graph, dead_inputs)


@register_pass("fuse-attention", order=70)
def fuse_attention(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse MatMul/Scale/Mask/Softmax/MatMul attention into Attention (heads split/merge absorbed)."""
    def fuse_named(graph: ir.Graph, match: AttentionMatch) -> None:
        softmax = next(n for n in match.nodes if is_op(n, "Softmax"))
        fuse(graph, match, f"{softmax.name or 'softmax'}_attention")

    fused = fuse_matches(model, "fuse-attention", ["Softmax"], match_attention, fuse_named, opset=ATTENTION_OPSET)
    counts = {"attention": len(fused), "causal": sum(m.causal for m in fused),
              "grouped-query": sum(m.kv_repeat > 1 for m in fused), "heads-absorbed": 0}
    for graph in all_graphs(model.graph):
        for attention in [n for n in graph if is_op(n, "Attention")]:
            counts["heads-absorbed"] += absorb_heads(graph, attention)
    changed = {k: n for k, n in counts.items() if n}
    # What stayed decomposed is said only alongside a change: the pipeline runs passes until one
    # reports nothing, so a run that changes nothing must return {} (fold-constants does the same).
    return {**changed, **left_decomposed(model)} if changed else changed


def feeds_matmul(softmax: ir.Node) -> bool:
    """The probabilities (through Casts) are the left operand of a MatMul: the Softmax of an attention,
    not a classifier's."""
    pending = list(softmax.outputs)
    while pending:
        value = pending.pop()
        for use in value.uses():
            if is_op(use.node, "MatMul") and use.idx == 0:
                return True
            if is_op(use.node, "Cast"):
                pending += use.node.outputs
    return False


def left_decomposed(model: ir.Model) -> dict[str, int]:
    """How many attentions (a Softmax whose probabilities a MatMul multiplies V by) did not fuse, keyed
    "attention left decomposed: <reason>" (the reason without node names, so equal layers add up)."""
    counts: Counter[str] = Counter()
    for graph in all_graphs(model.graph):
        for node in graph:
            if is_op(node, "Softmax") and feeds_matmul(node) and isinstance(reason := match_attention(node), str):
                counts[f"attention left decomposed: {summary_of(reason)}"] += 1
    return dict(counts)
