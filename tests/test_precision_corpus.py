"""The precision acceptance on the corpus beyond what tests/lower/test_corpus_build.py checks
(every model compiled with --fp16: predicted cosine >= 0.999, max error <= 1e-2 of the range,
fp16 FLOP share >= 90% convolutional / 80% transformers): bf16, and the light models.

The light_* zoo models carry synthetic weights (every element 0.02) that drive activations
to 1e6..1e27, far beyond fp16's 65504: there every layer past the overflow point must stay
fp32, and the test checks that each such fp32 node is kept for its observed magnitude."""

from __future__ import annotations

import sys

import pytest

from corpus import LIGHT, REPO, corpus_params

sys.path.insert(0, str(REPO / "benchmarks"))
from precision_table import precision_row  # noqa: E402


@pytest.mark.parametrize("name", ["light_vgg19", "light_resnet50"])
def test_light_models_keep_fp32_only_for_out_of_range_values(name):
    from trtc.frontend import parse_onnx
    from trtc.passes.pipeline import optimize
    from trtc.precision import PrecisionOptions, apply_precision

    from corpus import CorpusModel

    model = CorpusModel(name, LIGHT / f"{name}.onnx")
    inputs, _ = model.reference()
    ir_model = parse_onnx(model.path).model
    optimize(ir_model)
    report = apply_precision(ir_model, [inputs], PrecisionOptions())
    reasons = [e["reason"] for e in report.fp32_nodes.values()]
    assert reasons and all("data_max" in r or "neighbours" in r or "exponentiates" in r or "beyond fp16" in r
                           for r in reasons), reasons


@pytest.mark.parametrize("model", [p for p in corpus_params() if p.values[0] is None or
                                   p.values[0].name.split("-")[0] in ("bert", "gpt2", "cnn_bn")])
def test_bf16_plan_meets_the_accuracy_goals(model):
    row = precision_row(model, "bf16")
    assert row["cosine"] >= 0.999 and row["max_rel_error"] <= 1e-2, row
