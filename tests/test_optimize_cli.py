"""The optimize stage: pass selection, verification catching a wrong rewrite, report and dumps."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import CheckFailed, TrtcError
from trtc.frontend import parse_onnx
from trtc.passes import PASSES, PassContext
from trtc.passes.pipeline import optimize, select_passes
from trtc.passes.registry import PassInfo

from corpus import run_trtc


@pytest.fixture()
def small_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"], name="id"), helper.make_node("Add", ["i", "b"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "b")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _perturb_add(model, ctx: PassContext) -> dict[str, int]:
    """A deliberately wrong pass: changes the Add's constant."""
    for value in model.graph.initializers.values():
        arr = value.const_value.numpy()
        if arr.dtype == np.float32 and arr.size and arr.max() < 100:
            import onnx_ir as ir

            value.const_value = ir.tensor(arr + 1.0)
            return {"perturbed": 1}
    return {}


def test_verify_names_the_pass_that_drifts(small_model):
    model = parse_onnx(small_model).model
    bad = PassInfo("perturb", _perturb_add, "wrong on purpose", 1, False)
    feeds = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(CheckFailed, match="pass 'perturb' changed output 'y'"):
        optimize(model, passes=[bad], verify_feeds=feeds)


def test_unknown_pass_names_are_user_errors():
    with pytest.raises(TrtcError, match="unknown pass 'fold-everything'"):
        select_passes(["fold-everything"])
    with pytest.raises(TrtcError, match="unknown pass 'nope'"):
        select_passes(None, ["nope"])
    assert [p.name for p in select_passes(None, ["infer-shapes"])] == [
        p.name for p in PASSES.values() if p.default and p.name != "infer-shapes"]


def test_cli_report_dump_and_metadata(small_model, tmp_path):
    out, report = tmp_path / "o.trtir", tmp_path / "r.json"
    first = next(iter(PASSES))
    proc = run_trtc("optimize", small_model, "-o", out, "--verify", "--report", report, "--dump-after", first)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["verified"] and data["nodes_before"] == 2 and set(data["passes"]) == {
        p.name for p in PASSES.values() if p.default}
    meta = json.loads(run_trtc("inspect", out, "--json").stdout)["metadata"]
    assert meta["stage"] == "optimize" and meta["optimize"]["nodes_after"] == data["nodes_after"]
    assert meta["input_hash"] and meta["source"]["path"].endswith("m.onnx")


def test_cli_list_passes_and_bad_pass():
    proc = run_trtc("optimize", "--list-passes")
    assert proc.returncode == 0 and all(name in proc.stdout for name in PASSES)
    proc = run_trtc("optimize", "x.onnx", "-o", "y.trtir", "--passes", "bogus")
    assert proc.returncode == 2 and "unknown pass 'bogus'" in proc.stderr
