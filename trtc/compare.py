"""`trtc compare A B`: run two artifacts on the same inputs and compare every output.

.onnx and .trtir run on the CPU reference; a .trtir typed for fp16/bf16 runs through the
precision simulation (so `compare model.onnx model.fp16.trtir` predicts the engine's error
without a GPU); a .plan runs on the GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import CheckFailed, TrtcError
from trtc.loading import open_model
from trtc.runtime.io import TensorSpec, model_inputs, sidecar_inputs
from trtc.runtime.reference import ReferenceRunner
from trtc.runtime.sidecar import PLAN_SUFFIXES, read_sidecar

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3


@dataclasses.dataclass
class Executable:
    """Something that maps feeds to outputs, with the inputs it expects and how it runs."""

    path: Path
    inputs: list[TensorSpec]
    run: Callable[[Mapping[str, Any]], dict[str, Any]]
    how: str
    close: Callable[[], None] = lambda: None


def executable_for(path: str | Path) -> Executable:
    path = Path(path)
    if path.suffix in PLAN_SUFFIXES:
        return _engine_executable(path)
    artifact = open_model(path)
    inputs = model_inputs(artifact.model)
    precision = artifact.meta.get("precision")
    model, how = artifact.model, "CPU reference"
    if precision:
        from trtc.precision.simulate import simulation_model

        model, how = simulation_model(artifact.model), f"CPU simulation of {precision['target']}"
    runner = ReferenceRunner(model)

    def run(feeds):
        wanted = {s.name: s.dtype for s in model_inputs(model)}
        return runner.run({k: np.asarray(v, dtype=wanted.get(k) or np.asarray(v).dtype) for k, v in feeds.items()})

    return Executable(path, inputs, run, how, runner.close)


def _engine_executable(path: Path) -> Executable:
    from trtc.lower.backend import load_backend
    from trtc.runtime.engine import EngineRunner, no_gpu_reason

    sidecar = read_sidecar(path)
    reason = no_gpu_reason()
    if reason is not None:
        raise TrtcError(f"cannot run a TensorRT engine here: {reason}", where=str(path),
                        hint="compare the .trtir it was built from instead (CPU reference / simulation)")
    runner = EngineRunner(path, sidecar, load_backend(sidecar["backend"]))
    return Executable(path, sidecar_inputs(sidecar), runner.run, f"{sidecar['backend']} engine", runner.close)


def parse_tolerances(values: Sequence[str], default: float, option: str) -> tuple[float, dict[str, float]]:
    """`--atol 1e-3 --atol logits=1e-2` -> (1e-3, {'logits': 1e-2})."""
    overall, per_output = default, {}
    for text in values:
        name, sep, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise TrtcError(f"not a number: {number!r}", where=f"{option} {text}") from None
        if sep:
            per_output[name] = value
        else:
            overall = value
    return overall, per_output


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Metrics of `a` against the reference `b`."""
    if a.shape != b.shape:
        return {"match": False, "reason": f"shape {a.shape} vs {b.shape}"}
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if x.size == 0:
        return {"match": True, "max_abs_error": 0.0, "max_rel_error": 0.0, "mean_abs_error": 0.0, "cosine": 1.0,
                "beyond_tolerance": 0.0}
    diff = np.abs(x - y)
    both_nan = np.isnan(x) & np.isnan(y)
    diff[both_nan | (x == y)] = 0.0  # equal infinities and NaN positions agree
    beyond = (diff > atol + rtol * np.abs(y)) | (np.isnan(diff) & ~both_nan)
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    finite = np.isfinite(diff)
    return {
        "match": not beyond.any(),
        "max_abs_error": float(diff[finite].max()) if finite.any() else float("inf"),
        "max_rel_error": float((diff[finite] / np.maximum(np.abs(y[finite]), 1e-12)).max()) if finite.any() else
        float("inf"),
        "mean_abs_error": float(diff[finite].mean()) if finite.any() else float("inf"),
        "cosine": float(np.dot(x, y) / norm) if norm and np.isfinite(norm) else float(np.array_equal(x, y)),
        "beyond_tolerance": float(beyond.mean()),
    }


def compare(a: Executable, b: Executable, feeds: Mapping[str, Any], atol: tuple[float, dict[str, float]],
            rtol: tuple[float, dict[str, float]]) -> dict[str, Any]:
    """Run both on `feeds`; B is the reference. Every output both have is compared."""
    out_a, out_b = a.run(feeds), b.run(feeds)
    common = [n for n in out_b if n in out_a]
    if not common:
        raise TrtcError("the two artifacts have no output name in common",
                        hint=f"{a.path}: {', '.join(out_a)}; {b.path}: {', '.join(out_b)}")
    results = {}
    for name in common:
        tol_a, tol_r = atol[1].get(name, atol[0]), rtol[1].get(name, rtol[0])
        results[name] = {"atol": tol_a, "rtol": tol_r,
                         **compare_arrays(np.asarray(out_a[name]), np.asarray(out_b[name]), tol_a, tol_r)}
    return {"a": {"path": str(a.path), "runs_on": a.how}, "b": {"path": str(b.path), "runs_on": b.how},
            "outputs": results, "match": all(r["match"] for r in results.values())}


def _why(result: Mapping[str, Any]) -> str:
    if "reason" in result:
        return result["reason"]
    return (f"{result['beyond_tolerance']:.2%} of elements beyond atol {result['atol']:g} + rtol {result['rtol']:g}, "
            f"max abs error {result['max_abs_error']:.3g}")


def raise_on_mismatch(report: Mapping[str, Any]) -> None:
    """Exit code 1, naming every output that differs."""
    bad = [f"{name} ({_why(r)})" for name, r in report["outputs"].items() if not r["match"]]
    if bad:
        raise CheckFailed(f"outputs differ: {'; '.join(bad)}", where=f"{report['a']['path']} vs {report['b']['path']}")
