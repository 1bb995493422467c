"""Mixed precision for strongly typed TensorRT: fp16/bf16 where safe, fp32 islands where
not, every decision explained, accuracy predicted on the CPU.

    report = apply_precision(model, samples, PrecisionOptions(target="fp16"))

rewrites `model` into the explicitly typed form and returns what it decided and the
predicted error (from `simulate.simulation_model` against the fp32 reference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.walk import all_graphs, all_initializers, subgraph_attrs
from trtc.passes import PASSES, PassContext
from trtc.precision import accuracy
from trtc.precision import assign as assign_mod
from trtc.precision.flops import node_flops
from trtc.precision.observe import Observation, observe, scaled_observation
from trtc.precision.rescale import Rescaling, rescale_activations
from trtc.precision.rules import PrecisionOptions, RuleContext
from trtc.precision.simulate import simulation_model
from trtc.precision.subgraphs import complete_body_types, ensure_unique_names, is_control_flow
from trtc.reference.metrics import error_metrics, value_error, worst
from trtc.reference.runner import ReferenceRunner

__all__ = ["Plan", "PrecisionOptions", "PrecisionReport", "apply_precision", "plan_precision", "predict",
           "simulation_model"]


@dataclasses.dataclass
class PrecisionReport:
    target: str
    fp32_nodes: dict[str, dict[str, str]]  # node name -> {"op", "reason"}
    low_nodes: int
    flop_share: float  # of the model's FLOPs, the share computed in the target type
    islands: int  # connected groups of fp32 float nodes
    counts: dict[str, int]
    predicted: dict[str, dict[str, Any]]  # per output: error metrics (worst over samples)
    contributions: list[dict[str, Any]]  # nodes adding the most error, largest first
    # One entry per If/Loop/Scan body: where it is, its nodes in the target type and in fp32, the
    # share of its FLOPs in the target type, and why it stays fp32 where it does.
    subgraphs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # --accuracy/--check: what the accuracy search moved to fp32 and why (precision/accuracy.py), else None.
    search: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _islands(model: ir.Model, fp32: set[str]) -> int:
    """Connected components of fp32 float nodes (edges through float values), bodies included."""
    parent = {n: n for n in fp32}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node in assign_mod.all_nodes(model):
        if node.name not in fp32:
            continue
        for value in node.outputs:
            for user in value.consumers():
                if user.name in fp32:
                    parent[find(user.name)] = find(node.name)
    return len({find(n) for n in fp32})


@dataclasses.dataclass
class Plan:
    """The precision pass's decisions before the graph changes: the observation, the fp32 reference
    outputs (of the graph as given), the rescaling done, each node's compute type, FLOPs per node, and
    the accuracy search's record (None without --accuracy/--check)."""

    obs: Observation
    reference: list[dict[str, Any]]
    rescaling: Rescaling
    decision: assign_mod.Assignment
    flops: dict[str, float]
    search: dict[str, Any] | None


def plan_precision(model: ir.Model, samples: Sequence[Mapping[str, Any]], options: PrecisionOptions) -> Plan:
    """Observe `model` on `samples`, rescale it (in place) where fp16's range needs it, decide each node's
    compute type and run the accuracy search if asked; the graph is not typed yet."""
    non_tensors = [v.name for v in model.graph.inputs if not isinstance(v.type, ir.TensorType)]
    if non_tensors:
        raise TrtcError(f"input(s) {', '.join(map(repr, non_tensors))} are not tensors (sequences/optionals); the "
                        "precision pass, like TensorRT, takes tensors only")
    ensure_unique_names(model)
    complete_body_types(model)
    obs = observe(model, samples)
    reference = obs.outputs  # of the graph as given, before any rescaling
    # Rescaling fixes range, not precision: bf16 has fp32's range, so it is fp16's alone.
    rescaling = rescale_activations(model, obs, options.data_max / 4) if options.rescale and \
        options.target == "fp16" else Rescaling(0, {})
    if rescaling.weights:  # the old weights are dead; the activations are the observed ones, scaled
        PASSES["dead-code"].fn(model, PassContext())
        ensure_unique_names(model)
        # Overflowed fp32 values may come back into range rescaled: observe those graphs again.
        obs = scaled_observation(obs, rescaling.scaled) if obs.finite else observe(model, samples)
    decision = assign_mod.assign(model, RuleContext(obs, options))
    flops = _flops(model, obs)
    search = None
    if accuracy.wanted(options):  # moves nodes of `decision` to fp32 until the targets hold
        search = accuracy.accuracy_search(model, decision, samples, reference, flops, options)
    return Plan(obs, reference, rescaling, decision, flops, search)


def apply_precision(model: ir.Model, samples: Sequence[Mapping[str, Any]],
                    options: PrecisionOptions) -> PrecisionReport:
    """Type `model` in place for options.target and predict the error on `samples`."""
    plan = plan_precision(model, samples, options)
    obs, reference, rescaling, decision, flops = plan.obs, plan.reference, plan.rescaling, plan.decision, plan.flops
    total = sum(flops.values()) or 1
    low_flops = sum(f for name, f in flops.items() if decision.compute.get(name) == "low")
    nodes = assign_mod.all_nodes(model)
    ops = {n.name: n.op_type for n in nodes}
    fp32 = {name for name, c in decision.compute.items() if c == "fp32"}
    islands = _islands(model, fp32)
    bodies = _body_summaries(model, decision, flops, RuleContext(obs, options))
    counts = assign_mod.apply(model, decision, options.target, options.cast_io)
    PASSES["dead-code"].fn(model, PassContext())  # the fp32 originals of converted weights
    counts["weights-rescaled"] = rescaling.weights
    predicted, contributions = predict(model, samples, reference, obs.first)
    return PrecisionReport(
        target=options.target,
        fp32_nodes={name: {"op": ops[name], "reason": decision.reasons.get(name, "neighbours are fp32")}
                    for name in sorted(fp32)},
        low_nodes=sum(1 for c in decision.compute.values() if c == "low"),
        flop_share=low_flops / total,
        islands=islands,
        counts=counts,
        predicted=predicted,
        contributions=contributions,
        subgraphs=bodies,
        search=plan.search,
    )


def _flops(model: ir.Model, obs) -> dict[str, float]:
    """FLOPs per node on the calibration data, per sample: a body node's count times how often its
    body ran per sample (a Loop body's trip count, 0 for a branch never taken). An If/Loop/Scan
    itself counts none: its bodies' nodes hold its work."""
    # Concrete shapes of every value: observed activations, and the weights' own shapes.
    shapes = {v.name: tuple(v.const_value.shape.numpy()) for v in all_initializers(model.graph)
              if v.const_value is not None}
    shapes.update(obs.shapes)
    opset = assign_mod._opset(model)
    flops: dict[str, float] = {}
    for node in assign_mod.all_nodes(model):
        if is_control_flow(node, opset):
            flops[node.name] = 0
            continue
        runs = 1.0
        if node.graph is not model.graph:
            named = next((v.name for v in node.outputs if v.name), None)
            runs = obs.runs.get(named, 0) / max(obs.samples, 1)
        flops[node.name] = node_flops(node, shapes) * runs
    return flops


def _body_summaries(model: ir.Model, decision: assign_mod.Assignment, flops: dict[str, float],
                    ctx: RuleContext) -> list[dict[str, Any]]:
    """Per body: its nodes (nested bodies' too) in the target type and in fp32, the share of its
    FLOPs in the target type, and why it stays fp32 where it does (its own reason, or the reason of
    the body it is nested in)."""
    opset = assign_mod._opset(model)
    summaries: list[dict[str, Any]] = []

    def visit(graph: ir.Graph, inherited: str | None) -> None:
        for node in graph:
            for attr, body in subgraph_attrs(node):
                reason = inherited or assign_mod.body_reason(node, body, ctx, opset)
                inner = [n for g in all_graphs(body) for n in g]
                low = [n for n in inner if decision.compute.get(n.name) == "low"]
                body_flops = sum(flops.get(n.name, 0) for n in inner)
                summaries.append({
                    "node": node.name, "op": node.op_type, "body": attr, "nodes": len(inner),
                    "low_nodes": len(low),
                    "fp32_nodes": sum(1 for n in inner if decision.compute.get(n.name) == "fp32"),
                    "flop_share": sum(flops.get(n.name, 0) for n in low) / body_flops if body_flops else 0.0,
                    "reason": reason,  # None: typed node by node, by the rules
                })
                visit(body, reason)

    visit(model.graph, None)
    return summaries


def predict(typed: ir.Model, samples: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
            fp32_values: Mapping[str, np.ndarray] | None = None,
            top: int = 5) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Predicted error per output of the typed model (worst over samples), and, given the fp32
    values of the first sample, the nodes whose outputs gain the most relative error."""
    fp32_values = fp32_values or {}
    predicted, errors = simulate_errors(typed, samples, reference, fp32_values, "precision: the fp16/bf16 simulation")
    return predicted, _contributions(typed, errors, top)


# Bytes of intermediate values fetched in one run when measuring their errors: a big model's values of one
# sample are fetched over several runs (1.2 B parameters: 0.6 GB of them, beside 4.8 GB of mapped weights).
FETCH_BYTES = 256 << 20


def _fetch_groups(names: Sequence[str], sizes: Mapping[str, np.ndarray]) -> list[list[str]]:
    """`names` in graph order, cut into runs of at most `FETCH_BYTES` of values (one value at least each)."""
    groups: list[list[str]] = [[]]
    held = 0
    for name in names:
        nbytes = sizes[name].nbytes
        if groups[-1] and held + nbytes > FETCH_BYTES:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += nbytes
    return groups


def simulate_errors(typed: ir.Model, samples: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                    fp32_values: Mapping[str, np.ndarray], purpose: str
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, float | None]]:
    """Run the simulation of `typed` (trtc.precision.simulate) on every sample: the worst error metrics per
    float output against `reference`, and the error of each value named in `fp32_values` on the first sample
    (`metrics.value_error`, for the per-node contributions), fetched `FETCH_BYTES` at a time. `purpose` names
    the run if onnx.reference runs it."""
    sim = simulation_model(typed)
    fetch = [v for node in sim.graph for v in node.outputs if v.name in fp32_values]
    runner = ReferenceRunner(sim, fetch=fetch)
    outputs = [v.name for v in sim.graph.outputs]
    errors: dict[str, float | None] = {}
    per_sample: list[dict[str, Any]] = []
    try:
        for index, sample in enumerate(samples):
            feeds = _as_fp32_feeds(sample, sim)
            for group in _fetch_groups([v.name for v in fetch], fp32_values) if index == 0 else [[]]:
                result = runner.run(feeds, names=list(dict.fromkeys(outputs + group)))
                if len(per_sample) == index:
                    per_sample.append({name: result[name] for name in reference[0]})
                errors.update((name, value_error(fp32_values[name], result[name])) for name in group)
                del result
    finally:
        runner.warn_if_fallback(purpose)
        runner.close()
    predicted = {}
    for name in reference[0]:
        metrics = [error_metrics(ref[name], res[name]) for ref, res in zip(reference, per_sample)
                   if isinstance(ref[name], np.ndarray) and ref[name].dtype.kind == "f"]
        if metrics:
            predicted[name] = worst(metrics)
    return predicted, errors


def _as_fp32_feeds(feeds: Mapping[str, Any], sim: ir.Model) -> dict[str, Any]:
    """Feeds for the simulation: inputs the typed model takes in fp16 arrive as fp32."""
    wanted = {v.name: v.dtype for v in sim.graph.inputs}
    return {k: (v.astype(np.float32) if wanted.get(k) == ir.DataType.FLOAT and v.dtype.kind == "f" else v)
            for k, v in feeds.items()}


def _contributions(typed: ir.Model, errors: Mapping[str, float | None], top: int) -> list[dict[str, Any]]:
    """Relative error each node's output gains over the worst of its computed inputs (`errors`: per value)."""
    gains = []
    for node in typed.graph:
        outs = [errors.get(v.name) or 0.0 for v in node.outputs]
        ins = [errors.get(v.name) or 0.0 for v in node.inputs if v is not None and v.const_value is None]
        out_err, in_err = max(outs, default=0.0), max(ins, default=0.0)
        gain = out_err - in_err if np.isfinite(out_err) and np.isfinite(in_err) else (
            float("inf") if not np.isfinite(out_err) and np.isfinite(in_err) else 0.0)
        if gain > 0:
            gains.append({"node": node.name, "op": node.op_type, "relative_error": out_err, "added": gain})
    gains.sort(key=lambda g: -g["added"])
    return gains[:top]
