"""The accuracy search inside the precision pass: after the rules typed the graph, move nodes back to fp32
until the predicted outputs meet `--accuracy` / `--check` (search.py), judged on the switchable simulation
of the calibration samples (gated.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from trtc.precision.assign import HEAVY, Assignment, all_nodes
from trtc.precision.gated import gated_simulation
from trtc.precision.judge import CheckCommand, make_judge, parse_accuracy
from trtc.precision.rules import PrecisionOptions
from trtc.precision.search import Candidate, search, search_record
from trtc.reference.runner import ReferenceRunner


def wanted(options: PrecisionOptions) -> bool:
    """Whether the options ask for an accuracy search."""
    return bool(options.accuracy or options.check)


def float_outputs(model: ir.Model) -> list[str]:
    return [v.name for v in model.graph.outputs if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16,
                                                                ir.DataType.BFLOAT16, ir.DataType.DOUBLE)]


def candidates(model: ir.Model, decision: Assignment, flops: Mapping[str, float]) -> list[Candidate]:
    """The nodes the rules typed low (bodies' too, after the main graph's), in graph order; nodes the user
    forced low stay low."""
    return [Candidate(n.name, n.op_type, float(flops.get(n.name, 0.0)), n.op_type in HEAVY) for n in all_nodes(model)
            if decision.compute.get(n.name) == "low" and n.name not in decision.forced]


def heavy_share(model: ir.Model, compute: Mapping[str, str | None], flops: Mapping[str, float]) -> float:
    """The share of the main graph's multiply-add FLOPs (MatMul/Gemm/Conv...) computed in the target type."""
    heavy = [n.name for n in model.graph if n.op_type in HEAVY]
    total = sum(flops.get(n, 0.0) for n in heavy)
    return sum(flops.get(n, 0.0) for n in heavy if compute.get(n) == "low") / total if total else 0.0


def accuracy_search(model: ir.Model, decision: Assignment, samples: Sequence[Mapping[str, Any]],
                    reference: Sequence[Mapping[str, Any]], flops: Mapping[str, float],
                    options: PrecisionOptions) -> dict[str, Any]:
    """Move nodes of `decision` to fp32 (in place, each with its reason) until the targets hold; the
    search's record for the report. CheckFailed when only all-fp32 meets them."""
    targets = parse_accuracy(options.accuracy, float_outputs(model))
    nodes = candidates(model, decision, flops)
    share_before = heavy_share(model, decision.compute, flops)
    sim = gated_simulation(model, decision, options.target, [c.name for c in nodes], options.cast_io)
    runner = ReferenceRunner(sim.model)
    check = CheckCommand(options.check, samples, reference) if options.check else None
    judge = make_judge(targets, check, reference)
    what = " and ".join([f"--accuracy {t.text}" for t in targets] + ([f"--check {options.check!r}"] if check else []))
    try:
        result = search(nodes, lambda low: judge([runner.run({**s, **sim.feeds(low)}, validate=False)
                                                  for s in samples]), what, options.target)
    finally:
        runner.warn_if_fallback("precision: the accuracy search's simulation")
        runner.close()
        if check is not None:
            check.close()
    for name, reason in result.moved.items():
        decision.compute[name] = "fp32"
        decision.reasons[name] = reason
    return {"targets": [t.text for t in targets], "check": options.check, **search_record(result, nodes),
            "heavy_flop_share": {"before": share_before, "after": heavy_share(model, decision.compute, flops)}}


def search_text(search: Mapping[str, Any], target: str) -> list[str]:
    """The search's lines in the precision summary: what it aimed for, what it moved, what it kept low."""
    aim = ", ".join([f"--accuracy {t}" for t in search["targets"]] +
                    ([f"--check {search['check']!r}"] if search["check"] else []))
    if not search["moved"]:
        return [f"  accuracy search ({aim}): met with no node moved"]
    heavy = [m for m in search["moved"] if m["op"] in HEAVY]
    share = search["heavy_flop_share"]
    lines = [f"  accuracy search ({aim}): {len(search['moved'])} nodes moved to fp32 ({len(heavy)} MatMul/Conv-like) "
             f"in {search['trials']} trials, {search['seconds']:.1f}s; {share['after']:.1%} of MatMul/Conv FLOPs stay "
             f"{target} (was {share['before']:.1%})",
             f"    before: {'; '.join(search['before']['failed'])}"]
    lines += [f"    moved {m['node']} ({m['op']}): {m['reason'].removeprefix('accuracy search: ')}" for m in heavy]
    return lines
