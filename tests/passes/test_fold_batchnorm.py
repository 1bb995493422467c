"""fold-batchnorm: BatchNormalization / per-channel Mul / Add after Conv and ConvTranspose fold into the weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.ir.rewrite import add_constant, const_array, replace_with
from trtc.passes import PASSES
from trtc.passes.pipeline import optimize

from corpus import LIGHT, corpus_params
from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(0)
C_IN, C_OUT, H, W = 4, 6, 5, 5
X = RNG.standard_normal((2, C_IN, H, W)).astype(np.float32)
BN_RTOL = 1e-4


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(prefix: str, channels: int = C_OUT) -> dict[str, np.ndarray]:
    return {f"{prefix}_scale": rand(channels), f"{prefix}_bias": rand(channels), f"{prefix}_mean": rand(channels),
            f"{prefix}_var": (RNG.random(channels) + 0.5).astype(np.float32)}


def bn_node(x: str, out: str, prefix: str = "bn", **attrs) -> helper.NodeProto:
    names = [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [out], epsilon=1e-3, **attrs)


def conv_model(follow: list, inits: dict, *, op: str = "Conv", group: int = 1, bias: bool = True,
               weight_shape: tuple | None = None, extra_outputs: tuple = (), inputs: tuple = ()):
    """x -> op(W, b) -> y, then the `follow` nodes ending in `out` (a graph output)."""
    if weight_shape is None:
        weight_shape = (C_OUT, C_IN // group, 3, 3) if op == "Conv" else (C_IN, C_OUT // group, 3, 3)
    inits = {"W": rand(*weight_shape), **({"b": rand(C_OUT)} if bias else {}), **inits}
    conv = helper.make_node(op, ["x", "W", "b"] if bias else ["x", "W"], ["y"], group=group, pads=[1, 1, 1, 1])
    outputs = [vi("out", None), *(vi(name, None) for name in extra_outputs)]
    return make_model([conv, *follow], [vi("x", list(X.shape)), *inputs], outputs, inits)


def fold(model: ir.Model) -> dict[str, int]:
    return check_pass(model, "fold-batchnorm", {"x": X}, rtol=BN_RTOL, atol=1e-5)


# --- must fire ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["with-bias", "no-bias"])
def test_conv_bn_folds(bias):
    model = conv_model([bn_node("y", "out")], bn_params("bn"), bias=bias)
    assert fold(model) == {"conv-bn": 1}
    assert ops(model) == ["Conv"]
    assert model.graph.outputs[0].name == "out"
    conv = next(iter(model.graph))
    assert len(conv.inputs) == 3 and const_array(conv.inputs[2]).shape == (C_OUT,)


def test_chain_bn_mul_add_folds_in_one_run():
    follow = [bn_node("y", "z"), helper.make_node("Mul", ["z", "s"], ["m"]),
              helper.make_node("Add", ["t", "m"], ["out"])]  # Add with the constant first
    inits = {**bn_params("bn"), "s": rand(C_OUT, 1, 1), "t": rand(1, C_OUT, 1, 1)}
    model = conv_model(follow, inits)
    assert fold(model) == {"conv-bn": 1, "conv-mul": 1, "conv-add": 1}
    assert ops(model) == ["Conv"]


@pytest.mark.parametrize("shape", [(), (1,), (C_OUT, 1, 1), (1, C_OUT, 1, 1), (1, 1, 1)])
def test_conv_mul_by_per_channel_or_scalar_folds(shape):
    model = conv_model([helper.make_node("Mul", ["s", "y"], ["out"])], {"s": rand(*shape)})
    assert fold(model) == {"conv-mul": 1}
    assert ops(model) == ["Conv"]


def test_conv_add_keeps_the_weight():
    model = conv_model([helper.make_node("Add", ["y", "t"], ["out"])], {"t": rand(C_OUT, 1, 1)})
    assert fold(model) == {"conv-add": 1}
    assert next(iter(model.graph)).inputs[1].name == "W"


def test_grouped_conv_bn_folds():
    model = conv_model([bn_node("y", "out")], bn_params("bn"), group=2)
    assert fold(model) == {"conv-bn": 1}


def test_depthwise_conv_bn_folds():
    model = conv_model([bn_node("y", "out", "bn")], bn_params("bn", C_IN), group=C_IN,
                       weight_shape=(C_IN, 1, 3, 3), bias=False)
    assert fold(model) == {"conv-bn": 1}


@pytest.mark.parametrize("group", [1, 2], ids=["ungrouped", "grouped"])
def test_convtranspose_bn_and_mul_fold(group):
    # Distinct per-channel factors: scaling W's axis 0 instead of its output channels would drift.
    follow = [bn_node("y", "z"), helper.make_node("Mul", ["z", "s"], ["out"])]
    model = conv_model(follow, {**bn_params("bn"), "s": rand(C_OUT, 1, 1)}, op="ConvTranspose", group=group)
    assert fold(model) == {"convtranspose-bn": 1, "convtranspose-mul": 1}
    assert ops(model) == ["ConvTranspose"]


def test_shared_weight_is_not_modified():
    other = helper.make_node("Conv", ["x", "W"], ["other"], pads=[1, 1, 1, 1])
    model = conv_model([bn_node("y", "out"), other], bn_params("bn"), extra_outputs=("other",))
    original = const_array(model.graph.initializers["W"]).copy()
    assert fold(model) == {"conv-bn": 1}
    np.testing.assert_array_equal(const_array(model.graph.initializers["W"]), original)


# --- must not fire ------------------------------------------------------------------------------------------


def assert_untouched(model: ir.Model) -> None:
    before = ops(model)
    assert run_pass(model, "fold-batchnorm") == {}
    assert ops(model) == before


def test_conv_output_with_second_user_is_left():
    model = conv_model([bn_node("y", "out"), helper.make_node("Relu", ["y"], ["r"])], bn_params("bn"),
                       extra_outputs=("r",))
    assert_untouched(model)


def test_conv_output_that_is_a_graph_output_is_left():
    model = conv_model([bn_node("y", "out")], bn_params("bn"), extra_outputs=("y",))
    assert_untouched(model)


def test_bn_with_non_constant_mean_is_left():
    params = bn_params("bn")
    del params["bn_mean"]
    model = conv_model([bn_node("y", "out")], params, inputs=(vi("bn_mean", [C_OUT]),))
    assert_untouched(model)


def test_bn_in_training_mode_is_left():
    model = conv_model([bn_node("y", "out", training_mode=1)], bn_params("bn"))
    assert_untouched(model)


def test_standalone_bn_is_left():
    relu = helper.make_node("Relu", ["x"], ["r"])
    model = make_model([relu, bn_node("r", "out")], [vi("x", list(X.shape))], [vi("out", None)],
                       bn_params("bn", C_IN))
    assert_untouched(model)


@pytest.mark.parametrize("shape", [(1, 1, H, W), (C_OUT,), (1, C_OUT, 1, W), (1, 1, C_OUT, 1, 1)],
                         ids=["spatial", "last-axis", "channel-and-width", "higher-rank"])
def test_mul_by_non_per_channel_constant_is_left(shape):
    weight_shape = (C_OUT, C_IN, 3, 3)
    model = conv_model([helper.make_node("Mul", ["y", "s"], ["out"])], {"s": rand(*shape)}, weight_shape=weight_shape)
    assert_untouched(model)


def test_mul_that_broadcasts_a_single_channel_is_left():
    # [N,1,H,W] * [1,3,1,1] is [N,3,H,W]: a one-channel conv cannot absorb it.
    model = conv_model([helper.make_node("Mul", ["y", "s"], ["out"])], {"s": rand(1, 3, 1, 1), "b": rand(1)},
                       weight_shape=(1, C_IN, 3, 3))
    assert_untouched(model)


def test_mul_by_a_tensor_input_is_left():
    model = conv_model([helper.make_node("Mul", ["y", "s"], ["out"])], {}, inputs=(vi("s", [C_OUT, 1, 1]),))
    assert_untouched(model)


def test_conv_with_non_constant_weight_is_left():
    model = make_model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]), bn_node("y", "out")],
                       [vi("x", list(X.shape)), vi("W", [C_OUT, C_IN, 3, 3])], [vi("out", None)], bn_params("bn"))
    assert_untouched(model)


def test_bn_with_zero_variance_and_zero_epsilon_is_left():
    params = bn_params("bn")
    params["bn_var"][0] = 0.0
    model = conv_model([bn_node("y", "out")], params)
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    bn.attributes["epsilon"] = ir.AttrFloat32("epsilon", 0.0)
    assert_untouched(model)  # 1/sqrt(0) is inf: folding would turn a zero output into NaN


# --- corpus ---------------------------------------------------------------------------------------------------


def conv_followers(model: ir.Model) -> int:
    """Single-use Conv/ConvTranspose outputs read by a BatchNormalization."""
    return sum(1 for n in model.graph if n.op_type == "BatchNormalization" and n.inputs[0].producer() is not None
               and n.inputs[0].producer().op_type in ("Conv", "ConvTranspose") and len(n.inputs[0].uses()) == 1)


@pytest.mark.parametrize("entry", corpus_params())
def test_corpus_verified(entry):
    model = parse_onnx(entry.path).model
    passes = [PASSES["fold-batchnorm"]]
    # The light_* zoo models hold their weights as ConstantOfShape outputs, so their BNs fold
    # only once those are constants. (Only where there is a BN: materializing vgg19's 0.5 GB
    # of weights for nothing would slow this test tenfold.)
    materialized = entry.path.parent == LIGHT and "BatchNormalization" in ops(model)
    if materialized and "fold-constants" in PASSES:
        passes.insert(0, PASSES["fold-constants"])
    elif materialized:
        materialize_constant_of_shape(model)
    pairs = conv_followers(model)
    feeds, _ = entry.reference()
    report = optimize(model, passes=passes, verify_feeds=feeds)
    counts = report.totals().get("fold-batchnorm", {}).get("rewrites", {})
    print(entry.name, counts)
    if materialized:
        assert counts.get("conv-bn", 0) == pairs > 0
        assert conv_followers(model) == 0, "a Conv -> BatchNormalization pair was not folded"


def materialize_constant_of_shape(model: ir.Model) -> None:
    """Stand-in for fold-constants: ConstantOfShape(constant shape) -> an initializer."""
    for node in list(model.graph):
        shape = const_array(node.inputs[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None:
            continue
        fill = node.attributes["value"].value.numpy().reshape(())
        value = add_constant(model.graph, np.full(tuple(shape), fill), f"{node.outputs[0].name}_value")
        replace_with(model.graph, node, [], [node.outputs[0]], [value], dead=[node])
