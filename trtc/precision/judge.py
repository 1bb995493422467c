"""What an accuracy search aims for: `--accuracy` targets on the predicted error, or a user's `--check`
command that judges the outputs itself.

    cosine=0.9999              every float output: cosine similarity to the fp32 reference >= 0.9999
    max-error=0.05             largest |error| <= 0.05 of the output's range (trtc.reference.metrics)
    mean-error=1e-4            mean |error| <= 1e-4 of the output's range
    logits:cosine=0.99999      that output only (repeat the flag for several targets)

Each target holds when it holds on every calibration sample (the worst sample counts).

A check command runs once per sample through the shell, with the outputs in .npz files named by
environment variables, and accepts them with exit status 0:

    TRTC_CHECK_OUTPUTS    the predicted outputs of the low-precision model, keyed by output name
    TRTC_CHECK_REFERENCE  the fp32 reference outputs, keyed by output name
    TRTC_CHECK_INPUTS     the sample's inputs, keyed by input name
    TRTC_CHECK_SAMPLE     the sample's index (0, 1, ...)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import TrtcError
from trtc.reference.metrics import error_metrics, output_range, worst

# metric name -> (key in output_metrics, whether larger is better)
METRICS = {"cosine": ("cosine", True), "max-error": ("max_rel_error", False), "mean-error": ("mean_rel_error", False)}
CHECK_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class AccuracyTarget:
    """One `--accuracy` target; `output` None: every float output."""

    metric: str
    value: float
    output: str | None = None

    @property
    def text(self) -> str:
        return f"{self.output + ':' if self.output else ''}{self.metric}={self.value:.10g}"

    def holds(self, metrics: Mapping[str, Any]) -> bool:
        """Whether one output's (worst-case) metrics meet the target; NaN and inf never do."""
        key, larger_is_better = METRICS[self.metric]
        got = metrics[key]
        return bool(got >= self.value) if larger_is_better else bool(got <= self.value)


def parse_accuracy(specs: Sequence[str], outputs: Sequence[str] | None = None) -> list[AccuracyTarget]:
    """`--accuracy` strings as targets; `outputs` (the model's float outputs), when given, checks the names."""
    targets = []
    for spec in specs:
        head, sep, value = spec.rpartition("=")
        output, _, metric = head.rpartition(":")  # an output's name may hold ':' (TensorFlow's 'logits:0')
        if not sep or metric not in METRICS:
            raise TrtcError(f"{spec!r} is not METRIC=VALUE or OUTPUT:METRIC=VALUE with METRIC one of "
                            f"{', '.join(METRICS)}", where="--accuracy", hint="e.g. --accuracy cosine=0.9999")
        try:
            number = float(value)
        except ValueError:
            raise TrtcError(f"{spec!r}: {value!r} is not a number", where="--accuracy") from None
        if not np.isfinite(number) or number < 0 or (metric == "cosine" and number > 1):
            raise TrtcError(f"{spec!r}: {metric} must be " + ("in [0, 1]" if metric == "cosine" else ">= 0"),
                            where="--accuracy")
        if output and outputs is not None and output not in outputs:
            raise TrtcError(f"{spec!r}: the model has no float output {output!r}", where="--accuracy",
                            hint=f"its float outputs: {', '.join(outputs) or 'none'}")
        targets.append(AccuracyTarget(metric, number, output or None))
    return targets


def output_metrics(reference: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """error_metrics plus the mean error relative to the output's range (`mean-error`)."""
    metrics = error_metrics(reference, predicted)
    metrics["mean_rel_error"] = metrics["mean_abs_error"] / output_range(reference)
    return metrics


def worst_metrics(reference: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per float output, each metric's worst value over the samples."""
    found: dict[str, list[dict[str, Any]]] = {}
    for ref, res in zip(reference, results, strict=True):
        for name, array in ref.items():
            if isinstance(array, np.ndarray) and array.dtype.kind == "f":
                found.setdefault(name, []).append(output_metrics(array, res[name]))
    return {name: {**worst(ms), "mean_rel_error": max(m["mean_rel_error"] for m in ms)} for name, ms in found.items()}


@dataclasses.dataclass
class Verdict:
    """Whether an assignment's outputs are acceptable, the metrics they have, and what failed."""

    ok: bool
    metrics: dict[str, dict[str, Any]]
    failed: list[str]  # e.g. "sigmoid: cosine 0.99929 < 0.9999", "check: exit 1 on sample 0 (last line)"


def missed(targets: Sequence[AccuracyTarget], metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The targets `metrics` miss, each as 'OUTPUT: METRIC GOT vs VALUE'."""
    failed = []
    for target in targets:
        for name, m in metrics.items():
            if target.output in (None, name) and not target.holds(m):
                key, larger = METRICS[target.metric]
                got = f"{m[key]:.8f}" if target.metric == "cosine" else f"{m[key]:.4g}"
                failed.append(f"{name}: {target.metric} {got} {'<' if larger else '>'} {target.value:.10g}")
    return failed


class CheckCommand:
    """A user's command as a judge: run once per sample on the predicted outputs (see the module docstring)."""

    def __init__(self, command: str, samples: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]):
        self.command = command
        self._dir = tempfile.TemporaryDirectory(prefix="trtc-check-")
        self.folder = Path(self._dir.name)
        self.runs = 0
        for i, (sample, ref) in enumerate(zip(samples, reference, strict=True)):
            np.savez(self.folder / f"inputs{i}.npz", **{k: np.asarray(v) for k, v in sample.items()})
            np.savez(self.folder / f"reference{i}.npz", **{k: np.asarray(v) for k, v in ref.items()})

    def judge(self, results: Sequence[Mapping[str, Any]]) -> str | None:
        """None when the command accepts every sample's outputs, else why not (the first refusal)."""
        for i, outputs in enumerate(results):
            path = self.folder / f"outputs{i}.npz"
            np.savez(path, **{k: np.asarray(v) for k, v in outputs.items()})
            env = {**os.environ, "TRTC_CHECK_OUTPUTS": str(path), "TRTC_CHECK_SAMPLE": str(i),
                   "TRTC_CHECK_REFERENCE": str(self.folder / f"reference{i}.npz"),
                   "TRTC_CHECK_INPUTS": str(self.folder / f"inputs{i}.npz")}
            self.runs += 1
            try:
                done = subprocess.run(self.command, shell=True, env=env, capture_output=True, text=True,
                                      timeout=CHECK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return f"check: no answer within {CHECK_TIMEOUT_S:g} s on sample {i}"
            if done.returncode != 0:
                said = (done.stdout + done.stderr).strip().splitlines()
                return f"check: exit {done.returncode} on sample {i}" + (f" ({said[-1][:200]})" if said else "")
        return None

    def close(self) -> None:
        self._dir.cleanup()


def make_judge(targets: Sequence[AccuracyTarget], check: CheckCommand | None,
               reference: Sequence[Mapping[str, Any]]) -> Callable[[Sequence[Mapping[str, Any]]], Verdict]:
    """judge(results per sample) -> Verdict: the targets on the metrics, then (only if they hold) the command."""

    def judge(results: Sequence[Mapping[str, Any]]) -> Verdict:
        metrics = worst_metrics(reference, results)
        failed = missed(targets, metrics)
        if not failed and check is not None and (refusal := check.judge(results)) is not None:
            failed.append(refusal)
        return Verdict(not failed, metrics, failed)

    return judge
