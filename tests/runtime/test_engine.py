"""The engine runner's checks that need no GPU, on sidecars of real TensorRT-RTX builds:
feed validation (every error text), profile choice, version/target compatibility,
`no_gpu_reason`, the CUDA error translation, and the timing figures."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.lower.backend import Backend
from trtc.reference.runner import latency_summary
from trtc.runtime import cuda
from trtc.runtime.engine import (
    EngineRunner,
    _check_counts,
    check_engine_compat,
    choose_profile,
    no_gpu_reason,
    validate_engine_feeds,
)
from trtc.runtime.sidecar import sidecar_dtype

from corpus import run_trtc

NO_GPU = no_gpu_reason()

# ---------------------------------------------------------------- models and builds (shared with the GPU tests)


def mlp_model() -> onnx.ModelProto:
    """x[batch, 16] -> Gemm -> Relu -> y[batch, 32]."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
         helper.make_node("Relu", ["h"], ["y"], name="relu")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def concat_model() -> onnx.ModelProto:
    """a[n, 16], b[n, s], ids[n] (int64) -> Concat(a, b, float(ids)) -> y[n, 17 + s]."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], name="cast", to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["f", "axes"], ["col"], name="unsqueeze"),
         helper.make_node("Concat", ["a", "b", "col"], ["y"], name="concat", axis=1)], "concat",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", "s"]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "width"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MLP_SHAPES = ("--shapes", "x:1x16,4x16,8x16")
CONCAT_PROFILES = ("--shapes", "a:1x16,2x16,4x16", "--shapes", "b:1x1,2x8,4x32", "--shapes", "ids:1,2,4",
                   "--profile", "a:5x16,8x16,16x16 b:5x1,8x64,16x128 ids:5,8,16")


def build_plan(model: onnx.ModelProto, folder: Path, name: str, *options: str) -> tuple[Path, dict]:
    """`trtc build` a model (no engine cache); the plan path and its sidecar."""
    onnx.save(model, folder / f"{name}.onnx")
    plan = folder / f"{name}.plan"
    proc = run_trtc("build", folder / f"{name}.onnx", "-o", plan, "--no-cache", *options)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return plan, json.loads(Path(f"{plan}.json").read_text())


def rtx_backend() -> Backend:
    """TensorRT-RTX, which builds real engines without a GPU (the tests skip without it)."""
    return Backend("tensorrt-rtx", pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed"))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, dict]:
    rtx_backend()
    return build_plan(mlp_model(), tmp_path_factory.mktemp("mlp"), "mlp", *MLP_SHAPES, "--backend", "tensorrt-rtx")


@pytest.fixture(scope="module")
def two_profiles(tmp_path_factory) -> tuple[Path, dict]:
    rtx_backend()
    return build_plan(concat_model(), tmp_path_factory.mktemp("concat"), "concat", *CONCAT_PROFILES,
                      "--backend", "tensorrt-rtx")


@pytest.fixture(scope="module")
def targeted(tmp_path_factory) -> tuple[Path, dict]:
    rtx_backend()
    return build_plan(mlp_model(), tmp_path_factory.mktemp("targets"), "mlp", *MLP_SHAPES,
                      "--backend", "tensorrt-rtx", "--target", "sm86,sm89")


def _error(sidecar, feeds, where="model.plan") -> str:
    with pytest.raises(TrtcError) as info:
        validate_engine_feeds(sidecar, feeds, where)
    text = info.value.one_line()
    assert "\n" not in text and text.startswith(f"{where}: ")
    return text


def _concat_feeds(n: int, s: int) -> dict[str, np.ndarray]:
    return {"a": np.zeros((n, 16), np.float32), "b": np.zeros((n, s), np.float32), "ids": np.zeros(n, np.int64)}


# ---------------------------------------------------------------- the sidecars of real builds


def test_real_sidecars_describe_the_dynamic_inputs(mlp, two_profiles):
    _, side = mlp
    assert side["backend"] == "tensorrt-rtx"
    # dim_names: which dynamic dims are the same dim (export triton finds the batch dim by it)
    assert side["inputs"] == [{"name": "x", "dtype": "float", "shape": [-1, 16], "dim_names": ["batch", None]}]
    assert side["profiles"] == [{"x": [[1, 16], [4, 16], [8, 16]]}]
    _, side = two_profiles
    assert [p["b"] for p in side["profiles"]] == [[[1, 1], [2, 8], [4, 32]], [[5, 1], [8, 64], [16, 128]]]
    assert {i["name"]: i["dtype"] for i in side["inputs"]} == {"a": "float", "b": "float", "ids": "int64"}


# ---------------------------------------------------------------- validation


def test_valid_feeds_pass(mlp, two_profiles):
    for batch in (1, 4, 8):
        validate_engine_feeds(mlp[1], {"x": np.zeros((batch, 16), np.float32)}, "m.plan")
    for n, s in ((1, 1), (4, 32), (5, 100), (16, 128)):
        validate_engine_feeds(two_profiles[1], _concat_feeds(n, s), "c.plan")


def test_unknown_and_missing_names_list_the_real_ones(mlp, two_profiles):
    text = _error(mlp[1], {"x": np.zeros((1, 16), np.float32), "z": np.zeros(1)})
    assert text == "model.plan: unknown input name(s) 'z'; the engine's inputs are: x"
    feeds = _concat_feeds(1, 1)
    del feeds["b"], feeds["ids"]
    text = _error(two_profiles[1], feeds)
    assert text.startswith("model.plan: missing input(s) 'b', 'ids'; the engine's inputs are: a, b, ids")


def test_dtype_mismatch_names_both_dtypes(mlp, two_profiles):
    text = _error(mlp[1], {"x": np.zeros((2, 16), np.float64)})
    assert "input 'x' has dtype float64 but the engine expects float32 (x: float32[?x16])" in text
    assert "np.asarray(x, dtype='float32')" in text
    feeds = _concat_feeds(2, 2)
    feeds["ids"] = feeds["ids"].astype(np.int32)
    assert "input 'ids' has dtype int32 but the engine expects int64 (ids: int64[?])" in _error(two_profiles[1], feeds)
    assert "has dtype list but the engine expects float32" in _error(mlp[1], {"x": [[0.0] * 16]})


def test_rank_and_static_dims(mlp):
    text = _error(mlp[1], {"x": np.zeros((1, 2, 16), np.float32)})
    assert "input 'x' has rank 3 but the engine expects rank 2 (x: float32[?x16])" in text
    text = _error(mlp[1], {"x": np.zeros((2, 17), np.float32)})
    assert "input 'x' dim 1 is 17 but the engine fixes it to 16 (x: float32[?x16])" in text


def test_dynamic_dim_outside_every_profile(mlp, two_profiles):
    text = _error(mlp[1], {"x": np.zeros((9, 16), np.float32)})
    assert "input 'x' dim 0 is 9 but the engine's profiles allow 1..8 (profile 0)" in text
    assert "allow 1..8 (profile 0)" in _error(mlp[1], {"x": np.zeros((0, 16), np.float32)})
    text = _error(two_profiles[1], _concat_feeds(2, 200))
    assert "input 'b' dim 1 is 200 but the engine's profiles allow 1..32 (profile 0), 1..128 (profile 1)" in text
    assert "allow 1..4 (profile 0), 5..16 (profile 1)" in _error(two_profiles[1], _concat_feeds(17, 1))


def test_shapes_each_allowed_but_no_single_profile_takes_them(two_profiles):
    text = _error(two_profiles[1], _concat_feeds(2, 100))  # batch 2 is profile 0, length 100 only profile 1
    assert ("no profile of the engine takes these input shapes together (a 2x16, b 2x100, ids 2); profile 0: "
            "a 1x16..4x16, b 1x1..4x32, ids 1..4; profile 1: a 5x16..16x16, b 5x1..16x128, ids 5..16") in text
    assert "rebuild with a --profile" in text


# ---------------------------------------------------------------- profile choice


def test_choose_profile_takes_the_first_that_fits(mlp, two_profiles):
    assert choose_profile(mlp[1], {"x": (8, 16)}) == 0
    side = two_profiles[1]
    assert choose_profile(side, {"a": (4, 16), "b": (4, 32), "ids": (4,)}) == 0
    assert choose_profile(side, {"a": (5, 16), "b": (5, 1), "ids": (5,)}) == 1
    assert choose_profile(side, {"a": (16, 16), "b": (16, 128), "ids": (16,)}) == 1
    overlapping = copy.deepcopy(side)
    for name in ("a", "b", "ids"):  # profile 1 from batch 1 too
        overlapping["profiles"][1][name][0][0] = 1
    assert choose_profile(overlapping, {"a": (3, 16), "b": (3, 8), "ids": (3,)}) == 0  # both fit: the first
    assert choose_profile(overlapping, {"a": (3, 16), "b": (3, 64), "ids": (3,)}) == 1
    with pytest.raises(TrtcError, match="no profile of the engine takes"):
        choose_profile(side, {"a": (2, 16), "b": (2, 100), "ids": (2,)}, where="c.plan")


def test_static_engine_runs_profile_zero(mlp):
    side = copy.deepcopy(mlp[1])
    side["profiles"], side["inputs"][0]["shape"] = [], [2, 16]
    assert choose_profile(side, {"x": (2, 16)}) == 0
    validate_engine_feeds(side, {"x": np.zeros((2, 16), np.float32)}, "s.plan")
    assert "dim 0 is 3 but the engine fixes it to 2" in _error(side, {"x": np.zeros((3, 16), np.float32)})


def test_sidecar_dtypes():
    assert sidecar_dtype("float") == np.float32 and sidecar_dtype("float16") == np.float16
    assert sidecar_dtype("int64") == np.int64 and sidecar_dtype("bool") == np.bool_
    assert sidecar_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16) and sidecar_dtype("double") == np.float64
    with pytest.raises(TrtcError, match="unknown dtype 'complex7'"):
        sidecar_dtype("complex7")


# ---------------------------------------------------------------- compatibility


def test_compat_accepts_the_building_version_on_a_supported_gpu(mlp, targeted):
    check_engine_compat(mlp[1], rtx_backend(), where="m.plan", compute_capability="sm89")
    check_engine_compat(targeted[1], rtx_backend(), where="m.plan", compute_capability="sm86")


def test_compat_names_both_versions(mlp):
    side, version = dict(mlp[1], backend_version="1.6.0.5"), rtx_backend().version
    with pytest.raises(TrtcError) as info:
        check_engine_compat(side, rtx_backend(), where="m.plan", compute_capability="sm89")
    assert info.value.one_line() == (
        f"m.plan: the engine was built by TensorRT-RTX 1.6.0.5 but this runtime is TensorRT-RTX {version}; "
        f"rebuild it with `trtc build` under TensorRT-RTX {version}")


def test_compat_names_both_backends(mlp):
    full = Backend("tensorrt", SimpleNamespace(__version__="10.13.0.35"))
    with pytest.raises(TrtcError) as info:
        check_engine_compat(mlp[1], full, where="m.plan")
    assert (f"the engine was built with tensorrt-rtx {rtx_backend().version} but the runtime is tensorrt 10.13.0.35; "
            "run it with --backend tensorrt-rtx") in info.value.one_line()


def test_compat_rtx_targets_name_the_gpu(mlp, targeted):
    assert targeted[1]["targets"] == ["sm86", "sm89"]
    with pytest.raises(TrtcError) as info:
        check_engine_compat(targeted[1], rtx_backend(), compute_capability="sm120")
    assert info.value.one_line() == ("the engine was built for sm86,sm89 but this GPU is sm120; "
                                     "rebuild with --target sm120")
    with pytest.raises(TrtcError) as info:
        check_engine_compat(targeted[1], rtx_backend(), compute_capability="sm90")
    assert "built for sm86,sm89 but this GPU is sm90; TensorRT-RTX does not run on sm90" in info.value.one_line()
    with pytest.raises(TrtcError) as info:  # default targets: any GPU RTX runs on, and Hopper is not one
        check_engine_compat(mlp[1], rtx_backend(), compute_capability="sm90")
    assert "TensorRT-RTX engines run on sm75,sm80,sm86,sm89,sm120,sm121 but this GPU is sm90" in info.value.one_line()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_compat_without_gpu_is_a_one_line_error(mlp):
    with pytest.raises(TrtcError) as info:  # the compute capability cannot be queried here
        check_engine_compat(mlp[1], rtx_backend(), where="m.plan")
    assert "\n" not in info.value.one_line()
    assert "cuda-python is not installed" in info.value.one_line() or "CUDA error cuda" in info.value.one_line()


# ---------------------------------------------------------------- no GPU here


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_no_gpu_reason_says_why():
    assert isinstance(NO_GPU, str) and NO_GPU
    assert any(word in NO_GPU for word in ("driver", "device", "cuda-python")), NO_GPU


def test_no_gpu_reason_without_cuda_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)  # makes the import fail
    assert no_gpu_reason() == "cuda-python is not installed"
    with pytest.raises(TrtcError, match="cuda-python is not installed; install cuda-python"):
        cuda.runtime()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_runner_without_gpu_fails_in_one_line(mlp):
    plan, side = mlp
    with pytest.raises(TrtcError) as info:
        EngineRunner(plan, side, rtx_backend())
    text = info.value.one_line()
    assert "\n" not in text and ("cuda-python is not installed" in text or "CUDA error cuda" in text), text


def test_runtime_cache_is_checked_before_gpu_work(mlp, tmp_path):
    plan, side = mlp
    full = Backend("tensorrt", SimpleNamespace(__version__="10.13.0.35"))
    with pytest.raises(TrtcError, match="--runtime-cache: a runtime cache is TensorRT-RTX only"):
        EngineRunner(plan, side, full, runtime_cache=tmp_path / "cache.bin")
    with pytest.raises(TrtcError, match="the folder of the runtime cache does not exist"):
        EngineRunner(plan, side, rtx_backend(), runtime_cache=tmp_path / "missing" / "cache.bin")


# ---------------------------------------------------------------- the CUDA layer's error translation


def test_cuda_errors_become_one_line_trtc_errors():
    rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    ok = rt.cudaError_t.cudaSuccess
    assert cuda.check((ok, 5), "x") == 5 and cuda.check((ok,), "x") is None and cuda.check((ok, 1, 2), "x") == (1, 2)
    with pytest.raises(TrtcError) as info:
        cuda.check((rt.cudaError_t.cudaErrorNoDevice,), "cudaGetDeviceCount")
    assert info.value.one_line() == ("CUDA error cudaErrorNoDevice in cudaGetDeviceCount; "
                                     "check the NVIDIA driver and GPU with nvidia-smi")
    with pytest.raises(TrtcError) as info:
        cuda.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(64)")
    assert info.value.one_line() == "CUDA error cudaErrorMemoryAllocation in cudaMalloc(64)"
    assert cuda.version_text(12040) == "12.4" and cuda.version_text(13000) == "13.0"


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is present")
def test_cuda_calls_without_driver_raise_with_the_error_name():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    assert cuda.driver_version() == 0 or NO_GPU.startswith("CUDA driver too old")
    for make in (cuda.Stream, cuda.Event, lambda: cuda.DeviceBuffer(64), lambda: cuda.PinnedBuffer(64)):
        with pytest.raises(TrtcError, match=r"CUDA error cudaError\w+ in cuda\w+"):
            make()


# ---------------------------------------------------------------- timing figures


def test_latency_summary_figures():
    figures = latency_summary([4.0, 1.0, 3.0, 2.0, 5.0], wall_s=0.5)
    assert figures["iterations"] == 5 and figures["min_ms"] == 1.0 and figures["median_ms"] == 3.0
    assert figures["mean_ms"] == 3.0 and figures["p90_ms"] == pytest.approx(4.6)
    assert figures["p95_ms"] == pytest.approx(4.8) and figures["p99_ms"] == pytest.approx(4.96)
    assert figures["throughput_per_s"] == pytest.approx(10.0) and figures["wall_s"] == 0.5
    assert latency_summary([2.0], wall_s=0.0)["throughput_per_s"] == pytest.approx(500.0)


def test_benchmark_counts_are_checked():
    _check_counts(0, None, None)
    _check_counts(3, 10, 1.5)
    with pytest.raises(TrtcError, match="--iterations: iterations must be >= 1, got 0"):
        _check_counts(1, 0, None)
    with pytest.raises(TrtcError, match="--duration: duration must be > 0 seconds"):
        _check_counts(1, None, 0)
    with pytest.raises(TrtcError, match="--warmup: warmup must be >= 0"):
        _check_counts(-1, None, None)
