"""A dim stored as `dim_value: -1` (Paddle2ONNX, some tf2onnx exports) means "unknown", as
onnxruntime reads it: each becomes a symbolic dim of its own, named after its value and axis.
Two `-1` dims are not the same dim, so they get different names (TensorRT's parser ties them)."""

from __future__ import annotations

import onnx_ir as ir

from trtc.ir.walk import all_graphs


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.outputs
    for node in graph:
        yield from node.outputs


def unknown_negative_dims(model: ir.Model) -> int:
    """Replace every negative fixed dim of a declared shape by a fresh symbolic dim; return the count.
    Runs before anything reads shapes (freezing inputs, shape inference)."""
    taken = {d.value for g in all_graphs(model.graph) for v in _values(g) if v.shape is not None
             for d in v.shape.dims if isinstance(d, ir.SymbolicDim) and d.value}
    count = 0
    for graph in all_graphs(model.graph):
        for value in _values(graph):
            if value.shape is None or not any(isinstance(d, int) and d < 0 for d in value.shape.dims):
                continue
            dims = []
            for axis, d in enumerate(value.shape.dims):
                if isinstance(d, int) and d < 0:
                    name = f"{value.name or 'value'}_dim{axis}"
                    while name in taken:
                        name += "_"
                    taken.add(name)
                    d = ir.SymbolicDim(name)
                    count += 1
                dims.append(d)
            value.shape = ir.Shape(dims)
    return count
