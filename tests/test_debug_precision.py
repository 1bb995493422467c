"""`trtc debug precision` (issue 14 part 3): per output, the nodes whose fp16 adds the most error, measured
on the switchable simulation, named as in the source ONNX, with the observed ranges; the first node whose
own output goes wrong; typed artifacts re-traced from their source."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_accuracy_search import detector

from trtc.debug import debug_precision, debug_text, source_names
from trtc.errors import TrtcError
from trtc.precision.contribution import Measured, best_first
from trtc.precision.rules import PrecisionOptions

from corpus import one_error_line, trtc_in_process


@pytest.fixture()
def toy(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32))
    return detector(tmp_path / "det.onnx"), tmp_path / "x.npz"


def cancellation(path):
    """y = 300 x - 299.9 x: each product is rounded in fp16 (|x| <= 300, an ulp of 0.25), their small difference
    is then mostly rounding error: the Sub is the first node whose output goes wrong."""
    nodes = [helper.make_node("Mul", ["x", "a"], ["p"], name="big"),
             helper.make_node("Mul", ["x", "b"], ["q"], name="almost"),
             helper.make_node("Sub", ["p", "q"], ["d"], name="cancel"),
             helper.make_node("Tanh", ["d"], ["y"], name="squash")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
                              [numpy_helper.from_array(np.array(300.0, np.float32), "a"),
                               numpy_helper.from_array(np.array(299.9, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_contributors_of_a_model_typed_as_optimize_would(toy):
    model, npz = toy
    report = debug_precision(model, PrecisionOptions(), calib=(str(npz),), top=4, trials=40)
    assert report["target"] == "fp16" and report["typed"] is False and report["samples"] == 1
    prob = report["outputs"]["prob"]
    assert prob["predicted"]["max_rel_error"] == pytest.approx(0.002226, abs=1e-6)
    contributors = prob["contributors"]
    assert len(contributors) == 4
    assert [c["share"] for c in contributors] == sorted((c["share"] for c in contributors), reverse=True)
    for c in contributors:
        assert c["source"] == c["node"]  # the detector's names survive the passes
        assert c["compute"] == "low" and c["reason"] is None and 0 < c["share"] <= 1
        assert c["alone"]["cosine"] > prob["predicted"]["cosine"]
        assert c["ranges"]["outputs"] and all(v > 0 for v in c["ranges"]["outputs"].values())
    conv0 = next((c for c in contributors if c["node"] == "conv0"), None)
    if conv0:  # the observed range is the fp32 run's
        assert conv0["ranges"]["inputs"] == {"x": pytest.approx(float(np.abs(np.load(npz)["x"]).max()))}
        assert set(conv0["ranges"]["weights"]) == {"w0", "b0"}
    assert report["trials"] <= 40 + 4 + 1
    text = debug_text(report)
    assert "prob: predicted cosine " in text and contributors[0]["node"] in text


def test_first_bad_layer(tmp_path):
    report = debug_precision(cancellation(tmp_path / "c.onnx"), PrecisionOptions(), top=2)
    first = report["first_bad"]
    assert first["node"] == "cancel" and first["op"] == "Sub" and first["source"] == "cancel"
    assert first["output_error"] > 1e-2 and first["compute"] == "low"
    assert first["ranges"]["inputs"]["p"] > 100  # what fp16 rounded before the cancellation
    assert "first node whose output is off by more than 0.01 of its range: cancel (Sub" in debug_text(report)


class _Additive:
    """Trials of made-up, additive contributions."""

    def __init__(self, energy):
        self.energy, self.count = energy, 0

    def measure(self, nodes):
        self.count += 1
        return Measured(tuple(nodes), {"y": sum(self.energy[n] for n in nodes)}, {})


def test_best_first_finds_the_largest_without_measuring_every_node():
    energy = {f"n{i}": 1e-4 for i in range(128)} | {"n17": 5.0, "n90": 3.0, "n91": 2.0}
    trials = _Additive(energy)
    whole = trials.measure(list(energy))
    singles, runs = best_first(list(energy), trials, whole, top=3, budget=64)
    ranked = sorted(singles, key=lambda m: -m.energy["y"])
    assert [m.nodes[0] for m in ranked[:3]] == ["n17", "n90", "n91"]
    assert trials.count < 64 and runs  # the small ones stay in runs, unmeasured one by one
    assert all(m.energy["y"] < 2.0 for m in runs)


def test_best_first_keeps_to_its_budget():
    energy = {f"n{i}": float(i) for i in range(100)}
    trials = _Additive(energy)
    singles, runs = best_first(list(energy), trials, trials.measure(list(energy)), top=10, budget=12)
    assert trials.count <= 12 + 1 and runs and sum(len(r.nodes) for r in runs) + len(singles) <= 100


def test_source_names_follow_outputs_where_names_changed(tmp_path):
    path = cancellation(tmp_path / "c.onnx")
    proto = onnx.load(path)
    proto.graph.node[3].name = ""  # an unnamed source node
    onnx.save(proto, path)
    model = ir.serde.deserialize_model(proto)
    nodes = list(model.graph)
    nodes[0].name, nodes[3].name = "renamed_by_a_pass", "squash_0"
    names = source_names(model, path)
    assert names == {"renamed_by_a_pass": "big", "almost": "almost", "cancel": "cancel", "squash_0": "Tanh #3"}


def test_typed_artifact_is_retraced_from_its_source(toy, tmp_path, capsys):
    model, npz = toy
    source = tmp_path / "src.onnx"
    shutil.copy(model, source)
    art = tmp_path / "d.trtir"
    rc, _, err = trtc_in_process(capsys, "optimize", source, "-o", art, "--fp16", "--calib", npz,
                                 "--accuracy", "max-error=0.001")
    assert rc == 0, err
    recorded = json.loads(trtc_in_process(capsys, "inspect", art, "--precision", "--json")[1])
    rc, out, err = trtc_in_process(capsys, "debug", "precision", art, "--top", "2", "--trials", "8", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["typed"] is True and report["retraced_as_recorded"] is True
    predicted, want = report["outputs"]["prob"]["predicted"], recorded["predicted"]["prob"]
    assert {k: predicted[k] for k in want} == want  # the artifact's own prediction, re-traced
    for moved in recorded["search"]["moved"]:
        assert report["fp32_nodes"][moved["node"]]["reason"] == moved["reason"]
    one_error_line(trtc_in_process(capsys, "debug", "precision", art, "--fp16"),
                   "the artifact is typed for fp16 already: its recorded options are used")
    source.write_bytes(source.read_bytes() + b"\n")
    one_error_line(trtc_in_process(capsys, "debug", "precision", art), f"its source {str(source)!r} is changed",
                   "debug the .onnx with the options the artifact was optimized with")


def test_cli_text(toy, capsys):
    model, npz = toy
    rc, out, err = trtc_in_process(capsys, "debug", "precision", model, "--calib", npz, "--top", "3",
                                   "--trials", "12")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{model}: fp16 with 17 nodes low, 0 fp32")
    assert lines[2].startswith("prob: predicted cosine ") and "observed max |x|" in lines[3]
    with pytest.raises(TrtcError) as refused:
        debug_precision(model, PrecisionOptions(quantize="int8"))
    assert refused.value.message == "the precision debugger explains fp16/bf16 typing, not quantized graphs"
