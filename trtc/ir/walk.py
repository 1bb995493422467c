"""Walks over an IR model: its graphs (main graph and every subgraph) and weights."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """Yield `graph` and every subgraph nested in its nodes' attributes, outermost first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    stack.append(attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    stack.extend(attr.value)


def all_initializers(graph: ir.Graph) -> Iterator[ir.Value]:
    """Yield every initializer of `graph` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.initializers.values()


def weight_bytes(graph: ir.Graph) -> int:
    """Total bytes of all weights (initializers) of a graph and its subgraphs."""
    return sum(
        v.const_value.nbytes for v in all_initializers(graph) if v.const_value is not None
    )
