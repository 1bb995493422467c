"""A dim stored as `dim_value: -1` (Paddle2ONNX, some tf2onnx exports) means "unknown", as
onnxruntime reads it: each becomes a symbolic dim of its own, named after its value and axis.
Two `-1` dims are not the same dim, so they get different names (TensorRT's parser ties them).

It runs on the proto, before ONNX's version converter and shape inference see the model: given a
negative dim, their Slice inference clamps with a negative bound and aborts the process."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _graphs(sub)


def _declared(proto: onnx.ModelProto) -> Iterator[onnx.ValueInfoProto]:
    for graph in _graphs(proto.graph):
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                yield info


def unknown_negative_dims(proto: onnx.ModelProto) -> int:
    """Replace every negative fixed dim of a declared shape by a fresh symbolic dim; return the count."""
    taken = {d.dim_param for info in _declared(proto) for d in info.type.tensor_type.shape.dim if d.dim_param}
    count = 0
    for info in _declared(proto):
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                name = f"{info.name or 'value'}_dim{axis}"
                while name in taken:
                    name += "_"
                taken.add(name)
                dim.dim_param = name  # the oneof: dim_value goes
                count += 1
    return count
