"""benchmarks/build_node_suite.py --freeze-parameters on node-test cases whose float or bool
parameters (OneHot depth, Range bounds, Dropout ratio and training_mode) it freezes: they build
with TensorRT-RTX, and random dropout keeps its reason."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from corpus import NODE_TESTS, REPO  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from build_node_suite import build_case  # noqa: E402


@pytest.mark.parametrize("case", ["test_onehot_with_axis", "test_range_float_type_positive_delta",
                                  "test_range_bfloat16_type_positive_delta", "test_training_dropout_zero_ratio_mask",
                                  "test_max_uint8"])
def test_frozen_parameters_build(case):
    if not (NODE_TESTS / case).is_dir():
        pytest.skip(f"{NODE_TESTS / case} is missing")
    assert build_case(NODE_TESTS / case, freeze=True) == ("pass", "")


def test_random_dropout_stays_refused_with_its_reason():
    if not (NODE_TESTS / "test_training_dropout").is_dir():
        pytest.skip(f"{NODE_TESTS} is missing")
    status, reason = build_case(NODE_TESTS / "test_training_dropout", freeze=True)
    assert status == "fail" and "training-mode Dropout with a nonzero ratio is random" in reason
