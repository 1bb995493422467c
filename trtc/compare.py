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
from trtc.reference.feeds import TensorSpec, model_inputs
from trtc.reference.metrics import abs_errors, error_metrics
from trtc.reference.runner import ReferenceRunner
from trtc.runtime.sidecar import PLAN_SUFFIXES, read_sidecar


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
    return Executable(path(sidecar), runner.run, f"{sidecar['backend']} engine", runner.close)


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
    """Metrics of `a` against the reference `b` (trtc.reference.metrics) and the share of elements
    beyond atol + rtol x |b| (numpy's allclose rule)."""
    if a.shape != b.shape:
        return {"match": False, "reason": f"shape {a.shape} vs {b.shape}"}
    diff = abs_errors(b, a)
    with np.errstate(invalid="ignore"):
        beyond = ~(diff <= atol + rtol * np.abs(np.asarray(b, dtype=np.float64).ravel()))
    metrics = error_metrics(b, a)
    return {"match": not beyond.any(), **metrics, "beyond_tolerance": float(beyond.mean()) if diff.size else 0.0}


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
