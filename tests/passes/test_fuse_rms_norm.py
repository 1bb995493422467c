"""fuse-rms-norm: every decomposed RMSNorm form fuses, each near miss does not (and says why);
T5 exports and the LLaMA-style decoder of make_big_model fuse every RMSNorm."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.fuse_rms_norm import why_not
from trtc.passes.pipeline import optimize

from corpus import MODELS, SHARED, CorpusModel
from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(1)
SHAPE = [2, 5, 8]
WEIGHT = (RNG.random(8) + 0.5).astype(np.float32)


def rms_norm_model(*, square: str = "pow", divide: str = "div", axes=(-1,), exponent: float = 2.0,
                   eps_on: str = "mean", weight=WEIGHT, weight_first: bool = False, cast: bool = False,
                   extra_output: str | None = None) -> ir.Model:
    """x -> decomposed RMSNorm -> y, with one knob per form or defect."""
    dtype = onnx.TensorProto.FLOAT16 if cast else onnx.TensorProto.FLOAT
    x = "x"
    nodes = []
    if cast:  # fp16 exports: statistics in float32, cast back before the fp16 weight
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=onnx.TensorProto.FLOAT))
        x = "x32"
    inits = {"axes": np.array(axes, np.int64), "exponent": np.array(exponent, np.float32),
             "eps": np.array(1e-6, np.float32), "one": np.array(1.0, np.float32)}
    nodes.append(helper.make_node("Pow", [x, "exponent"], ["sq"]) if square == "pow"
                 else helper.make_node("Mul", [x, x], ["sq"]))
    nodes.append(helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean_square"))
    if eps_on == "mean":
        nodes += [helper.make_node("Add", ["ms", "eps"], ["ms_eps"]), helper.make_node("Sqrt", ["ms_eps"], ["std"])]
    else:
        nodes += [helper.make_node("Sqrt", ["ms"], ["std0"]), helper.make_node("Add", ["std0", "eps"], ["std"])]
    if divide == "div":
        nodes.append(helper.make_node("Div", [x, "std"], ["n"]))
    elif divide == "reciprocal":
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", [x, "inv"], ["n"])]
    else:  # T5's TorchScript export: 1 / std
        nodes += [helper.make_node("Div", ["one", "std"], ["inv"]), helper.make_node("Mul", ["inv", x], ["n"])]
    last = "n"
    if cast:
        nodes.append(helper.make_node("Cast", [last], ["n16"], to=onnx.TensorProto.FLOAT16))
        last = "n16"
    if weight is not None:
        inits["weight"] = weight.astype(np.float16) if cast else weight
        nodes.append(helper.make_node("Mul", ["weight", last] if weight_first else [last, "weight"], ["scaled"]))
        last = "scaled"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    outputs = [vi("y", None, dtype)] + ([vi(extra_output, None)] if extra_output else [])
    return make_model(nodes, [vi("x", SHAPE, dtype)], outputs, inits)


def feeds(dtype=np.float32) -> dict[str, np.ndarray]:
    return {"x": (RNG.standard_normal(SHAPE) * 3).astype(dtype)}


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def rms_norms(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "RMSNormalization"]


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("divide", ["div", "reciprocal", "one-over"])
@pytest.mark.parametrize("weight_first", [False, True])
def test_fuses_each_form(square, divide, weight_first):
    model = rms_norm_model(square=square, divide=divide, weight_first=weight_first)
    assert why_not(node_named(model, "mean_square")) is None
    assert check_pass(model, "fuse-rms-norm", feeds()) == {"rms-norm": 1}
    assert ops(model) == ["RMSNormalization", "Identity"]
    (node,) = rms_norms(model)
    assert node.attributes["axis"].value == -1
    assert node.attributes["epsilon"].value == pytest.approx(1e-6)
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), WEIGHT)
    assert model.opset_imports[""] == 23


def test_without_weight_scale_is_ones():
    model = rms_norm_model(weight=None)
    assert check_pass(model, "fuse-rms-norm", feeds()) == {"rms-norm": 1}
    np.testing.assert_array_equal(rms_norms(model)[0].inputs[1].const_value.numpy(), np.ones(8, np.float32))


def test_two_trailing_axes():
    weight = (RNG.random((5, 8)) + 0.5).astype(np.float32)
    model = rms_norm_model(axes=(1, 2), weight=weight)
    assert check_pass(model, "fuse-rms-norm", feeds()) == {"rms-norm": 1}
    assert rms_norms(model)[0].attributes["axis"].value == -2


def test_cast_wrapped_fp16_keeps_the_casts_and_the_fp16_weight():
    model = rms_norm_model(cast=True, divide="reciprocal")
    assert check_pass(model, "fuse-rms-norm", feeds(np.float16), rtol=1e-3, atol=1e-3) == {"rms-norm": 1}
    assert ops(model) == ["Cast", "RMSNormalization", "Cast", "Mul", "Identity"]
    np.testing.assert_array_equal(rms_norms(model)[0].inputs[1].const_value.numpy(), np.ones(8, np.float32))


@pytest.mark.parametrize("knobs, reason", [
    ({"eps_on": "std"}, "mean square: it feeds Sqrt, not Add(eps)"),
    ({"axes": (1,)}, "axes [-2] are not the trailing axes"),
    ({"exponent": 3.0}, "Pow exponent is 3.0, not 2"),
    ({"extra_output": "ms"}, "mean square: it feeds several nodes, not Add(eps)"),
    ({"extra_output": "std"}, "mean square: std is not used only by Div(x, std), Div(1, std) or Reciprocal"),
])
def test_near_misses_do_not_fire(knobs, reason):
    model = rms_norm_model(**knobs)
    assert why_not(node_named(model, "mean_square")) == reason
    before = ops(model)
    assert check_pass(model, "fuse-rms-norm", feeds()) == {}
    assert ops(model) == before


def test_wrong_weight_shape_is_not_absorbed():
    weight = (RNG.random((5, 1)) + 0.5).astype(np.float32)  # per position, not per channel
    model = rms_norm_model(weight=weight)
    assert check_pass(model, "fuse-rms-norm", feeds()) == {"rms-norm": 1}
    assert ops(model) == ["RMSNormalization", "Mul", "Identity"]


# T5 (MANIFEST.md: 3 blocks) has an RMSNorm before attention and before the FFN of every block,
# and a final one.
T5_BLOCKS = 3


@pytest.mark.parametrize("name", ["t5_encoder-ts-op17", "t5_encoder-dynamo-op18"])
def test_corpus_t5_fuses_every_rms_norm(name):
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    model = parse_onnx(path).model
    report = optimize(model, passes=[PASSES["fuse-rms-norm"]], verify_feeds=CorpusModel(name, path).reference()[0])
    assert report.totals()["fuse-rms-norm"]["rewrites"] == {"rms-norm": 2 * T5_BLOCKS + 1}
    assert len(rms_norms(model)) == 2 * T5_BLOCKS + 1
    assert "ReduceMean" not in ops(model) and "Sqrt" not in ops(model)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_make_big_model_decoder_fuses_every_rms_norm(tmp_path, dtype):
    tool = SHARED / "tools" / "make_big_model.py"
    if not tool.exists():
        pytest.skip(f"{tool} is missing")
    layers = 2
    out = tmp_path / "model.onnx"
    subprocess.run([sys.executable, str(tool), "--out", str(out), "--layers", str(layers), "--hidden", "64",
                    "--heads", "4", "--kv-heads", "2", "--ffn", "160", "--vocab", "500", "--seq-len", "64",
                    "--dtype", dtype], check=True, capture_output=True)
    model = parse_onnx(out).model
    # A seed of its own: the shared RNG's state depends on which tests ran before in this worker.
    inputs = {"input_ids": np.random.default_rng(7).integers(0, 500, (2, 9)).astype(np.int64)}
    report = optimize(model, passes=[PASSES["fuse-rms-norm"]], verify_feeds=inputs)
    assert report.totals()["fuse-rms-norm"]["rewrites"] == {"rms-norm": 2 * layers + 1}
    assert "ReduceMean" not in ops(model)
