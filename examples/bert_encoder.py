"""A BERT-like encoder, written node by node the way exporters write it, compiled with trtc.

2 layers, hidden 64, 4 heads, seeded random weights (no download, no torch). The graph has what a
`torch.onnx.export` of a Hugging Face BERT has: Gather embeddings, LayerNormalization, attention
decomposed into MatMul / Reshape / Transpose / Div / Add(mask) / Softmax / MatMul, GELU as the erf
formula, and a pooler. `trtc compile` should fuse the GELUs into Gelu and each attention into one
Attention node, type the graph for fp16 and build an engine for batch 1..4, sequence 1..128.

    python examples/bert_encoder.py [--out examples/out/bert_encoder] [--fp32]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from example_kit import Graph, example_main, layer_norm, linear  # examples/ is on sys.path when run

VOCAB, TYPE_VOCAB, MAX_POSITIONS = 1000, 2, 128
HIDDEN, HEADS, INTERMEDIATE, LAYERS = 64, 4, 256, 2
HEAD_DIM = HIDDEN // HEADS
EPSILON = 1e-12
# The dynamic-shape profile: (MIN, OPT, MAX) of [batch, sequence] for every input.
PROFILE = ((1, 1), (2, 64), (4, 128))


def self_attention(g: Graph, x: str, mask: str, name: str) -> str:
    """Multi-head self-attention as exported: no Attention op, just its arithmetic."""
    # [batch, seq, hidden] -> [batch, seq, heads, head_dim]: 0 copies a dim from the input, so the
    # constant target stays right for every batch and sequence length.
    heads_shape = g.const(f"{name}.heads_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    q, k, v = (g.op("Reshape", linear(g, x, HIDDEN, HIDDEN, f"{name}.{p}"), heads_shape, name=f"{name}.{p}.split")
               for p in ("query", "key", "value"))
    q = g.op("Transpose", q, perm=[0, 2, 1, 3], name=f"{name}.query.heads")  # [batch, heads, seq, head_dim]
    v = g.op("Transpose", v, perm=[0, 2, 1, 3], name=f"{name}.value.heads")
    k_t = g.op("Transpose", k, perm=[0, 2, 3, 1], name=f"{name}.key.heads_t")  # K^T: [batch, heads, head_dim, seq]
    scores = g.op("MatMul", q, k_t, name=f"{name}.scores")
    scores = g.op("Div", scores, g.const(f"{name}.sqrt_d", np.float32(math.sqrt(HEAD_DIM))), name=f"{name}.scaled")
    scores = g.op("Add", scores, mask, name=f"{name}.masked")
    probs = g.op("Softmax", scores, axis=-1, name=f"{name}.softmax")
    context = g.op("MatMul", probs, v, name=f"{name}.context")  # [batch, heads, seq, head_dim]
    context = g.op("Transpose", context, perm=[0, 2, 1, 3], name=f"{name}.context.merge")
    merged = g.const(f"{name}.merged_shape", np.array([0, 0, HIDDEN], np.int64))
    context = g.op("Reshape", context, merged, name=f"{name}.context.flat")  # [batch, seq, hidden]
    return linear(g, context, HIDDEN, HIDDEN, f"{name}.output")


def gelu_erf(g: Graph, x: str, name: str) -> str:
    """GELU exactly: 0.5 * x * (1 + erf(x / sqrt(2))), the form BERT exports to."""
    e = g.op("Erf", g.op("Div", x, g.const(f"{name}.sqrt2", np.float32(math.sqrt(2))), name=f"{name}.div"),
             name=f"{name}.erf")
    e = g.op("Add", e, g.const(f"{name}.one", np.float32(1)), name=f"{name}.add")
    return g.op("Mul", g.op("Mul", x, e, name=f"{name}.mul"), g.const(f"{name}.half", np.float32(0.5)), name=name)


def build_model(seed: int = 0) -> onnx.ModelProto:
    """The encoder as an ONNX model with symbolic batch and sequence dims."""
    g = Graph(seed)
    # Embeddings: word + position + token type, each a Gather from a table.
    words = g.op("Gather", g.weight("embeddings.word", VOCAB, HIDDEN), "input_ids", name="embeddings.word_lookup")
    types = g.op("Gather", g.weight("embeddings.token_type", TYPE_VOCAB, HIDDEN), "token_type_ids",
                 name="embeddings.type_lookup")
    # Position ids 0..seq-1: a constant [1, MAX_POSITIONS] buffer sliced to the input's length.
    seq_len = g.op("Shape", "input_ids", start=1, end=2, name="seq_len")  # [sequence] as a 1-D tensor
    position_ids = g.op("Slice", g.const("position_ids", np.arange(MAX_POSITIONS, dtype=np.int64)[None]),
                        g.const("zero", np.array([0], np.int64)), seq_len, g.const("axis1", np.array([1], np.int64)),
                        name="position_ids.slice")
    positions = g.op("Gather", g.weight("embeddings.position", MAX_POSITIONS, HIDDEN), position_ids,
                     name="embeddings.position_lookup")
    h = g.op("Add", g.op("Add", words, types, name="embeddings.add_type"), positions, name="embeddings.sum")
    h = layer_norm(g, h, HIDDEN, EPSILON, "embeddings.norm")

    # The additive mask: 0 where attention_mask is 1, -10000 where it is 0 (padding), shaped
    # [batch, 1, 1, seq] so that it broadcasts over heads and query positions.
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT, name="mask.float")
    mask = g.op("Unsqueeze", mask, g.const("mask.axes", np.array([1, 2], np.int64)), name="mask.4d")
    mask = g.op("Sub", g.const("mask.one", np.float32(1)), mask, name="mask.invert")
    mask = g.op("Mul", mask, g.const("mask.neg", np.float32(-10000)), name="mask.additive")

    for i in range(LAYERS):
        p = f"layer{i}"
        attended = g.op("Add", h, self_attention(g, h, mask, f"{p}.attention"), name=f"{p}.residual1")
        h = layer_norm(g, attended, HIDDEN, EPSILON, f"{p}.attention.norm")
        ffn = gelu_erf(g, linear(g, h, HIDDEN, INTERMEDIATE, f"{p}.intermediate"), f"{p}.gelu")
        ffn = linear(g, ffn, INTERMEDIATE, HIDDEN, f"{p}.output")
        h = layer_norm(g, g.op("Add", h, ffn, name=f"{p}.residual2"), HIDDEN, EPSILON, f"{p}.output.norm")
    g.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"], name="last_hidden_state"))

    # Pooler: the first ([CLS]) token through a dense layer and tanh.
    cls = g.op("Gather", h, g.const("cls_index", np.array(0, np.int64)), axis=1, name="pooler.cls")  # [batch, hidden]
    pooled = g.op("Gemm", cls, g.weight("pooler.weight", HIDDEN, HIDDEN), g.weight("pooler.bias", HIDDEN),
                  transB=1, name="pooler.dense")
    g.nodes.append(helper.make_node("Tanh", [pooled], ["pooler_output"], name="pooler_output"))

    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
               helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", HIDDEN])]
    graph = helper.make_graph(g.nodes, "bert_encoder", ids, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtc-examples")
    onnx.checker.check_model(model, full_check=True)  # full_check runs shape inference too
    return model


def compile_example(model_path: Path, out: Path, fp16: bool) -> dict:
    """`trtc compile` through the library: the same stages and report as the command line."""
    from trtc.pipeline import BuildOptions, FeedOptions, OptimizeOptions, PrecisionOptions, compile_model

    names = ("input_ids", "attention_mask", "token_type_ids")
    # One optimization profile: every input ranges over the same [batch, sequence] dims.
    build = BuildOptions(profiles=[{name: PROFILE for name in names}])
    # The CLI's defaults (`trtc compile --help`); fp16 keeps fp32 islands where needed.
    optimize = OptimizeOptions(precision=PrecisionOptions(target="fp16") if fp16 else None)
    # Calibration and the predicted-error check run at the OPT shape; input_ids and token_type_ids are drawn
    # below their tables' sizes automatically, the mask is drawn from {0, 1}.
    feeds = FeedOptions(ranges={"attention_mask": (0, 2)})
    return compile_model(model_path, out, optimize_options=optimize, build_options=build, feeds=feeds)


if __name__ == "__main__":
    example_main("bert_encoder", __doc__, build_model, compile_example)
