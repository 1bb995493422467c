"""The pass manager: runs passes to a fixed point, optionally verifying each one
numerically against the CPU reference, and reports what each did."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import CheckFailed, TrtcError
from trtc.ir.walk import weight_bytes
from trtc.passes.registry import PASSES, PassContext, PassInfo
from trtc.reference.metrics import abs_errors
from trtc.reference.runner import ReferenceRunner

MAX_ITERATIONS = 8


def node_count(model: ir.Model) -> int:
    return len(model.graph)


def select_passes(passes: Sequence[str] | None = None, disable: Sequence[str] = ()) -> list[PassInfo]:
    """The pipeline: `passes` in that order (default: every default pass), minus `disable`."""
    for name in [*(passes or ()), *disable]:
        if name not in PASSES:
            raise TrtcError(f"unknown pass {name!r}", where="--passes/--disable",
                            hint="see `trtc optimize --list-passes` for the names")
    chosen = [PASSES[n] for n in passes] if passes else [p for p in PASSES.values() if p.default]
    return [p for p in chosen if p.name not in set(disable)]


def _relative_tolerance(dtype: np.dtype) -> float:
    """1e-4 for fp32/fp64 outputs; a few units of rounding for fp16/bf16 ones, where a rewrite that
    rounds once instead of twice (a fusion) moves results by about one unit."""
    if dtype in (np.float32, np.float64):
        return 1e-4
    import ml_dtypes  # knows bfloat16 and the fp8 types too

    return max(1e-4, 4 * float(ml_dtypes.finfo(dtype).eps))


def output_drift(reference: Mapping[str, Any], outputs: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """The first output beyond tolerance as (name, error, bound), or None.

    Tolerance: max abs error <= 1e-4 x max(1, |reference|max) (a few fp16/bf16 rounding units for
    outputs of those types); integer and boolean
    outputs must match exactly; NaN must stay NaN.
    """
    for name, want in reference.items():
        got = outputs.get(name)
        if not isinstance(want, np.ndarray):
            continue
        got = np.asarray(got)
        if got.shape != want.shape:
            return name, float("inf"), 0.0
        if want.size == 0:
            continue
        if want.dtype.kind in "biu":
            if not np.array_equal(got, want):
                return name, float(np.abs(got.astype(np.float64) - want).max()), 0.0
            continue
        finite = want[np.isfinite(want)]
        scale = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
        bound = _relative_tolerance(want.dtype) * scale
        err = float(abs_errors(want, got).max())  # NaN/Inf that moved: NaN or Inf
        if not err <= bound:
            return name, err, bound
    return None


@dataclasses.dataclass
class PassRun:
    name: str
    iteration: int
    nodes_before: int
    nodes_after: int
    rewrites: dict[str, int]
    seconds: float


@dataclasses.dataclass
class OptimizeReport:
    runs: list[PassRun]
    nodes_before: int
    nodes_after: int
    iterations: int
    seconds: float
    verified: bool

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per pass: rewrites per pattern, node delta and time, over all iterations."""
        out: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            entry = out.setdefault(run.name, {"rewrites": {}, "nodes_removed": 0, "seconds": 0.0})
            for pattern, n in run.rewrites.items():
                entry["rewrites"][pattern] = entry["rewrites"].get(pattern, 0) + n
            entry["nodes_removed"] += run.nodes_before - run.nodes_after
            entry["seconds"] += run.seconds
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 4),
            "verified": self.verified,
            "passes": {k: {**v, "seconds": round(v["seconds"], 4)} for k, v in self.totals().items()},
            "runs": [dataclasses.asdict(r) for r in self.runs if r.rewrites],
        }


def optimize(
    model: ir.Model,
    *,
    passes: Sequence[PassInfo] | None = None,
    ctx: PassContext | None = None,
    verify_feeds: Mapping[str, Any] | None = None,
    after_pass: Callable[[str, ir.Model], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> OptimizeReport:
    """Run `passes` over `model` in place until none changes anything.

    With `verify_feeds`, the CPU reference runs before and after every pass that changed
    the model; the first pass whose outputs drift beyond tolerance raises CheckFailed
    naming the pass and the output.
    """
    passes = select_passes() if passes is None else list(passes)
    ctx = ctx or PassContext()
    ctx.model_weight_bytes = weight_bytes(model.graph)
    start = time.perf_counter()
    before_all = node_count(model)
    reference = _run(model, verify_feeds, "the input model") if verify_feeds is not None else None
    runs: list[PassRun] = []
    iteration = 0
    for iteration in range(1, MAX_ITERATIONS + 1):
        changed = False
        for info in passes:
            if progress:
                progress(f"iteration {iteration}: {info.name}")
            n0, t0 = node_count(model), time.perf_counter()
            rewrites = {k: v for k, v in info.fn(model, ctx).items() if v}
            runs.append(PassRun(info.name, iteration, n0, node_count(model), rewrites, time.perf_counter() - t0))
            if not rewrites:
                continue
            changed = True
            if reference is not None:
                outputs = _run(model, verify_feeds, f"the model after pass {info.name!r}")
                drift = output_drift(reference, outputs)
                if drift is not None:
                    name, err, bound = drift
                    raise CheckFailed(
                        f"pass {info.name!r} changed output {name!r}: max abs error {err:.3g} exceeds "
                        f"{bound:.3g} (rewrites: {rewrites})",
                        hint=f"rerun with --disable {info.name} and report the model",
                    )
            if after_pass:
                after_pass(info.name, model)
        if not changed:
            break
    return OptimizeReport(runs, before_all, node_count(model), iteration, time.perf_counter() - start,
                          reference is not None)


def _run(model: ir.Model, feeds: Mapping[str, Any], what: str) -> dict[str, Any]:
    runner = ReferenceRunner(model)
    try:
        return runner.run(feeds)
    except Exception as exc:  # a broken rewrite can make any executor error out
        raise CheckFailed(f"the CPU reference cannot run {what}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        runner.close()


def optimized_meta(meta: Mapping[str, Any], report: OptimizeReport, options: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata of the optimized artifact: the source carried over, this stage's record added."""
    carried = {k: v for k, v in meta.items() if k in ("source", "parse")}
    return {
        **carried,
        "stage": "optimize",
        "input_hash": meta.get("content_hash") or meta.get("input_hash"),
        "optimize": {"options": dict(options), **report.as_dict()},
    }
