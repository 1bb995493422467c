"""The CLI end to end on real files: parse, run (input forms, outputs, latency), inspect, export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus import MODELS, REPO, run_trtc

sys.path.insert(0, str(REPO / "examples"))
from make_cnn import make_cnn  # noqa: E402


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cnn")
    onnx.save(make_cnn(), folder / "cnn.onnx")
    proc = run_trtc("parse", folder / "cnn.onnx", "-o", folder / "cnn.trtir")
    assert proc.returncode == 0, proc.stderr
    return folder


def test_run_with_file_inputs_and_outputs(cnn):
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(cnn / "x.npy", x)
    np.savez(cnn / "in.npz", image=x)
    results = []
    for spec in (str(cnn / "x.npy"), f"image={cnn / 'x.npy'}", str(cnn / "in.npz")):
        out = cnn / "out.npz"
        proc = run_trtc("run", cnn / "cnn.trtir", "--input", spec, "--output", out)
        assert proc.returncode == 0, proc.stderr
        assert "logits: float32[2, 10]" in proc.stdout
        with np.load(out) as data:
            results.append(data["logits"])
    assert all(np.array_equal(results[0], r) for r in results[1:])
    # The .onnx and the .trtir give the same answer.
    proc = run_trtc("run", cnn / "cnn.onnx", "--input", str(cnn / "x.npy"), "--output", cnn / "o2.npz")
    with np.load(cnn / "o2.npz") as data:
        np.testing.assert_allclose(data["logits"], results[0], rtol=1e-6, atol=1e-6)


def test_run_generated_inputs_json_and_latency(cnn):
    proc = run_trtc("run", cnn / "cnn.trtir", "--shape", "image=3x3x32x32", "--seed", "7", "--json",
                    "--warmup", "1", "--iterations", "5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "onnxruntime"
    assert report["inputs"]["image"]["shape"] == [3, 3, 32, 32]
    assert -1 <= report["inputs"]["image"]["min"] and report["inputs"]["image"]["max"] <= 1
    assert report["outputs"]["logits"]["shape"] == [3, 10] and report["outputs"]["logits"]["nan"] == 0
    latency = report["latency"]
    assert latency["iterations"] == 5 and latency["min_ms"] <= latency["median_ms"] <= latency["p99_ms"]
    again = json.loads(run_trtc("run", cnn / "cnn.trtir", "--shape", "image=3x3x32x32", "--seed", "7",
                                "--json").stdout)
    assert again["outputs"] == report["outputs"]  # seeded: same data, same outputs


@pytest.mark.skipif(not MODELS.is_dir(), reason=f"../shared/models missing at {MODELS}")
def test_token_ids_stay_in_range(tmp_path):
    """Generated token ids index the embedding table; --range overrides."""
    model = MODELS / "gpt2-ts-op17.onnx"
    proc = run_trtc("run", model, "--shape", "input_ids=2x16", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ids = report["inputs"]["input_ids"]
    assert ids["min"] >= 0 and ids["max"] > 2  # spread over the vocabulary, not 0/1
    proc = run_trtc("run", model, "--shape", "input_ids=2x16", "--range", "input_ids=5:6", "--json")
    ids = json.loads(proc.stdout)["inputs"]["input_ids"]
    assert ids["min"] == ids["max"] == 5


def test_inspect_text_json_and_graph(cnn):
    proc = run_trtc("inspect", cnn / "cnn.trtir")
    assert proc.returncode == 0, proc.stderr
    assert "image: float32[batchx3x32x32]" in proc.stdout and "stage: parse" in proc.stdout
    info = json.loads(run_trtc("inspect", cnn / "cnn.trtir", "--json").stdout)
    assert info["ops"]["Conv"] == 2 and info["nodes"] == sum(info["ops"].values())
    assert info["parameters"] == sum(int(np.prod(t.dims)) for t in make_cnn().graph.initializer)
    assert info["metadata"]["content_hash"] and info["opsets"]["ai.onnx"] == 18
    graph = run_trtc("inspect", cnn / "cnn.trtir", "--graph").stdout.splitlines()
    assert len(graph) == info["nodes"]
    assert graph[0].startswith("conv0 = Conv(image, conv0.weight, conv0.bias) {")
    assert graph[0].endswith(": float32[batch,16,32,32]")
    # .onnx files are inspected too (parsed on the fly)
    assert json.loads(run_trtc("inspect", cnn / "cnn.onnx", "--json").stdout)["parsed"]["nodes"] == info["nodes"]


def test_export_onnx_round_trip(cnn):
    proc = run_trtc("export", "onnx", cnn / "cnn.trtir", "-o", cnn / "back.onnx")
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(str(cnn / "back.onnx"), full_check=True)
    a = json.loads(run_trtc("run", cnn / "back.onnx", "--json", "--shape", "image=2x3x32x32").stdout)
    b = json.loads(run_trtc("run", cnn / "cnn.trtir", "--json", "--shape", "image=2x3x32x32").stdout)
    assert a["outputs"] == b["outputs"]
