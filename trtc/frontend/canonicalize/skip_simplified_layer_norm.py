"""com.microsoft.SkipSimplifiedLayerNormalization -> Add and ONNX RMSNormalization.

    y, _, inv_std_var, sum = SkipSimplifiedLayerNormalization(x, skip, gamma[, bias]) {epsilon}
-->
    sum = Add(Add(x, skip)[, bias])                 (genai's exports pass it on as the next residual)
    y = RMSNormalization(sum, gamma) {axis=-1, epsilon}
    inv_std_var = Reciprocal(Sqrt(ReduceMean(sum^2) + epsilon))   (only when read)

Output 1 (mean) has no meaning for the simplified form: a model reading it is refused.
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


@contrib_rule("com.microsoft", "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_norm(graph: ir.Graph, node: ir.Node) -> None:
    check_attributes(node, {"epsilon": None})
    if len(node.inputs) < 3 or any(optional(node.inputs, i) is None for i in range(3)):
        raise refuse(node, "needs the inputs input, skip and gamma")
    if used(optional(node.outputs, 1)):
        raise refuse(node, "its output 1 (mean) is read")
    epsilon = node.attributes.get_float("epsilon", 1e-12)
    build = Builder(graph, node)
    total = build("Add", node.inputs[:2])
    if (bias := optional(node.inputs, 3)) is not None:
        total = build("Add", [total, bias])
    y = build("RMSNormalization", [total, node.inputs[2]], {"axis": -1, "epsilon": epsilon, "stash_type": 1})
    inv = inv_std_var(build, total, -1, epsilon) if used(optional(node.outputs, 2)) else None
    take_outputs(node, [y, None, inv, total])
