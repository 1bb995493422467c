"""`--freeze NAME=VALUES`: graph inputs made constants at parse time (trtc/frontend/freeze.py), through
the library and the CLI (parse, build, compile), with one-line errors and the values in the identity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx

from corpus import run_trtc


def _reduce_sum(path):
    """y = ReduceSum(x: float32[2x3], axes: int64[1]) with the axes a graph input, as exporters write it."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="reducesum", keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _scaled(path):
    """y = Where(keep: bool scalar, x * scale: float32 scalar, x)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul"),
         helper.make_node("Where", ["keep", "xs", "x"], ["y"], name="where")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _constant(artifact, name: str) -> np.ndarray:
    value = artifact.model.graph.initializers[name]
    return value.const_value.numpy()


def test_frozen_input_becomes_an_initializer(tmp_path):
    artifact = parse_onnx(_reduce_sum(tmp_path / "m.onnx"), {"axes": "1"})
    assert [v.name for v in artifact.model.graph.inputs] == ["x"]
    axes = _constant(artifact, "axes")
    assert axes.dtype == np.int64 and axes.tolist() == [1]
    assert artifact.meta["parse"]["frozen"] == {"axes": "1"}
    assert [tuple(v.shape) for v in artifact.model.graph.outputs] == [(2,)]  # inferred with the axes known


def test_literals_take_the_declared_dtype_and_rank(tmp_path):
    artifact = parse_onnx(_scaled(tmp_path / "m.onnx"), {"scale": "2.5", "keep": "true"})
    scale, keep = _constant(artifact, "scale"), _constant(artifact, "keep")
    assert scale.dtype == np.float32 and scale.shape == () and scale == 2.5
    assert keep.dtype == np.bool_ and keep.shape == () and keep


def test_npy_values_are_cast_when_exact(tmp_path):
    model = _reduce_sum(tmp_path / "m.onnx")
    np.save(tmp_path / "axes.npy", np.array([1.0]))  # float64 holding an integer
    artifact = parse_onnx(model, {"axes": str(tmp_path / "axes.npy")})
    assert _constant(artifact, "axes").dtype == np.int64
    np.save(tmp_path / "half.npy", np.array([1.5]))
    with pytest.raises(TrtcError, match=r"the values \[1.5\] are not all exactly INT64"):
        parse_onnx(model, {"axes": str(tmp_path / "half.npy")})


def test_arrays_freeze_too(tmp_path):
    artifact = parse_onnx(_reduce_sum(tmp_path / "m.onnx"), {"axes": np.array([0], dtype=np.int32)})
    assert _constant(artifact, "axes").tolist() == [0]
    assert artifact.meta["parse"]["frozen"]["axes"].startswith("int32[1]:sha256:")


def test_values_are_part_of_the_identity(tmp_path):
    model = _reduce_sum(tmp_path / "m.onnx")
    plain, axis0, axis1 = parse_onnx(model), parse_onnx(model, {"axes": "0"}), parse_onnx(model, {"axes": "1"})
    assert len({plain.meta["input_hash"], axis0.meta["input_hash"], axis1.meta["input_hash"]}) == 3
    assert plain.meta["input_hash"] == plain.meta["source"]["sha256"]
    hashes = set()
    for values in ("0", "1"):
        out = tmp_path / f"{values}.trtir"
        proc = run_trtc("parse", model, "-o", out, "--freeze", f"axes={values}", "--json")
        assert proc.returncode == 0, proc.stderr
        hashes.add(json.loads(proc.stdout)["content_hash"])
    assert len(hashes) == 2


def test_cli_parse_then_run_without_the_frozen_input(tmp_path):
    out = tmp_path / "m.trtir"
    proc = run_trtc("parse", _reduce_sum(tmp_path / "m.onnx"), "-o", out, "--freeze", "axes=1")
    assert proc.returncode == 0, proc.stderr
    assert "frozen (now constants): axes" in proc.stdout
    shown = run_trtc("inspect", out).stdout
    assert "x: float32[2x3]" in shown and "axes" not in shown
    ran = run_trtc("run", out, "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"]["y"]["shape"] == [2]


def _user_error(proc) -> str:
    """The one stderr line of a user error (exit code 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtc: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("spec, message", [
    ("axis=1", "m.onnx: --freeze: no graph input named 'axis'; the inputs are: x, axes"),
    ("axes=one", "m.onnx: --freeze: 'axes': 'one' is not a number or true/false"),
    ("axes=0,1", "m.onnx: --freeze: 'axes' has shape 1 but the value has shape 2"),
    ("axes=1.5", "m.onnx: --freeze: 'axes': the values [1.5] are not all exactly INT64"),
    ("axes", "--freeze: expected NAME=VALUES, got 'axes'"),
    ("axes=missing.npy", "missing.npy: cannot read the value of --freeze axes"),
])
def test_cli_errors_are_one_line(tmp_path, spec, message):
    model, out = _reduce_sum(tmp_path / "m.onnx"), tmp_path / "m.trtir"
    line = _user_error(run_trtc("parse", model, "-o", out, "--freeze", spec, cwd=tmp_path))
    assert message in line
    assert not out.exists()


def test_freeze_refuses_a_parsed_artifact(tmp_path):
    out = tmp_path / "m.trtir"
    assert run_trtc("parse", _reduce_sum(tmp_path / "m.onnx"), "-o", out).returncode == 0
    line = _user_error(run_trtc("build", out, "--dry-run", "--freeze", "axes=1"))
    assert "--freeze applies to .onnx models" in line


def test_freezing_lets_tensorrt_build_it(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    model, plan = _reduce_sum(tmp_path / "m.onnx"), tmp_path / "m.plan"
    line = _user_error(run_trtc("build", model, "-o", plan, "--no-cache"))
    assert "the axes ('axes') must be a constant" in line
    proc = run_trtc("build", model, "-o", plan, "--no-cache", "--freeze", "axes=1")
    assert proc.returncode == 0, proc.stderr
    assert plan.exists()


def test_engine_cache_tells_frozen_values_apart(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    model, plan, cache = _reduce_sum(tmp_path / "m.onnx"), tmp_path / "m.plan", tmp_path / "cache"
    for values in ("0", "1"):
        proc = run_trtc("build", model, "-o", plan, "--cache-dir", cache, "--freeze", f"axes={values}", "--json")
        assert proc.returncode == 0, proc.stderr
        assert not json.loads(proc.stdout)["cached"], values


def test_compile_reparses_when_the_frozen_values_change(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    model, out = _reduce_sum(tmp_path / "m.onnx"), tmp_path / "out"

    def stages(values: str) -> dict:
        proc = run_trtc("compile", model, "-o", out, "--no-cache", "--freeze", f"axes={values}", "--json")
        assert proc.returncode == 0, proc.stderr
        return {name: s["reused"] for name, s in json.loads(proc.stdout)["stages"].items()}

    assert not any(stages("1").values())
    assert stages("1") == {"parse": True, "optimize": True, "build": True, "compare": False}
    assert stages("0") == {"parse": False, "optimize": False, "build": False, "compare": False}
