"""The precision acceptance on the corpus beyond what tests/lower/test_corpus_build.py checks
(every model compiled with --fp16: predicted cosine >= 0.999, max error <= 1e-2 of the range,
fp16 FLOP share >= 90% convolutional / 80% transformers): bf16, and the light models' rescaling."""

from __future__ import annotations

import sys

import pytest

from corpus import LIGHT, REPO, corpus_params

sys.path.insert(0, str(REPO / "benchmarks"))
from precision_table import precision_row  # noqa: E402


@pytest.mark.parametrize("name", ["light_vgg19", "light_resnet50"])
def test_light_models_are_rescaled_into_fp16_range(name):
    """Activations of 1e6..1e27 (all-0.02 synthetic weights) are brought into fp16's range by
    power-of-two rescaling; only the final descaled logits and their Softmax stay fp32."""
    from trtc.frontend import parse_onnx
    from trtc.passes.pipeline import optimize
    from trtc.precision import PrecisionOptions, apply_precision

    from corpus import CorpusModel

    model = CorpusModel(name, LIGHT / f"{name}.onnx")
    inputs, _ = model.reference()
    ir_model = parse_onnx(model.path).model
    optimize(ir_model)
    report = apply_precision(ir_model, [inputs], PrecisionOptions())
    assert report.counts["weights-rescaled"] > 10 and report.flop_share >= 0.99
    assert {e["op"] for e in report.fp32_nodes.values()} <= {"Softmax", "Mul", "Gemm", "Reshape", "Flatten"}
    assert all(m["nonfinite"] == 0 and m["cosine"] >= 0.999 for m in report.predicted.values())
    without = apply_precision(parse_onnx(model.path).model, [inputs], PrecisionOptions(rescale=False))
    assert without.flop_share < 0.5  # the same plan without rescaling keeps most layers fp32


@pytest.mark.parametrize("model", [p for p in corpus_params() if p.values[0] is None or
                                   p.values[0].name.split("-")[0] in ("bert", "gpt2", "cnn_bn")])
def test_bf16_plan_meets_the_accuracy_goals(model):
    row = precision_row(model, "bf16")
    assert row["cosine"] >= 0.999 and row["max_rel_error"] <= 1e-2, row
