"""A CPU simulation of what TensorRT does with a typed graph.

Every value the typed graph stores in fp16/bf16 becomes an fp32 value rounded through
that type (Cast to it and back), and every op computes in fp32 — as TensorRT's fp16
kernels accumulate in fp32. onnxruntime's own fp16 kernels would hide overflow (they
compute many ops in fp32 without rounding in between), so they are never used here. The same
holds inside If/Loop/Scan bodies, whose values round where the typed body stores them.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.ir.splat import map_elements
from trtc.ir.walk import all_graphs, all_initializers

FLOAT = ir.DataType.FLOAT
LOW = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _round_trip(graph: ir.Graph, value: ir.Value, low: ir.DataType, after: ir.Node | None) -> None:
    """Make every reader of `value` see it rounded through `low`."""
    uses = list(value.uses())
    name = value.name
    if value.is_graph_input():  # feeds arrive under the input's name: the rounded copy gets a new one
        rounded = f"{name}__rounded"
    else:  # readers (and fetches by name) see the rounded value under the original name
        value.name, rounded = f"{name}__unrounded", name
    down = ir.node("Cast", [value], {"to": low}, name=f"{name}__round_down")
    # Named: left unnamed, each graph would call it val_0, and a body's must not repeat an outer name.
    down.outputs[0].name = f"{name}__{low.name.lower()}_rounded"
    up = ir.node("Cast", [down.outputs[0]], {"to": FLOAT}, name=f"{name}__round_up")
    up.outputs[0].name = rounded
    up.outputs[0].type = ir.TensorType(FLOAT)  # new object: types may be shared
    up.outputs[0].shape = value.shape
    if after is not None:
        graph.insert_after(after, [down, up])
    else:
        graph.insert_before(next(iter(graph)), [down, up])
    for user, index in uses:
        user.replace_input_with(index, up.outputs[0])
    for i, out in enumerate(graph.outputs):
        if out is value:
            graph.outputs[i] = up.outputs[0]


def simulation_model(typed: ir.Model) -> ir.Model:
    """A new all-fp32 model that rounds wherever `typed` stores a low-precision value."""
    model = typed.clone()  # shares the weights' tensors: they are replaced, never changed
    graph = model.graph
    for value in all_initializers(graph):
        if value.dtype in LOW:
            value.const_value = map_elements(value.const_value, lambda data: data.astype(np.float32), name=value.name)
            value.type = ir.TensorType(FLOAT)  # new object: types may be shared
    for body_or_main in list(all_graphs(graph)):
        for node in list(body_or_main):
            if node.op_type == "Constant" and node.outputs[0].dtype in LOW:
                # A weight converted inside a body: exactly representable in fp32, no rounding to add.
                tensor = node.attributes["value"].value
                node.attributes["value"] = ir.AttrTensor("value", map_elements(
                    tensor, lambda data: data.astype(np.float32), name=tensor.name))
                node.outputs[0].type = ir.TensorType(FLOAT)  # new object: types may be shared
                continue
            if node.op_type == "Cast" and node.attributes.get_int("to") in LOW:
                node.attributes["to"] = ir.AttrInt64("to", FLOAT)
            for value in node.outputs:
                if value.dtype in LOW:
                    low = value.dtype
                    value.type = ir.TensorType(FLOAT)  # new object: types may be shared
                    _round_trip(body_or_main, value, low, node)
    # After the nodes: the loop above would turn these round trips' Casts to fp16 into Casts to fp32.
    for value in list(graph.inputs):
        if value.dtype in LOW:
            low = value.dtype
            value.type = ir.TensorType(FLOAT)  # new object: types may be shared
            _round_trip(graph, value, low, None)
    return model
