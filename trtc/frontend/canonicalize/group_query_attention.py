"""com.microsoft.GroupQueryAttention (onnxruntime-genai's growing-cache form) -> standard ONNX (opset 24).

    y, present_key, present_value = GroupQueryAttention(qkv [B, S, (Hq + 2 Hkv) D], , , past_key, past_value,
        seqlens_k, total_sequence_length, cos_cache, sin_cache) {num_heads, kv_num_heads, do_rotary, scale, ...}
-->
    q, k, v = Split(qkv, [Hq D, Hkv D, Hkv D], axis=2)                 (or the separate query, key, value)
    q, k, v = Transpose(Reshape(., [0, 0, H, -1]), [0, 2, 1, 3])       [B, H, S, D]
    past_b = Max(seqlens_k + 1 - S, 0); positions = past_b + Range(S)  [B, S]: GQA's positions
    q, k = RotaryEmbedding(q | k, cos_cache, sin_cache, positions)    (do_rotary=1)
    present_key = TensorScatter(Concat(past_key, k, axis=2), k, past_b, axis=2)   the same for value
    mask = (j <= positions[b, i]) And (j <= seqlens_k[b])              [B, 1, S, T], j < T = present length
    y = Reshape(Transpose(Attention(q, present_key, present_value, mask) {scale}), [0, 0, -1])

GQA's rows: row b holds seqlens_k[b] + 1 valid tokens, the last S of them new (the first prompt: positions
0..S-1 whatever the row's length, right padding). The cache grows by S (the form without a shared
past/present buffer) and a row's new keys are written at its own length past_b, as GQA writes them: a
right-padded row's next token overwrites its first pad (appended after the pads, it would be masked out).
static-kv-cache (--llm) takes these layers: it proves past_b is the cached tokens, feeds write_indices to
the positions and the cache write in its place and drops attention_mask. Attributes it does not rewrite
exactly (local_window_size, softcap, smooth_softmax, qk_output, position_ids, attention_bias, head_sink, a
shared buffer) are refused in one line.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.frontend.canonicalize.contrib import (
    Builder,
    check_attributes,
    contrib_rule,
    optional,
    refuse,
    take_outputs,
    used,
)

QUERY, KEY, VALUE, PAST_KEY, PAST_VALUE, SEQLENS_K, TOTAL, COS, SIN, POSITION_IDS, BIAS, HEAD_SINK = range(12)
HANDLED = {"num_heads": None, "kv_num_heads": None, "scale": None, "do_rotary": None, "rotary_interleaved": None,
           "local_window_size": -1, "softcap": 0.0, "smooth_softmax": 0, "qk_output": 0}


def _check(node: ir.Node) -> None:
    check_attributes(node, HANDLED)
    for index, what in ((POSITION_IDS, "position_ids"), (BIAS, "attention_bias"), (HEAD_SINK, "head_sink")):
        if optional(node.inputs, index) is not None:
            raise refuse(node, f"input {what} is not handled")
    if used(optional(node.outputs, 3)):
        raise refuse(node, "output_qk is not handled")
    if (optional(node.inputs, KEY) is None) != (optional(node.inputs, VALUE) is None):
        raise refuse(node, "key and value must be given together")
    if any(optional(node.inputs, i) is None for i in (PAST_KEY, PAST_VALUE, SEQLENS_K)):
        raise refuse(node, "needs past_key, past_value and seqlens_k")
    if node.attributes.get_int("do_rotary", 0) and any(optional(node.inputs, i) is None for i in (COS, SIN)):
        raise refuse(node, "do_rotary=1 without cos_cache and sin_cache")
    if node.attributes.get_int("num_heads", 0) % max(node.attributes.get_int("kv_num_heads", 0), 1) \
            or node.attributes.get_int("kv_num_heads", 0) <= 0:
        raise refuse(node, "num_heads must be a multiple of kv_num_heads > 0")


def _heads(build: Builder, x: ir.Value, heads: int) -> ir.Value:
    """[B, S, H D] -> [B, H, S, D]."""
    shape = build.const(np.array([0, 0, heads, -1], np.int64), "heads_shape")
    return build("Transpose", [build("Reshape", [x, shape])], {"perm": [0, 2, 1, 3]})


def _head_size(node: ir.Node, hq: int, hkv: int) -> int | None:
    """D from the query's static width (packed: (Hq + 2 Hkv) D), None when it is symbolic."""
    query, packed = node.inputs[QUERY], optional(node.inputs, KEY) is None
    width = query.shape[-1] if query.shape is not None and query.shape.rank() else None
    if not isinstance(width, int):
        if packed:
            raise refuse(node, "packed QKV needs a static last dim")
        return None
    heads = hq + 2 * hkv if packed else hq
    if width % heads:
        raise refuse(node, f"query width {width} is not a multiple of {heads} heads")
    return width // heads


def _pin_head_size(values: list[ir.Value], d: int | None) -> None:
    """The cache inputs and outputs' symbolic head dim (genai's `kv_cache_dim`) is the head size D."""
    for value in values:
        if d is not None and value.shape is not None and value.shape.rank() == 4 \
                and not isinstance(value.shape[3], int):
            value.shape = ir.Shape([*value.shape[:3], d])


def _split_qkv(build: Builder, node: ir.Node, hq: int, hkv: int, d: int | None) -> list[ir.Value]:
    query = node.inputs[QUERY]
    if optional(node.inputs, KEY) is not None:
        return [query, node.inputs[KEY], node.inputs[VALUE]]
    sizes = build.const(np.array([hq * d, hkv * d, hkv * d], np.int64), "qkv_sizes")
    return build("Split", [query, sizes], {"axis": 2}, outputs=3)


def _positions(build: Builder, node: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(positions [B, S] int64, seqlens_k [B] int64, past_b [B] int64): GQA's token positions,
    past_b + i with past_b = max(seqlens_k + 1 - S, 0), the tokens a row already holds."""
    one = build.const(np.array(1, np.int64), "one")
    seqlens = build("Cast", [node.inputs[SEQLENS_K]], {"to": ir.DataType.INT64})
    seq = build("Squeeze", [build("Shape", [node.inputs[QUERY]], {"start": 1, "end": 2})])
    past = build("Max", [build("Sub", [build("Add", [seqlens, one]), seq]),
                         build.const(np.array(0, np.int64), "zero")])
    steps = build("Range", [build.const(np.array(0, np.int64), "zero"), seq, one])
    axis1 = build.const(np.array([1], np.int64), "axis1")
    return build("Add", [build("Unsqueeze", [past, axis1]), steps]), seqlens, past


def _mask(build: Builder, positions: ir.Value, seqlens: ir.Value, present: ir.Value) -> ir.Value:
    """bool [B, 1, S, T]: key j is seen by query i of row b when j <= its position and j <= seqlens_k[b]."""
    total = build("Squeeze", [build("Shape", [present], {"start": 2, "end": 3})])
    keys = build("Range", [build.const(np.array(0, np.int64), "zero"), total,
                           build.const(np.array(1, np.int64), "one")])
    rows = build("Unsqueeze", [positions, build.const(np.array([1, 3], np.int64), "axes13")])
    lengths = build("Unsqueeze", [seqlens, build.const(np.array([1, 2, 3], np.int64), "axes123")])
    return build("And", [build("LessOrEqual", [keys, rows]), build("LessOrEqual", [keys, lengths])])


@contrib_rule("com.microsoft", "GroupQueryAttention")
def group_query_attention(graph: ir.Graph, node: ir.Node) -> None:
    _check(node)
    hq, hkv = node.attributes.get_int("num_heads"), node.attributes.get_int("kv_num_heads")
    build = Builder(graph, node)
    d = _head_size(node, hq, hkv)
    _pin_head_size([node.inputs[PAST_KEY], node.inputs[PAST_VALUE], *node.outputs[1:3]], d)
    q, k, v = (_heads(build, x, h) for x, h in zip(_split_qkv(build, node, hq, hkv, d), (hq, hkv, hkv)))
    positions, seqlens, past = _positions(build, node)
    if node.attributes.get_int("do_rotary", 0):
        rotary = {"interleaved": node.attributes.get_int("rotary_interleaved", 0)}
        q, k = (build("RotaryEmbedding", [x, node.inputs[COS], node.inputs[SIN], positions], rotary) for x in (q, k))
    # The present is one longer by S, and a row's new keys go at its own length (past_b), as GQA
    # writes them: a right-padded row's next token overwrites its first pad, never lands after it.
    present_key, present_value = (
        build("TensorScatter", [build("Concat", [node.inputs[cache], new], {"axis": 2}), new, past], {"axis": 2})
        for cache, new in ((PAST_KEY, k), (PAST_VALUE, v)))
    mask = _mask(build, positions, seqlens, present_key)
    scale = node.attributes.get_float("scale", 0.0)
    y = build("Attention", [q, present_key, present_value, mask], {"scale": scale} if scale else {})
    y = build("Reshape", [build("Transpose", [y], {"perm": [0, 2, 1, 3]}),
                          build.const(np.array([0, 0, -1], np.int64), "merge_shape")])
    take_outputs(node, [y, present_key, present_value])
