"""A precision simulation whose rounding switches per node at run time: one onnxruntime session
answers "what error would this assignment give?" for any set of nodes moved back to fp32.

The typed graph `assign.apply` makes rounds a float value through the target type exactly where

* its producer computes in the target type (the value is stored in it), or
* a node computing in the target type reads it as a typed input (a Cast, or a converted weight),

and every op computes in fp32 otherwise (simulate.py). So with a switch `g[n]` per node `n` that
the assignment types low, the same error comes from

    stored(v) = If(g[producer], r(v), v)                   # what the graph stores
    read(v)   = If(g[reader], r(stored(v)), stored(v))     # what a low reader sees (r is idempotent)
    r(x)      = Cast(Cast(x, low), float)                  # inside the If's then-branch

An If computes only the branch it takes (so nodes switched off cost no rounding) and runs about twice
as fast in onnxruntime as a Where over the same tensors. Each switch is a scalar bool input;
`GatedSimulation.feeds` turns a set of nodes kept low into them; nodes inside If/Loop/Scan bodies read
theirs from the main graph (an outer-scope value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping

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
    """Inserts the (switched) roundings of one graph's values."""

    def __init__(self, graph: ir.Graph, low: ir.DataType):
        self.graph, self.low = graph, low
        self.count = 0
        self.reads: dict[tuple[ir.Value, ir.Value | None], ir.Value] = {}

    def _value(self, node: ir.Node, base: str, like: ir.Value) -> ir.Value:
        """Name node and its output uniquely (names must be unique over all graphs); type the output float."""
        self.count += 1
        out = node.outputs[0]
        out.name, out.type, out.shape = f"{base}__g{self.count}", ir.TensorType(FLOAT), like.shape
        node.name = f"{out.name}__node"
        return out

    def _rounding(self, value: ir.Value) -> tuple[list[ir.Node], ir.Value]:
        """r(value): nodes and result."""
        down = ir.node("Cast", [value], {"to": self.low})
        self._value(down, f"{value.name}__low", value).type = ir.TensorType(self.low)
        up = ir.node("Cast", [down.outputs[0]], {"to": FLOAT})
        return [down, up], self._value(up, f"{value.name}__rounded", value)

    def _insert_after(self, anchor: ir.Value, nodes: list[ir.Node]) -> None:
        """Insert `nodes` where `anchor` is available: after its producer in this graph, else first."""
        producer = anchor.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, nodes)
        else:  # a graph input, weight or outer value
            self.graph.insert_before(next(iter(self.graph)), nodes)

    def switched(self, gate: ir.Value | None, value: ir.Value) -> ir.Value:
        """`value` rounded when `gate` is on, as it is when off; always rounded when `gate` is None."""
        nodes, rounded = self._rounding(value)
        if gate is None:
            self._insert_after(value, nodes)
            return rounded
        then = ir.Graph([], [rounded], nodes=nodes, name=f"{value.name}__then{self.count}")
        identity = ir.node("Identity", [value])
        kept = self._value(identity, f"{value.name}__kept", value)
        orelse = ir.Graph([], [kept], nodes=[identity], name=f"{value.name}__else{self.count}")
        switch = ir.node("If", [gate], {"then_branch": then, "else_branch": orelse}, num_outputs=1)
        out = self._value(switch, f"{value.name}__switched", value)
        self._insert_after(value, [switch])
        return out

    def read(self, gate: ir.Value | None, stored: ir.Value) -> ir.Value:
        """What a reader switched by `gate` sees of a stored value (one If per value and switch)."""
        key = (stored, gate)
        if key not in self.reads:
            self.reads[key] = self.switched(gate, stored)
        return self.reads[key]


def _float_outputs(node: ir.Node) -> list[ir.Value]:
    return [v for v in node.outputs if v.dtype == FLOAT]


def gated_simulation(model: ir.Model, decision: Assignment, target: str,
                     switchable: Iterable[str] | None = None, cast_io: bool = False) -> GatedSimulation:
    """A copy of the fp32 `model` (as `assign.assign` saw it) that simulates `decision` with the nodes it
    types low (or those of them in `switchable`; the others always round) each behind a switch. `cast_io`:
    the float inputs arrive in the target type (rounded for every reader)."""
    clone = model.clone()  # shares the weights' tensors; they are never changed
    low = TARGETS[target]
    opset = _opset(clone)
    if cast_io:
        _round_inputs(clone.graph, low)
    wanted = None if switchable is None else set(switchable)
    gates: dict[str, str] = {}
    for graph in list(all_graphs(clone.graph)):
        nodes = [n for n in graph if decision.compute.get(n.name) == "low"]
        switches: dict[ir.Node, ir.Value | None] = {}
        for node in nodes:
            switches[node] = None
            if wanted is None or node.name in wanted:  # a body reads its switch from the main graph
                gate = ir.Value(name=f"trtc_gate__{len(gates)}", type=ir.TensorType(BOOL), shape=ir.Shape([]))
                clone.graph.inputs.append(gate)
                gates[node.name] = gate.name
                switches[node] = gate
        _round_graph(graph, low, nodes, {n: typed_inputs(n, opset) for n in nodes}, switches)
    return GatedSimulation(clone, gates)


def _round_graph(graph: ir.Graph, low: ir.DataType, nodes: list[ir.Node], typed: Mapping[ir.Node, list[int]],
                 switches: Mapping[ir.Node, ir.Value | None]) -> None:
    """Insert the stored and read roundings of `nodes` (the graph's low nodes) into `graph`."""
    rounder = _Rounder(graph, low)
    reads = [(node, i) for node in nodes for i in typed[node] if node.inputs[i] is not None]
    for node in nodes:
        for value in _float_outputs(node):
            uses = list(value.uses())
            outputs = [i for i, out in enumerate(graph.outputs) if out is value]
            name = value.name
            value.name = f"{name}__unrounded"
            stored = rounder.switched(switches[node], value)
            stored.name = name  # readers and fetches by name see what the graph stores
            for user, index in uses:
                user.replace_input_with(index, stored)
            for i in outputs:
                graph.outputs[i] = stored
    for node, index in reads:  # node.inputs[index] is what the graph stores now
        node.replace_input_with(index, rounder.read(switches[node], node.inputs[index]))


def _round_inputs(graph: ir.Graph, low: ir.DataType) -> None:
    """Every reader of a float graph input sees it rounded (the input arrives in the target type)."""
    rounder = _Rounder(graph, low)
    for value in graph.inputs:
        if value.dtype == FLOAT and value.uses():
            uses = list(value.uses())
            rounded = rounder.switched(None, value)
            for user, index in uses:
                user.replace_input_with(index, rounded)
