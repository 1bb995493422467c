"""`trtc build` with TensorRT-RTX (real engines, no GPU): profiles, precision, sidecar, cache,
and every user error as one line with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus import run_trtc  # noqa: E402

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_build_fp32_with_profile_sidecar_and_cache(mlp, tmp_path):
    cache = tmp_path / "cache"
    plan = tmp_path / "mlp.plan"
    args = ["build", mlp / "mlp.onnx", "-o", plan, "--shapes", "x:1x16,4x16,8x16", "--cache-dir", cache]
    first = json.loads(_ok(run_trtc(*args, "--json")).stdout)
    assert plan.stat().st_size > 1000 and first["cached"] is False
    side = json.loads(Path(f"{plan}.json").read_text())
    assert side["backend"] == "tensorrt-rtx" and side["inputs"] == [{"name": "x", "dtype": "float", "shape": [-1, 16],
                                                                 "dim_names": ["batch", None]}]
    assert side["outputs"] == [{"name": "y", "dtype": "float", "shape": [-1, 4], "dim_names": ["batch", None]}]
    assert side["profiles"] == [{"x": [[1, 16], [4, 16], [8, 16]]}] and side["precision"] is None
    assert side["ir_content_hash"] and side["network_layers"] >= 4
    second = json.loads(_ok(run_trtc(*args, "--json")).stdout)
    assert second["cached"] is True  # same IR, options and backend: no rebuild
    third = json.loads(_ok(run_trtc(*args, "--json", "--no-cache")).stdout)
    assert third["cached"] is False
    text = _ok(run_trtc("inspect", plan)).stdout
    assert "x: float[?x16]" in text and "profile 0: x 1x16..8x16 (opt 4x16)" in text


def test_build_fp16_runs_the_precision_pass(mlp, tmp_path):
    plan = tmp_path / "mlp16.plan"
    proc = _ok(run_trtc("build", mlp / "mlp.onnx", "-o", plan, "--shapes", "x:1x16,4x16,8x16", "--fp16",
                        "--no-cache", "--target", "sm86,sm89"))
    assert "fp16" in proc.stdout and "targets sm86,sm89" in proc.stdout
    side = json.loads(Path(f"{plan}.json").read_text())
    assert side["precision"]["target"] == "fp16" and side["precision"]["flop_share"] > 0.9
    assert side["targets"] == ["sm86", "sm89"]
    assert side["outputs"][0]["dtype"] == "float"  # I/O types kept


def test_layer_names_map_back_to_onnx_nodes(mlp):
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.network import lower

    model = parse_onnx(mlp / "mlp.onnx").model
    lowered = lower(model, load_backend("tensorrt-rtx"))
    names = {lowered.network.get_layer(i).name.split("/")[0] for i in range(lowered.network.num_layers)}
    assert {"fc1", "relu", "fc2", "tanh"} <= names
    metadata = {lowered.network.get_layer(i).metadata for i in range(lowered.network.num_layers)}
    assert "onnx:Relu:relu" in metadata


@pytest.mark.parametrize("args, needles", [
    (["--shapes", "z:1x16,4x16,8x16"], ["no input named 'z'", "inputs: x", "no range for the dynamic input(s) 'x'"]),
    ([], ["no range for the dynamic input(s) 'x'", "e.g. --shapes x:1x16,4x16,8x16"]),
    (["--shapes", "x:8x16,4x16,1x16"], ["MIN <= OPT <= MAX"]),
    (["--shapes", "x:1x16,4x16"], ["expected NAME:MIN,OPT,MAX"]),
    (["--shapes", "x:1x8,4x8,8x8"], ["dim 1 is fixed to 16"]),
    (["--shapes", "x:1x16,4x16,8x16", "--timing-cache", "t.cache"], ["TensorRT-RTX has no timing cache"]),
    (["--shapes", "x:1x16,4x16,8x16", "--target", "sm90"], ["unknown target(s) sm90"]),
])
def test_build_user_errors(mlp, tmp_path, args, needles):
    plan = tmp_path / "bad.plan"
    proc = run_trtc("build", mlp / "mlp.onnx", "-o", plan, "--no-cache", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not plan.exists()


def test_dry_run_lists_every_unsupported_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="ok"),
         helper.make_node("ReduceSum", ["a", "axes"], ["b"], name="sum_dynamic_axes"),
         helper.make_node("StringNormalizer", ["s"], ["t"], name="strings")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("t", TensorProto.STRING, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    proc = run_trtc("build", tmp_path / "m.onnx", "--dry-run", "--json")
    assert proc.returncode == 1  # a failed check, not a user error
    report = json.loads(proc.stdout)
    bad = {p["node"]: p["reason"] for p in report["unsupported"]}
    assert set(bad) == {"sum_dynamic_axes", "strings"}, bad
    same = json.loads(run_trtc("inspect", tmp_path / "m.onnx", "--support", "--json").stdout)
    assert same["unsupported"] == report["unsupported"]
