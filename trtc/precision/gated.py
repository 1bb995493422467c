"""A precision simulation whose rounding switches per node at run time: one onnxruntime session
answers "what error would this assignment give?" for any set of nodes moved back to fp32.

The typed graph `assign.apply` makes rounds a float value through the target type exactly where

* its producer computes in the target type (the value is stored in it), or
* a node computing in the target type reads it as a typed input (a Cast, or a converted weight),

and every op computes in fp32 otherwise (simulate.py). So with a switch `g[n]` per node `n` that
the assignment types low, the same error comes from

    r(v)      = Cast(Cast(v, low), float)           # once per value
    stored(v) = Where(g[producer], r(v), v)          # what the graph stores
    read(v)   = Where(g[reader], r(v), stored(v))    # what a low reader sees (rounding is idempotent)

Each switch is a scalar bool input, `GatedSimulation.feeds` turns a set of nodes kept low into
them. Nodes inside If/Loop/Scan bodies are not switched: those typed low always round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.ir.walk import all_graphs
from trtc.precision.assign import TARGETS, Assignment, _opset, typed_inputs

FLOAT = ir.DataType.FLOAT
BOOL = ir.DataType.BOOL


@dataclasses.dataclass
class GatedSimulation:
    """The switchable model, and which input switches which node."""

    model: ir.Model
    gates: dict[str, str]  # node name -> name of its bool scalar input

    def feeds(self, low: Collection[str]) -> dict[str, np.ndarray]:
        """Switch inputs that keep the nodes in `low` in the target type and every other one in fp32."""
        return {gate: np.array(node in low) for node, gate in self.gates.items()}


class _Rounder:
    """Inserts the rounding of one graph's values, each value's r(v) made once."""

    def __init__(self, graph: ir.Graph, low: ir.DataType):
        self.graph, self.low = graph, low
        self.rounded: dict[ir.Value, ir.Value] = {}
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}__g{self.count}"

    def _insert(self, value: ir.Value, nodes: list[ir.Node]) -> None:
        producer = value.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, nodes)
        else:  # a graph input, weight or outer value: first in the graph
            self.graph.insert_before(next(iter(self.graph)), nodes)

    def round(self, value: ir.Value) -> ir.Value:
        """r(value): `value` through the target type and back."""
        if value not in self.rounded:
            name = value.name or "value"
            down = ir.node("Cast", [value], {"to": self.low}, name=self._name(f"{name}__down"))
            down.outputs[0].name = self._name(f"{name}__low")
            up = ir.node("Cast", [down.outputs[0]], {"to": FLOAT}, name=self._name(f"{name}__up"))
            up.outputs[0].name = self._name(f"{name}__rounded")
            up.outputs[0].type, up.outputs[0].shape = ir.TensorType(FLOAT), value.shape
            self._insert(value, [down, up])
            self.rounded[value] = up.outputs[0]
        return self.rounded[value]

    def select(self, gate: ir.Value | None, value: ir.Value, after: ir.Value | None = None) -> ir.Value:
        """Where(gate, r(value), value); r(value) itself when the gate is always on (None)."""
        rounded = self.round(value)
        if gate is None:
            return rounded
        where = ir.node("Where", [gate, rounded, value], name=self._name(f"{value.name}__select"))
        where.outputs[0].name = self._name(f"{value.name}__selected")
        where.outputs[0].type, where.outputs[0].shape = ir.TensorType(FLOAT), value.shape
        anchor = rounded.producer()
        self.graph.insert_after(anchor, where)
        return where.outputs[0]


def _float_outputs(node: ir.Node) -> list[ir.Value]:
    return [v for v in node.outputs if v.dtype == FLOAT]


def gated_simulation(model: ir.Model, decision: Assignment, target: str,
                     switchable: Iterable[str] | None = None) -> GatedSimulation:
    """A copy of the fp32 `model` (as `assign.assign` saw it) that simulates `decision` with the nodes of
    the main graph it types low (or those of them in `switchable`) each behind a switch."""
    clone = model.clone()  # shares the weights' tensors; they are never changed
    low = TARGETS[target]
    opset = _opset(clone)
    wanted = None if switchable is None else set(switchable)
    gates: dict[str, str] = {}
    for graph in list(all_graphs(clone.graph)):
        nodes = [n for n in graph if decision.compute.get(n.name) == "low"]
        typed = {n: [i for i in typed_inputs(n, opset) if n.inputs[i] is not None] for n in nodes}
        switches = {}
        for node in nodes:
            if graph is clone.graph and (wanted is None or node.name in wanted):
                gate = ir.Value(name=f"trtc_gate__{len(gates)}", type=ir.TensorType(BOOL), shape=ir.Shape([]))
                clone.graph.inputs.append(gate)
                gates[node.name] = gate.name
                switches[node] = gate
            else:
                switches[node] = None
        _round_graph(graph, low, nodes, typed, switches)
    return GatedSimulation(clone, gates)


def _round_graph(graph: ir.Graph, low: ir.DataType, nodes: list[ir.Node],
                 typed: Mapping[ir.Node, list[int]], switches: Mapping[ir.Node, ir.Value | None]) -> None:
    """Insert the stored and read roundings of `nodes` (the graph's low nodes) into `graph`."""
    rounder = _Rounder(graph, low)
    reads = [(node, i, node.inputs[i]) for node in nodes for i in typed[node]]
    for node in nodes:
        for value in _float_outputs(node):
            uses = list(value.uses())
            outputs = [i for i, out in enumerate(graph.outputs) if out is value]
            name = value.name
            value.name = f"{name}__unrounded"
            stored = rounder.select(switches[node], value)
            stored.name = name  # readers and fetches by name see what the graph stores
            for user, index in uses:
                user.replace_input_with(index, stored)
            for i in outputs:
                graph.outputs[i] = stored
    for node, index, value in reads:  # node.inputs[index] is now what the graph stores of value
        node.replace_input_with(index, _read(rounder, switches[node], value, node.inputs[index]))


def _read(rounder: _Rounder, gate: ir.Value | None, value: ir.Value, stored: ir.Value) -> ir.Value:
    """What a low reader sees: r(value) when its gate is on, else the stored value."""
    rounded = rounder.round(value)
    if gate is None:
        return rounded
    where = ir.node("Where", [gate, rounded, stored], name=rounder._name(f"{value.name}__read"))
    where.outputs[0].name = rounder._name(f"{value.name}__read")
    where.outputs[0].type, where.outputs[0].shape = ir.TensorType(FLOAT), value.shape
    # The stored value, where it is a rounding's selection, comes after r(value).
    anchor = stored.producer() if stored is not value and stored is not rounded else rounded.producer()
    rounder.graph.insert_after(anchor, where)
    return where.outputs[0]


def run_feeds(sim: GatedSimulation, sample: Mapping[str, Any], low: Collection[str]) -> dict[str, Any]:
    """One sample's feeds for the switchable model with the nodes in `low` kept low."""
    return {**sample, **sim.feeds(low)}
