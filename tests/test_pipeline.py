"""The typed pipeline API (trtc.pipeline) and the shape conventions trtexec users expect:
one chain of stages whichever command runs it, equal flags giving one engine, and every
shape or profile problem reported at once with the option it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trtc.errors import TrtcError  # noqa: E402
from trtc.lower.profiles import parse_profiles, parse_range  # noqa: E402
from trtc.reference.feeds import FeedOptions  # noqa: E402

from corpus import run_trtc  # noqa: E402


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    """tokens[batch, seq] (int64, indexing a 50-row table) and image[batch, 3, height, width]."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("two")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["emb"], name="embed"),
         helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
         helper.make_node("GlobalAveragePool", ["image"], ["gap"], name="gap"),
         helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
         helper.make_node("ReduceMean", ["pooled"], ["pooled_b"], name="mean", axes=[1], keepdims=1),
         helper.make_node("Add", ["flat", "pooled_b"], ["y"], name="add")], "two",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "two.onnx")
    return folder


def _error_line(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- shape syntax (no TensorRT needed)


def test_one_shape_means_min_opt_max_and_both_separators():
    assert parse_range("x:1x3x224x224") == ("x", ((1, 3, 224, 224),) * 3)
    assert parse_range("x=1x3,2x3,4x3") == ("x", ((1, 3), (2, 3), (4, 3)))
    assert parse_range("input:0:1x3") == ("input:0", ((1, 3),) * 3)  # tf2onnx names keep their colon
    assert FeedOptions.from_cli(shapes=["a=1x2", "b:3x4"]).shapes == {"a": (1, 2), "b": (3, 4)}


def test_trtexec_min_opt_max_lists():
    [profile] = parse_profiles(min_shapes=["x:1x16,t:1x1"], opt_shapes=["x:4x16,t:2x8"], max_shapes=["x:8x16,t:4x64"])
    assert profile.ranges == {"x": ((1, 16), (4, 16), (8, 16)), "t": ((1, 1), (2, 8), (4, 64))}
    with pytest.raises(TrtcError, match="'x' has no --max-shapes"):
        parse_profiles(min_shapes=["x:1x16"], opt_shapes=["x:4x16"])
    with pytest.raises(TrtcError, match="given by both --shapes and"):
        parse_profiles(["x:1x16"], min_shapes=["x:1x16"], opt_shapes=["x:1x16"], max_shapes=["x:1x16"])


@pytest.mark.parametrize("spec, needle", [
    ("x", "expected NAME:MIN,OPT,MAX or NAME:DIMS"),
    ("x:1x2,3x4", "expected NAME:MIN,OPT,MAX or NAME:DIMS"),
    ("x:1xa", "bad dims '1xa'"),
])
def test_bad_shape_specs_say_which_form(spec, needle):
    with pytest.raises(TrtcError, match=needle):
        parse_range(spec)


# ---------------------------------------------------------------- the CLI


def test_every_missing_range_at_once_with_concrete_suggestions(two_inputs, tmp_path):
    line = _error_line(run_trtc("build", two_inputs / "two.onnx", "-o", tmp_path / "t.plan", "--no-cache"))
    assert "no range for the dynamic input(s) 'tokens', 'image'" in line
    # One suggestion per input, real numbers, the shared batch dim the same in both.
    assert "--shapes tokens:1x1,4x128,8x512" in line and "--shapes image:1x3x224x224,4x3x224x224,8x3x224x224" in line
    assert "N" not in line.split("e.g.")[1]


def test_profile_errors_name_the_profile_option(mlp, tmp_path):
    line = _error_line(run_trtc("build", mlp / "mlp.onnx", "-o", tmp_path / "m.plan", "--no-cache",
                                "--shapes", "x:1x16,4x16,8x16", "--profile", "x:1x8,2x8,4x8"))
    assert "--profile 'x:1x8,2x8,4x8': input 'x' dim 1 is fixed to 16" in line
    line = _error_line(run_trtc("build", mlp / "mlp.onnx", "-o", tmp_path / "m.plan", "--no-cache",
                                "--shapes", "x:1x16,4x16,8x16", "--profile", "z:1x16,2x16,4x16"))
    assert "--profile 'z:1x16,2x16,4x16': no input named 'z'" in line and "dynamic input(s) 'x' in --profile" in line


def test_build_shape_is_used_not_ignored(mlp, tmp_path):
    """--shape on build shapes the calibration data (it used to be silently dropped)."""
    line = _error_line(run_trtc("build", mlp / "mlp.onnx", "-o", tmp_path / "m.plan", "--no-cache", "--fp16",
                                "--shapes", "x:1x16,4x16,8x16", "--shape", "x=2x8"))
    assert "input 'x' dim 1 is 8 but the model fixes it to 16" in line


def test_single_shape_builds_a_static_profile(mlp, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    plan = tmp_path / "m.plan"
    proc = run_trtc("build", mlp / "mlp.onnx", "-o", plan, "--no-cache", "--shapes", "x:2x16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["profiles"] == [{"x": [[2, 16], [2, 16], [2, 16]]}]
    proc = run_trtc("build", mlp / "mlp.onnx", "-o", plan, "--no-cache", "--json",
                    "--min-shapes", "x:1x16", "--opt-shapes", "x:4x16", "--max-shapes", "x:8x16")
    assert json.loads(proc.stdout)["profiles"] == [{"x": [[1, 16], [4, 16], [8, 16]]}]


def test_build_and_compile_with_equal_flags_share_one_engine(mlp, tmp_path):
    """`build model.onnx` runs the same optimize as `compile`: one IR hash, one cached engine."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    cache = tmp_path / "cache"
    flags = ["--fp16", "--shapes", "x:1x16,4x16,8x16", "--cache-dir", cache, "--json"]
    compiled = run_trtc("compile", mlp / "mlp.onnx", "-o", tmp_path / "out", *flags)
    assert compiled.returncode == 0, compiled.stderr
    built = run_trtc("build", mlp / "mlp.onnx", "-o", tmp_path / "b.plan", *flags)
    assert built.returncode == 0, built.stderr
    sidecar = json.loads((tmp_path / "out" / "mlp.plan.json").read_text())
    info = json.loads(built.stdout)
    assert info["ir_content_hash"] == sidecar["ir_content_hash"]
    assert info["cached"] is True
    # ... and `build` of the optimized artifact compile wrote is that engine too.
    again = json.loads(run_trtc("build", tmp_path / "out" / "mlp.opt.trtir", "-o", tmp_path / "c.plan",
                                "--shapes", "x:1x16,4x16,8x16", "--cache-dir", cache, "--json").stdout)
    assert again["cached"] is True and again["ir_content_hash"] == sidecar["ir_content_hash"]


def test_library_chain_is_the_cli_chain(mlp, tmp_path):
    """The typed API: open -> optimize -> (save) gives the artifact `trtc optimize` writes."""
    from trtc.ir import save_artifact
    from trtc.pipeline import OptimizeOptions, PrecisionOptions, open_model, optimize

    artifact = open_model(mlp / "mlp.onnx")
    result = optimize(artifact, OptimizeOptions(precision=PrecisionOptions(target="fp16")),
                      FeedOptions(shapes={"x": (4, 16)}))
    assert result.precision["target"] == "fp16" and result.report.nodes_after <= result.report.nodes_before
    header = save_artifact(artifact.model, tmp_path / "lib.trtir", artifact.meta)
    proc = run_trtc("optimize", mlp / "mlp.onnx", "-o", tmp_path / "cli.trtir", "--fp16", "--shape", "x=4x16",
                    "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["content_hash"] == header["content_hash"]


def test_calibration_npz_may_hold_the_outputs_too(mlp, tmp_path):
    """A saved run (inputs and outputs, like the corpus's .npz files) calibrates as it is."""
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.savez(tmp_path / "run.npz", x=x, y=np.zeros((4, 4), np.float32))
    proc = run_trtc("optimize", mlp / "mlp.onnx", "-o", tmp_path / "m.trtir", "--fp16", "--calib", tmp_path / "run.npz")
    assert proc.returncode == 0, proc.stderr
    np.savez(tmp_path / "bad.npz", x=x, z=x)
    line = _error_line(run_trtc("optimize", mlp / "mlp.onnx", "-o", tmp_path / "m.trtir", "--fp16", "--calib",
                                tmp_path / "bad.npz"))
    assert "'z'" in line


def test_verify_takes_a_saved_run(mlp, tmp_path):
    """`optimize --verify --input run.npz` where the npz holds the outputs too (a corpus file)."""
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.savez(tmp_path / "run.npz", x=x, y=np.zeros((4, 4), np.float32))
    proc = run_trtc("optimize", mlp / "mlp.onnx", "-o", tmp_path / "m.trtir", "--verify", "--input",
                    tmp_path / "run.npz")
    assert proc.returncode == 0 and "every pass verified" in proc.stdout, proc.stderr


def test_dry_run_judges_the_model_build_lowers(tmp_path):
    """ReduceSum's axes come out of a node: unsupported as the file is, constant once optimize has
    folded them. `build --dry-run` and `inspect --support` check what the build lowers: supported."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["axes_i32"], ["axes"], to=TensorProto.INT64, name="cast_axes"),
         helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1], np.int32), "axes_i32")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    for args in (["build", tmp_path / "m.onnx", "--dry-run"], ["inspect", tmp_path / "m.onnx", "--support"]):
        proc = run_trtc(*args, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["supported"] is True


def test_verify_of_a_frozen_artifact_takes_the_saved_run(tmp_path):
    """A saved run holds the input --freeze made a constant: with the frozen value it is no error."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"], name="mul")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    x = np.ones((2, 3), np.float32)
    np.savez(tmp_path / "run.npz", x=x, s=np.float32(2), y=2 * x)
    assert run_trtc("parse", tmp_path / "m.onnx", "--freeze", "s=2", "-o", tmp_path / "m.trtir").returncode == 0
    proc = run_trtc("optimize", tmp_path / "m.trtir", "-o", tmp_path / "o.trtir", "--verify", "--input",
                    tmp_path / "run.npz")
    assert proc.returncode == 0 and "every pass verified" in proc.stdout, proc.stderr
