"""Walks over an IR model: its graphs (main graph and every subgraph) and weights."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def subgraph_attrs(node: ir.Node) -> Iterator[tuple[str, ir.Graph]]:
    """(attribute name, graph) for every graph in `node`'s attributes (If branches, Loop/Scan
    bodies); a graph of a GRAPHS attribute is named `name[i]`."""
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.name, attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            for i, graph in enumerate(attr.value):
                yield f"{attr.name}[{i}]", graph


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs held in `node`'s attributes."""
    return (graph for _, graph in subgraph_attrs(node))


def has_subgraphs(node: ir.Node) -> bool:
    return any(True for _ in subgraph_attrs(node))


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """Yield `graph` and every subgraph nested in its nodes' attributes, outermost first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g:
            stack.extend(subgraphs(node))


def all_initializers(graph: ir.Graph) -> Iterator[ir.Value]:
    """Yield every initializer of `graph` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.initializers.values()


def weight_bytes(graph: ir.Graph) -> int:
    """Total bytes of all weights (initializers) of a graph and its subgraphs."""
    return sum(
        v.const_value.nbytes for v in all_initializers(graph) if v.const_value is not None
    )
