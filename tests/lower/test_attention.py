"""Attention and RotaryEmbedding converters: built with TensorRT-RTX (no GPU: the engine is built,
the dtype/shape agreement check runs inside; numerics need a GPU), which form lowers them
(IAttention or the decomposition), and the constraints that refuse what TensorRT cannot do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from trtc.errors import TrtcError  # noqa: E402
from trtc.lower.backend import load_backend  # noqa: E402
from trtc.lower.network import lower  # noqa: E402
from trtc.lower.registry import support_issue  # noqa: E402

from lowerutil import build, parse  # noqa: E402

F32, F16, BOOL, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT64


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def one_node(op, inputs, outputs, attrs=None, inits=None, opset=23, value_inputs=(), value_outputs=()):
    """A model of one named node; `value_inputs`/`value_outputs` are value infos."""
    node = helper.make_node(op, inputs, outputs, name=f"{op.lower()}_node", **(attrs or {}))
    graph = helper.make_graph([node], "g", list(value_inputs), list(value_outputs),
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])




def layer_types(proto, tmp_path: Path) -> set[str]:
    network = lower(parse(proto, tmp_path).model, load_backend("tensorrt-rtx")).network
    return {network.get_layer(i).type.name for i in range(network.num_layers)}


def issue(proto, tmp_path: Path) -> str | None:
    model = parse(proto, tmp_path).model
    opset = model.opset_imports.get("", 18)
    return next(support_issue(node, opset) for node in model.graph)


def attention(q, k, v, extra=(), outputs=("Y",), attrs=None, opset=23, **shapes):
    """Attention with inputs Q, K, V (+ `extra` names); `shapes` maps input and output names to
    (dtype, shape) (inputs default to float, outputs to Q's type with an inferred shape)."""
    names = ["Q", "K", "V", *extra]
    inputs = [vi(n, *shapes.get(n, (F32, s))) for n, s in zip(names, [q, k, v, *([None] * len(extra))], strict=True)
              if n]
    q_type = shapes.get("Q", (F32,))[0]
    outs = [vi(o, *shapes.get(o, (q_type, None))) for o in outputs if o]
    return one_node("Attention", names, list(outputs), attrs, opset=opset, value_inputs=inputs, value_outputs=outs)


# ------------------------------------------------------------------ Attention: forms


def test_plain_4d_attention_uses_iattention(tmp_path):
    proto = attention([2, 4, 16, 64], [2, 4, 16, 64], [2, 4, 16, 64])
    assert "ATTENTION_INPUT" in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def test_3d_dynamic_with_float_mask_builds_fused(tmp_path):
    """The BERT form after fusion: 3-D heads, [B, 1, S, S] additive mask, dynamic batch and sequence."""
    proto = attention(["b", "s", 128], ["b", "s", 128], ["b", "s", 128], extra=("mask",),
                      attrs={"q_num_heads": 4, "kv_num_heads": 4, "scale": 0.125},
                      mask=(F32, ["b", 1, "s", "s"]), Q=(F32, ["b", "s", 128]), K=(F32, ["b", "s", 128]),
                      V=(F32, ["b", "s", 128]))
    assert "ATTENTION_INPUT" in layer_types(proto, tmp_path)
    profile = {n: ((1, 1, 128), (2, 8, 128), (4, 32, 128)) for n in "QKV"}
    profile["mask"] = ((1, 1, 1, 1), (2, 1, 8, 8), (4, 1, 32, 32))
    build(proto, tmp_path, profile)


def test_gqa_softcap_and_scores_output_use_the_decomposition(tmp_path):
    proto = attention([1, 8, 6, 16], [1, 2, 10, 16], [1, 2, 10, 24], extra=("mask",),
                      outputs=("Y", "", "", "scores"), attrs={"softcap": 5.0, "qk_matmul_output_mode": 3},
                      mask=(BOOL, [6, 10]))
    types = layer_types(proto, tmp_path)
    assert "ATTENTION_INPUT" not in types and "SOFTMAX" in types
    build(proto, tmp_path)


def test_causal_with_past_and_present_dynamic_cache(tmp_path):
    proto = attention([1, 4, 1, 32], [1, 4, 1, 32], [1, 4, 1, 32], extra=("", "past_k", "past_v"),
                      outputs=("Y", "present_k", "present_v"), attrs={"is_causal": 1},
                      past_k=(F32, [1, 4, "p", 32]), past_v=(F32, [1, 4, "p", 32]),
                      present_k=(F32, [1, 4, "t", 32]), present_v=(F32, [1, 4, "t", 32]))
    profile = {"past_k": ((1, 4, 0, 32), (1, 4, 16, 32), (1, 4, 64, 32))}
    profile["past_v"] = profile["past_k"]
    build(proto, tmp_path, profile)


def test_fp16_with_float_softmax_precision(tmp_path):
    shape = [1, 2, 8, 32]
    proto = attention(shape, shape, shape, attrs={"softmax_precision": 1, "is_causal": 1},
                      Q=(F16, shape), K=(F16, shape), V=(F16, shape))
    build(proto, tmp_path)


def test_nonpad_kv_seqlen_and_short_bool_mask(tmp_path):
    """Opset 24: a per-batch count of valid keys, and a mask shorter than the keys (padded with False)."""
    proto = attention([2, 2, 3, 8], [2, 2, 6, 8], [2, 2, 6, 8], extra=("mask", "", "", "nonpad"),
                      attrs={"is_causal": 1}, opset=24, mask=(BOOL, [2, 1, 3, 4]), nonpad=(I64, [2]))
    build(proto, tmp_path)


def test_v_of_another_type_is_decomposed(tmp_path):
    """IAttention fails to build when V reaches it through a Cast, so mixed types decompose."""
    shape = [1, 2, 8, 16]
    proto = attention(shape, shape, shape, V=(F16, shape))
    assert "ATTENTION_INPUT" not in layer_types(proto, tmp_path)
    build(proto, tmp_path)


# ------------------------------------------------------------------ Attention: constraints


def test_attention_on_3d_inputs_without_head_counts_breaks_onnx_rules(tmp_path):
    """ONNX's own inference refuses it at parse, in its words (the converter's constraint is for IR
    built otherwise)."""
    with pytest.raises(TrtcError, match=r"node 'attention_node' \(Attention\): \[TypeInferenceError\] 3D inputs "
                                        "expected to have q_num_heads attribute"):
        parse(attention([1, 4, 32], [1, 4, 32], [1, 4, 32]), tmp_path)


@pytest.mark.parametrize(("proto", "reason"), [
    (attention([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], extra=("", "past_k"), past_k=(F32, [1, 2, 3, 8])),
     "past_key and past_value must be given together"),
    (attention([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], extra=("mask",), mask=(TensorProto.INT32, [4, 4])),
     "it must be bool or float"),
    (attention([1, 2, 4, "d"], [1, 2, 4, "d"], [1, 2, 4, "d"]), "head size must be static"),
    (attention([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], attrs={"qk_matmul_output_mode": 4}),
     "qk_matmul_output_mode=4 not supported"),
])
def test_attention_constraints(proto, reason, tmp_path):
    assert reason in (issue(proto, tmp_path) or "")


def test_scale_attribute_lifts_the_static_head_size_need(tmp_path):
    proto = attention([1, 2, 4, "d"], [1, 2, 4, "d"], [1, 2, 4, "d"], attrs={"scale": 0.5},
                      Q=(F32, [1, 2, 4, "d"]), K=(F32, [1, 2, 4, "d"]), V=(F32, [1, 2, 4, "d"]))
    assert issue(proto, tmp_path) is None
    build(proto, tmp_path, {n: ((1, 2, 4, 8), (1, 2, 4, 64), (1, 2, 4, 128)) for n in "QKV"})


# ------------------------------------------------------------------ RotaryEmbedding


def rotary(x_shape, cache_shape, position_ids=None, attrs=None):
    names = ["x", "cos", "sin"] + (["pos"] if position_ids else [])
    inputs = [vi("x", F32, x_shape), vi("cos", F32, cache_shape), vi("sin", F32, cache_shape)]
    if position_ids:
        inputs.append(vi("pos", I64, position_ids))
    return one_node("RotaryEmbedding", names, ["y"], attrs, value_inputs=inputs, value_outputs=[vi("y", F32, None)])


def test_rotary_4d_with_position_ids_uses_the_layer(tmp_path):
    proto = rotary(["b", 4, "s", 64], [128, 32], position_ids=["b", "s"])
    assert "ROTARY_EMBEDDING" in layer_types(proto, tmp_path)
    build(proto, tmp_path, {"x": ((1, 4, 1, 64), (2, 4, 16, 64), (4, 4, 64, 64)),
                            "pos": ((1, 1), (2, 16), (4, 64))})


def test_rotary_3d_interleaved_partial(tmp_path):
    build(rotary([2, 6, 64], [2, 6, 8], attrs={"num_heads": 4, "interleaved": 1, "rotary_embedding_dim": 16}),
          tmp_path)


def test_rotary_3d_needs_num_heads(tmp_path):
    with pytest.raises(TrtcError, match=r"\(RotaryEmbedding\): \[ShapeInferenceError\] Input shape is 3D, "
                                        "num_heads attribute must be provided"):
        parse(rotary([2, 6, 64], [2, 6, 16]), tmp_path)
