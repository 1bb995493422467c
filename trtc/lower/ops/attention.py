"""Attention (opset 23+) -> IAttention when the node fits it, else MatMul, Softmax, MatMul.

Both forms share the ONNX front matter: 3-D inputs split into heads, the past cache concatenated
(present_key/present_value), Q and K scaled by sqrt(scale), and the additive bias built from
attn_mask (padded with -inf/False to the key length), is_causal (offset-aware: past length, or
nonpad_kv_seqlen - q_len per batch), the opset-25 sliding windows and the nonpad padding mask.
A query row with no attendable key gives zeros, as the spec's fully-masked-row guard says.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import same_dim
from trtc.lower.context import trt_dtype
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
Q, K, V, MASK, PAST_KEY, PAST_VALUE, NONPAD = range(7)


def given(values, index: int) -> bool:
    """An optional input/output is present (not absent and not the empty name)."""
    return index < len(values) and values[index] is not None and values[index].name != ""


def _check_attention(node: ir.Node) -> str | None:
    q, k, v = node.inputs[:3]
    if not (q.shape.rank() == k.shape.rank() == v.shape.rank()) or q.shape.rank() not in (3, 4):
        return "Q, K and V must all be 3-D or all 4-D"
    if q.shape.rank() == 3 and ("q_num_heads" not in node.attributes or "kv_num_heads" not in node.attributes):
        return "3-D Q/K/V need the q_num_heads and kv_num_heads attributes"
    if given(node.inputs, PAST_KEY) != given(node.inputs, PAST_VALUE):
        return "past_key and past_value must be given together"
    if given(node.inputs, MASK) and node.inputs[MASK].dtype not in (ir.DataType.BOOL, *FLOAT_TYPES):
        return f"attn_mask has type {node.inputs[MASK].dtype.name}; it must be bool or float"
    if "scale" not in node.attributes and not isinstance(_head_size(node), int):
        return "the query head size must be static when the scale attribute is absent (it sets 1/sqrt(head_size))"
    return None


def _head_size(node: ir.Node):
    q = node.inputs[Q]
    last = q.shape[-1]
    if q.shape.rank() == 3 and isinstance(last, int):
        return last // node.attributes.get_int("q_num_heads", 1)
    return last


ATTENTION_CONSTRAINTS = [
    tensor_types(), known_rank(Q), known_rank(K), known_rank(V), known_rank(MASK),
    Constraint("attention inputs of a supported form", _check_attention),
    attribute_in("qk_matmul_output_mode", (0, 1, 2, 3), 0),
    attribute_in("softmax_precision", (0, 1, 10, 11, 16), 0),
]


@converter("Attention", since=23, constraints=ATTENTION_CONSTRAINTS)
def lower_attention(ctx, node):
    """Attention: IAttention (fused kernels, decomposable) unless softcap, the qk_matmul_output
    output, a V head size or type different from K's, a lower softmax precision, or fp32 inputs
    widened from fp16/bf16 by a Cast need the decomposition."""
    attrs = node.attributes
    three_d = node.inputs[Q].shape.rank() == 3
    dtype = trt_dtype(ctx.trt, node.inputs[Q].dtype)
    q, k, v = (ctx.tensor(node.inputs[i]) for i in (Q, K, V))
    if three_d:
        q = split_heads(ctx, q, attrs.get_int("q_num_heads"))
        k = split_heads(ctx, k, attrs.get_int("kv_num_heads"))
        v = split_heads(ctx, v, attrs.get_int("kv_num_heads"))
    past_length = 0
    if given(node.inputs, PAST_KEY):
        past_length = dim(ctx, ctx.tensor(node.inputs[PAST_KEY]), 2)
        k = concat(ctx, [ctx.tensor(node.inputs[PAST_KEY]), k], axis=2)
        v = concat(ctx, [ctx.tensor(node.inputs[PAST_VALUE]), v], axis=2)
    present = [k, v]  # present_value keeps V's type (T2)
    v = ctx.cast(v, dtype)

    scale = attrs.get_float("scale") if "scale" in attrs else 1.0 / math.sqrt(_head_size(node))
    root = float(np.sqrt(np.float64(scale)))
    if root != 1.0:
        q, k = (ctx.elementwise(t, scalar(ctx, root, dtype, 4), ctx.trt.ElementWiseOperation.PROD) for t in (q, k))
    masks = AttentionMasks(ctx, node, q, k, past_length)

    softcap = attrs.get_float("softcap", 0.0)
    wants_scores = given(node.outputs, 3)
    precision = attrs.get_int("softmax_precision", 0)
    # IAttention takes Q, K and V in one type (the schema lets V have its own), and TensorRT-RTX 1.7
    # cannot build an fp32 one fed through a widening Cast (see widened_from_low_precision).
    fused = (not softcap and not wants_scores and precision in (0, 1, 11, int(node.inputs[Q].dtype))
             and node.inputs[V].dtype == node.inputs[Q].dtype
             and same_dim(node.inputs[K].shape[-1], node.inputs[V].shape[-1])
             and not widened_from_low_precision(node))
    if fused and masks.key_value_lengths_only():
        y, scores = lengths_attention(ctx, node, q, k, v), None
    elif fused:
        y, scores = fused_attention(ctx, q, k, v, masks), None
    else:
        y, scores = decomposed_attention(ctx, node, q, k, v, masks, softcap, precision, dtype)
    if three_d:
        y = merge_heads(ctx, y)
    return [y, *(t if given(node.outputs, i + 1) else None for i, t in enumerate(present)), scores]


# ------------------------------------------------------------------ the two forms


def fused_attention(ctx, q, k, v, masks):
    """IAttention (marked decomposable so shapes without a fused kernel still build)."""
    trt = ctx.trt
    causal = masks.causal_kind()
    mask = masks.attention_mask() if causal is None else None
    layer = ctx.check(ctx.network.add_attention_v2(q, k, v, trt.AttentionNormalizationOp.SOFTMAX,
                                                   trt.CausalMaskKind.NONE if causal is None else causal))
    layer.decomposable = True
    if mask is not None:
        layer.mask = mask
    y = layer.get_output(0)
    if masks.needs_guard:
        y = zero_rows(ctx, masks.fully_masked_rows(), y)
    return y


def lengths_attention(ctx, node, q, k, v):
    """IAttention over per-row key lengths (nonpad_kv_seqlen as key_value_lengths, int32), causal aligned to
    each row's last key (LOWER_RIGHT: query s attends keys <= nonpad_kv_seqlen - Sq + s, as opset 24 says):
    a static KV cache's attention, with no mask tensor."""
    trt = ctx.trt
    causal = trt.CausalMaskKind.LOWER_RIGHT if node.attributes.get_int("is_causal", 0) else trt.CausalMaskKind.NONE
    layer = ctx.check(ctx.network.add_attention_v2(q, k, v, trt.AttentionNormalizationOp.SOFTMAX, causal))
    layer.decomposable = True  # fp32/bf16 with a KV cache have no dedicated kernel
    layer.key_value_lengths = ctx.cast(ctx.tensor(node.inputs[NONPAD]), trt.int32)
    return layer.get_output(0)


def decomposed_attention(ctx, node, q, k, v, masks, softcap, precision, dtype):
    """softmax(QK^T (softcapped) + bias) V with GQA as a head-grouped reshape (no K/V copies)."""
    trt = ctx.trt
    E, MO = trt.ElementWiseOperation, trt.MatrixOperation
    q_heads, kv_heads = dim(ctx, q, 1), dim(ctx, k, 1)
    grouped = not _same_heads(node)

    def group(t):  # [B, Hq, S, X] <-> [B, Hkv, G*S, X]: query head h = kv head h // G
        return ctx.reshape(t, shape_of_parts(ctx, [0, kv_heads, -1, 0])) if grouped else t

    def ungroup(t):
        return ctx.reshape(t, shape_of_parts(ctx, [0, q_heads, -1, 0])) if grouped else t

    raw = ungroup(ctx.check(ctx.network.add_matrix_multiply(group(q), MO.NONE, k, MO.TRANSPOSE)).get_output(0))
    capped = raw
    if softcap:
        cap = scalar(ctx, softcap, dtype, 4)
        tanh = ctx.check(ctx.network.add_activation(ctx.elementwise(raw, cap, E.DIV), trt.ActivationType.TANH))
        capped = ctx.elementwise(tanh.get_output(0), cap, E.PROD)
    bias = masks.additive_bias()
    biased = capped if bias is None else ctx.elementwise(capped, bias, E.SUM)
    softmax_type = dtype if precision == 0 else trt_dtype(trt, ir.DataType(precision))
    layer = ctx.check(ctx.network.add_softmax(ctx.cast(biased, softmax_type)))
    layer.axes = 1 << 3
    probs = layer.get_output(0)
    if masks.needs_guard:
        probs = zero_rows(ctx, masks.fully_masked_rows(), probs)
    probs = ctx.cast(probs, dtype)
    y = ungroup(ctx.check(ctx.network.add_matrix_multiply(group(probs), MO.NONE, v, MO.NONE)).get_output(0))
    scores = None
    if given(node.outputs, 3):
        scores = (raw, capped, biased, probs)[node.attributes.get_int("qk_matmul_output_mode", 0)]
    return y, scores


class AttentionMasks:
    """Which keys each query may attend: a float bias (attn_mask) and a bool `allowed` (a bool
    attn_mask, is_causal, windows, nonpad_kv_seqlen), both broadcastable to [B, Hq, Sq, Skv]."""

    def __init__(self, ctx, node, q, k, past_length):
        self.ctx, self.node, self.q, self.k = ctx, node, q, k
        attrs = node.attributes
        self.causal = bool(attrs.get_int("is_causal", 0))
        self.left, self.right = attrs.get_int("left_window_size", -1), attrs.get_int("right_window_size", -1)
        self.nonpad = ctx.tensor(node.inputs[NONPAD]) if given(node.inputs, NONPAD) else None
        self.past_length = past_length
        self.bias = self.allowed = None
        if given(node.inputs, MASK):
            mask = ctx.unsqueeze_to(self._padded_mask(), 4)
            if mask.dtype == ctx.trt.bool:
                self.allowed = mask
            else:
                self.bias = ctx.cast(mask, q.dtype)
        masks_nothing = given(node.inputs, MASK) and _masks_nothing(ctx.const(node.inputs[MASK]))
        self.needs_guard = (given(node.inputs, MASK) and not masks_nothing) or self.nonpad is not None \
            or self.left >= 0 or self.right >= 0

    def key_value_lengths_only(self) -> bool:
        """nonpad_kv_seqlen (with is_causal or not) is the only constraint and there is no past cache: IAttention
        takes it as key_value_lengths."""
        return self.nonpad is not None and self.bias is None and self.allowed is None and self.left < 0 \
            and self.right < 0 and not given(self.node.inputs, PAST_KEY)

    def causal_kind(self):
        """A CausalMaskKind when is_causal is the only constraint and IAttention's alignment matches."""
        kinds = self.ctx.trt.CausalMaskKind
        if self.bias is not None or self.allowed is not None or self.needs_guard:
            return None
        if not self.causal:
            return kinds.NONE
        if isinstance(self.past_length, int) and self.past_length == 0:
            return kinds.UPPER_LEFT
        new_keys = self.node.inputs[K].shape[1 if self.node.inputs[K].shape.rank() == 3 else 2]
        q_len = self.node.inputs[Q].shape[1 if self.node.inputs[Q].shape.rank() == 3 else 2]
        return kinds.LOWER_RIGHT if same_dim(new_keys, q_len) else None

    def attention_mask(self):
        """IAttention's mask: bool when every constraint is boolean, else the float bias."""
        allowed = self._allowed()
        if self.bias is None:
            return allowed
        return self.additive_bias()

    def additive_bias(self):
        """bias where allowed, -inf elsewhere (None when nothing is masked)."""
        allowed = self._allowed()
        if allowed is None:
            return self.bias
        dtype = self.q.dtype
        base = self.bias if self.bias is not None else scalar(self.ctx, 0.0, dtype, 4)
        return select(self.ctx, allowed, base, scalar(self.ctx, -math.inf, dtype, 4))

    def fully_masked_rows(self):
        """[.., Sq, 1] bool: rows whose keys are all disallowed (their bias is all -inf)."""
        ctx = self.ctx
        bias = self.additive_bias()
        row_max = ctx.check(ctx.network.add_reduce(bias, ctx.trt.ReduceOperation.MAX, 1 << 3, True)).get_output(0)
        return ctx.elementwise(row_max, scalar(ctx, -math.inf, bias.dtype, 4), ctx.trt.ElementWiseOperation.EQUAL)

    # -------------------------------------------------------------- pieces
    def _padded_mask(self):
        """attn_mask with its key axis padded (-inf / False) to the total key length."""
        ctx = self.ctx
        mask = ctx.tensor(self.node.inputs[MASK])
        keys, have = self.k.shape[2], mask.shape[-1]
        if (keys >= 0 and keys == have) or self._mask_covers_keys():
            return mask
        fill = np.array([False]) if mask.dtype == ctx.trt.bool else np.array([-np.inf], np.float32)
        fill_value = ctx.constant_as(fill.reshape(()), mask.dtype)
        rank = ctx.rank(mask)
        layer = ctx.check(ctx.network.add_slice(mask, (0,) * rank, tuple(mask.shape), (1,) * rank))
        layer.mode = ctx.trt.SampleMode.FILL
        if keys >= 0 and all(d >= 0 for d in mask.shape):
            layer.shape = (*mask.shape[:-1], keys)
        else:
            lead = ctx.check(ctx.network.add_slice(ctx.shape_of(mask), (0,), (rank - 1,), (1,))).get_output(0)
            layer.set_input(2, concat(ctx, [lead, as_tensor(ctx, dim(ctx, self.k, 2))], axis=0))
        layer.set_input(4, fill_value)
        return layer.get_output(0)

    def _mask_covers_keys(self) -> bool:
        """The IR proves attn_mask's last dim is the key length (no past cache to add)."""
        key = self.node.inputs[K]
        return not given(self.node.inputs, PAST_KEY) and same_dim(
            self.node.inputs[MASK].shape[-1], key.shape[1 if key.shape.rank() == 3 else 2])

    def _allowed(self):
        """The boolean constraints combined with AND (None when there are none)."""
        if hasattr(self, "_allowed_cache"):
            return self._allowed_cache
        ctx = self.ctx
        E = ctx.trt.ElementWiseOperation
        terms = [self.allowed] if self.allowed is not None else []
        if self.causal or self.left >= 0 or self.right >= 0 or self.nonpad is not None:
            rows = arange(ctx, dim(ctx, self.q, 2), [1, 1, -1, 1])
            keys = arange(ctx, dim(ctx, self.k, 2), [1, 1, 1, -1])
            nonpad = None if self.nonpad is None else ctx.reshape(ctx.cast(self.nonpad, ctx.trt.int64), [-1, 1, 1, 1])
            if nonpad is not None and not given(self.node.inputs, PAST_KEY):
                offset = ctx.elementwise(nonpad, as_tensor(ctx, dim(ctx, self.q, 2), 4), E.SUB)
            else:
                offset = as_tensor(ctx, self.past_length, 4)
            position = ctx.elementwise(rows, offset, E.SUM)  # absolute position of each query
            ahead = ctx.elementwise(keys, position, E.SUB)  # key index - query position
            if self.causal:
                terms.append(not_greater(ctx, ahead, 0))
            if self.right >= 0:
                terms.append(not_greater(ctx, ahead, self.right))
            if self.left >= 0:
                terms.append(not_greater(ctx, ctx.elementwise(position, keys, E.SUB), self.left))
            if nonpad is not None:
                terms.append(ctx.elementwise(keys, nonpad, E.LESS))
        allowed = None
        for term in terms:
            allowed = term if allowed is None else ctx.elementwise(allowed, term, E.AND)
        self._allowed_cache = allowed
        return allowed


def _masks_nothing(mask: np.ndarray | None) -> bool:
    """A constant mask that allows every key (so it cannot empty a row)."""
    if mask is None:
        return False
    return bool(mask.all()) if mask.dtype == np.bool_ else not bool(np.isneginf(mask).any())


# Ops that only move elements: TensorRT lowers them to shuffles (or nothing), which do not keep
# Myelin from fusing a Cast before them into the attention.
LAYOUT_OPS = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
LOW_FLOATS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def widened_from_low_precision(node: ir.Node) -> bool:
    """An fp32 Attention reads Q, K, V or a past cache through a Cast from fp16/bf16 (through layout ops).

    TensorRT-RTX 1.7's builder (Myelin, also on a CPU-only machine) folds such a Cast into its fused
    fp32 attention and breaks: a widened V or Q fails the build ("Fusing attention ops must leave the
    graph in a well-formed state"), a widened K segfaults it (the process dies). The fp16 precision
    pass produces exactly this where an attention mask keeps the Attention in fp32 and its
    projections run in fp16 (BERT), so such an Attention takes the decomposition, which builds."""
    if node.inputs[Q].dtype != ir.DataType.FLOAT:
        return False
    for index in (Q, K, V, PAST_KEY, PAST_VALUE):
        if not given(node.inputs, index):
            continue
        producer = node.inputs[index].producer()
        while producer is not None and producer.op_type in LAYOUT_OPS and producer.inputs:
            producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        if producer is not None and producer.op_type in ("Cast", "CastLike") and producer.inputs[0] is not None \
                and producer.inputs[0].dtype in LOW_FLOATS:
            return True
    return False


def _same_heads(node: ir.Node) -> bool:
    """Q and K/V provably have the same number of heads (no grouping)."""
    if node.inputs[Q].shape.rank() == 3:
        return node.attributes.get_int("q_num_heads") == node.attributes.get_int("kv_num_heads")
    return same_dim(node.inputs[Q].shape[1], node.inputs[K].shape[1])


# ------------------------------------------------------------------ small helpers


def split_heads(ctx, x, heads: int):
    """[B, S, H*D] -> [B, H, S, D]."""
    layer = ctx.check(ctx.network.add_shuffle(x))
    layer.reshape_dims = (0, 0, heads, -1)
    layer.second_transpose = (0, 2, 1, 3)
    return layer.get_output(0)


def merge_heads(ctx, y):
    """[B, H, S, D] -> [B, S, H*D]."""
    layer = ctx.check(ctx.network.add_shuffle(y))
    layer.first_transpose = (0, 2, 1, 3)
    layer.reshape_dims = (0, 0, -1)
    return layer.get_output(0)


def dim(ctx, tensor, axis: int):
    """A dim as an int when static, else a 1-element int64 tensor."""
    if tensor.shape[axis] >= 0:
        return int(tensor.shape[axis])
    return ctx.check(ctx.network.add_slice(ctx.shape_of(tensor), (axis,), (1,), (1,))).get_output(0)


def as_tensor(ctx, value, rank: int = 1):
    """An int as a constant of `rank` unit dims (the rank it is used at); a 1-element tensor as it is."""
    return ctx.constant(np.full((1,) * rank, value, np.int64)) if isinstance(value, int) else value


def shape_of_parts(ctx, parts):
    """A reshape target from ints and 1-element tensors (a list when all are ints)."""
    if all(isinstance(p, int) for p in parts):
        return list(parts)
    return concat(ctx, [as_tensor(ctx, p) for p in parts], axis=0)


def arange(ctx, length, shape: list[int] | None = None):
    """[0, 1, ..., length-1] as int64, reshaped to `shape` (one -1) when given: a constant for a static
    length is made in that shape."""
    if isinstance(length, int):
        values = np.arange(length, dtype=np.int64)
        return ctx.constant(values if shape is None else values.reshape(shape))
    if shape is not None:
        return ctx.reshape(arange(ctx, length), shape)
    layer = ctx.check(ctx.network.add_fill((0,), ctx.trt.FillOperation.LINSPACE, ctx.trt.int64))
    layer.set_input(0, length)
    layer.set_input(1, ctx.constant(np.zeros((), np.int64)))  # a 0-D start
    layer.set_input(2, ctx.constant(np.array([1], np.int64)))
    return layer.get_output(0)


def concat(ctx, tensors, axis: int):
    layer = ctx.check(ctx.network.add_concatenation(tensors))
    layer.axis = axis
    return layer.get_output(0)


def scalar(ctx, value: float, dtype, rank: int):
    """A constant of TensorRT type `dtype` with `rank` unit dims."""
    array = np.full((1,) * rank, value, np.float16 if dtype == ctx.trt.float16 else np.float32)
    return ctx.constant_as(array, dtype)


def not_greater(ctx, a, limit: int):
    """a <= limit (int64)."""
    limit_t = ctx.constant(np.full((1,) * ctx.rank(a), limit, np.int64))  # at a's rank: no broadcast layer
    greater = ctx.elementwise(a, limit_t, ctx.trt.ElementWiseOperation.GREATER)
    return ctx.unary(greater, ctx.trt.UnaryOperation.NOT)


def select(ctx, condition, then, otherwise):
    condition, then, otherwise = ctx.broadcast(condition, then, otherwise)
    return ctx.check(ctx.network.add_select(condition, then, otherwise)).get_output(0)


def zero_rows(ctx, rows, x):
    """x with the rows flagged in `rows` replaced by zeros."""
    return select(ctx, rows, scalar(ctx, 0.0, x.dtype, ctx.rank(x)), x)


# ------------------------------------------------------------------ rotary embedding


def _check_rotary(node: ir.Node) -> str | None:
    rank = node.inputs[0].shape.rank()
    if rank not in (3, 4):
        return f"input must be 3-D or 4-D, not {rank}-D"
    if rank == 3 and not node.attributes.get_int("num_heads", 0):
        return "a 3-D input needs the num_heads attribute"
    return None


@converter("RotaryEmbedding", since=23, constraints=[tensor_types(), known_rank(0),
                                                      Constraint("rotary input of a supported form", _check_rotary)])
def lower_rotary_embedding(ctx, node):
    """RotaryEmbedding -> IRotaryEmbeddingLayer on [B, N, S, H] (a 3-D [B, S, N*H] input is split into
    heads and merged back); position_ids, when given, index the [max_pos, rot/2] caches."""
    x = ctx.tensor(node.inputs[0])
    three_d = ctx.rank(x) == 3
    if three_d:
        x = split_heads(ctx, x, node.attributes.get_int("num_heads"))
    cos, sin = ctx.tensor(node.inputs[1]), ctx.tensor(node.inputs[2])
    layer = ctx.check(ctx.network.add_rotary_embedding(x, cos, sin, bool(node.attributes.get_int("interleaved", 0)),
                                                       node.attributes.get_int("rotary_embedding_dim", 0)))
    if given(node.inputs, 3):
        layer.set_input(3, ctx.cast(ctx.tensor(node.inputs[3]), ctx.trt.int64))
    y = layer.get_output(0)
    return [merge_heads(ctx, y) if three_d else y]
