"""`trtc inspect` on real files: an .onnx as the file is and as parsing makes it, precision decisions
(an IR's and an engine's), the flags an engine refuses, and an engine without its sidecar."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from corpus import run_trtc

NO_FP32 = "no node kept in fp32: every float node runs in fp16"
GPU_NEEDED = "inputs, outputs and profiles need a GPU: deserializing the engine needs a CUDA device"


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = (), **save) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests",
                              producer_version="1.0")
    onnx.save(model, path, **save)
    return path


def _weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def const_model(path: Path, **save) -> Path:
    """x[batch, 4] -> Add(Constant) -> Mul(initializer w) -> Relu -> y: one Constant node, one 16-byte weight."""
    value = numpy_helper.from_array(np.ones(4, np.float32))
    return _save(path, [helper.make_node("Constant", [], ["c"], name="c", value=value),
                        helper.make_node("Add", ["x", "c"], ["a"], name="add"),
                        helper.make_node("Mul", ["a", "w"], ["m"], name="mul"),
                        helper.make_node("Relu", ["m"], ["y"], name="relu")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [_weight("w", (4,))], **save)


def matmul_model(path: Path, activation: str) -> Path:
    """x[batch, 16] @ w[16, 8] -> Relu (fp16 keeps nothing in fp32) or Softmax (kept in fp32)."""
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                        helper.make_node(activation, ["h"], ["y"], name="act")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [_weight("w", (16, 8))])


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _error(proc, code: int = 2) -> str:
    """The one stderr line of a refused command (no traceback)."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtc: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- .onnx: the file, then the parse


def test_onnx_shows_the_file_then_what_parsing_makes_of_it(tmp_path):
    model = const_model(tmp_path / "m.onnx")
    text = _ok(run_trtc("inspect", model))
    file_part, heading, parsed_part = text.partition("after parsing (trtc parse):\n")
    assert heading, text
    for line in (f"file: {model}", "ir_version: ", "opsets: ai.onnx 17", "producer: tests 1.0",
                 "  x: float32[batchx4]", "nodes: 4 (1 Constant)", "ops: Add 1, Constant 1, Mul 1, Relu 1",
                 "initializers: 1 (16 bytes), weights inside the file"):
        assert line in file_part, (line, file_part)
    # Parsing lifts the Constant into an initializer and upgrades the opset; it says so, indented.
    for line in ("  opsets: ai.onnx 18", "  nodes: 3", "  opset upgraded: 17 -> 18",
                 "  canonicalized: lift_constants 1", "    x: float32[batchx4]", "  stage: parse\n"):
        assert line in parsed_part, (line, parsed_part)

    info = json.loads(_ok(run_trtc("inspect", model, "--json")))
    assert set(info) == {"file", "parsed"}
    file, parsed = info["file"], info["parsed"]
    assert file["ir_version"] == onnx.load(model).ir_version and file["opsets"] == {"ai.onnx": 17}
    assert file["producer"] == {"name": "tests", "version": "1.0"}
    assert (file["nodes"], file["constant_nodes"], parsed["nodes"]) == (4, 1, 3)
    assert file["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert (file["initializers"], file["initializer_bytes"], file["external_data"]) == (1, 16, None)
    assert parsed["opsets"] == {"ai.onnx": 18} and parsed["metadata"]["parse"]["source_opset"] == 17


def test_onnx_with_external_weights_is_read_without_them(tmp_path):
    model = const_model(tmp_path / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    text = _ok(run_trtc("inspect", model))
    assert "initializers: 1 (16 bytes), external data: 1 tensors in m.weights" in text
    info = json.loads(_ok(run_trtc("inspect", model, "--json")))["file"]
    assert info["external_data"] == {"tensors": 1, "files": ["m.weights"]} and info["initializer_bytes"] == 16


def test_onnx_that_parsing_refuses_still_shows_the_file(tmp_path):
    model = _save(tmp_path / "odd.onnx", [helper.make_node("Foo", ["x"], ["y"], name="weird", domain="my.dom")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model_proto = onnx.load(model)
    model_proto.opset_import.append(helper.make_opsetid("my.dom", 1))
    onnx.save(model_proto, model)
    proc = run_trtc("inspect", model)
    assert "unknown op domain 'my.dom'" in _error(proc)
    assert "ops: my.dom::Foo 1" in proc.stdout and "after parsing" not in proc.stdout


def test_trtir_summary_is_unchanged(tmp_path):
    model = const_model(tmp_path / "m.onnx")
    _ok(run_trtc("parse", model, "-o", tmp_path / "m.trtir"))
    text = _ok(run_trtc("inspect", tmp_path / "m.trtir"))
    assert text.startswith(f"artifact: {tmp_path / 'm.trtir'}\nstage: parse (trtc ") and "after parsing" not in text
    info = json.loads(_ok(run_trtc("inspect", tmp_path / "m.trtir", "--json")))
    assert info["nodes"] == 3 and "file" not in info


# ---------------------------------------------------------------- --precision of an IR


def test_precision_of_an_all_fp16_ir_is_one_line_not_an_empty_table(tmp_path):
    model = matmul_model(tmp_path / "m.onnx", "Relu")
    _ok(run_trtc("optimize", model, "-o", tmp_path / "m16.trtir", "--fp16"))
    text = _ok(run_trtc("inspect", tmp_path / "m16.trtir", "--precision"))
    assert text.splitlines()[-1] == NO_FP32 and "reason" not in text
    assert text.startswith("fp16: 2 nodes, 100.0% of FLOPs; 0 nodes kept fp32")
    _ok(run_trtc("optimize", matmul_model(tmp_path / "s.onnx", "Softmax"), "-o", tmp_path / "s16.trtir", "--fp16"))
    table = _ok(run_trtc("inspect", tmp_path / "s16.trtir", "--precision"))
    assert NO_FP32 not in table and "reason" in table and "act" in table


def test_precision_of_an_ir_without_decisions_is_refused(tmp_path):
    _ok(run_trtc("parse", matmul_model(tmp_path / "m.onnx", "Relu"), "-o", tmp_path / "m.trtir"))
    line = _error(run_trtc("inspect", tmp_path / "m.trtir", "--precision"))
    assert "the artifact has no precision decisions; create them with `trtc optimize --fp16`" in line


# ---------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Path]:
    """Real TensorRT-RTX engines: fp32 for two targets, fp16 with a Softmax kept fp32, all-fp16."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    folder = tmp_path_factory.mktemp("plans")
    relu, softmax = matmul_model(folder / "relu.onnx", "Relu"), matmul_model(folder / "soft.onnx", "Softmax")
    builds = {"fp32": (relu, "--target", "sm86,sm89"), "fp16": (relu, "--fp16"), "island": (softmax, "--fp16")}
    out = {}
    for name, (model, *flags) in builds.items():
        out[name] = folder / f"{name}.plan"
        _ok(run_trtc("build", model, "-o", out[name], "--shapes", "x:1x16,2x16,4x16", "--no-cache",
                     "--cache-dir", folder / "cache", *flags))
    return out


def _source(plan: Path) -> str:
    return json.loads(Path(f"{plan}.json").read_text())["source"]["path"]


def test_engine_precision_from_the_sidecar(plans):
    text = _ok(run_trtc("inspect", plans["island"], "--precision"))
    lines = text.splitlines()
    assert lines[0].startswith("fp16: ") and lines[0].endswith("of FLOPs, 1 nodes kept fp32")
    assert lines[1].startswith("  predicted y: max abs error ")
    assert "the sidecar keeps counts only; the fp32 nodes and why: trtc inspect MODEL.opt.trtir --precision" in text
    assert f"made from {_source(plans['island'])}" in text
    info = json.loads(_ok(run_trtc("inspect", plans["island"], "--precision", "--json")))
    assert info["target"] == "fp16" and info["fp32_nodes"] == 1
    assert info["fp32_node_list"]["command"] == "trtc inspect MODEL.opt.trtir --precision"
    assert info["fp32_node_list"]["ir_content_hash"] == json.loads(Path(f"{plans['island']}.json").read_text())[
        "ir_content_hash"]
    # Nothing kept in fp32: one line, no pointer to a list.
    text = _ok(run_trtc("inspect", plans["fp16"], "--precision"))
    assert text.splitlines()[-1] == NO_FP32 and "MODEL.opt.trtir" not in text


def test_engine_precision_of_an_fp32_engine_is_refused(plans):
    line = _error(run_trtc("inspect", plans["fp32"], "--precision"))
    assert "the engine has no precision decisions: it was built in fp32" in line


@pytest.mark.parametrize("flag", ["--support", "--graph"])
def test_engine_refuses_model_flags(plans, flag):
    line = _error(run_trtc("inspect", plans["fp32"], flag))
    assert f"{flag} applies to the model an engine is built from, not to the engine" in line
    assert f"use it on the .onnx or .trtir it was built from: trtc inspect {_source(plans['fp32'])} {flag}" in line


def test_engine_with_sidecar_summary(plans):
    text = _ok(run_trtc("inspect", plans["fp32"]))
    assert "targets sm86,sm89" in text and "x: float[?x16]" in text and "profile 0: x 1x16..4x16 (opt 2x16)" in text
    assert f"source: {_source(plans['fp32'])}" in text


@pytest.fixture
def bare(plans, tmp_path) -> Path:
    """The fp32 engine as trtexec would leave it: no sidecar beside it."""
    return Path(shutil.copy(plans["fp32"], tmp_path / "trtexec.plan"))


def test_engine_without_sidecar_shows_what_needs_no_gpu(bare):
    import tensorrt_rtx

    size = bare.stat().st_size
    text = _ok(run_trtc("inspect", bare))
    lines = text.splitlines()
    assert lines[0] == f"engine: {bare} (no sidecar trtexec.plan.json: not built by trtc, or copied without it)"
    assert lines[1].startswith(f"size: {size:,} bytes (")
    assert lines[2] == f"sha256: {hashlib.sha256(bare.read_bytes()).hexdigest()}"
    version = tensorrt_rtx.__version__
    assert lines[3] == f"header: TensorRT-RTX plan ('vtrt'), built by TensorRT-RTX {version} (installed: {version})"
    assert lines[4] == "targets: sm86, sm89"
    assert lines[5].startswith("sections: ENGN ") and ", WGHT " in lines[5]
    assert lines[-1] == GPU_NEEDED
    info = json.loads(_ok(run_trtc("inspect", bare, "--json")))
    assert info["sidecar"] is None and info["file_bytes"] == size and info["tag"] == "vtrt"
    header = info["header"]
    assert header["version"] == version and header["recorded_bytes"] == size
    assert header["targets"] == ["sm86", "sm89"] and not header["default_targets_flag"]
    engn, wght = header["sections"]
    assert (engn["tag"], wght["tag"]) == ("ENGN", "WGHT") and wght["offset"] + wght["bytes"] <= size
    assert wght["bytes"] >= 16 * 8 * 4  # the weights section holds at least the one fp32 weight
    assert info["needs_gpu"] == {"what": ["inputs", "outputs", "profiles"],
                                 "why": "deserializing the engine needs a CUDA device"}


def test_engine_without_sidecar_by_its_tag_and_default_targets(plans, tmp_path):
    renamed = Path(shutil.copy(plans["fp16"], tmp_path / "model.trt"))  # no .plan suffix: found by its tag
    text = _ok(run_trtc("inspect", renamed))
    assert ("targets: sm80, sm86, sm89, sm120, sm121 (and flag 0x40, seen in plans built for the default targets)"
            in text)
    assert GPU_NEEDED in text


def test_engine_without_sidecar_damaged_or_foreign(bare, tmp_path):
    truncated = tmp_path / "cut.plan"
    truncated.write_bytes(bare.read_bytes()[:1000])
    text = _ok(run_trtc("inspect", truncated))
    assert f"size mismatch: the header records {bare.stat().st_size:,} bytes, the file has 1,000" in text
    assert "sections:" not in text
    foreign = tmp_path / "other.engine"
    foreign.write_bytes(b"ftrt" + bytes(200))
    text = _ok(run_trtc("inspect", foreign))
    assert "header: starts with 'ftrt', not a TensorRT-RTX plan ('vtrt')" in text and GPU_NEEDED in text


@pytest.mark.parametrize("flag, needle", [
    ("--precision", "an engine without a trtc sidecar records no precision decisions"),
    ("--support", "--support applies to the model an engine is built from"),
    ("--graph", "use it on the .onnx or .trtir it was built from: trtc inspect MODEL.trtir --graph"),
])
def test_engine_without_sidecar_refuses_flags(bare, flag, needle):
    assert needle in _error(run_trtc("inspect", bare, flag))


def test_missing_engine(tmp_path):
    assert "engine file not found" in _error(run_trtc("inspect", tmp_path / "none.plan"))
