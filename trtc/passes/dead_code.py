"""Dead code elimination: drop nodes and initializers that no graph output depends on.

    y = Relu(x); unused = Exp(x); w_unused (initializer)   ->   y = Relu(x)

Liveness starts from the main graph's outputs and walks producers backwards with an
explicit worklist (no recursion, so a 100k-node chain is fine). A live node's subgraphs
are live through their outputs, and a subgraph node reading an outer-scope value makes
that value's producer live. Subgraphs of live nodes are cleaned the same way; a dead
node takes its subgraphs with it.
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.ir.walk import subgraphs
from trtc.passes.registry import PassContext, register_pass


def live_nodes(graph: ir.Graph) -> set[ir.Node]:
    """Every node, in `graph` or any nested subgraph, that some output of `graph` depends on."""
    live: set[ir.Node] = set()
    pending: list[ir.Value] = list(graph.outputs)
    while pending:
        node = pending.pop().producer()
        if node is None or node in live:
            continue
        live.add(node)
        pending.extend(v for v in node.inputs if v is not None)
        for sub in subgraphs(node):
            pending.extend(sub.outputs)
    return live


def _detach(node: ir.Node) -> None:
    """Drop `node`'s (and its nested subgraph nodes') uses of other values, iteratively."""
    stack = [node]
    while stack:
        current = stack.pop()
        for i, value in enumerate(current.inputs):
            if value is not None:
                current.replace_input_with(i, None)
        for sub in subgraphs(current):
            stack.extend(sub)


@register_pass("dead-code", order=95)
def eliminate_dead_code(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Remove nodes and initializers that no graph output depends on (subgraphs included)."""
    live = live_nodes(model.graph)
    removed_nodes = removed_initializers = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        dead = [node for node in graph if node not in live]
        for node in dead:
            _detach(node)
        if dead:
            graph.remove(dead)  # their uses are gone: every reader of a dead value is dead
            removed_nodes += len(dead)
        for node in graph:
            graphs.extend(subgraphs(node))
        graph_inputs = set(graph.inputs)
        for name, value in list(graph.initializers.items()):
            # An initializer that is also a graph input is part of the interface.
            if not value.uses() and not value.is_graph_output() and value not in graph_inputs:
                graph.initializers.pop(name)
                removed_initializers += 1
    return {"nodes": removed_nodes, "initializers": removed_initializers}
