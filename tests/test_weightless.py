"""Weight-stripped models (issue 15): `polygraphy surgeon weight-strip` writes initializers without data marked
"TRT_WEIGHTLESS". Without `--weightless` such a model is refused at parse in one line whose hint names the option;
with it the missing weights are recorded in the artifact, never read (no pass folds, merges or computes with them;
run, compare, --verify and the precision passes refuse in one line), and `build` lowers each one as a named,
refittable constant for a plan stripped of them (REFIT_INDIVIDUAL + STRIP_PLAN), its sidecar saying so.

TensorRT-RTX 1.7 builds plain engines without a GPU but not refittable ones (its code generator needs CUDA for
them: checked here), so on a machine without a GPU the build is one line saying that, and the real plan is built
by the gpu-marked test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.ir import load_artifact
from trtc.ir.weightless import WeightlessTensor, WeightMissing

from corpus import one_error_line, trtc_in_process

SHAPES = ("--shapes", "x:1x16,4x16,8x16")
STRIPPED = ("w1", "wa", "wb")


def mlp(tmp_path: Path, *, stripped: bool, name: str) -> Path:
    """x[batch, 16] -> MatMul(Transpose(w1)) + b1 -> Relu -> MatMul(wa) + MatMul(wb) -> y[batch, 32]. wa and wb are
    equal, and Transpose(w1) is computable from constants: with their data, constant folding and CSE fire; stripped
    (as polygraphy's weight-strip does it: no data, doc_string TRT_WEIGHTLESS/), nothing may."""
    rng = np.random.default_rng(0)
    same = rng.standard_normal((32, 32)).astype(np.float32)
    weights = [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
               numpy_helper.from_array(same, "wa"), numpy_helper.from_array(same.copy(), "wb")]
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w1"], ["w1t"], name="t", perm=[1, 0]),
         helper.make_node("MatMul", ["x", "w1t"], ["h"], name="fc1"),
         helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
         helper.make_node("Relu", ["hb"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "wa"], ["a"], name="fca"),
         helper.make_node("MatMul", ["r", "wb"], ["b"], name="fcb"),
         helper.make_node("Add", ["a", "b"], ["y"], name="sum")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if stripped:
        for tensor in model.graph.initializer:
            if tensor.name in STRIPPED:
                tensor.ClearField("raw_data")
                tensor.doc_string = "TRT_WEIGHTLESS/"
        model.doc_string = "TRT_WEIGHTLESS"
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.fixture
def stripped(tmp_path) -> Path:
    return mlp(tmp_path, stripped=True, name="stripped.onnx")


@pytest.fixture
def full(tmp_path) -> Path:
    return mlp(tmp_path, stripped=False, name="full.onnx")


@pytest.fixture
def parsed(stripped, tmp_path, capsys) -> Path:
    out = tmp_path / "stripped.trtir"
    rc, _, err = trtc_in_process(capsys, "parse", stripped, "-o", out, "--weightless")
    assert rc == 0, err
    return out


MISSING = [{"name": "w1", "dtype": "float", "shape": [32, 16]}, {"name": "wa", "dtype": "float", "shape": [32, 32]},
           {"name": "wb", "dtype": "float", "shape": [32, 32]}]


def test_parse_refuses_a_stripped_model_in_one_line_naming_the_option(stripped, tmp_path, capsys):
    line = one_error_line(trtc_in_process(capsys, "parse", stripped, "-o", tmp_path / "s.trtir"),
                          "3 tensor(s) whose data does not match their dims",
                          "tensor 'w1': float[32, 16] holds no data (a weight-stripped model?)",
                          "parse it with --weightless to build a refittable engine")
    assert line.count("--weightless") == 1
    assert not (tmp_path / "s.trtir").exists()


def test_parse_with_the_option_records_the_missing_weights(parsed, full, tmp_path, capsys):
    artifact = load_artifact(parsed)
    assert artifact.meta["weightless"] == MISSING
    initializers = artifact.model.graph.initializers
    assert all(isinstance(initializers[n].const_value, WeightlessTensor) for n in STRIPPED)
    assert initializers["b1"].const_value.numpy().shape == (32,)  # the weights it has are as they were
    with pytest.raises(WeightMissing, match="the values of weight 'w1' are not in the model"):
        initializers["w1"].const_value.numpy()
    rc, out, _ = trtc_in_process(capsys, "parse", full, "-o", tmp_path / "full.trtir", "--weightless", "--json")
    assert rc == 0 and json.loads(out)["weightless"] == []  # the option takes a full model as it is
    again = tmp_path / "again.trtir"
    assert trtc_in_process(capsys, "parse", parsed.with_suffix(".onnx"), "-o", again, "--weightless")[0] == 0
    assert load_artifact(again).meta["content_hash"] == artifact.meta["content_hash"]
    assert load_artifact(tmp_path / "full.trtir").meta["content_hash"] != artifact.meta["content_hash"]


def test_the_option_takes_only_initializers_without_data(tmp_path, capsys):
    path = mlp(tmp_path, stripped=True, name="m.onnx")
    model = onnx.load(path)
    b1 = next(t for t in model.graph.initializer if t.name == "b1")
    b1.raw_data = b1.raw_data[:40]  # wrongly sized: refused all the same
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=TensorProto(
        name="c", data_type=TensorProto.FLOAT, dims=[2])))  # a Constant node without data is no weight
    onnx.save(model, path)
    one_error_line(trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir", "--weightless"),
                   "2 tensor(s) whose data does not match their dims", "tensor 'b1': float[32] needs 128 bytes",
                   "tensor 'c': float[2] holds no data")


def test_optimize_leaves_the_missing_weights_alone(parsed, full, tmp_path, capsys):
    """Must-fire (the full model: the Transpose of w1 folded, wa and wb merged) beside must-not-fire."""
    for source, out in ((full, tmp_path / "full.opt.trtir"), (parsed, tmp_path / "stripped.opt.trtir")):
        rc, _, err = trtc_in_process(capsys, "optimize", source, "-o", out)
        assert rc == 0, err
    folded, kept = load_artifact(tmp_path / "full.opt.trtir"), load_artifact(tmp_path / "stripped.opt.trtir")
    assert "Transpose" not in [n.op_type for n in folded.model.graph]
    assert [n.inputs[1].name for n in folded.model.graph if n.op_type == "MatMul"] == ["wa"]  # wb merged into wa
    assert [n.op_type for n in kept.model.graph].count("Transpose") == 1
    assert {"w1", "wa", "wb"} <= set(kept.model.graph.initializers)
    assert [n.inputs[1].name for n in kept.model.graph if n.op_type == "MatMul"][-2:] == ["wa", "wb"]
    assert kept.meta["weightless"] == MISSING


def test_the_lowering_makes_each_missing_weight_a_named_refittable_constant(parsed):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, refit_weights, set_refit_flags
    from trtc.lower.network import lower

    artifact = load_artifact(parsed)
    backend = load_backend("tensorrt-rtx")
    lowered = lower(artifact.model, backend)
    network = lowered.network
    assert [network.are_weights_marked_refittable(n) for n in ("w1", "wa", "wb", "b1")] == [True, True, True, False]
    constants = [network.get_layer(i) for i in range(network.num_layers)
                 if network.get_layer(i).type == backend.trt.LayerType.CONSTANT]
    named = {layer.get_output(0).name: layer for layer in constants}
    assert {"w1", "wa", "wb"} <= set(named)  # one layer each: never merged, reshaped or folded on the host
    assert refit_weights(artifact.model, network, BuildOptions(), "") == MISSING
    config = lowered.builder.create_builder_config()
    set_refit_flags(config, backend.trt)
    flags = backend.trt.BuilderFlag
    assert config.get_flag(flags.REFIT_INDIVIDUAL) and config.get_flag(flags.STRIP_PLAN)
    assert not config.get_flag(flags.REFIT_IDENTICAL)  # zeros stand in for the weights: never "identical"
    with pytest.raises(TrtcError, match="--strip-weights builds a plan refitted with the weights it was built with"):
        refit_weights(artifact.model, network, BuildOptions(strip_weights=True), "")


def _no_gpu() -> str | None:
    try:
        from trtc.runtime.engine import no_gpu_reason
    except Exception as exc:  # noqa: BLE001
        return f"the runtime does not load ({type(exc).__name__})"
    return no_gpu_reason()


NO_GPU = _no_gpu()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is here: the refittable build succeeds (the gpu test)")
def test_without_a_gpu_the_build_says_so_in_one_line_and_leaves_nothing(parsed, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    for isolation in ((), ("--no-isolate",)):
        one_error_line(trtc_in_process(capsys, "build", parsed, "-o", out / "s.plan", *SHAPES, "--cache-dir", cache,
                                       *isolation),
                       "cannot build a refittable, weight-stripped engine on a machine without an NVIDIA GPU")
        assert os.listdir(out) == [] and [p.suffix for p in cache.iterdir()] == [".lock"]


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=f"no usable GPU: {NO_GPU}")
def test_on_a_gpu_the_build_writes_a_refittable_plan_and_says_so(parsed, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    plan = tmp_path / "s.plan"
    rc, out, err = trtc_in_process(capsys, "build", parsed, "-o", plan, *SHAPES, "--no-cache", "--json")
    assert rc == 0, err
    sidecar = json.loads(Path(f"{plan}.json").read_text())
    assert sidecar["refit"] == {"needed": True, "weights": MISSING, "flags": ["REFIT_INDIVIDUAL", "STRIP_PLAN"]}
    assert plan.stat().st_size == sidecar["plan_bytes"] and json.loads(out)["refit"]["needed"] is True
    one_error_line(trtc_in_process(capsys, "run", plan), "the engine is stripped of 3 weight(s)",
                   "must be refitted with them before it runs")


def test_run_and_compare_refuse_in_one_line_naming_the_missing_weights(parsed, full, capsys):
    needles = ("cannot run it on the CPU reference: the model holds no values for 3 weight(s) ('w1', 'wa', 'wb'",)
    one_error_line(trtc_in_process(capsys, "run", parsed), *needles)
    one_error_line(trtc_in_process(capsys, "compare", parsed, full), *needles)
    one_error_line(trtc_in_process(capsys, "compare", full, parsed), *needles)


def test_what_needs_the_values_is_refused_before_it_starts(parsed, stripped, tmp_path, capsys):
    one_error_line(trtc_in_process(capsys, "optimize", parsed, "-o", tmp_path / "o.trtir", "--verify"),
                   "cannot verify the passes on the CPU reference", "'w1', 'wa', 'wb'")
    one_error_line(trtc_in_process(capsys, "build", parsed, "-o", tmp_path / "s.plan", *SHAPES, "--fp16"),
                   "--fp16: a precision pass converts weights and calibrates on the CPU reference")
    one_error_line(trtc_in_process(capsys, "compile", stripped, "-o", tmp_path / "c", "--weightless", "--bf16"),
                   "--bf16: a precision pass converts weights")
    assert not (tmp_path / "o.trtir").exists() and not (tmp_path / "s.plan").exists()


def test_an_engine_that_needs_refitting_is_not_run(full, tmp_path, capsys):
    """The refusal reads the sidecar only: shown on an engine built here, its sidecar saying what one built from the
    stripped model says."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    plan = tmp_path / "full.plan"
    assert trtc_in_process(capsys, "build", full, "-o", plan, *SHAPES, "--no-cache")[0] == 0
    side = Path(f"{plan}.json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "refit": {"needed": True, "weights": MISSING}}))
    for command in (("run", plan), ("compare", plan, full), ("export", "triton", plan, "-o", tmp_path / "repo")):
        one_error_line(trtc_in_process(capsys, *command), f"{plan}: the engine is stripped of 3 weight(s) ('w1', "
                       "'wa', 'wb') and must be refitted with them before it runs")
    assert not (tmp_path / "repo").exists()
    code, out, err = trtc_in_process(capsys, "inspect", plan)
    assert code == 0 and "refit: needed before it runs, 3 weight(s) stripped (w1, wa, wb)" in out, out + err


def test_a_stripped_model_is_not_exported_to_be_served(parsed, tmp_path, capsys):
    """Served by the Python backend, a stripped model would run on the CPU reference without its weights."""
    one_error_line(trtc_in_process(capsys, "export", "triton", parsed, "-o", tmp_path / "repo"),
                   "cannot serve it: the model holds no values for 3 weight(s) ('w1', 'wa', 'wb'")
    assert not (tmp_path / "repo").exists()


def test_compile_skips_the_prediction_of_a_stripped_model(stripped, tmp_path, monkeypatch):
    """compile --weightless: parse and optimize as above; the comparison, which needs the values, is skipped and
    the report says why (the build stage stands in: it needs a GPU, see above)."""
    import trtc.pipeline as pipeline

    sidecar = {"backend": "tensorrt-rtx", "backend_version": "1.7", "targets": [], "network_layers": 9,
               "plan_bytes": 1 << 20, "build_seconds": 1.0, "profiles": []}
    monkeypatch.setattr(pipeline, "_compile_build", lambda *args, **kwargs: (sidecar, False))
    report = pipeline.compile_model(stripped, tmp_path / "c", weightless=True,
                                    build_options=pipeline.BuildOptions())
    assert report["predicted"] == {"skipped": "3 weight(s) have no values (weight-stripped model)", "outputs": {}}
    markdown = (tmp_path / "c" / "report.md").read_text()
    assert "Not predicted: 3 weight(s) have no values (weight-stripped model)." in markdown
    assert load_artifact(tmp_path / "c" / "stripped.opt.trtir").meta["weightless"] == MISSING
