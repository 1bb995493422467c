"""onnxruntime's SimplifiedLayerNormalization (default domain, no ONNX schema) -> ONNX RMSNormalization.

    y, inv_std_var = SimplifiedLayerNormalization(x, scale) {axis, epsilon, stash_type}
-->
    y = RMSNormalization(x, scale) {axis, epsilon, stash_type}          (opset 23; lowered natively)
    inv_std_var = Reciprocal(Sqrt(ReduceMean(Cast(x)^2) + epsilon))     (only when read)
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.frontend.canonicalize.contrib import (
    Builder,
    check_attributes,
    contrib_rule,
    inv_std_var,
    optional,
    refuse,
    take_outputs,
    used,
)


@contrib_rule("", "SimplifiedLayerNormalization")
def simplified_layer_norm(graph: ir.Graph, node: ir.Node) -> None:
    check_attributes(node, {"axis": None, "epsilon": None, "stash_type": 1})
    if len(node.inputs) != 2 or optional(node.inputs, 1) is None:
        raise refuse(node, "needs exactly the inputs X and scale")
    axis = node.attributes.get_int("axis", -1)
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    build = Builder(graph, node)
    y = build("RMSNormalization", node.inputs, {"axis": axis, "epsilon": epsilon, "stash_type": 1})
    inv = optional(node.outputs, 1)
    inv = inv_std_var(build, node.inputs[0], axis, epsilon) if used(inv) else None
    take_outputs(node, [y, inv])
