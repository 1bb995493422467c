"""`trtc export triton` and the repository checks, on real TensorRT-RTX builds, without a server:
the configs written (batch dim, preferred sizes, instance groups per profile, dtypes), the
refusals (carried types, a batch above the profile, the wrong backend), each broken variant of a
hand-edited config reported by name, and the Python-backend model's batching (trtc.serve.served)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtc.errors import TrtcError
from trtc.serve.check import check_repository
from trtc.serve.config import TritonExportOptions
from trtc.serve.export import export_triton
from trtc.serve.schema import config_module, read_config
from trtc.serve.served import ServedModel

from corpus import MODELS, run_trtc

pytest.importorskip("tritonclient", reason="tritonclient is not installed (pip install -e '.[serve]')")
pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
pb = config_module()
MLP = MODELS / "mlp-ts-op17.onnx"


def mlp_model() -> onnx.ModelProto:
    """The corpus' MLP: x[batch, 64] -> 4 Gemms -> y[batch, 10]."""
    if not MLP.is_file():
        pytest.skip(f"corpus model {MLP} is missing (../shared/models)")
    return onnx.load(MLP)


def uint16_model() -> onnx.ModelProto:
    """a: uint16[batch, 4] -> a + a (a type TensorRT carries in INT32)."""
    graph = helper.make_graph([helper.make_node("Add", ["a", "a"], ["y"], name="add")], "u16",
                              [helper.make_tensor_value_info("a", TensorProto.UINT16, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT16, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def build(model: onnx.ModelProto, folder: Path, name: str, *options: str) -> Path:
    onnx.save(model, folder / f"{name}.onnx")
    plan = folder / f"{name}.plan"
    proc = run_trtc("build", folder / f"{name}.onnx", "-o", plan, "--no-cache", "--backend", "tensorrt-rtx", *options)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return plan


@pytest.fixture(scope="module")
def mlp_plan(tmp_path_factory) -> Path:
    """Two profiles: batch 1..8 (OPT 4) and 1..32 (OPT 16)."""
    return build(mlp_model(), tmp_path_factory.mktemp("mlp"), "mlp", "--shapes", "x:1x64,4x64,8x64",
                 "--profile", "x:1x64,16x64,32x64")


def test_engine_config_batches_over_the_profiles(mlp_plan, tmp_path):
    report = export_triton(mlp_plan, tmp_path / "repo", TritonExportOptions(instances=2))
    config = read_config(tmp_path / "repo" / "mlp" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.name == "mlp"
    # The batch dim is max_batch_size, bounded by the smallest profile MAX; the OPTs are preferred.
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [64])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [10])]
    assert config.input[0].data_type == pb.TYPE_FP32
    # One instance group per profile, each bound to its profile.
    gpu = pb.ModelInstanceGroup.KIND_GPU
    assert [(g.kind, g.count, list(g.profile)) for g in config.instance_group] == [(gpu, 2, ["0"]), (gpu, 2, ["1"])]
    assert report["files"] == ["1/model.plan", "1/model.plan.json", "config.pbtxt"]
    assert (tmp_path / "repo" / "mlp" / "1" / "model.plan").read_bytes() == mlp_plan.read_bytes()
    assert check_repository(tmp_path / "repo")["mlp"]["problems"] == []


def test_max_batch_choices(mlp_plan, tmp_path):
    off = export_triton(mlp_plan, tmp_path / "a", TritonExportOptions(max_batch=0))
    assert off["max_batch_size"] == 0 and off["notes"] == []
    config = read_config(tmp_path / "a" / "mlp" / "config.pbtxt")
    assert [list(i.dims) for i in config.input] == [[-1, 64]] and not config.HasField("dynamic_batching")
    small = export_triton(mlp_plan, tmp_path / "b", TritonExportOptions(max_batch=2, max_queue_delay_us=100))
    assert small["max_batch_size"] == 2 and small["preferred_batch_size"] == []
    with pytest.raises(TrtcError, match=r"--max-batch: 9 is above the batch the artifact takes \(its profiles' MAX: 8"):
        export_triton(mlp_plan, tmp_path / "c", TritonExportOptions(max_batch=9))
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_cli_export_and_refusals(mlp_plan, tmp_path):
    proc = run_trtc("export", "triton", mlp_plan, "-o", tmp_path / "repo", "--name", "clf", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "clf"
    proc = run_trtc("export", "triton", mlp_plan, "-o", tmp_path / "repo", "--max-batch", "64")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--max-batch: 64 is above" in proc.stderr
    proc = run_trtc("export", "triton", mlp_plan, "-o", tmp_path / "repo", "--shapes", "x:1x64")
    assert proc.returncode == 2 and "--shapes: an engine's shapes were fixed when it was built" in proc.stderr
    onnx.save(mlp_model(), tmp_path / "m.onnx")
    proc = run_trtc("export", "triton", tmp_path / "m.onnx", "-o", tmp_path / "repo", "--backend", "tensorrt",
                    "--shapes", "x:1x64,4x64,8x64")
    assert proc.returncode == 2 and "--backend tensorrt: Triton's TensorRT backend serves engines" in proc.stderr
    proc = run_trtc("export", "triton", tmp_path / "m.onnx", "-o", tmp_path / "repo")
    assert proc.returncode == 2 and "no range for the dynamic input(s) 'x'" in proc.stderr
    # Only the one good export is there: failures leave no model and no staging folder behind.
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["clf"]


def test_carried_types_refused_for_tensorrt_and_converted_by_python(tmp_path):
    plan = build(uint16_model(), tmp_path, "u16", "--shapes", "a:1x4,2x4,4x4")
    with pytest.raises(TrtcError, match=r"'a' is uint16, carried as int32 in the engine.*--backend python"):
        export_triton(plan, tmp_path / "repo")
    export_triton(plan, tmp_path / "repo", TritonExportOptions(backend="python"))
    config = read_config(tmp_path / "repo" / "u16" / "config.pbtxt")
    assert config.backend == "python"
    assert [t.data_type for t in (*config.input, *config.output)] == [pb.TYPE_UINT16, pb.TYPE_UINT16]
    # The engine's source is on disk: its CPU reference comes along, and runs where no GPU is.
    model = ServedModel(tmp_path / "repo" / "u16" / "1")
    assert model.executor.startswith("CPU reference")
    out = model.run_requests([{"a": np.array([[1, 2, 3, 65535]], np.uint16)}])[0]
    assert out["y"].dtype == np.uint16 and out["y"].tolist() == [[2, 4, 6, 65534]]


BROKEN = [
    # (edit of config.pbtxt, the problem named)
    (lambda t: t.replace("dims: 64", "dims: 63"), "input 'x': dim 0 is 63, the artifact's is 64"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FP16", 1), "input 'x': data_type TYPE_FP16, the artifact's is TYPE_FP32"),
    (lambda t: t.replace("max_batch_size: 8", "max_batch_size: 12"),
     "max_batch_size 12 is above profile 0's batch MAX 8"),
    (lambda t: t + "\nfoo: 1\n", 'has no field named "foo"'),
    (lambda t: t.replace('name: "y"', 'name: "out"'), "output 'out' is not one of the artifact's (y)"),
    (lambda t: t.replace("preferred_batch_size: 4", "preferred_batch_size: 10"),
     "dynamic_batching.preferred_batch_size 10 is above max_batch_size 8"),
    (lambda t: t.replace('profile: "1"', 'profile: "2"'), "profile '2', the engine has 2 (0..1)"),
    (lambda t: t.replace('name: "mlp"', 'name: "other"', 1), "name 'other' differs from the folder's 'mlp'"),
]


@pytest.mark.parametrize("edit,problem", BROKEN, ids=[p.split(":")[0][:30] for _, p in BROKEN])
def test_broken_config_reported_by_name(mlp_plan, tmp_path, edit, problem):
    export_triton(mlp_plan, tmp_path / "repo")
    path = tmp_path / "repo" / "mlp" / "config.pbtxt"
    path.write_text(edit(path.read_text()))
    problems = check_repository(tmp_path / "repo")["mlp"]["problems"]
    assert any(problem in p for p in problems), problems


def test_inspect_repository_lists_every_problem(mlp_plan, tmp_path):
    export_triton(mlp_plan, tmp_path / "repo")
    export_triton(mlp_plan, tmp_path / "repo", TritonExportOptions(name="good"))
    path = tmp_path / "repo" / "mlp" / "config.pbtxt"
    path.write_text(path.read_text().replace("dims: 64", "dims: 63").replace("max_batch_size: 8", "max_batch_size: 12"))
    proc = run_trtc("inspect", tmp_path / "repo")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "good (tensorrt): ok" in proc.stdout and "mlp (tensorrt): 2 problem(s)" in proc.stdout
    assert "dim 0 is 63" in proc.stdout and "max_batch_size 12" in proc.stdout
    assert proc.stderr.strip().endswith("2 problem(s) in mlp")
    proc = run_trtc("inspect", tmp_path / "repo", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and not data["ok"] and len(data["models"]["mlp"]["problems"]) == 2
    proc = run_trtc("inspect", tmp_path)
    assert proc.returncode == 2 and "no model folder with a config.pbtxt" in proc.stderr


def test_hand_written_repository_without_sidecar(mlp_plan, tmp_path):
    export_triton(mlp_plan, tmp_path / "repo")
    (tmp_path / "repo" / "mlp" / "1" / "model.plan.json").unlink()
    result = check_repository(tmp_path / "repo")["mlp"]
    assert result["problems"] == [] and "no trtc sidecar" in result["note"]


def test_python_model_from_onnx_batches_requests(tmp_path):
    onnx.save(mlp_model(), tmp_path / "m.onnx")
    report = export_triton(tmp_path / "m.onnx", tmp_path / "repo",
                           TritonExportOptions(profiles=_profiles("x:1x64,4x64,8x64")))
    assert report["backend"] == "python" and report["max_batch_size"] == 8
    assert sorted(report["files"]) == ["1/model.py", "1/model.trtir", "1/trtc.json", "config.pbtxt"]
    assert check_repository(tmp_path / "repo")["m"]["problems"] == []
    model = ServedModel(tmp_path / "repo" / "m" / "1")
    rng = np.random.default_rng(1)
    requests = [{"x": rng.standard_normal((rows, 64)).astype(np.float32)} for rows in (1, 3, 2)]
    alone = [model.run_requests([r])[0]["y"] for r in requests]
    together = model.run_requests(requests)
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t["y"], a, rtol=1e-6, atol=1e-6)
    # A malformed request in a batch gets its own error; its neighbours their outputs.
    mixed = model.run_requests([requests[0], {"x": np.zeros((1, 63), np.float32)}, requests[2]])
    assert isinstance(mixed[1], TrtcError) and re.search(r"'x'", str(mixed[1]))
    np.testing.assert_allclose(mixed[2]["y"], alone[2], rtol=1e-6, atol=1e-6)


def _profiles(*shapes: str):
    from trtc.lower.profiles import parse_profiles

    return tuple(parse_profiles(shapes))
