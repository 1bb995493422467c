"""`y = Constant() {value=T}` -> initializer `y = T` (in every graph, subgraphs included)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.frontend.canonicalize import canonical_rule
from trtc.ir.walk import all_graphs

_SCALAR_ATTRS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node produces, or None for forms we leave alone (sparse)."""
    attrs = node.attributes
    if "value" in attrs:
        return attrs["value"].as_tensor()
    for name, dtype in _SCALAR_ATTRS.items():
        if name in attrs:
            return ir.tensor(np.asarray(attrs[name].value, dtype=dtype))
    if "value_string" in attrs:
        return ir.tensor(np.asarray(attrs["value_string"].value, dtype=object))
    if "value_strings" in attrs:
        return ir.tensor(np.asarray(attrs["value_strings"].value, dtype=object))
    return None


@canonical_rule
def lift_constants(model: ir.Model) -> int:
    """Constant nodes become initializers of the graph they sit in."""
    count = 0
    for graph in list(all_graphs(model.graph)):
        for node in list(graph):
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            tensor = constant_tensor(node)
            if tensor is None:
                continue
            out = node.outputs[0]
            if out.is_graph_output() or out.name in graph.initializers:
                continue
            # A fresh value replaces the node's output so the node can be removed.
            value = ir.Value(name=out.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                             const_value=tensor)
            out.replace_all_uses_with(value)
            graph.remove(node, safe=True)
            graph.register_initializer(value)
            count += 1
    return count
