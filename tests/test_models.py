"""Every corpus model: parse -> save -> load -> CPU reference reproduces the reference
outputs; `trtc export onnx` of the artifact passes the full checker and agrees."""

from __future__ import annotations

import onnx
import pytest

from trtc.frontend import parse_onnx
from trtc.ir import load_artifact, save_artifact
from trtc.ir.onnx_export import export_onnx_file
from trtc.loading import open_model
from trtc.reference.runner import ReferenceRunner

from corpus import assert_close_to_reference, corpus_params


@pytest.mark.parametrize("model", corpus_params())
def test_parse_run_export_roundtrip(model, tmp_path):
    inputs, expected = model.reference()
    artifact = parse_onnx(model.path)
    assert not artifact.meta["parse"]["unknown_shapes"], "shape inference left values unknown"
    save_artifact(artifact.model, tmp_path / "m.trtir", artifact.meta)
    loaded = load_artifact(tmp_path / "m.trtir")
    runner = ReferenceRunner(loaded.model)
    assert runner.backend == "onnxruntime"
    assert_close_to_reference(runner.run(inputs), expected, f"{model.name} (.trtir)")

    exported = export_onnx_file(loaded.model, tmp_path / "m.onnx")
    onnx.checker.check_model(str(exported), full_check=True)
    again = ReferenceRunner(open_model(exported).model)
    assert_close_to_reference(again.run(inputs), expected, f"{model.name} (exported .onnx)")
