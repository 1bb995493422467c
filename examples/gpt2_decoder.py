"""A GPT-2-like decoder, written node by node the way exporters write it, compiled with trtc.

2 layers, hidden 64, 4 heads, seeded random weights (no download, no torch). The graph has what a
`torch.onnx.export` of a Hugging Face GPT-2 (without a KV cache) has: token and position Gather
embeddings, pre-norm LayerNormalization, causal self-attention whose mask is a constant
lower-triangular matrix sliced to the sequence length, GELU in its tanh form, and an LM head tied to
the token embedding. `trtc compile` should fuse the GELUs into Gelu and each attention into one causal
Attention node, type the graph for fp16 and build an engine for batch 1..4, sequence 1..128.

    python examples/gpt2_decoder.py [--out examples/out/gpt2_decoder] [--fp32]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from example_kit import Graph, example_main, layer_norm, linear  # examples/ is on sys.path when run

VOCAB, MAX_POSITIONS = 512, 128
HIDDEN, HEADS, LAYERS = 64, 4, 2
HEAD_DIM = HIDDEN // HEADS
EPSILON = 1e-5
# The dynamic-shape profile: (MIN, OPT, MAX) of input_ids' [batch, sequence].
PROFILE = ((1, 1), (2, 64), (4, 128))


def causal_self_attention(g: Graph, x: str, causal: str, name: str) -> str:
    """Masked multi-head self-attention as exported: one fused QKV projection split three ways."""
    qkv = linear(g, x, HIDDEN, 3 * HIDDEN, f"{name}.c_attn")
    q, k, v = (f"{name}.{p}" for p in ("query", "key", "value"))
    g.nodes.append(helper.make_node("Split", [qkv, g.const(f"{name}.split", np.array([HIDDEN] * 3, np.int64))],
                                    [q, k, v], axis=2, name=f"{name}.split_qkv"))
    # [batch, seq, hidden] -> [batch, seq, heads, head_dim]: 0 copies a dim from the input, so the
    # constant target stays right for every batch and sequence length.
    heads_shape = g.const(f"{name}.heads_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    q, k, v = (g.op("Reshape", t, heads_shape, name=f"{t}.split_heads") for t in (q, k, v))
    q = g.op("Transpose", q, perm=[0, 2, 1, 3], name=f"{name}.query.heads")  # [batch, heads, seq, head_dim]
    v = g.op("Transpose", v, perm=[0, 2, 1, 3], name=f"{name}.value.heads")
    k_t = g.op("Transpose", k, perm=[0, 2, 3, 1], name=f"{name}.key.heads_t")  # K^T: [batch, heads, head_dim, seq]
    scores = g.op("MatMul", q, k_t, name=f"{name}.scores")
    scores = g.op("Div", scores, g.const(f"{name}.sqrt_d", np.float32(math.sqrt(HEAD_DIM))), name=f"{name}.scaled")
    # Keep a score where the key is at or before the query, else -inf: exp(-inf) = 0 in the Softmax.
    scores = g.op("Where", causal, scores, g.const(f"{name}.masked_value", np.float32(-np.inf)),
                  name=f"{name}.masked")
    probs = g.op("Softmax", scores, axis=-1, name=f"{name}.softmax")
    context = g.op("MatMul", probs, v, name=f"{name}.context")  # [batch, heads, seq, head_dim]
    context = g.op("Transpose", context, perm=[0, 2, 1, 3], name=f"{name}.context.merge")
    merged = g.const(f"{name}.merged_shape", np.array([0, 0, HIDDEN], np.int64))
    context = g.op("Reshape", context, merged, name=f"{name}.context.flat")  # [batch, seq, hidden]
    return linear(g, context, HIDDEN, HIDDEN, f"{name}.c_proj")


def gelu_tanh(g: Graph, x: str, name: str) -> str:
    """GPT-2's GELU approximation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    cube = g.op("Pow", x, g.const(f"{name}.three", np.float32(3)), name=f"{name}.cube")
    inner = g.op("Mul", g.const(f"{name}.c", np.float32(0.044715)), cube, name=f"{name}.scale_cube")
    inner = g.op("Add", x, inner, name=f"{name}.add_cube")
    inner = g.op("Mul", g.const(f"{name}.k", np.float32(math.sqrt(2 / math.pi))), inner, name=f"{name}.scale")
    t = g.op("Add", g.const(f"{name}.one", np.float32(1)), g.op("Tanh", inner, name=f"{name}.tanh"),
             name=f"{name}.add_one")
    return g.op("Mul", g.op("Mul", g.const(f"{name}.half", np.float32(0.5)), x, name=f"{name}.half_x"), t, name=name)


def build_model(seed: int = 0) -> onnx.ModelProto:
    """The decoder as an ONNX model with symbolic batch and sequence dims."""
    g = Graph(seed)
    wte = g.weight("wte", VOCAB, HIDDEN)  # token embedding, also the LM head (tied weights)
    tokens = g.op("Gather", wte, "input_ids", name="wte.lookup")
    # Position ids 0..seq-1 from Range over the input's length, as GPT-2's forward computes them.
    seq_len = g.op("Shape", "input_ids", start=1, end=2, name="seq_len")  # [sequence] as a 1-D tensor
    seq_scalar = g.op("Squeeze", seq_len, name="seq_len.scalar")
    zero, one = g.const("zero", np.array(0, np.int64)), g.const("one", np.array(1, np.int64))
    positions = g.op("Range", zero, seq_scalar, one, name="position_ids")
    positions = g.op("Gather", g.weight("wpe", MAX_POSITIONS, HIDDEN, std=0.01), positions, name="wpe.lookup")
    h = g.op("Add", tokens, positions, name="embeddings")

    # The causal mask: GPT-2 keeps a [1, 1, max, max] lower-triangular buffer and slices its top-left
    # [seq, seq] corner (both ends come from the input's length, so the slice follows the dynamic shape).
    tril = np.tril(np.ones((MAX_POSITIONS, MAX_POSITIONS), bool))[None, None]
    causal = g.op("Slice", g.const("causal_bias", tril), g.const("starts", np.array([0, 0], np.int64)),
                  g.op("Concat", seq_len, seq_len, axis=0, name="mask_ends"),
                  g.const("mask_axes", np.array([2, 3], np.int64)), name="causal_mask")

    for i in range(LAYERS):
        p = f"h{i}"
        attended = causal_self_attention(g, layer_norm(g, h, HIDDEN, EPSILON, f"{p}.ln_1"), causal, f"{p}.attn")
        h = g.op("Add", h, attended, name=f"{p}.residual1")
        fc = linear(g, layer_norm(g, h, HIDDEN, EPSILON, f"{p}.ln_2"), HIDDEN, 4 * HIDDEN, f"{p}.mlp.c_fc")
        mlp = gelu_tanh(g, fc, f"{p}.mlp.gelu")
        h = g.op("Add", h, linear(g, mlp, 4 * HIDDEN, HIDDEN, f"{p}.mlp.c_proj"), name=f"{p}.residual2")
    h = layer_norm(g, h, HIDDEN, EPSILON, "ln_f")
    # LM head tied to the embedding: logits = h @ wte^T (the exporter keeps one weight and a Transpose).
    g.nodes.append(helper.make_node("MatMul", [h, g.op("Transpose", wte, perm=[1, 0], name="wte.T")], ["logits"],
                                    name="lm_head"))

    graph = helper.make_graph(
        g.nodes, "gpt2_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtc-examples")
    onnx.checker.check_model(model, full_check=True)  # full_check runs shape inference too
    return model


def compile_example(model_path: Path, out: Path, fp16: bool) -> dict:
    """`trtc compile` through the library: the same stages and report as the command line."""
    from trtc.pipeline import BuildOptions, OptimizeOptions, PrecisionOptions, compile_model

    build = BuildOptions(profiles=[{"input_ids": PROFILE}])  # one optimization profile
    # The CLI's defaults (`trtc compile --help`); fp16 keeps fp32 islands where needed. Calibration and the
    # predicted-error check run at the OPT shape; input_ids are drawn below VOCAB automatically (trtc sees
    # that they index the embedding table).
    optimize = OptimizeOptions(precision=PrecisionOptions(target="fp16") if fp16 else None)
    return compile_model(model_path, out, optimize_options=optimize, build_options=build)


if __name__ == "__main__":
    example_main("gpt2_decoder", __doc__, build_model, compile_example)
