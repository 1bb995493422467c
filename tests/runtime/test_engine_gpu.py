"""The engine runner on a real GPU: built engines run and match the CPU reference, dynamic
shapes across profiles, benchmark figures, the CUDA graph path, the TensorRT-RTX runtime
cache, data-dependent output shapes. Skipped, with the reason, where no usable GPU exists
or the installed backend cannot run on the GPU present (TensorRT-RTX has no Hopper)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.reference.runner import ReferenceRunner
from trtc.runtime.engine import EngineRunner, check_engine_compat, current_sm, no_gpu_reason

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import CONCAT_PROFILES, MLP_SHAPES, build_plan, concat_model, mlp_model  # noqa: E402

NO_GPU = no_gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=f"no usable GPU: {NO_GPU}")]


@pytest.fixture(scope="module")
def backend(gpu_backend):
    return gpu_backend


@pytest.fixture(scope="module")
def mlp(tmp_path_factory, backend):
    folder = tmp_path_factory.mktemp("mlp")
    plan, side = build_plan(mlp_model(), folder, "mlp", *MLP_SHAPES, "--backend", backend.name)
    return plan, side, ReferenceRunner(parse_onnx(folder / "mlp.onnx").model)


@pytest.fixture(scope="module")
def two_profiles(tmp_path_factory, backend):
    folder = tmp_path_factory.mktemp("concat")
    plan, side = build_plan(concat_model(), folder, "concat", *CONCAT_PROFILES, "--backend", backend.name)
    return plan, side, ReferenceRunner(parse_onnx(folder / "concat.onnx").model)


def _x(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(-1, 1, (batch, 16)).astype(np.float32)}


def _concat_feeds(n: int, s: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n * 1000 + s)
    return {"a": rng.standard_normal((n, 16)).astype(np.float32), "b": rng.standard_normal((n, s)).astype(np.float32),
            "ids": rng.integers(0, 100, n).astype(np.int64)}


def _close(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape and actual[name].dtype == value.dtype
        np.testing.assert_allclose(actual[name], value, rtol=1e-2, atol=1e-2)  # TF32 matmuls allowed


def test_engine_is_compatible_here(mlp, backend):
    plan, side, _ = mlp
    check_engine_compat(side, backend, where=str(plan))


def test_run_matches_the_reference_at_every_batch(mlp, backend):
    plan, side, reference = mlp
    with EngineRunner(plan, side, backend) as runner:
        for batch in (1, 3, 4, 8, 2):
            _close(runner.run(_x(batch, batch)), reference.run(_x(batch, batch)))
        assert runner.info["compute_capability"] == current_sm()


def test_dynamic_shapes_across_two_profiles(two_profiles, backend):
    plan, side, reference = two_profiles
    with EngineRunner(plan, side, backend) as runner:
        for (n, s), profile in (((2, 8), 0), ((10, 100), 1), ((16, 128), 1), ((1, 1), 0), ((5, 1), 1)):
            feeds = _concat_feeds(n, s)
            _close(runner.run(feeds), reference.run(feeds))
            assert runner.profile == profile
        with pytest.raises(TrtcError, match="no profile of the engine takes these input shapes together"):
            runner.run(_concat_feeds(2, 100))


def test_benchmark_figures_are_sane(mlp, backend):
    plan, side, _ = mlp
    with EngineRunner(plan, side, backend) as runner:
        figures = runner.benchmark(_x(4), warmup=5, iterations=50)
        assert figures["iterations"] == 50 and figures["timing"] == "cuda events"
        assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["p90_ms"] <= figures["p95_ms"]
        assert figures["p95_ms"] <= figures["p99_ms"] < 1000 and figures["throughput_per_s"] > 1
        with_copies = runner.benchmark(_x(4), warmup=5, iterations=50, include_transfers=True)
        assert with_copies["include_transfers"] is True and with_copies["min_ms"] > 0
        timed = runner.benchmark(_x(8), warmup=1, duration=0.3)
        assert timed["wall_s"] >= 0.3 and timed["iterations"] > 1
        json.dumps(figures)  # plain numbers, ready for --json


def test_cuda_graph_replay(mlp, backend):
    plan, side, reference = mlp
    with EngineRunner(plan, side, backend) as runner:
        figures = runner.benchmark(_x(4), warmup=3, iterations=30, cuda_graph=True)
        assert figures["cuda_graph"] != "off" and figures["iterations"] == 30 and figures["min_ms"] > 0
        figures = runner.benchmark(_x(4), warmup=3, iterations=30, cuda_graph=True, include_transfers=True)
        assert figures["min_ms"] > 0
        _close(runner.run(_x(4, 7)), reference.run(_x(4, 7)))  # the plain path still right after a graph


def test_runtime_cache_file_is_written_and_reused(mlp, backend, tmp_path):
    if not backend.is_rtx:
        pytest.skip("the runtime cache is TensorRT-RTX only")
    plan, side, reference = mlp
    cache = tmp_path / "rtx.cache"
    with EngineRunner(plan, side, backend, runtime_cache=cache) as runner:
        assert not runner.runtime_cache_loaded
        runner.run(_x(4))
    assert cache.is_file() and cache.stat().st_size > 0
    with EngineRunner(plan, side, backend, runtime_cache=cache) as runner:
        assert runner.runtime_cache_loaded, runner.runtime_cache_note
        _close(runner.run(_x(4)), reference.run(_x(4)))


def test_data_dependent_output_shape(backend, tmp_path):
    """NonZero's output size is known only after the run: the IOutputAllocator path."""
    trt = backend.trt
    from trtc.lower.context import RecordingLogger

    logger = RecordingLogger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(backend.network_flags())
    x = network.add_input("x", trt.float32, (-1,))
    out = network.add_non_zero(x).get_output(0)
    out.name = "idx"
    network.mark_output(out)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1,), (8,), (64,))
    config.add_optimization_profile(profile)
    plan_bytes = builder.build_serialized_network(network, config)
    if plan_bytes is None:
        pytest.skip(f"{backend.name} cannot build NonZero: {'; '.join(logger.errors[-1:])}")
    plan = tmp_path / "nonzero.plan"
    plan.write_bytes(bytes(plan_bytes))
    index_dtype = {trt.int32: "int32", trt.int64: "int64"}[out.dtype]
    side = {"format": "trtc-plan", "backend": backend.name, "backend_version": backend.version, "targets": [],
            "inputs": [{"name": "x", "dtype": "float", "shape": [-1]}],
            "outputs": [{"name": "idx", "dtype": index_dtype, "shape": [1, -1]}],
            "profiles": [{"x": [[1], [8], [64]]}]}
    with EngineRunner(plan, side, backend, trust_plan=True) as runner:  # a hand-written sidecar
        for x in (np.array([0, 1, 0, 2], np.float32), np.zeros(5, np.float32), np.arange(64, dtype=np.float32)):
            out = runner.run({"x": x})
            np.testing.assert_array_equal(out["idx"], np.array(np.nonzero(x)))
        with pytest.raises(TrtcError, match="output shapes depend on data"):
            runner.benchmark({"x": x}, warmup=0, iterations=2, cuda_graph=True)


def test_carried_types_round_trip_exactly(backend, tmp_path):
    """Types TensorRT lacks ride in types it has (trtc/lower/legalize.py): a UINT16 add that
    wraps and a FLOAT -> FLOAT8E5M2 cast over every float16 value match the ONNX semantics
    bit for bit on the GPU, with the runner converting at the engine's boundary."""
    import onnx.reference.ops.op_cast as onnx_cast
    from onnx import TensorProto, helper

    sys.path.insert(0, str(Path(__file__).parents[1] / "lower"))
    from test_legalize import _probe_values, assert_same

    add = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.UINT16, [4]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.UINT16, [4])]), opset_imports=[helper.make_opsetid("", 14)])
    plan, side = build_plan(add, tmp_path, "add", "--backend", backend.name)
    a, b = np.array([1, 65535, 30000, 7], np.uint16), np.array([2, 2, 40000, 0], np.uint16)
    with EngineRunner(plan, side, backend) as runner:
        assert_same(runner.run({"a": a, "b": b})["c"], a + b, "uint16 add")
    x = _probe_values()
    cast = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E5M2, saturate=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2, [len(x)])]),
        opset_imports=[helper.make_opsetid("", 23)])
    plan, side = build_plan(cast, tmp_path, "cast", "--backend", backend.name)
    with EngineRunner(plan, side, backend) as runner:
        got = runner.run({"x": x})["y"]
    assert_same(got, onnx_cast.cast_to(x, TensorProto.FLOAT8E5M2, False), "float8e5m2 cast")
