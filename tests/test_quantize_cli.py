"""--int8/--fp8/--int4-weights/--calib-method from the command line: the report optimize prints,
`inspect --precision`'s table of quantized tensors and reasons, and every refusal in one line."""

from __future__ import annotations

import json

import pytest

from corpus import MODELS, one_error_line, trtc_in_process

RESNET = MODELS / "resnet-ts-op17.onnx"
CALIB = MODELS / "resnet-ts-op17.npz"


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    if not RESNET.exists():
        pytest.skip(f"{RESNET} is missing")
    from trtc.cli import main

    out = tmp_path_factory.mktemp("q") / "resnet.int8.trtir"
    with pytest.raises(SystemExit) as done:
        main(["optimize", str(RESNET), "-o", str(out), "--int8", "--fp16", "--calib", str(CALIB),
              "--calib-method", "residual=max"])
    assert done.value.code in (0, None)
    return out


def test_optimize_int8_reports_and_inspect_explains(int8_artifact, capsys):
    rc, out, _ = trtc_in_process(capsys, "inspect", int8_artifact, "--precision")
    assert rc in (0, None)
    assert out.startswith("int8+fp16: 19 weighted layers quantized (int8), 100.0% of their FLOPs")
    assert "range methods: conv percentile:99.99, linear mse, attention mse, probabilities max, residual " \
           "percentile:99.99 (--calib-method residual=max)" in out
    assert "pixel_values" in out and "percentile:99.99" in out  # the tensors with their methods
    assert "GlobalAveragePool reduces: stays float" in out  # a node left in float, with its reason
    assert "largest error added" in out


def test_optimize_json_carries_the_quantization(int8_artifact, capsys, tmp_path):
    rc, out, _ = trtc_in_process(capsys, "optimize", RESNET, "-o", tmp_path / "r.trtir", "--int8", "--calib", CALIB,
                                 "--json")
    report = json.loads(out)["precision"]
    assert report["target"] == "int8" and report["quantization"]["flop_share"] == 1.0
    assert report["predicted"]["last_hidden_state"]["cosine"] > 0.999
    assert report["calibration"] == {"samples": 1, "source": "files"}


@pytest.mark.parametrize(("args", "needles"), [
    (["--int8", "--fp8"], ["choose one of --int8 and --fp8"]),
    (["--int8", "--int4-weights"], ["--int4-weights is weight-only and does not combine with --int8"]),
    (["--calib-method", "max"], ["--calib-method sets the ranges of quantized activations", "add --int8"]),
    (["--int8", "--calib-method", "conv=kl"], ["unknown calibration method 'kl'", "max, percentile[:P], entropy"]),
    (["--fp8", "--target", "sm75,sm86,sm89"], ["FP8 needs sm89 or newer: target(s) sm75, sm86 have no FP8"]),
])
def test_refusals_are_one_line(capsys, tmp_path, args, needles):
    one_error_line(trtc_in_process(capsys, "build", RESNET, "-o", tmp_path / "r.plan", *args), *needles)


def test_fp8_artifact_refused_for_old_targets(capsys, tmp_path):
    artifact = tmp_path / "r.fp8.trtir"
    rc, _, _ = trtc_in_process(capsys, "optimize", RESNET, "-o", artifact, "--fp8", "--calib", CALIB)
    assert rc in (0, None)
    one_error_line(trtc_in_process(capsys, "build", artifact, "-o", tmp_path / "r.plan", "--target", "sm80"),
                   "target(s) sm80 have no FP8")
