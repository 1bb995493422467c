"""fuse-gelu: erf and tanh GELU in every grouping and operand order fuse; near misses do not (and
say why); the corpus models fuse one GELU per FFN."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.fuse_gelu import why_not
from trtc.passes.pipeline import optimize

from corpus import MODELS, CorpusModel
from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(2)
SHAPE = [3, 4, 16]


def mul(a: str, b: str, out: str, swap: bool) -> helper.NodeProto:
    return helper.make_node("Mul", [b, a] if swap else [a, b], [out])


def tail(bracket: str, grouping: str, swap: bool, half: str = "half", x: str = "x") -> list:
    """0.5 * x * bracket -> y, 0.5 applied last, to x first, or to the bracket."""
    if grouping == "last":
        return [mul(x, bracket, "xb", swap), mul("xb", half, "y0", swap)]
    if grouping == "x-first":
        return [mul(x, half, "hx", swap), mul("hx", bracket, "y0", swap)]
    return [mul(bracket, half, "hb", swap), mul(x, "hb", "y0", swap)]


def gelu_model(*, form: str = "erf", argument: str = "div", cube: str = "pow", grouping: str = "last",
               swap: bool = False, constants: dict | None = None, extra_output: str | None = None,
               tail_x: str = "x") -> ir.Model:
    values = {"sqrt2": math.sqrt(2), "inv_sqrt2": 1 / math.sqrt(2), "one": 1.0, "half": 0.5,
              "c": math.sqrt(2 / math.pi), "cubic": 0.044715, "three": 3.0, **(constants or {})}
    inits = {k: np.array(v, np.float32) for k, v in values.items()}
    if form == "erf":
        nodes = [helper.make_node("Div", ["x", "sqrt2"], ["u"]) if argument == "div"
                 else mul("x", "inv_sqrt2", "u", swap)]
        nodes.append(helper.make_node("Erf", ["u"], ["e"], name="core"))
    else:
        if cube == "pow":
            nodes = [helper.make_node("Pow", ["x", "three"], ["x3"])]
        elif cube == "mul-mul":
            nodes = [mul("x", "x", "x2", False), mul("x2", "x", "x3", swap)]
        else:  # x * Pow(x, 2)
            nodes = [helper.make_node("Pow", ["x", "two"], ["x2"]), mul("x2", "x", "x3", swap)]
            inits["two"] = np.array(2.0, np.float32)
        nodes += [mul("x3", "cubic", "k", swap), helper.make_node("Add", ["k", "x"] if swap else ["x", "k"], ["s"]),
                  mul("s", "c", "u", swap), helper.make_node("Tanh", ["u"], ["e"], name="core")]
    nodes.append(helper.make_node("Add", ["one", "e"] if swap else ["e", "one"], ["bracket"]))
    nodes += tail("bracket", grouping, swap, x=tail_x)
    nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    outputs = [vi("y", None)] + ([vi(extra_output, None)] if extra_output else [])
    inputs = [vi("x", SHAPE)] + ([vi(tail_x, SHAPE)] if tail_x != "x" else [])
    return make_model(nodes, inputs, outputs, inits)


def feeds(model: ir.Model) -> dict[str, np.ndarray]:
    return {v.name: (RNG.standard_normal(SHAPE) * 2).astype(np.float32) for v in model.graph.inputs}


def core(model: ir.Model) -> ir.Node:
    return next(n for n in model.graph if n.name == "core")


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("grouping", ["last", "x-first", "bracket"])
@pytest.mark.parametrize("argument", ["div", "mul"])
def test_erf_form_fuses(argument, grouping, swap):
    model = gelu_model(argument=argument, grouping=grouping, swap=swap)
    assert why_not(core(model)) is None
    assert check_pass(model, "fuse-gelu", feeds(model)) == {"gelu-erf": 1}
    assert ops(model) == ["Gelu", "Identity"]
    gelu = model.graph.node(0)
    assert gelu.inputs[0].name == "x" and "approximate" not in gelu.attributes
    assert model.opset_imports[""] == 20


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("grouping", ["last", "x-first", "bracket"])
@pytest.mark.parametrize("cube", ["pow", "mul-mul", "mul-pow"])
def test_tanh_form_fuses(cube, grouping, swap):
    model = gelu_model(form="tanh", cube=cube, grouping=grouping, swap=swap)
    assert why_not(core(model)) is None
    assert check_pass(model, "fuse-gelu", feeds(model)) == {"gelu-tanh": 1}
    assert ops(model) == ["Gelu", "Identity"]
    assert model.graph.node(0).attributes["approximate"].value == "tanh"


def test_rounded_constants_within_tolerance_fuse():
    model = gelu_model(argument="mul", constants={"inv_sqrt2": 0.70711, "half": 0.50002})
    # The fused Gelu uses the exact constants: outputs move by the constants' relative error.
    assert check_pass(model, "fuse-gelu", feeds(model), rtol=1e-4) == {"gelu-erf": 1}


@pytest.mark.parametrize("knobs, reason", [
    ({"constants": {"half": 0.6}}, "the product is not completed by a single Mul with 0.5 and x"),
    ({"constants": {"half": 0.6}, "grouping": "x-first"}, "the bracket is not multiplied by x and 0.5"),
    ({"constants": {"sqrt2": math.sqrt(2) * 1.001}}, "the Erf input is not x / 1.41421 or x * 0.70711"),
    ({"constants": {"one": 2.0}}, "the Erf is not used only by Add(., 1)"),
    ({"extra_output": "e"}, "the Erf is not used only by Add(., 1)"),
    ({"extra_output": "xb"}, "the product is not completed by a single Mul with 0.5 and x"),
    ({"tail_x": "other"}, "the bracket is not multiplied by x and 0.5"),
    ({"tail_x": "other", "grouping": "bracket"}, "the product is not completed by a single Mul with 0.5 and x"),
    ({"form": "tanh", "constants": {"three": 2.0}},
     "the sum under Tanh is not x + 0.044715 * x^3 (the cube is not Pow(x, 3) or x * x * x)"),
    ({"form": "tanh", "constants": {"cubic": 0.05}},
     "the sum under Tanh is not x + 0.044715 * x^3 (no 0.044715 factor)"),
    ({"form": "tanh", "constants": {"c": 0.8}}, "the Tanh input is not 0.79788 * (x + ...)"),
])
def test_near_misses_do_not_fire(knobs, reason):
    model = gelu_model(**knobs)
    assert why_not(core(model)) == reason
    before = ops(model)
    assert check_pass(model, "fuse-gelu", feeds(model)) == {}
    assert ops(model) == before


# Corpus: one GELU per FFN. MANIFEST.md: bert, distilbert, vit use erf GELU; gpt2 and T5's gated
# FFN use the tanh form ("gelu_new"); each has 3 layers. convnext: depths [1, 1, 2, 1] = 5 blocks.
LAYERS = 3
GELUS = {"bert": {"gelu-erf": LAYERS}, "distilbert": {"gelu-erf": LAYERS}, "vit": {"gelu-erf": LAYERS},
         "convnext": {"gelu-erf": 1 + 1 + 2 + 1}, "gpt2": {"gelu-tanh": LAYERS}, "t5_encoder": {"gelu-tanh": LAYERS}}
WITH_GELU = [f"{family}-{exporter}" for family in GELUS for exporter in ("ts-op17", "dynamo-op18")
             if family != "bert" or exporter == "ts-op17"]


@pytest.mark.parametrize("name", WITH_GELU)
def test_corpus_fuses_one_gelu_per_ffn(name):
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    model = parse_onnx(path).model
    report = optimize(model, passes=[PASSES["fuse-gelu"]], verify_feeds=CorpusModel(name, path).reference()[0])
    expected = GELUS[name.split("-")[0]]
    assert report.totals()["fuse-gelu"]["rewrites"] == expected
    assert ops(model).count("Gelu") == sum(expected.values())
    assert "Erf" not in ops(model)
