"""fuse-layer-norm: every decomposed LayerNorm form fuses, each near miss does not (and says why);
on the corpus, LayerNorms decomposed the way torch exports them below opset 17 fuse back, and the
default pipeline leaves no Erf and no normalisation ReduceMean in the transformer models."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.ir.rewrite import add_constant, replace_with
from trtc.passes import PASSES
from trtc.passes.fuse_layer_norm import why_not
from trtc.passes.pipeline import optimize

from corpus import MODELS, CorpusModel
from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(0)
SHAPE = [2, 5, 8]
SCALE = (RNG.random(8) + 0.5).astype(np.float32)
BIAS = RNG.standard_normal(8).astype(np.float32)


def layer_norm_model(*, square: str = "pow", divide: str = "div", axes=(-1,), var_axes=None, exponent: float = 2.0,
                     eps_on: str = "var", scale=SCALE, bias=BIAS, scale_first: bool = False,
                     extra_output: str | None = None, cast: bool = False) -> ir.Model:
    """x -> decomposed LayerNorm -> y, with one knob per form or defect."""
    dtype = onnx.TensorProto.FLOAT16 if cast else onnx.TensorProto.FLOAT
    x = "x"
    nodes = []
    if cast:
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=onnx.TensorProto.FLOAT))
        x = "x32"
    inits = {"axes": np.array(axes, np.int64), "var_axes": np.array(var_axes or axes, np.int64),
             "exponent": np.array(exponent, np.float32), "eps": np.array(1e-5, np.float32)}
    nodes += [helper.make_node("ReduceMean", [x, "axes"], ["mean"], name="mean"),
              helper.make_node("Sub", [x, "mean"], ["d"])]
    nodes.append(helper.make_node("Pow", ["d", "exponent"], ["sq"]) if square == "pow"
                 else helper.make_node("Mul", ["d", "d"], ["sq"]))
    nodes.append(helper.make_node("ReduceMean", ["sq", "var_axes"], ["var"]))
    if eps_on == "var":
        nodes += [helper.make_node("Add", ["var", "eps"], ["var_eps"]), helper.make_node("Sqrt", ["var_eps"], ["std"])]
    else:  # eps added to the standard deviation: not LayerNorm's epsilon
        nodes += [helper.make_node("Sqrt", ["var"], ["std0"]), helper.make_node("Add", ["std0", "eps"], ["std"])]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv_std"]),
                  helper.make_node("Mul", ["inv_std", "d"], ["n"])]
    last = "n"
    if scale is not None:
        inits["scale"] = scale
        nodes.append(helper.make_node("Mul", ["scale", last] if scale_first else [last, "scale"], ["scaled"]))
        last = "scaled"
    if bias is not None:
        inits["bias"] = bias
        nodes.append(helper.make_node("Add", ["bias", last] if scale_first else [last, "bias"], ["biased"]))
        last = "biased"
    if cast:
        nodes.append(helper.make_node("Cast", [last], ["y16"], to=onnx.TensorProto.FLOAT16))
        last = "y16"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    outputs = [vi("y", None, dtype)] + ([vi(extra_output, None)] if extra_output else [])
    return make_model(nodes, [vi("x", SHAPE, dtype)], outputs, inits)


def feeds(dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": (RNG.standard_normal(SHAPE) * 3 + 1).astype(dtype)}


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def layer_norms(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "LayerNormalization"]


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("divide", ["div", "reciprocal"])
@pytest.mark.parametrize("scale_first", [False, True])
def test_fuses_each_form_with_scale_and_bias(square, divide, scale_first):
    model = layer_norm_model(square=square, divide=divide, scale_first=scale_first)
    assert why_not(node_named(model, "mean")) is None
    assert check_pass(model, "fuse-layer-norm", feeds()) == {"layer-norm": 1}
    assert ops(model) == ["LayerNormalization", "Identity"]
    (node,) = layer_norms(model)
    assert node.attributes["axis"].value == -1
    assert node.attributes["epsilon"].value == pytest.approx(1e-5)
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), SCALE)
    np.testing.assert_array_equal(node.inputs[2].const_value.numpy(), BIAS)


@pytest.mark.parametrize("scale, bias", [(None, None), (SCALE, None), (None, BIAS)])
def test_missing_scale_or_bias_become_ones_and_zeros(scale, bias):
    model = layer_norm_model(scale=scale, bias=bias)
    assert check_pass(model, "fuse-layer-norm", feeds()) == {"layer-norm": 1}
    assert ops(model) == ["LayerNormalization", "Identity"]
    (node,) = layer_norms(model)
    want_scale = SCALE if scale is not None else np.ones(8, np.float32)
    want_bias = BIAS if bias is not None else np.zeros(8, np.float32)
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), want_scale)
    np.testing.assert_array_equal(node.inputs[2].const_value.numpy(), want_bias)


def test_scalar_scale_broadcasts_to_channels():
    model = layer_norm_model(scale=np.array([2.0], np.float32), bias=np.array(0.5, np.float32))
    assert check_pass(model, "fuse-layer-norm", feeds()) == {"layer-norm": 1}
    assert ops(model) == ["LayerNormalization", "Identity"]
    np.testing.assert_array_equal(layer_norms(model)[0].inputs[1].const_value.numpy(), np.full(8, 2.0, np.float32))


@pytest.mark.parametrize("axes, axis", [((-2, -1), -2), ((2,), -1), ((1, 2), -2)])
def test_trailing_axes_in_any_spelling(axes, axis):
    scale = (RNG.random((5, 8)) + 0.5).astype(np.float32) if axis == -2 else SCALE
    model = layer_norm_model(axes=axes, scale=scale, bias=None)
    assert check_pass(model, "fuse-layer-norm", feeds()) == {"layer-norm": 1}
    (node,) = layer_norms(model)
    assert node.attributes["axis"].value == axis
    assert node.inputs[1].shape == ir.Shape(scale.shape)


def test_cast_wrapped_fp16_fuses_the_float32_core():
    model = layer_norm_model(cast=True)
    assert check_pass(model, "fuse-layer-norm", feeds(np.float16), rtol=1e-3, atol=1e-3) == {"layer-norm": 1}
    assert ops(model) == ["Cast", "LayerNormalization", "Cast", "Identity"]
    assert layer_norms(model)[0].inputs[0].dtype == ir.DataType.FLOAT


# Near misses: the graph stays as it is and why_not says why.
@pytest.mark.parametrize("knobs, reason", [
    ({"eps_on": "std"}, "variance: it feeds Sqrt, not Add(eps)"),
    ({"axes": (1,)}, "mean: axes [-2] are not the trailing axes"),
    ({"axes": (-1,), "var_axes": (-2, -1)}, "variance reduces the last 2 axes, not 1"),
    ({"exponent": 3.0}, "Pow exponent is 3.0, not 2"),
    ({"extra_output": "d"}, "x - mean has users outside the pattern"),
    ({"extra_output": "var"}, "variance: it feeds several nodes, not Add(eps)"),
])
def test_near_misses_do_not_fire(knobs, reason):
    model = layer_norm_model(**knobs)
    assert why_not(node_named(model, "mean")) == reason
    before = ops(model)
    assert check_pass(model, "fuse-layer-norm", feeds()) == {}
    assert ops(model) == before


def test_symbolic_channel_dim_does_not_fire():
    # LayerNormalization needs a scale of the normalized shape: unknown when the last dim is symbolic.
    model = layer_norm_model(scale=None, bias=None)
    model.graph.inputs[0].shape = ir.Shape([2, 5, "channels"])
    assert why_not(node_named(model, "mean")) == "the normalized dims of the input are not static"
    assert check_pass(model, "fuse-layer-norm", feeds()) == {}


def test_wrong_scale_shape_is_not_absorbed():
    # A per-position [5, 8] scale is no LayerNorm scale: the core fuses, the Mul and Add stay.
    scale = (RNG.random((5, 8)) + 0.5).astype(np.float32)
    model = layer_norm_model(scale=scale)
    assert check_pass(model, "fuse-layer-norm", feeds()) == {"layer-norm": 1}
    assert ops(model) == ["LayerNormalization", "Mul", "Add", "Identity"]
    np.testing.assert_array_equal(layer_norms(model)[0].inputs[1].const_value.numpy(), np.ones(8, np.float32))


# Corpus: torch exports LayerNorm below opset 17 as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add.
# Layer counts from ../shared/models/MANIFEST.md: bert, distilbert, gpt2, vit have 3 layers and
# 2 LayerNorms per layer + 1 (embeddings or final); convnext has 5 blocks + stem + 3 downsamplers + pooler.
LAYERS = 3
LAYER_NORMS = {"bert": 2 * LAYERS + 1, "distilbert": 2 * LAYERS + 1, "gpt2": 2 * LAYERS + 1,
               "vit": 2 * LAYERS + 1, "convnext": 5 + 1 + 3 + 1}
WITH_LAYER_NORM = [f"{family}-{exporter}" for family in LAYER_NORMS for exporter in ("ts-op17", "dynamo-op18")
                   if family != "bert" or exporter == "ts-op17"]


def decompose_layer_norms(model: ir.Model) -> int:
    """Replace each last-axis LayerNormalization by torch's opset-16 decomposition, alternating
    Pow/Mul squares and Div/Reciprocal divisions; returns how many."""
    graph = model.graph
    count = 0
    for node in [n for n in graph if n.op_type == "LayerNormalization"]:
        assert node.attributes.get_int("axis", -1) == -1
        x, scale, bias = (list(node.inputs) + [None])[:3]
        eps = add_constant(graph, np.array(node.attributes.get_float("epsilon", 1e-5), np.float32), "eps")
        axes = add_constant(graph, np.array([-1], np.int64), "axes")
        mean = ir.node("ReduceMean", [x, axes])
        d = ir.node("Sub", [x, mean.outputs[0]])
        square = (ir.node("Pow", [d.outputs[0], add_constant(graph, np.array(2.0, np.float32), "two")])
                  if count % 2 else ir.node("Mul", [d.outputs[0], d.outputs[0]]))
        var = ir.node("ReduceMean", [square.outputs[0], axes])
        std = ir.node("Sqrt", [ir.node("Add", [var.outputs[0], eps]).outputs[0]])
        new = [mean, d, square, var, std.inputs[0].producer(), std]
        if count % 3:
            new.append(ir.node("Div", [d.outputs[0], std.outputs[0]]))
        else:
            new.append(ir.node("Reciprocal", [std.outputs[0]]))
            new.append(ir.node("Mul", [d.outputs[0], new[-1].outputs[0]]))
        new.append(ir.node("Mul", [new[-1].outputs[0], scale]))
        if bias is not None:
            new.append(ir.node("Add", [new[-1].outputs[0], bias]))
        replace_with(graph, node, new, node.outputs, new[-1].outputs, dead=[node])
        count += 1
    return count


def corpus_model(name: str) -> tuple[ir.Model, dict[str, np.ndarray]]:
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return parse_onnx(path).model, CorpusModel(name, path).reference()[0]


@pytest.mark.parametrize("name", WITH_LAYER_NORM)
def test_corpus_decomposed_layer_norms_fuse_back(name):
    model, inputs = corpus_model(name)
    expected = LAYER_NORMS[name.split("-")[0]]
    assert decompose_layer_norms(model) == expected
    report = optimize(model, passes=[PASSES["fuse-layer-norm"]], verify_feeds=inputs)
    assert report.totals()["fuse-layer-norm"]["rewrites"] == {"layer-norm": expected}
    assert len(layer_norms(model)) == expected
    assert "ReduceMean" not in ops(model) or name.startswith("convnext")  # convnext's pooler is a spatial mean


# The default pipeline on the transformer models: per model, fused GELUs (erf, tanh) and RMSNorms,
# and the LayerNormalizations after it (3 layers each; T5 has an RMSNorm before attention and FFN
# in each block plus a final one, and a gated GELU (tanh form) per FFN).
ACCEPTANCE = {  # family: (gelu-erf, gelu-tanh, rms-norm, LayerNormalization nodes after)
    "bert": (LAYERS, 0, 0, 2 * LAYERS + 1),
    "distilbert": (LAYERS, 0, 0, 2 * LAYERS + 1),
    "vit": (LAYERS, 0, 0, 2 * LAYERS + 1),
    "gpt2": (0, LAYERS, 0, 2 * LAYERS + 1),
    "t5_encoder": (0, LAYERS, 2 * LAYERS + 1, 0),
}
TRANSFORMERS = [f"{family}-{exporter}" for family in ACCEPTANCE for exporter in ("ts-op17", "dynamo-op18")
                if family != "bert" or exporter == "ts-op17"]  # bert has no dynamo export in the corpus
ACCEPTANCE_PARAMS = [pytest.param(name, False, id=name) for name in TRANSFORMERS] + [
    pytest.param(name, True, id=f"{name}-layer-norm-decomposed") for name in TRANSFORMERS
    if ACCEPTANCE[name.split("-")[0]][3]]


@pytest.mark.parametrize("name, decomposed", ACCEPTANCE_PARAMS)
def test_default_pipeline_leaves_no_erf_or_norm_reduce_mean(name, decomposed):
    model, inputs = corpus_model(name)
    gelu_erf, gelu_tanh, rms, layer_norm_nodes = ACCEPTANCE[name.split("-")[0]]
    decomposed_count = decompose_layer_norms(model) if decomposed else 0
    assert decomposed_count == (layer_norm_nodes if decomposed else 0)
    report = optimize(model, verify_feeds=inputs)
    rewrites = {pass_name: totals["rewrites"] for pass_name, totals in report.totals().items()}
    assert rewrites.get("fuse-gelu", {}) == {k: v for k, v in (("gelu-erf", gelu_erf), ("gelu-tanh", gelu_tanh)) if v}
    assert rewrites.get("fuse-rms-norm", {}).get("rms-norm", 0) == rms
    assert rewrites.get("fuse-layer-norm", {}).get("layer-norm", 0) == decomposed_count
    counts = collections.Counter(ops(model))
    assert counts["Erf"] == 0 and counts["ReduceMean"] == 0 and counts["Sqrt"] == 0
    assert counts["Gelu"] == gelu_erf + gelu_tanh
    assert counts["RMSNormalization"] == rms
    assert counts["LayerNormalization"] == layer_norm_nodes
