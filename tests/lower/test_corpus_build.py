"""Every corpus model builds with TensorRT-RTX (no GPU) in fp32 and, through `trtc compile`, in
fp16 with dynamic-shape profiles over its symbolic dims; the compile report's predicted error
stays within the precision goals. Where a GPU is present (tests marked `gpu`), the fp32
engines also run and are compared with the CPU reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trtc.pipeline import FeedOptions, OptimizeOptions, PrecisionOptions  # noqa: E402

from corpus import assert_close_to_reference, corpus_params  # noqa: E402

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

FP16 = OptimizeOptions(precision=PrecisionOptions(target="fp16", calib_samples=1))


def profile_for(model, inputs: dict[str, np.ndarray]) -> dict:
    """MIN/OPT/MAX per dynamic input: the reference shape as OPT, half and double it around."""
    from trtc.frontend import parse_onnx

    profile = {}
    for value in parse_onnx(model.path).model.graph.inputs:
        dims = value.shape.dims
        if all(isinstance(d, int) for d in dims):
            continue
        opt = tuple(inputs[value.name].shape)
        lo = tuple(o if isinstance(d, int) else max(1, o // 2) for d, o in zip(dims, opt))
        hi = tuple(o if isinstance(d, int) else o * 2 for d, o in zip(dims, opt))
        profile[value.name] = (lo, opt, hi)
    return profile


@pytest.mark.parametrize("model", corpus_params())
def test_fp32_build(model, tmp_path):
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine
    from trtc.passes.pipeline import optimize

    inputs, _ = model.reference()
    artifact = parse_onnx(model.path)
    optimize(artifact.model)
    profile = profile_for(model, inputs)
    result = build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
                          BuildOptions(profiles=[profile] if profile else []))
    assert len(result.plan) > 0 and result.sidecar["network_layers"] > 0
    assert [p for p in result.sidecar["profiles"]] == ([{k: [list(d) for d in v] for k, v in profile.items()}]
                                                       if profile else [])
    assert_exports_to_triton(result, tmp_path)


def assert_exports_to_triton(result, tmp_path: Path) -> None:
    """The engine exports to a Triton repository that Triton's schema accepts (export parses the
    config back) and whose config the semantic check passes; batching wherever the model batches."""
    import json

    from trtc.serve.check import check_repository
    from trtc.serve.export import export_triton

    plan = tmp_path / "model.plan"
    plan.write_bytes(result.plan)
    plan.with_name("model.plan.json").write_text(json.dumps(result.sidecar))
    report = export_triton(plan, tmp_path / "repo")
    assert check_repository(tmp_path / "repo") == {"model": {"backend": "tensorrt", "problems": [], "note": None}}
    leading = {tuple(t.get("dim_names") or [None])[0] for t in result.sidecar["inputs"] + result.sidecar["outputs"]}
    batch_min = {rng[0][0] for profile in result.sidecar["profiles"] for rng in profile.values()}
    if len(leading) == 1 and None not in leading and batch_min == {1}:
        assert report["max_batch_size"] > 0, report
    elif report["max_batch_size"] == 0 and result.sidecar["profiles"]:
        assert report["notes"][0].startswith("batching off: "), report


@pytest.mark.parametrize("model", corpus_params())
def test_fp16_compile_with_profiles(model, tmp_path):
    from trtc.pipeline import BuildOptions, compile_model

    inputs, _ = model.reference()
    np.savez(tmp_path / "calib.npz", **inputs)
    profile = profile_for(model, inputs)
    report = compile_model(model.path, tmp_path / "out", build_options=BuildOptions(profiles=[profile] if profile
                                                                                    else []),
                           optimize_options=FP16, feeds=FeedOptions(files=(str(tmp_path / "calib.npz"),)), cache=False)
    assert report["engine"]["plan_bytes"] > 0 and report["precision"]["target"] == "fp16"
    for name, metrics in report["predicted"]["outputs"].items():
        assert metrics["cosine"] >= 0.999 and metrics["max_rel_error"] <= 1e-2, (name, metrics)
    floor = 0.8 if model.name.split("-")[0] in ("bert", "distilbert", "gpt2", "t5_encoder", "vit") else 0.9
    assert report["precision"]["flop_share"] >= floor
    # The typed graph is valid ONNX: strict type inference agrees with every edge's type.
    import onnx

    from trtc.ir import load_artifact
    from trtc.ir.onnx_export import to_model_proto

    typed = load_artifact(tmp_path / "out" / f"{model.path.stem}.opt.trtir").model
    onnx.checker.check_model(to_model_proto(typed), full_check=True)
    # The fp16 engine exports to Triton too, its config checked against the sidecar.
    from trtc.serve.check import check_repository
    from trtc.serve.export import export_triton

    (plan,) = (tmp_path / "out").glob("*.plan")
    export_triton(plan, tmp_path / "repo")
    assert [r["problems"] for r in check_repository(tmp_path / "repo").values()] == [[]]


@pytest.mark.gpu
@pytest.mark.parametrize("model", corpus_params())
def test_engine_matches_the_reference_on_gpu(model, tmp_path):
    from trtc.runtime.engine import no_gpu_reason

    reason = no_gpu_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine, write_plan
    from trtc.runtime.engine import EngineRunner

    inputs, expected = model.reference()
    artifact = parse_onnx(model.path)
    profile = profile_for(model, inputs)
    backend = load_backend("auto")
    result = build_engine(artifact.model, artifact.meta, backend, BuildOptions(profiles=[profile] if profile else []))
    write_plan(result, tmp_path / "m.plan")
    with EngineRunner(tmp_path / "m.plan", result.sidecar, backend) as runner:
        assert_close_to_reference(runner.run(inputs), expected, f"{model.name} engine")
