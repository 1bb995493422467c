"""fold-pad-into-conv: zero spatial Pad -> Conv pads; other pads untouched."""

from __future__ import annotations

import numpy as np
from onnx import helper

from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
X = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)


def _model(pads, mode="constant", value=0.0, conv_pads=(0, 0, 0, 0)):
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], pads=list(conv_pads))]
    return make_model(nodes, [vi("x", [2, 3, 8, 8])], [vi("y", None)],
                      {"pads": np.array(pads, np.int64), "value": np.array(value, np.float32), "w": W})


def test_zero_spatial_pad_is_folded():
    model = _model([0, 0, 1, 2, 0, 0, 2, 1], conv_pads=(1, 0, 0, 1))
    assert check_pass(model, "fold-pad-into-conv", {"x": X}) == {"pad": 1}
    assert ops(model) == ["Conv"]
    conv = next(iter(model.graph))
    assert list(conv.attributes.get_ints("pads")) == [2, 2, 2, 2]


def test_non_zero_reflect_or_channel_pads_stay():
    for model in (_model([0, 0, 1, 1, 0, 0, 1, 1], value=1.0), _model([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
                  _model([0, 1, 1, 1, 0, 0, 1, 1])):
        assert run_pass(model, "fold-pad-into-conv") == {} and ops(model) == ["Pad", "Conv"]
