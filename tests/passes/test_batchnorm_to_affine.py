"""batchnorm-to-affine: inference BN -> Mul + Add; training or non-constant stats untouched."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(0)
C = 6
PARAMS = {"scale": RNG.uniform(0.5, 2, C), "bias": RNG.standard_normal(C), "mean": RNG.standard_normal(C),
          "var": RNG.uniform(0.1, 3, C)}


def _bn_model(stats_input: bool = False, rank: int = 4):
    inits = {k: v.astype(np.float32) for k, v in PARAMS.items()}
    inputs = [vi("x", ["n", C] + [5] * (rank - 2))]
    if stats_input:
        del inits["mean"]
        inputs.append(vi("mean", [C]))
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3)]
    return make_model(nodes, inputs, [vi("y", None)], inits)


def test_bn_becomes_mul_add():
    for rank in (2, 3, 4):
        model = _bn_model(rank=rank)
        x = RNG.standard_normal([2, C] + [5] * (rank - 2)).astype(np.float32)
        counts = check_pass(model, "batchnorm-to-affine", {"x": x})
        assert counts == {"batchnorm": 1} and ops(model) == ["Relu", "Mul", "Add"]
        assert [v.name for v in model.graph.outputs] == ["y"]


def test_non_constant_statistics_stay():
    model = _bn_model(stats_input=True)
    assert run_pass(model, "batchnorm-to-affine") == {} and "BatchNormalization" in ops(model)


def test_training_mode_stays():
    model = make_model(
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y", "rm", "rv"],
                          training_mode=1)],
        [vi("x", [2, C, 3])], [vi("y", None), vi("rm", None), vi("rv", None)],
        {k: v.astype(np.float32) for k, v in PARAMS.items()})
    assert run_pass(model, "batchnorm-to-affine") == {}
    _ = TensorProto
