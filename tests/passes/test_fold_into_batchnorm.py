"""fold-batchnorm's BN pattern: BatchNormalization -> Mul/Add by per-channel constants -> one BN."""

from __future__ import annotations

import numpy as np
from onnx import helper

from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(1)
C = 5
BN = {"g": RNG.uniform(0.5, 2, C), "b": RNG.standard_normal(C), "m": RNG.standard_normal(C),
      "v": RNG.uniform(0.5, 2, C), "c": RNG.standard_normal((C, 1, 1)), "d": RNG.standard_normal((1, C, 1, 1))}


def _model(extra_user: bool = False):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Mul", ["n", "c"], ["s"]),
             helper.make_node("Add", ["d", "s"], ["y"])]
    outputs = [vi("y", None)] + ([vi("n", None)] if extra_user else [])
    return make_model(nodes, [vi("x", [2, C, 4, 4])], outputs, {k: v.astype(np.float32) for k, v in BN.items()})


def test_scale_and_shift_fold_into_the_batchnorm():
    model = _model()
    x = RNG.standard_normal((2, C, 4, 4)).astype(np.float32)
    assert check_pass(model, "fold-batchnorm", {"x": x}, rtol=1e-5, atol=1e-5) == {"bn-mul": 1, "bn-add": 1}
    assert ops(model) == ["Relu", "BatchNormalization"]


def test_batchnorm_read_elsewhere_stays():
    model = _model(extra_user=True)
    assert run_pass(model, "fold-batchnorm") == {}
