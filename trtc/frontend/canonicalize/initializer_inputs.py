"""Graph inputs that are also initializers (IR < 4 style, or overridable defaults) -> plain
initializers: a compiled model treats weights as constants."""

from __future__ import annotations

import onnx_ir as ir

from trtc.frontend.canonicalize import canonical_rule


@canonical_rule
def initializers_not_inputs(model: ir.Model) -> int:
    graph = model.graph
    weights = [v for v in graph.inputs if v.is_initializer()]
    for value in weights:
        graph.inputs.remove(value)
    return len(weights)
