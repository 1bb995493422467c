"""`y = Dropout(x)` in inference (no training_mode, or a constant false) -> `x`."""

from __future__ import annotations

import onnx_ir as ir

from trtc.frontend.canonicalize import canonical_rule
from trtc.ir.walk import all_graphs


def _in_inference(node: ir.Node) -> bool:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return True
    mode = node.inputs[2].const_value
    return mode is not None and not bool(mode.numpy())


@canonical_rule
def drop_inference_dropout(model: ir.Model) -> int:
    """Dropout is the identity in inference; its unused mask output goes with it."""
    count = 0
    for graph in list(all_graphs(model.graph)):
        for node in list(graph):
            if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                continue
            if not _in_inference(node) or (len(node.outputs) > 1 and node.outputs[1].uses()):
                continue
            out, src = node.outputs[0], node.inputs[0]
            if out.is_graph_output():
                if src.is_graph_input() or src.is_graph_output() or src.is_initializer():
                    continue  # keep: a graph output cannot simply alias an input
                src.name, out.name = out.name, src.name  # keep the output's name
                graph.outputs[graph.outputs.index(out)] = src
            out.replace_all_uses_with(src)
            graph.remove(node, safe=True)
            count += 1
    return count
