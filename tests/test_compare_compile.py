"""`trtc compare` (metrics, tolerances, exit codes) and `trtc compile` (stages, reuse, report)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from corpus import run_trtc


def _mlp(path, scale=1.0):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w1[0, 0] *= scale  # a perturbed weight when scale != 1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2"),
         helper.make_node("Sigmoid", ["r"], ["gate"], name="gate")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("gate", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_identical_artifacts_match(tmp_path):
    a = _mlp(tmp_path / "a.onnx")
    assert run_trtc("parse", a, "-o", tmp_path / "a.trtir").returncode == 0
    proc = run_trtc("compare", tmp_path / "a.trtir", a, "--shape", "x=3x16", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["match"] and set(report["outputs"]) == {"logits", "gate"}
    assert report["outputs"]["logits"]["max_abs_error"] == 0.0
    assert report["outputs"]["logits"]["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_perturbed_weight_mismatches_and_names_the_output(tmp_path):
    a, b = _mlp(tmp_path / "a.onnx"), _mlp(tmp_path / "b.onnx", scale=3.0)
    proc = run_trtc("compare", b, a, "--shape", "x=3x16", "--range", "x=1:2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "logits: MISMATCH" in proc.stdout and "gate: MISMATCH" in proc.stdout
    line = proc.stderr.strip()
    assert line.startswith("trtc: error:") and "outputs differ: logits" in line and "\n" not in line
    # Per-output tolerances: loosen both enough and they match.
    proc = run_trtc("compare", b, a, "--shape", "x=3x16", "--range", "x=1:2", "--atol", "logits=1e3",
                    "--atol", "gate=1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["outputs"]["logits"]["atol"] == 1e3 and report["outputs"]["logits"]["beyond_tolerance"] == 0


def test_typed_artifact_is_compared_through_the_simulation(tmp_path):
    a = _mlp(tmp_path / "a.onnx")
    assert run_trtc("optimize", a, "-o", tmp_path / "a16.trtir", "--fp16").returncode == 0
    proc = run_trtc("compare", tmp_path / "a16.trtir", a, "--shape", "x=2x16", "--atol", "1e-2", "--rtol", "1e-2",
                    "--json")
    report = json.loads(proc.stdout)
    assert report["a"]["runs_on"] == "CPU simulation of fp16"
    assert 0 < report["outputs"]["logits"]["max_abs_error"] < 1e-1  # fp16 rounding, not zero, not wild


def test_compare_bad_tolerance(tmp_path):
    a = _mlp(tmp_path / "a.onnx")
    proc = run_trtc("compare", a, a, "--atol", "logits=lots")
    assert proc.returncode == 2 and "not a number: 'lots'" in proc.stderr


def test_compile_runs_every_stage_then_reuses_them(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    a = _mlp(tmp_path / "a.onnx")
    out = tmp_path / "out"
    args = ["compile", a, "-o", out, "--fp16", "--shapes", "x:1x16,4x16,8x16", "--no-cache", "--json"]
    first = json.loads(run_trtc(*args).stdout)
    assert not any(s["reused"] for s in first["stages"].values())
    for name in ("a.trtir", "a.opt.trtir", "a.plan", "a.plan.json", "report.json", "report.md"):
        assert (out / name).exists(), name
    plan_mtime = (out / "a.plan").stat().st_mtime_ns
    second = json.loads(run_trtc(*args).stdout)
    assert all(second["stages"][s]["reused"] for s in ("parse", "optimize", "build"))
    assert (out / "a.plan").stat().st_mtime_ns == plan_mtime  # no rebuild
    predicted = second["predicted"]["outputs"]["logits"]
    assert predicted["cosine"] >= 0.999 and predicted["max_rel_error"] <= 1e-2
    assert second["precision"]["target"] == "fp16"
    report_md = (out / "report.md").read_text()
    assert "## Predicted error" in report_md
    # The report agrees with its own stage table: this run reused the engine, it did not build it.
    assert "| build | " in report_md and "reused (built in" in report_md
    # A changed option re-runs the stages it affects, and only those.
    third = json.loads(run_trtc("compile", a, "-o", out, "--bf16", "--shapes", "x:1x16,4x16,8x16", "--no-cache",
                                "--json").stdout)
    assert third["stages"]["parse"]["reused"] and not third["stages"]["optimize"]["reused"]
    assert not third["stages"]["build"]["reused"]


def test_compile_redoes_precision_when_a_calibration_file_changes(tmp_path):
    """The optimize stage is keyed by the calibration files' contents, not their paths."""
    pytest.importorskip("tensorrt_rtx")
    a = _mlp(tmp_path / "a.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    args = ["compile", a, "-o", tmp_path / "out", "--fp16", "--calib", calib, "--shapes",
            "x:1x16,4x16,8x16", "--no-cache", "--json"]
    assert run_trtc(*args).returncode == 0
    again = json.loads(run_trtc(*args).stdout)
    assert again["stages"]["optimize"]["reused"]
    np.savez(calib, x=np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32) * 100)
    changed = json.loads(run_trtc(*args).stdout)
    assert changed["stages"]["parse"]["reused"] and not changed["stages"]["optimize"]["reused"]
