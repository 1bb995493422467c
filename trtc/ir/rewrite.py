"""Small helpers every pass uses to match and rewrite the IR.

Matching reads values through `const_array` (initializers and folded constants) and
`producer_of`; rewriting goes through `replace_with`, which inserts the new nodes,
moves every use (graph outputs included, keeping their names) and drops what became dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import onnx_ir as ir

from trtc.ir.walk import all_graphs
from trtc.ir.weightless import is_weightless

log = logging.getLogger(__name__)
Match = TypeVar("Match")
STANDARD_DOMAINS = ("", "ai.onnx")


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in STANDARD_DOMAINS and node.op_type in op_types


def producer_of(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node producing `value` if it is one of `op_types` (any op when none given)."""
    if value is None:
        return None
    node = value.producer()
    if node is None or (op_types and not is_op(node, *op_types)):
        return None
    return node


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data if it is a constant (initializer), else None."""
    if value is None or value.const_value is None:
        return None
    if value.is_graph_input():
        return None  # an overridable default is not a constant
    if is_weightless(value.const_value):
        return None  # a weight the model leaves out (--weightless): no pass may compute with made-up values
    return value.const_value.numpy()


def other_operand(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary commutative `node` that reads `value` once, else None."""
    a, b = (list(node.inputs) + [None, None])[:2]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def const_scalar(value: ir.Value | None) -> float | None:
    """The single element of a constant of one element, else None."""
    data = const_array(value)
    if data is None or data.size != 1:
        return None
    return data.reshape(()).item()


def only_user(value: ir.Value) -> ir.Node | None:
    """The one node reading `value`, if exactly one does and it is not a graph output."""
    users = value.consumers()
    if len(users) != 1 or value.is_graph_output():
        return None
    return users[0]


def sole_reader(value: ir.Value) -> ir.Node | None:
    """The node reading `value`, when it is read exactly once (`only_user` also takes Add(v, v)) and is no
    graph output: a value matched this way can be removed with its reader."""
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and not value.is_graph_output() else None


def add_constant(graph: ir.Graph, array: np.ndarray | ir.Tensor, name: str) -> ir.Value:
    """A new initializer with a unique name derived from `name` (an array, or a tensor such as a splat)."""
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    tensor = array if isinstance(array, ir.Tensor) else ir.tensor(array)
    tensor.name = name
    value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape), const_value=tensor)
    graph.register_initializer(value)
    return value


def replace_with(graph: ir.Graph, anchor: ir.Node, new_nodes: Sequence[ir.Node],
                 old_outputs: Sequence[ir.Value], new_outputs: Sequence[ir.Value],
                 dead: Sequence[ir.Node] = ()) -> None:
    """Insert `new_nodes` before `anchor`, move every use of each old output to its new
    output (a graph output keeps its name), then remove `dead` nodes that are unused."""
    graph.insert_before(anchor, new_nodes)
    for old, new in zip(old_outputs, new_outputs, strict=True):
        if old.is_graph_output():
            name, old.name = old.name, None
            new.name = name
        if new.type is None:
            new.type, new.shape = old.type, old.shape
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    remove_if_dead(graph, dead)


def remove_if_dead(graph: ir.Graph, nodes: Sequence[ir.Node]) -> None:
    """Remove those of `nodes` whose outputs nobody reads, consumers first."""
    pending = list(dict.fromkeys(nodes))  # one producer may be listed twice (Add(x, x))
    removed = True
    while removed and pending:
        removed = False
        for node in list(pending):
            if all(not v.uses() and not v.is_graph_output() for v in node.outputs):
                graph.remove(node, safe=True)
                pending.remove(node)
                removed = True


def require_opset(model: ir.Model, version: int) -> None:
    """Raise the default-domain opset to `version` for a fused op that needs it.

    The ops trtc's passes emit keep their meaning between opsets 18 and 23, and the
    standard ops of exported models gained only types in between (checked by --verify
    on the corpus).
    """
    current = model.opset_imports.get("", 1)
    if current < version:
        model.opset_imports[""] = version
        model.graph.opset_imports[""] = version


def fuse_matches(model: ir.Model, pass_name: str, anchor_ops: Sequence[str], match: Callable[[ir.Node], Match | str],
                 fuse: Callable[[ir.Graph, Match], None], *, opset: int) -> list[Match]:
    """The match-and-fuse driver of the fusion passes: try `match` on every node of
    `anchor_ops` in every graph (subgraphs included); a string is why it did not match
    (logged at debug level); a match is fused with `fuse(graph, match)` after the opset is
    raised to `opset`. Nodes removed by an earlier fusion are skipped. Returns the matches."""
    fused = []
    for graph in list(all_graphs(model.graph)):
        for node in [n for n in graph if is_op(n, *anchor_ops)]:
            if node.graph is not graph:
                continue
            result = match(node)
            if isinstance(result, str):
                log.debug("%s: %s: %s", pass_name, node.name, result)
                continue
            require_opset(model, opset)
            fuse(graph, result)
            fused.append(result)
    return fused
