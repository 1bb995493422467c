"""Where a low-precision model's error comes from (`trtc debug precision`): per output, the nodes whose
fp16/bf16 adds the most error, measured on the switchable simulation (gated.py), never guessed from local
errors (which say where error shows, not what it does to the outputs).

A node's contribution to an output is the error that output gets with that node alone in the target type
(every other node fp32), as a share of the error with every node of the plan in it; the measure is the
squared error relative to the output's own square (additive where errors are independent; where they are
not, the shares add up to less or more than 100%). For each node listed, the plan's error with that node
alone moved to fp32 is measured too: what keeping it fp32 would buy. Finding the top
nodes among N takes far fewer than N trials: runs of nodes in graph order are measured alone and the run
with the largest share is halved first (best first), until the top nodes are single nodes with larger
shares than any run left whole, or the trials are spent (the runs left whole are listed).

Beside that, one run of the plan fetches every value: each node's own output error (max |error| over its
range, as trtc.reference.metrics defines it) and the first node in graph order whose output error passes a
threshold (the "first bad layer" a layer-by-layer comparison finds), with the observed ranges the precision
rules decided on.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.precision import Plan
from trtc.precision.assign import all_nodes
from trtc.precision.gated import GatedSimulation, gated_simulation
from trtc.precision.judge import worst_metrics
from trtc.precision.rules import PrecisionOptions
from trtc.reference.metrics import error_metrics
from trtc.reference.runner import ReferenceRunner

FIRST_BAD = 1e-2  # a node's output error (relative to its range) that counts as gone wrong


@dataclasses.dataclass
class Measured:
    """One trial: the nodes kept low, per output the relative squared error and the worst metrics."""

    nodes: tuple[str, ...]
    energy: dict[str, float]
    metrics: dict[str, dict[str, Any]]


def energies(reference: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per float output: sum of squared errors over sum of squared reference values, over the samples."""
    found: dict[str, list[float]] = {}
    for ref, res in zip(reference, results, strict=True):
        for name, array in ref.items():
            if isinstance(array, np.ndarray) and array.dtype.kind == "f":
                want = array.astype(np.float64)
                diff = np.nan_to_num(res[name].astype(np.float64) - want, nan=np.inf)
                pair = found.setdefault(name, [0.0, 0.0])
                pair[0] += float(np.square(diff).sum())
                pair[1] += float(np.square(want).sum())
    return {name: err / scale if scale else err for name, (err, scale) in found.items()}


class Trials:
    """The switchable simulation run for sets of nodes kept low, counted."""

    def __init__(self, sim: GatedSimulation, samples: Sequence[Mapping[str, Any]],
                 reference: Sequence[Mapping[str, Any]]):
        self.sim, self.samples, self.reference = sim, samples, reference
        self.runner = ReferenceRunner(sim.model)
        self.count = 0

    def measure(self, nodes: Sequence[str]) -> Measured:
        self.count += 1
        results = [self.runner.run({**s, **self.sim.feeds(nodes)}, validate=False) for s in self.samples]
        return Measured(tuple(nodes), energies(self.reference, results), worst_metrics(self.reference, results))

    def close(self) -> None:
        self.runner.warn_if_fallback("precision debug: the simulation")
        self.runner.close()


def _score(measured: Measured, whole: Measured) -> float:
    """The largest share of any output's error this run has alone."""
    return max((e / whole.energy[o] if whole.energy.get(o) else 0.0 for o, e in measured.energy.items()),
               default=0.0)


def best_first(nodes: Sequence[str], trials: Trials, whole: Measured, top: int, budget: int) -> tuple[
        list[Measured], list[Measured]]:
    """Single nodes measured alone (largest share first) and the runs left whole (see the module docstring)."""
    heap: list[tuple[float, int, Measured]] = [(-1.0, 0, whole)]
    singles: list[Measured] = []
    order = 1
    while heap and trials.count < budget:
        score, _, run = heap[0]
        if len(singles) >= top and -score <= sorted((_score(s, whole) for s in singles), reverse=True)[top - 1]:
            break
        heapq.heappop(heap)
        if len(run.nodes) == 1:
            singles.append(run)
            continue
        half = len(run.nodes) // 2
        for part in (run.nodes[:half], run.nodes[half:]):
            measured = trials.measure(part)
            heapq.heappush(heap, (-_score(measured, whole), order, measured))
            order += 1
    singles += [run for _, _, run in heap if len(run.nodes) == 1]
    return singles, [run for _, _, run in sorted(heap) if len(run.nodes) > 1]


def local_errors(sim: GatedSimulation, plan: Plan, samples: Sequence[Mapping[str, Any]],
                 low: Sequence[str]) -> dict[str, float]:
    """Each value's error (max |error| / its range) on the first sample with the plan's nodes low."""
    fetch = [v for node in sim.model.graph for v in node.outputs if v.name in plan.obs.first]
    runner = ReferenceRunner(sim.model, fetch=fetch)
    try:
        got = runner.run({**samples[0], **sim.feeds(low)}, validate=False)
    finally:
        runner.close()
    return {name: error_metrics(plan.obs.first[name], got[name])["max_rel_error"] for name in plan.obs.first
            if name in got}


def ranges(node: ir.Node, plan: Plan) -> dict[str, Any]:
    """The observed max |x| of the node's outputs, computed inputs and weights (what the rules judged)."""
    def peak(value: ir.Value | None) -> float:
        return float(plan.obs.magnitude(value))

    return {"outputs": {v.name: peak(v) for v in node.outputs if v.name in plan.obs.max_abs},
            "inputs": {v.name: peak(v) for v in node.inputs if v is not None and v.const_value is None
                       and v.name in plan.obs.max_abs},
            "weights": {v.name: peak(v) for v in node.inputs if v is not None and v.const_value is not None
                        and v.dtype == ir.DataType.FLOAT}}


def explain(model: ir.Model, plan: Plan, samples: Sequence[Mapping[str, Any]], options: PrecisionOptions, *,
            sources: Mapping[str, str | None] | None = None, top: int = 10, budget: int = 64) -> dict[str, Any]:
    """The debugger's report of `plan` (of `model`, not yet typed, for `options`): see the module docstring.
    `sources`: the source model's node name for each node, where one is known."""
    target = options.target
    start = time.perf_counter()
    nodes = {n.name: n for n in all_nodes(model)}
    low = [name for name in nodes if plan.decision.compute.get(name) == "low"]
    sim = gated_simulation(model, plan.decision, target, low, options.cast_io)
    trials = Trials(sim, samples, plan.reference)
    try:
        whole = trials.measure(low)
        singles, runs = best_first(low, trials, whole, top, budget)
        listed = {m.nodes[0] for o in whole.energy for m in sorted(singles, key=lambda m: -m.energy[o])[:top]}
        relief = {name: trials.measure([n for n in low if n != name]) for name in sorted(listed)}
    finally:
        trials.close()
    local = local_errors(sim, plan, samples, low)
    sources = sources or {}

    def node_entry(name: str) -> dict[str, Any]:
        node = nodes[name]
        out = max((local.get(v.name, 0.0) for v in node.outputs), default=0.0)
        return {"node": name, "op": node.op_type, "source": sources.get(name), "output_error": out,
                "flops": plan.flops.get(name, 0.0), "ranges": ranges(node, plan),
                "compute": plan.decision.compute.get(name), "reason": plan.decision.reasons.get(name)}

    outputs = {}
    for output, total in whole.energy.items():
        ranked = sorted(singles, key=lambda m: -m.energy[output])[:top]
        outputs[output] = {
            "predicted": whole.metrics[output], "error_energy": total,
            "contributors": [{**node_entry(m.nodes[0]), "share": m.energy[output] / total if total else 0.0,
                              "alone": m.metrics[output], "kept_fp32": relief[m.nodes[0]].metrics[output]}
                             for m in ranked],
            "unresolved": [{"first": r.nodes[0], "last": r.nodes[-1], "nodes": len(r.nodes),
                            "share": r.energy[output] / total if total else 0.0} for r in runs],
        }
    order = [v.name for n in model.graph for v in n.outputs if v.name in local]
    first = next((name for name in order if local[name] > FIRST_BAD), None)
    producer = {v.name: n.name for n in model.graph for v in n.outputs}
    return {
        "target": target, "low_nodes": len(low), "trials": trials.count + 1, "seconds": time.perf_counter() - start,
        "outputs": outputs,
        "first_bad": None if first is None else {**node_entry(producer[first]), "value": first,
                                                 "threshold": FIRST_BAD},
        "fp32_nodes": {name: {"op": nodes[name].op_type, "source": sources.get(name), "reason": reason,
                              "ranges": ranges(nodes[name], plan)}
                       for name, reason in plan.decision.reasons.items() if name in nodes},
    }
