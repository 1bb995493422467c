"""legacy-softmax: Flatten -> Softmax -> Reshape back -> Softmax over the one long axis."""

from __future__ import annotations

import numpy as np
from onnx import helper

from passutil import check_pass, make_model, ops, run_pass, vi


def _model(shape):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Softmax", ["f"], ["s"], axis=-1),
             helper.make_node("Reshape", ["s", "shape"], ["y"])]
    return make_model(nodes, [vi("x", list(shape))], [vi("y", None)], {"shape": np.array(shape, np.int64)})


def test_classifier_head_becomes_one_softmax():
    model = _model((2, 10, 1, 1))
    x = np.random.default_rng(0).standard_normal((2, 10, 1, 1)).astype(np.float32)
    assert check_pass(model, "legacy-softmax", {"x": x}) == {"softmax": 1}
    assert ops(model) == ["Softmax"] and next(iter(model.graph)).attributes.get_int("axis") == 1


def test_two_long_axes_stay():
    model = _model((2, 10, 3, 1))
    assert run_pass(model, "legacy-softmax") == {} and ops(model) == ["Flatten", "Softmax", "Reshape"]
