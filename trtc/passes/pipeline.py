"""The pass manager: runs passes to a fixed point, optionally verifying each one
numerically against the CPU reference, and reports what each did."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from trtc.errors import CheckFailed, TrtcError
from trtc.ir.walk import weight_bytes
from trtc.passes.registry import PASSES, PassContext, PassInfo
from trtc.reference import tolerance
from trtc.reference.runner import InputRejected, ReferenceRunner

MAX_ITERATIONS = 8
INPUT_MODEL = "the input model"  # what the first reference run is called in messages


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


class Verifier:
    """`--verify`: checks each pass that changed the model against the model just before it.

    Each pass answers for its own change (so the drift from the input model is at most the sum
    of the passes' bounds, and the pass named is the one that moved the outputs), by the rule of
    `trtc.reference.tolerance`: within a few ulps passes at no extra cost (structural passes);
    beyond that, a copy of the model as it was before runs once more with the nodes rewritten
    since perturbed by 8 x their fp32 rounding, and how far that moves each output is its bound;
    a quantized output may differ by one step exactly where the float value entering its
    quantizer crossed a rounding boundary.

    The copy is taken at the start and after each such measurement, not after every pass (a
    copy of a large graph costs a good part of a run): passes that stayed within the floor
    since then are measured together with the one that did not, which only widens its bound by
    their rounding. The cost is one model run per pass beyond the floor."""

    def __init__(self, model: ir.Model, feeds: Mapping[str, Any]):
        self.feeds = feeds
        self.before = tolerance.run_outputs(model, self._runner(INPUT_MODEL))
        self._mark(model, self.before)

    def _mark(self, model: ir.Model, outputs: tolerance.Outputs) -> None:
        """Remember `model` as it is now, with its outputs, as the state the next measurement perturbs."""
        self.snapshot_outputs = outputs
        try:
            self.snapshot: ir.Model | None = model.clone()  # shares the weights: passes replace, never write
        except Exception as exc:  # onnx-ir refuses some graphs it can still run
            logging.getLogger("trtc").warning("verify: cannot copy the model (%s); passes beyond the floor are "
                                              "judged by the fixed bound", str(exc).splitlines()[0][:200])
            self.snapshot = None

    def _runner(self, what: str) -> Callable[[ir.Model, Sequence[ir.Value]], dict[str, Any]]:
        return lambda model, fetch: _run(model, self.feeds, what, fetch)

    def check(self, model: ir.Model, name: str, rewrites: Mapping[str, int]) -> None:
        """Raise CheckFailed naming pass `name` if its outputs drift beyond their bounds."""
        after = tolerance.run_outputs(model, self._runner(f"the model after pass {name!r}"))
        quantized = tolerance.quantized_outputs(model)
        drift = tolerance.output_drift(self.before, after, None, quantized)
        if drift is None:
            self.before = after
            return
        # Beyond the floor: measure what rounding in the rewritten nodes does.
        drift = tolerance.output_drift(self.before, after, self._sensitivity(model, name), quantized)
        if drift is not None:
            raise CheckFailed(f"pass {name!r} {drift.describe()}, against the model before it (rewrites: "
                              f"{dict(rewrites)})", hint=f"rerun with --disable {name} and report the model")
        self.before = after
        self._mark(model, after)

    def _sensitivity(self, model: ir.Model, name: str) -> tolerance.Sensitivity:
        """What rounding in the nodes rewritten since the last copy does to the model as copied (the copy is
        perturbed in place, then replaced)."""
        if self.snapshot is None:
            return tolerance.fixed_sensitivity(self.before, "the model before the pass could not be copied")
        found = tolerance.measure(self.snapshot, model, self.snapshot_outputs,
                                  self._runner(f"the model before {name!r} with its rewritten nodes perturbed"))
        self.snapshot = None  # perturbed: useless until the next copy
        for output, reason in found.fixed.items():
            logging.getLogger("trtc").warning("verify: pass %r, output %r: %s; judged by the fixed bound",
                                              name, output, reason)
        return found


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
    the model; the first pass whose outputs drift beyond the bound its rewrite's rounding
    allows (`Verifier`, `trtc.reference.tolerance`) raises CheckFailed naming the pass,
    the output and the bound.
    """
    passes = select_passes() if passes is None else list(passes)
    ctx = ctx or PassContext()
    ctx.model_weight_bytes = weight_bytes(model.graph)
    start = time.perf_counter()
    before_all = node_count(model)
    verifier = Verifier(model, verify_feeds) if verify_feeds is not None else None
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
            if verifier is not None:
                verifier.check(model, info.name, rewrites)
            if after_pass:
                after_pass(info.name, model)
        if not changed:
            break
    return OptimizeReport(runs, before_all, node_count(model), iteration, time.perf_counter() - start,
                          verifier is not None)


def _run(model: ir.Model, feeds: Mapping[str, Any], what: str, fetch: Sequence[ir.Value] = ()) -> dict[str, Any]:
    runner = ReferenceRunner(model, fetch=fetch)
    try:
        return runner.run(feeds)
    except InputRejected:
        if what == INPUT_MODEL:
            raise  # the inputs do not fit the model as given: the user's error, not a pass's
        raise CheckFailed(f"the CPU reference refuses the inputs for {what}, which it took before the pass") from None
    except Exception as exc:  # a broken rewrite can make any executor error out
        raise CheckFailed(f"the CPU reference cannot run {what}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        if what == INPUT_MODEL:  # said once: every later run goes the same way
            runner.warn_if_fallback("--verify")
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
