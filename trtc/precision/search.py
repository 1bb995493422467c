"""Accuracy-driven precision: the fewest, cheapest nodes moved back to fp32 until the predicted outputs meet
the user's target (`--accuracy`, `--check`), measured on the CPU simulation, never guessed.

Every trial is one run of the switchable simulation (gated.py) on the calibration samples. The nodes the
rules typed low are ranked for moving: those that do no multiply-add work first (elementwise and data
movement: they cost next to no FLOPs), then the MatMul/Gemm/Conv-like ones, each group in graph order
(an error made early passes through every later layer). Then

1. bisection over the ranked list: the shortest prefix whose move meets the target (probing the boundary
   between the two groups first);
2. each moved heavy node, most FLOPs first, is given back to the target type where the target still holds:
   what stays moved is needed, each alone (its reason says what giving it back would cost);
3. the moved cheap nodes are given back in runs of graph order, halved where a run fails, within a budget
   of trials: fewer fp32 islands, fewer casts.

The target may hold and fail again as more nodes move (the error is not monotonic in the set moved): each
step keeps only assignments it measured to pass. When only all-fp32 passes, the search fails (exit 1).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from trtc.errors import CheckFailed
from trtc.precision.judge import Verdict

CHEAP_RETURN_TRIALS = 16  # trials step 3 may spend giving cheap nodes back


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A node the rules typed low: its op, FLOPs per sample, whether it does multiply-add work."""

    name: str
    op: str
    flops: float
    heavy: bool


Evaluate = Callable[[frozenset[str]], Verdict]  # the nodes kept low -> the verdict on the outputs


class Trials:
    """Memoised evaluations, counted."""

    def __init__(self, evaluate: Evaluate):
        self._evaluate = evaluate
        self._seen: dict[frozenset[str], Verdict] = {}
        self.count = 0

    def __call__(self, low: Collection[str]) -> Verdict:
        key = frozenset(low)
        if key not in self._seen:
            self.count += 1
            self._seen[key] = self._evaluate(key)
        return self._seen[key]


@dataclasses.dataclass
class SearchResult:
    """What the search moved to fp32 (node name -> reason), and the verdicts before and after."""

    moved: dict[str, str]
    before: Verdict
    after: Verdict
    trials: int
    seconds: float


def _why(verdict: Verdict) -> str:
    return "; ".join(verdict.failed) or "the target holds"


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The order of moving: cheap nodes before heavy ones, each group in graph order (candidates are given
    in graph order)."""
    return sorted(candidates, key=lambda c: c.heavy)  # stable: graph order within each group


def shortest_prefix(ranked: Sequence[Candidate], trials: Trials) -> int:
    """The smallest k (bisection) such that moving ranked[:k] passes, given that moving none fails and moving
    all passes; the first probe is the boundary between cheap and heavy nodes."""
    names = [c.name for c in ranked]
    lo, hi = 0, len(ranked)
    probe = sum(1 for c in ranked if not c.heavy)
    while hi - lo > 1:
        mid = probe if lo < probe < hi else (lo + hi) // 2
        probe = -1
        if trials(names[mid:]).ok:
            hi = mid
        else:
            lo = mid
    return hi


def give_back_heavy(moved: list[Candidate], low: set[str], trials: Trials, reasons: dict[str, str],
                    target: str = "the target type") -> None:
    """Give each moved heavy node back to the target type, most FLOPs first, where the target still holds;
    the reason of each that stays says what giving it back measured."""
    for cand in sorted((c for c in moved if c.heavy), key=lambda c: -c.flops):
        verdict = trials(low | {cand.name})
        if verdict.ok:
            low.add(cand.name)
        else:
            reasons[cand.name] = f"accuracy search: back in {target} it misses the target ({_why(verdict)})"


def give_back_cheap(moved: list[Candidate], low: set[str], trials: Trials, reasons: dict[str, str],
                    target: str = "the target type", budget: int = CHEAP_RETURN_TRIALS) -> None:
    """Give the moved cheap nodes back in runs of graph order, halving a run that fails, within `budget`
    trials; a run's nodes that stay get its measured reason."""
    runs = [[c.name for c in moved if not c.heavy]]
    start = trials.count
    while runs:
        run = runs.pop(0)
        if not run:
            continue
        if trials.count - start >= budget:
            for name in run:
                reasons.setdefault(name, "accuracy search: moved with the cheap nodes (the search's budget ended "
                                         "before they were tried back)")
            continue
        verdict = trials(low | set(run))
        if verdict.ok:
            low.update(run)
            continue
        for name in run:
            reasons[name] = (f"accuracy search: back in {target} with {len(run) - 1} other cheap node(s) around "
                             f"it, it misses the target ({_why(verdict)})" if len(run) > 1 else
                             f"accuracy search: back in {target} it misses the target ({_why(verdict)})")
        if len(run) > 1:
            runs += [run[: len(run) // 2], run[len(run) // 2:]]


def search(candidates: Sequence[Candidate], evaluate: Evaluate, what: str = "the target",
           target: str = "the target type") -> SearchResult:
    """The nodes to move to fp32 so that `evaluate` passes (see the module docstring). CheckFailed when only
    moving every candidate passes, or not even that."""
    start = time.perf_counter()
    trials = Trials(evaluate)
    names = [c.name for c in candidates]
    before = trials(names)
    if before.ok:
        return SearchResult({}, before, before, trials.count, time.perf_counter() - start)
    none = trials([])
    if not none.ok:
        raise CheckFailed(f"{what} is missed even with every node in fp32 ({_why(none)})",
                          hint="check the target (or the --check command) against the fp32 model's own outputs")
    ranked = rank(candidates)
    k = shortest_prefix(ranked, trials)
    moved = ranked[:k]
    low = {c.name for c in ranked[k:]}
    reasons: dict[str, str] = {}
    give_back_heavy(moved, low, trials, reasons, target)
    give_back_cheap(moved, low, trials, reasons, target)
    if not low:
        raise CheckFailed(f"no assignment short of all-fp32 meets {what} (with every node in {target}: "
                          f"{_why(before)})", hint="loosen the target, or build in fp32")
    after = trials(low)
    kept = {name: reasons.get(name, "accuracy search: moved") for name in names if name not in low}
    return SearchResult(kept, before, after, trials.count, time.perf_counter() - start)


def search_record(result: SearchResult, candidates: Sequence[Candidate]) -> dict[str, Any]:
    """The search as the precision report keeps it (JSON): the verdicts before and after, every node moved
    with its op, FLOPs and reason, trials and time."""
    by_name = {c.name: c for c in candidates}
    return {
        "before": {"ok": result.before.ok, "metrics": result.before.metrics, "failed": result.before.failed},
        "after": {"ok": result.after.ok, "metrics": result.after.metrics, "failed": result.after.failed},
        "moved": [{"node": n, "op": by_name[n].op, "flops": by_name[n].flops, "reason": r}
                  for n, r in result.moved.items()],
        "trials": result.trials, "seconds": round(result.seconds, 3),
    }
