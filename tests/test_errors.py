"""Bad input: one line on stderr naming the file/node/tensor and what to do, exit code 2,
no traceback, no artifact left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from corpus import run_trtc


def _assert_user_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trtc: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _parse_fails(model: Path, tmp_path: Path, *needles: str) -> str:
    out = tmp_path / "out.trtir"
    line = _assert_user_error(run_trtc("parse", model, "-o", out), *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.trtir")], "temp file left behind"
    return line


def _add_model(opset: int = 17, domain_nodes=()) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="add")]
    nodes += list(domain_nodes)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    _parse_fails(bad, tmp_path, str(bad), "not a valid ONNX model")


def test_truncated_protobuf(tmp_path):
    model = _add_model()
    data = model.SerializeToString()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    _parse_fails(bad, tmp_path, str(bad), "truncated")


def test_unknown_op_domains_are_all_listed(tmp_path):
    model = _add_model(domain_nodes=[
        helper.make_node("Foo", ["y"], ["z"], name="foo1", domain="acme.custom"),
        helper.make_node("Bar", ["z"], ["w"], name="bar2", domain="acme.custom"),
    ])
    model.opset_import.append(helper.make_opsetid("acme.custom", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    line = _parse_fails(path, tmp_path, "2 unsupported node(s)", "'foo1'", "'bar2'", "acme.custom")
    assert "op Foo" in line and "op Bar" in line


def test_opset_newer_than_known(tmp_path):
    model = _add_model(opset=onnx.defs.onnx_opset_version() + 5)
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    _parse_fails(path, tmp_path, f"opset {onnx.defs.onnx_opset_version() + 5}", "upgrade onnx")


def _external_model(tmp_path: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weight])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = model_dir / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_missing_external_data_file(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    _parse_fails(path, tmp_path, str(path), "'w'", "'weights.bin' is missing")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "link.bin"])
def test_external_data_escaping_the_model_folder(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 24)
    path = _external_model(tmp_path, location)
    if location == "link.bin":
        os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    _parse_fails(path, tmp_path, str(path), "'w'", "outside the model's folder" if location == "link.bin"
                 else "not a plain relative path")


def test_external_data_inside_folder_is_read(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    out = tmp_path / "ok.trtir"
    proc = run_trtc("parse", path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    run = run_trtc("run", out, "--json")
    assert run.returncode == 0, run.stderr


def test_run_input_name_typo(two_inputs, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.int64))
    _assert_user_error(run_trtc("run", two_inputs / "two.onnx", "--input", f"idz={tmp_path / 'x.npy'}"),
                       "unknown input name(s) 'idz'", "ids, bias")


def test_run_wrong_dtype(two_inputs, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    _assert_user_error(run_trtc("run", two_inputs / "two.onnx", "--input", f"ids={tmp_path / 'x.npy'}",
                                "--generate", "bias"),
                       "'ids'", "dtype float32", "expects int64")


def test_run_wrong_rank(two_inputs, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 1), np.int64))
    _assert_user_error(run_trtc("run", two_inputs / "two.onnx", "--input", f"ids={tmp_path / 'x.npy'}",
                                "--generate", "bias"),
                       "'ids'", "rank 3", "expects rank 2")


def test_run_wrong_static_dim(two_inputs, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 5), np.int64))
    _assert_user_error(run_trtc("run", two_inputs / "two.onnx", "--input", f"ids={tmp_path / 'x.npy'}",
                                "--generate", "bias"),
                       "'ids' dim 1 is 5", "fixes it to 4")


def test_run_unknown_range_name(two_inputs):
    _assert_user_error(run_trtc("run", two_inputs / "two.onnx", "--range", "idz=0:5"), "no input named 'idz'")


def test_run_missing_file():
    _assert_user_error(run_trtc("run", "/nonexistent/model.onnx"), "/nonexistent/model.onnx", "not found")


def test_fp16_of_a_sequence_input_is_a_clear_error(tmp_path):
    seq = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="copy")], "g", [seq],
                              [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    _assert_user_error(run_trtc("build", path, "--fp16", "-o", tmp_path / "seq.plan"),
                       "input(s) 'x' are not tensors", "takes tensors only")
