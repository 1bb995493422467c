"""A CPU simulation of what TensorRT does with a typed graph.

Every value the typed graph stores in fp16/bf16 becomes an fp32 value rounded through
that type (Cast to it and back), and every op computes in fp32 — as TensorRT's fp16
kernels accumulate in fp32. onnxruntime's own fp16 kernels would hide overflow (they
compute many ops in fp32 without rounding in between), so they are never used here. The same
holds inside If/Loop/Scan bodies, whose values round where the typed body stores them.
A big model's low-precision weights stay as stored, widened (or rounded from their fp32 source)
by Casts as they are read; smaller ones become fp32 constants (exact).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.ir.converted import ConvertedTensor, converted
from trtc.ir.splat import map_elements
from trtc.ir.walk import all_graphs
from trtc.reference.runner import MAP_FILE_BYTES

FLOAT = ir.DataType.FLOAT
LOW = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _read_through(graph: ir.Graph, value: ir.Value, nodes: list[ir.Node], after: ir.Node | None) -> None:
    """Insert `nodes` (after `after`, else at the graph's top) and make every reader of `value` outside them,
    and every graph output naming it, read the last node's output instead."""
    uses = [(user, index) for user, index in value.uses() if user not in nodes]
    if after is not None:
        graph.insert_after(after, nodes)
    elif (first := next(iter(graph), None)) is not None:
        graph.insert_before(first, nodes)
    else:
        graph.extend(nodes)
    result = nodes[-1].outputs[0]
    for user, index in uses:
        user.replace_input_with(index, result)
    for i, out in enumerate(graph.outputs):
        if out is value:
            graph.outputs[i] = result


def _round_trip(graph: ir.Graph, value: ir.Value, low: ir.DataType, after: ir.Node | None) -> None:
    """Make every reader of `value` see it rounded through `low`."""
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
    _read_through(graph, value, [down, up], after)


def _widen_weight(graph: ir.Graph, value: ir.Value) -> None:
    """Keep a low-precision weight as it is stored and make every reader see it through a Cast to fp32
    (exact): an fp32 copy of every fp16 weight would double a big model's memory, and onnxruntime's."""
    low = value.dtype
    name = value.name
    tensor = value.const_value
    # A weight converted when read (trtc.ir.converted) from an fp32 one: the simulation rounds the fp32
    # weight itself (onnxruntime's Cast rounds as numpy's does), which onnxruntime maps from its file.
    source = tensor.source if isinstance(tensor, ConvertedTensor) and tensor.source.dtype == FLOAT else None
    stored = ir.Value(name=f"{name}__{(FLOAT if source is not None else low).name.lower()}",
                      type=ir.TensorType(FLOAT if source is not None else low), shape=value.shape,
                      const_value=source if source is not None else tensor)
    graph.initializers.pop(name)
    graph.register_initializer(stored)
    nodes = []
    if source is not None:
        nodes.append(ir.node("Cast", [stored], {"to": low}, name=f"{name}__round"))
        nodes[-1].outputs[0].name = f"{name}__{low.name.lower()}"
    up = ir.node("Cast", [nodes[-1].outputs[0] if nodes else stored], {"to": FLOAT}, name=f"{name}__widen")
    up.outputs[0].name = name  # readers (and fetches by name) see it under its own name
    up.outputs[0].type = ir.TensorType(FLOAT)
    up.outputs[0].shape = value.shape
    _read_through(graph, value, [*nodes, up], None)


def _rounds_weights_when_run(graph: ir.Graph) -> bool:
    """Whether the weights are big enough for onnxruntime to map their files (`runner.MAP_FILE_BYTES`): then
    they are rounded as they are read, not handed over in fp32 (a copy that size, twice the fp16 weights).
    Smaller ones stay constants: onnxruntime prepacks them, as it does the fp32 reference's."""
    low = sum(v.const_value.nbytes for g in all_graphs(graph) for v in g.initializers.values()
              if v.dtype in LOW and v.const_value is not None)
    return 2 * low >= MAP_FILE_BYTES


def simulation_model(typed: ir.Model) -> ir.Model:
    """A new all-fp32 model that rounds wherever `typed` stores a low-precision value."""
    model = typed.clone()  # shares the weights' tensors: they are replaced, never changed
    graph = model.graph
    when_run = _rounds_weights_when_run(graph)
    read_as_run: list[tuple[ir.Graph, ir.Value]] = []
    for body_or_main in list(all_graphs(graph)):
        for value in list(body_or_main.initializers.values()):
            if value.dtype not in LOW:
                continue
            if when_run and not value.is_graph_input():  # an input's default: a feed replaces it in fp32
                read_as_run.append((body_or_main, value))
            else:
                value.const_value = converted(value.const_value, FLOAT)
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
    # After the nodes: the loop above would turn these Casts to fp16 into Casts to fp32.
    for body_or_main, value in read_as_run:
        _widen_weight(body_or_main, value)
    for value in list(graph.inputs):
        if value.dtype in LOW:
            low = value.dtype
            value.type = ir.TensorType(FLOAT)  # new object: types may be shared
            _round_trip(graph, value, low, None)
    return model
