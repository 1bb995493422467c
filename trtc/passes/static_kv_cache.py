"""A static, in-place KV cache for decoder LLMs (`optimize --llm --max-seq N`; not in the default pipeline).

Before (layer i; new keys/values k, v [B, Hkv, S, D]; cache inputs [B, Hkv, P, D]; attention_mask [B, P+S]):
    present.i.key   = Concat(past_key_values.i.key, k, axis=2)                      the same for value
    y = Attention(q, repeat(present.i.key), repeat(present.i.value), causal_mask)    repeat: GQA's
                                                                                     Unsqueeze/Expand/Reshape
After (cache inputs [B, Hkv, Smax, D], Smax = --max-seq; write_indices int64 [B]):
    present.i.key   = TensorScatter(past_key_values.i.key, k, write_indices, axis=2)  same shape as the cache
    y = Attention(q, present.i.key, present.i.value, nonpad_kv_seqlen=write_indices + S, is_causal=1)

`write_indices[b]` is the number of tokens row b already holds in the cache: its S new tokens are written at
write_indices[b] .. write_indices[b] + S - 1 and attend, causally, to the cache up to there (opset 24's
per-row lower-right causal mask). The attention mask the export built from `attention_mask` is replaced, so
that input goes: a row's valid length is its write index + S, and a batch of prompts of different lengths is
right-padded (pads after a row's last token are overwritten by its next step). Left padding cannot be
expressed. The mask must be proven to be the plain causal mask: the pass evaluates its computation with an
all-ones attention_mask at a few (batch, seq, past) sizes, the last with past = Smax - seq, so a sliding
window or a bidirectional mask is refused, as is any cache layout, attention form or leftover reader of the
cache's length it does not recognise (one line naming the node); see causal_mask.py. kv_cache_io.py reads the
rewritten model's cache back (the artifact's meta) and turns a growing-cache run into its inputs.

onnxruntime-genai's GroupQueryAttention, as the frontend writes it (canonicalize/group_query_attention.py):
    present.i.key = TensorScatter(Concat(past_key_values.i.key, k, axis=2), k, past_b, axis=2)
    past_b = Max(seqlens_k + 1 - S, 0), seqlens_k from attention_mask; positions = past_b + Range(S)
past_b is proven to be the tokens cached (with an all-ones attention_mask, past_b = P at the same sizes as the
mask), the present becomes the Concat form above, and after the rewrite past_b's readers (the positions) read
write_indices instead, so that attention_mask is left unread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import add_constant, is_op, remove_if_dead, replace_with, require_opset
from trtc.passes._evaluate import EvaluationError, evaluate
from trtc.passes.attention_heads import remove_dead_cone
from trtc.passes.causal_mask import mask_cone, mask_feeds, prove_causal
from trtc.passes.fuse_attention import peel_repeat
from trtc.passes.kv_cache_io import WRITE_INDICES
from trtc.passes.registry import PassContext, register_pass

STATIC_CACHE_OPSET = 24  # TensorScatter, Attention's nonpad_kv_seqlen
Q, K, V, MASK, PAST_KEY, PAST_VALUE, NONPAD = range(7)


@dataclasses.dataclass(frozen=True)
class LlmOptions:
    """`--llm`: the static cache's capacity. max_seq: cache slots per row (prompt + generated tokens);
    max_batch: the largest batch the engine's profiles take."""

    max_seq: int
    max_batch: int = 8
    last_logits: bool = False  # logits [B, 1, vocab] for each row's last token only (`last_token_logits`)

    def record(self) -> dict[str, int | bool]:
        return {"max_seq": self.max_seq, "max_batch": self.max_batch, "last_logits": self.last_logits}


@dataclasses.dataclass
class CacheLayer:
    attention: ir.Node
    concats: tuple[ir.Node, ir.Node]  # key, value: Concat(past input, new, axis=2) -> present output
    repeat_nodes: list[ir.Node]
    mask: ir.Value


def growing_cache(value: ir.Value) -> ir.Node | None:
    """The Concat(past graph input [B, H, P, D], new, axis=2) that makes `value`, a graph output."""
    node = value.producer()
    if not is_op(node, "Concat") or len(node.inputs) != 2 or not value.is_graph_output():
        return None
    past = node.inputs[0]
    rank = len(dims(past) or ())
    if not past.is_graph_input() or rank != 4 or node.attributes.get_int("axis", 0) % rank != 2:
        return None
    return node


def gqa_present(node: ir.Node) -> ir.Node | None:
    """The Concat(past input, new) of `node` = TensorScatter(Concat(past input, new, axis=2), new, past_b, axis=2)
    returned as a graph output (GQA's present, written at each row's length past_b)."""
    if not is_op(node, "TensorScatter") or len(node.inputs) != 3 or node.inputs[2] is None \
            or not node.outputs[0].is_graph_output() or node.attributes.get_int("axis", -2) % 4 != 2:
        return None
    concat = node.inputs[0].producer()
    if not is_op(concat, "Concat") or len(concat.inputs) != 2 or concat.inputs[1] is not node.inputs[1] \
            or len(concat.outputs[0].uses()) != 1:
        return None
    past = concat.inputs[0]
    if not past.is_graph_input() or len(dims(past) or ()) != 4 or concat.attributes.get_int("axis", 0) % 4 != 2:
        return None
    return concat


def unwrap_gqa_presents(model: ir.Model, max_seq: int) -> list[ir.Value]:
    """GQA's presents -> the growing Concat form, once their write indices past_b are proven to be the cached
    tokens P (all-ones attention_mask, the sizes prove_causal tries); the past_b values, to be fed
    write_indices after the rewrite."""
    graph = model.graph
    found = [(n, c) for n in graph if (c := gqa_present(n)) is not None]
    if not found:
        return []
    indices = list(dict.fromkeys(n.inputs[2] for n, _ in found))
    caches = {c.inputs[0].name: c.inputs[0] for _, c in found}
    nodes, inputs = mask_cone(graph, indices)
    for batch, seq, past in sorted({(2, 5, 0), (1, 1, 6), (2, 3, max(max_seq - 3, 0))}):
        feeds = mask_feeds(inputs, caches, batch, seq, past)
        try:
            if isinstance(feeds, str):
                raise EvaluationError(feeds)
            results = evaluate(nodes, indices, model.opset_imports, feeds=feeds)
        except EvaluationError as exc:
            raise TrtcError(f"node {found[0][0].name!r} (TensorScatter): its write indices could not be "
                            f"evaluated ({exc})", where="--llm") from None
        for value, result in zip(indices, results, strict=True):
            if np.asarray(result).shape != (batch,) or not np.all(np.asarray(result) == past):
                node = next(n for n, _ in found if n.inputs[2] is value)
                raise TrtcError(f"node {node.name!r} (TensorScatter): its write indices are not the tokens cached "
                                f"(batch {batch}, {seq} new and {past} cached tokens)", where="--llm")
    for node, concat in found:
        replace_with(graph, node, [], [node.outputs[0]], [concat.outputs[0]], dead=[node])
    return indices


def cache_concats(graph: ir.Graph) -> list[ir.Node]:
    """Every growing cache of the graph, in graph order."""
    return [n for n in graph if is_op(n, "Concat") and growing_cache(n.outputs[0]) is n]


def match_layer(attention: ir.Node) -> CacheLayer | str:
    """The cache layer `attention` reads, or why it is not one the pass can make static."""
    inputs = list(attention.inputs) + [None] * (7 - len(attention.inputs))
    if any(v is not None and v.name for v in inputs[PAST_KEY:]):
        return "Attention already takes past_key/past_value or nonpad_kv_seqlen"
    if len(dims(inputs[Q]) or ()) != 4:
        return "Attention's query is not 4-D [batch, heads, seq, head_dim]"
    if attention.attributes.get_float("softcap", 0.0) or any(v.uses() for v in attention.outputs[1:]):
        return "Attention uses softcap or returns its scores"
    if attention.attributes.get_int("is_causal", 0):
        return "is_causal on a concatenated cache is aligned to the first key (upper left)"
    repeats = [peel_repeat(inputs[i]) for i in (K, V)]
    kv = [r[0] if r else inputs[i] for r, i in zip(repeats, (K, V))]
    if (repeats[0] is None) != (repeats[1] is None) or (repeats[0] and repeats[0][1] != repeats[1][1]):
        return "keys and values are repeated over the heads differently"
    concats = [growing_cache(v) for v in kv]
    if None in concats:
        return "keys or values are not Concat(past graph input, new, axis=2) returned as a graph output"
    for concat in concats:
        past, new = concat.inputs
        if not all(isinstance(d, int) for d in (dims(past)[1], dims(past)[3])) \
                or not (same_dim(dims(new)[1], dims(past)[1]) and same_dim(dims(new)[3], dims(past)[3])):
            return f"cache {past.name} has no static [heads, head_dim] matching its update"
    if inputs[MASK] is None or not inputs[MASK].name:
        return "Attention has no mask (the pass replaces the export's causal mask)"
    return CacheLayer(attention, tuple(concats), [n for r in repeats if r for n in r[2]], inputs[MASK])


def reads_cache(attention: ir.Node, present: ir.Value) -> bool:
    """`attention` takes `present` as its keys or values (repeated over the heads or not)."""
    return any(v is present or ((r := peel_repeat(v)) is not None and r[0] is present)
               for v in attention.inputs[K:V + 1] if v is not None)


# ---- the rewrite -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Shared:
    """What every layer of one run reads: the write indices input and the per-row key lengths."""

    write_indices: ir.Value
    kv_lengths: ir.Value | None = None


def make_static(graph: ir.Graph, layer: CacheLayer, shared: Shared, max_seq: int) -> None:
    """Rewrite one layer: its caches to TensorScatter on [B, Hkv, Smax, D], its attention to per-row lengths."""
    attention = layer.attention
    name = attention.name or "attention"
    presents, first_new = [], layer.concats[0].inputs[1]
    for concat in layer.concats:
        past, new = concat.inputs
        batch, heads, _, head_dim = dims(past)
        past.shape = ir.Shape([batch, heads, max_seq, head_dim])
        scatter = ir.node("TensorScatter", [past, new, shared.write_indices], {"axis": 2},
                          name=f"{concat.name or past.name}_update")
        scatter.outputs[0].type, scatter.outputs[0].shape = past.type, past.shape
        replace_with(graph, concat, [scatter], [concat.outputs[0]], scatter.outputs, dead=[concat])
        presents.append(scatter.outputs[0])
    new_nodes = []
    if shared.kv_lengths is None:  # write index + S, S the update's sequence length (every layer's)
        seq = ir.node("Shape", [first_new], {"start": 2, "end": 3}, name=f"{name}_new_tokens")
        lengths = ir.node("Add", [shared.write_indices, seq.outputs[0]], name=f"{name}_kv_lengths")
        seq.outputs[0].type, seq.outputs[0].shape = ir.TensorType(ir.DataType.INT64), ir.Shape([1])
        lengths.outputs[0].type = ir.TensorType(ir.DataType.INT64)
        lengths.outputs[0].shape = shared.write_indices.shape
        new_nodes += [seq, lengths]
        shared.kv_lengths = lengths.outputs[0]
    attributes = {k: a.value for k, a in attention.attributes.items() if k != "is_causal"} | {"is_causal": 1}
    static = ir.node("Attention", [attention.inputs[Q], *presents, None, None, None, shared.kv_lengths],
                     attributes, name=name)
    static.outputs[0].type, static.outputs[0].shape = attention.outputs[0].type, attention.outputs[0].shape
    new_nodes.append(static)
    shape_inputs = [v for n in layer.repeat_nodes for v in n.inputs[1:] if v is not None]  # their target shapes
    replace_with(graph, attention, new_nodes, attention.outputs[:1], static.outputs[:1],
                 dead=[attention, *layer.repeat_nodes])
    remove_dead_cone(graph, [layer.mask, *shape_inputs])


def check_cache_readers(graph: ir.Graph, caches: list[ir.Value]) -> None:
    """What still reads a cache input or its update besides the update and the attentions must not read its
    length (now Smax, not the tokens cached)."""
    presents = [u.node.outputs[0] for c in caches for u in c.uses() if is_op(u.node, "TensorScatter")]
    for cache in caches + presents:
        for use in cache.uses():
            node = use.node
            if (is_op(node, "TensorScatter") and use.idx == 0) or (is_op(node, "Attention") and use.idx in (K, V)):
                continue
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", 4)
            if is_op(node, "Shape") and 2 not in range(4)[start:end]:
                continue
            raise TrtcError(f"node {node.name!r} ({node.op_type}) reads cache {cache.name!r} (its length would be "
                            "the static cache's, not the tokens cached)", where="--llm")


def check_inputs_left(graph: ir.Graph, allowed: tuple) -> None:
    """An input still read after the rewrite may vary only in the batch and the new tokens (`allowed` dims): one
    sized by the cached tokens too (attention_mask read for positions) has no size the two profiles could give."""
    for value in graph.inputs:
        if value.uses() and any(not isinstance(d, int) and not any(same_dim(d, a) for a in allowed)
                                for d in dims(value) or ()):
            node = value.uses()[0].node
            raise TrtcError(f"node {node.name!r} ({node.op_type}) still reads input {value.name!r}, whose length "
                            "counts the cached tokens too", where="--llm",
                            hint="the static cache takes exports whose positions come from position_ids")


def drop_unread_inputs(graph: ir.Graph, before: list[ir.Value]) -> list[str]:
    """Remove the graph inputs the rewrite left unread (attention_mask); their names."""
    dropped = [v for v in before if not v.uses() and not v.is_graph_output()]
    for value in dropped:
        graph.inputs.remove(value)
    return [v.name for v in dropped]


def last_token_logits(graph: ir.Graph) -> bool:
    """logits = MatMul(h [B, S, H], W) -> MatMul(Gather(h, [-1], axis=1), W) [B, 1, vocab]: the head (H x vocab per
    token, the largest matrix of a small model) runs on each row's last token only. False when the graph
    output `logits` is not made so, or is already [B, 1, vocab]."""
    logits = next((v for v in graph.outputs if v.name == "logits"), None)
    head = logits.producer() if logits is not None else None
    hidden = head.inputs[0] if is_op(head, "MatMul") else None
    if hidden is None or head.inputs[1].const_value is None or len(dims(hidden) or ()) != 3 or dims(hidden)[1] == 1:
        return False
    index = add_constant(graph, np.array([-1], np.int64), "last_token_index")
    last = ir.node("Gather", [hidden, index], {"axis": 1}, name="last_token")  # cheaper to lower than a Slice
    last.outputs[0].type = hidden.type
    last.outputs[0].shape = ir.Shape([dims(hidden)[0], 1, dims(hidden)[2]])
    graph.insert_before(head, last)
    head.replace_input_with(0, last.outputs[0])
    logits.shape = ir.Shape([dims(logits)[0], 1, dims(logits)[2]])
    return True


@register_pass("static-kv-cache", order=72, default=False)
def static_kv_cache(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Growing KV cache (Concat) -> static in-place cache (TensorScatter) with per-row causal Attention (--llm)."""
    graph = model.graph
    gqa_indices = unwrap_gqa_presents(model, ctx.llm.max_seq) if ctx.llm is not None else []
    concats = cache_concats(graph)
    if not concats:
        last = ctx.llm is not None and ctx.llm.last_logits and cache_layout_made(graph) and last_token_logits(graph)
        return {"last-token-logits": 1} if last else {}
    if ctx.llm is None:
        raise TrtcError("pass 'static-kv-cache' needs the cache's size", where="--passes",
                        hint="run it through --llm --max-seq N")
    layers, reasons = [], {}
    for node in [n for n in graph if is_op(n, "Attention")]:
        found = match_layer(node)
        if isinstance(found, str):
            reasons[node] = found
        else:
            layers.append(found)
    covered = {c for layer in layers for c in layer.concats}
    for concat in concats:
        if concat not in covered:
            readers = [n for n in reasons if reads_cache(n, concat.outputs[0])]
            why = reasons[readers[0]] if readers else "no Attention reads it (is fuse-attention disabled?)"
            raise TrtcError(f"node {concat.name!r} (Concat) grows cache {concat.inputs[0].name!r}: {why}",
                            where="--llm", hint="the static cache takes LLaMA/Qwen2/GPT-2-style causal decoders")
    prove_causal(model, {layer.mask: layer.attention for layer in layers},
                 {c.inputs[0].name: c.inputs[0] for layer in layers for c in layer.concats}, ctx.llm.max_seq)
    before = [v for v in graph.inputs if v.uses()]
    caches = [c.inputs[0] for c in concats]
    batch, seq = dims(concats[0].inputs[0])[0], dims(concats[0].inputs[1])[2]  # seq: the new tokens'
    write_indices = ir.Value(name=WRITE_INDICES, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([batch]))
    graph.inputs.append(write_indices)
    shared = Shared(write_indices)
    for layer in layers:
        make_static(graph, layer, shared, ctx.llm.max_seq)
    for value in gqa_indices:  # GQA's positions: write_indices + Range(S)
        value.replace_all_uses_with(write_indices)
    remove_dead_cone(graph, gqa_indices)
    check_cache_readers(graph, caches)
    dropped = drop_unread_inputs(graph, before)
    check_inputs_left(graph, (batch, seq))
    require_opset(model, STATIC_CACHE_OPSET)
    model.ir_version = max(model.ir_version or 0, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", STATIC_CACHE_OPSET)]))
    last = ctx.llm.last_logits and last_token_logits(graph)
    return {"static-cache-layers": len(layers), "caches": 2 * len(layers), "inputs-dropped": len(dropped),
            "last-token-logits": int(last)}


def cache_layout_made(graph: ir.Graph) -> bool:
    """The graph has a static cache already (the pass ran before)."""
    return any(is_op(n, "TensorScatter") and n.inputs[0].is_graph_input() for n in graph)


def low_precision_caches(model: ir.Model) -> int:
    """After the precision pass: a cache the attention reads in fp16/bf16 is stored in it too, so that the
    engine writes it in place (IKVCacheUpdateLayer aliases the cache input to its output). Rewrites
        present = Cast(TensorScatter(Cast(cache, to=low), new, w), to=float)      cache: float input
    into    present = TensorScatter(cache, new, w)                                cache: low input and output
    and returns how many caches it retyped."""
    graph, retyped = model.graph, 0
    for node in [n for n in graph if is_op(n, "TensorScatter")]:
        cast_in = node.inputs[0].producer()
        users = [u.node for u in node.outputs[0].uses()]
        casts_out = [u for u in users if is_op(u, "Cast") and u.outputs[0].is_graph_output()]
        if not is_op(cast_in, "Cast") or not cast_in.inputs[0].is_graph_input() or len(casts_out) != 1 \
                or casts_out[0].outputs[0].uses() or cast_in.inputs[0].dtype != ir.DataType.FLOAT:
            continue
        cache, present = cast_in.inputs[0], casts_out[0].outputs[0]
        cache.type = ir.TensorType(node.outputs[0].dtype)
        cast_in.outputs[0].replace_all_uses_with(cache)
        index = list(graph.outputs).index(present)
        name, present.name = present.name, None
        graph.outputs[index] = node.outputs[0]
        node.outputs[0].name = name
        remove_if_dead(graph, [casts_out[0], cast_in])
        retyped += 1
    return retyped


