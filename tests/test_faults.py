"""Faults (issue 15): a build killed at any moment then rerun succeeds and leaves no temporary file;
the engine cache never serves a truncated or mismatched plan (rebuilt, and said); concurrent builds
of one engine into one cache build it once; a full disk while writing is one line with nothing
partial left; a plan whose bytes differ from its sidecar's record is not deserialized."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from corpus import REPO, run_trtc

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")


@pytest.fixture
def model(tmp_path) -> Path:
    """x[batch, 64] -> Gemm -> Relu -> Gemm -> y[batch, 8]: builds in about a second."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(rng.standard_normal((256, 64)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b1"),
         numpy_helper.from_array(rng.standard_normal((8, 256)).astype(np.float32), "w2"),
         numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2")])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


SHAPES = ("--shapes", "x:1x64,4x64,8x64")


def build(model: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trtc", "build", str(model), "-o", str(out), *SHAPES,
                             "--cache-dir", str(cache), "--json", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def temporaries(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.suffix == ".tmp")


def test_a_truncated_cache_entry_is_rebuilt_and_said(model, tmp_path):
    cache = tmp_path / "cache"
    first = run_trtc("build", model, "-o", tmp_path / "a.plan", *SHAPES, "--cache-dir", cache, "--json")
    assert first.returncode == 0 and json.loads(first.stdout)["cached"] is False, first.stderr
    (entry,) = cache.glob("*.plan")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    second = run_trtc("build", model, "-o", tmp_path / "b.plan", *SHAPES, "--cache-dir", cache, "--json")
    assert second.returncode == 0 and json.loads(second.stdout)["cached"] is False
    assert f"engine cache entry {entry.name} does not match its record" in second.stderr
    side = json.loads((tmp_path / "b.plan.json").read_text())
    assert (tmp_path / "b.plan").stat().st_size == side["plan_bytes"] == entry.stat().st_size
    third = run_trtc("build", model, "-o", tmp_path / "c.plan", *SHAPES, "--cache-dir", cache, "--json")
    assert json.loads(third.stdout)["cached"] is True and "does not match" not in third.stderr


def test_four_concurrent_builds_share_one_engine(model, tmp_path):
    cache = tmp_path / "cache"
    procs = [build(model, tmp_path / f"out{i}.plan", cache) for i in range(4)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    cached = sorted(json.loads(out)["cached"] for _, out, _ in results)
    assert cached == [False, True, True, True]  # one build; the others waited for it and reused it
    plans = {(tmp_path / f"out{i}.plan").read_bytes() for i in range(4)}
    assert len(plans) == 1 and len(list(cache.glob("*.plan"))) == 1


@pytest.mark.slow
def test_killed_at_any_moment_then_rerun_succeeds(model, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out.plan"
    for delay in (0.3, 1.0, 2.0, 3.0):
        proc = build(model, out, cache, "--no-cache") if delay == 3.0 else build(model, out, cache)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for leftover in (out, Path(f"{out}.json")):  # either a whole old file or none
            assert not leftover.exists() or leftover.stat().st_size > 0
        again = run_trtc("build", model, "-o", out, *SHAPES, "--cache-dir", cache, "--json")
        assert again.returncode == 0, again.stderr
        assert temporaries(tmp_path, cache) == [], f"after a kill at {delay}s"
        side = json.loads(Path(f"{out}.json").read_text())
        assert out.stat().st_size == side["plan_bytes"]


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as a full disk fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_does_not_fit_is_one_line_and_leaves_nothing(model, tmp_path):
    out = tmp_path / "mlp.trtir"
    proc = subprocess.run([sys.executable, "-m", "trtc", "parse", str(model), "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, preexec_fn=_file_size_limit(16384), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{out}: no space to write it" in proc.stderr and "nothing was written" in proc.stderr
    assert not out.exists() and temporaries(tmp_path) == []


def test_a_plan_whose_bytes_differ_from_its_sidecar_is_not_deserialized(model, tmp_path):
    plan = tmp_path / "mlp.plan"
    assert run_trtc("build", model, "-o", plan, *SHAPES, "--no-cache").returncode == 0
    side = json.loads(Path(f"{plan}.json").read_text())
    assert len(side["plan_sha256"]) == 64
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    proc = run_trtc("run", plan)
    assert proc.returncode == 2 and "the engine's bytes differ from those its sidecar records" in proc.stderr
    assert "--trust-plan" in proc.stderr
    del side["plan_sha256"]  # a sidecar of an older trtc: no record, no deserialization either
    Path(f"{plan}.json").write_text(json.dumps(side))
    proc = run_trtc("run", plan)
    assert proc.returncode == 2 and "records no SHA-256 of the engine" in proc.stderr
    trusted = run_trtc("run", plan, "--trust-plan")
    # Past the check: on a machine without a GPU the next refusal is the GPU's.
    assert "SHA-256" not in trusted.stderr
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None and trusted.returncode == 2:
        assert "cannot run a TensorRT engine here" in trusted.stderr or "GPU" in trusted.stderr


def _relu_model(tmp_path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1024])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_an_input_of_2_to_the_40_elements_is_refused_before_allocation(tmp_path):
    model = _relu_model(tmp_path)
    proc = run_trtc("run", model, "--shape", "x=1073741824x1024")  # 2**40 elements, 4 TiB of float32
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "generating x 1073741824x1024" in proc.stderr and "above the" in proc.stderr
    assert "--max-memory" in proc.stderr
    # A file whose header declares 2**40 elements (and holds 64 bytes) is refused by its header.
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30, 1024)})
        f.write(bytes(64))
    proc = run_trtc("run", model, "--input", tmp_path / "huge.npy")
    assert proc.returncode == 2 and "its arrays would take 4096 GiB" in proc.stderr, proc.stderr
    # The limit is the user's to set.
    env_limited = subprocess.run([sys.executable, "-m", "trtc", "run", str(model), "--shape", "x=64x1024"], cwd=REPO,
                                 capture_output=True, text=True, env={**os.environ, "TRTC_MAX_MEMORY": "64K"})
    assert env_limited.returncode == 2 and "above the 0.0625 MiB inputs may take" in env_limited.stderr
    flag_limited = run_trtc("run", model, "--shape", "x=64x1024", "--max-memory", "128K")
    assert flag_limited.returncode == 2 and "above the 0.125 MiB inputs may take" in flag_limited.stderr
    assert "--max-memory: expected a size" in run_trtc("run", model, "--max-memory", "lots").stderr
    assert run_trtc("run", model, "--shape", "x=4x1024").returncode == 0


def test_npz_files_are_never_unpickled(tmp_path):
    model = _relu_model(tmp_path)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    proc = run_trtc("run", model, "--input", tmp_path / "objects.npz")
    assert proc.returncode == 2 and "without pickle" in proc.stderr, proc.stderr
