"""Issue 14's acceptance for --int8 on the six models of its table: the exported graph, run by
onnxruntime with graph optimizations off, at least as accurate as ModelOpt 0.47's ONNX PTQ (cosine
against the fp32 reference, worst output) with at least its quantized FLOP share; measured as the
issue measured ModelOpt: the corpus .npz inputs as calibration and as evaluation. Each builds with
TensorRT-RTX; --fp8 builds for sm89."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from trtc.frontend import parse_onnx
from trtc.ir.onnx_export import to_model_proto
from trtc.lower.backend import load_backend, parse_targets
from trtc.lower.build import BuildOptions, build_engine
from trtc.passes.pipeline import optimize
from trtc.precision.quantize import apply_quantization
from trtc.precision.rules import PrecisionOptions
from trtc.reference.metrics import error_metrics

from corpus import MODELS, CorpusModel

# ModelOpt 0.47, default settings (gpt2: max calibration, its entropy default crashes on the mask).
MODELOPT = {"resnet": (0.99904, 0.9785), "mobilenet_v2": (0.99995, 1.0), "convnext": (0.99947, 1.0),
            "bert": (0.99973, 0.9834), "vit": (0.99745, 0.9996), "gpt2": (0.99957, 0.9902)}


def corpus_model(family: str) -> CorpusModel:
    path = MODELS / f"{family}-ts-op17.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return CorpusModel(path.stem, path)


def quantized(family: str, options: PrecisionOptions):
    model = corpus_model(family)
    inputs, expected = model.reference()
    artifact = parse_onnx(model.path)
    optimize(artifact.model)
    report = apply_quantization(artifact.model, [inputs], options)
    return artifact, report, inputs, expected


def exported_cosine(artifact, inputs, expected) -> float:
    """Worst cosine over the outputs of the exported ONNX graph run by onnxruntime, optimizations off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(to_model_proto(artifact.model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, inputs)))
    return min(error_metrics(expected[n], got[n])["cosine"] for n in expected)


@pytest.mark.parametrize("family", list(MODELOPT))
def test_int8_beats_modelopt(family):
    artifact, report, inputs, expected = quantized(family, PrecisionOptions(quantize="int8", target="fp32"))
    cosine, share = MODELOPT[family]
    measured = exported_cosine(artifact, inputs, expected)
    assert measured >= cosine, (family, measured)
    assert report.flop_share >= share - 5e-5, (family, report.flop_share)  # the table's 4 digits
    assert min(m["cosine"] for m in report.predicted.values()) == pytest.approx(measured, abs=1e-6)


def build(artifact, inputs, targets: str = "") -> bytes:
    profile = {k: (v.shape, v.shape, v.shape) for k, v in inputs.items() if isinstance(v, np.ndarray)}
    return build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
                        BuildOptions(profiles=[profile], targets=parse_targets(targets))).plan


@pytest.mark.parametrize("family", list(MODELOPT))
def test_int8_builds_with_tensorrt_rtx(family):
    artifact, _, inputs, _ = quantized(family, PrecisionOptions(quantize="int8", target="fp32"))
    assert build(artifact, inputs)


@pytest.mark.parametrize(("family", "options", "targets", "floor"), [
    ("vit", PrecisionOptions(quantize="int8", target="fp16"), "", 0.999),
    ("resnet", PrecisionOptions(quantize="fp8", target="fp32"), "sm89", 0.99),
    ("vit", PrecisionOptions(quantize="fp8", target="fp16"), "sm89,sm120", 0.99),
    # 16 levels per channel: weight-only int4 without blocks (which TensorRT-RTX 1.7 cannot build) is coarse
    ("gpt2", PrecisionOptions(int4_weights=True, target="fp16"), "", 0.97),
])
def test_mixed_fp8_and_int4_build(family, options, targets, floor):
    artifact, report, inputs, expected = quantized(family, options)
    assert exported_cosine(artifact, inputs, expected) > floor
    assert build(artifact, inputs, targets)


def test_gpt2_entropy_calibration_survives_the_causal_mask():
    """ModelOpt's entropy calibration fails on gpt2 ("Too many bins for data range": the -3.4e38 of its
    causal mask in the histogram); trtc never quantizes the mask, and its histograms leave such values out."""
    artifact, report, inputs, expected = quantized("gpt2", PrecisionOptions(quantize="int8", target="fp32",
                                                                           calib_methods=("entropy",)))
    assert {t["method"] for t in report.quantization["tensors"].values()} == {"entropy"}
    assert exported_cosine(artifact, inputs, expected) > 0.999


def test_conv_transpose_weights_per_output_channel_build(tmp_path):
    """ConvTranspose's output channels are its weight's axis 1 ([Cin, Cout/group, k...]): TensorRT takes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((16, 8, 2, 2)) * 0.3).astype(np.float32), "wt")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "wt"], ["y"], strides=[2, 2], name="up")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "up.onnx")
    artifact = parse_onnx(tmp_path / "up.onnx")
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    report = apply_quantization(artifact.model, [feeds], PrecisionOptions(quantize="int8", target="fp32"))
    up = next(n for n in artifact.model.graph if n.name == "up")
    weight = up.inputs[1].producer()
    assert weight.attributes.get_int("axis") == 1 and weight.inputs[1].const_value.shape == (8,)
    assert report.predicted["y"]["cosine"] > 0.999
    assert build(artifact, feeds)
