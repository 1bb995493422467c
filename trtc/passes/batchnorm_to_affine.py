"""Inference BatchNormalization that no conv absorbed -> a per-channel affine transform.

    y = BatchNormalization(x, scale, B, mean, var) {epsilon}
      ->  y = Add(Mul(x, s), b)   s = scale / sqrt(var + eps),  b = B - mean * s
                                   (shaped [C, 1, ...] to broadcast over x's channel axis 1)

With constant statistics the op computes no variance at run time: it is the affine map
TensorRT lowers it to anyway (a Scale layer), and as Mul/Add it is typed like any other
elementwise op instead of being held in fp32 as a normalisation. Not in the default
pipeline (`--passes` adds it): it doubles the node count and the precision policy keeps
unfolded BatchNormalization in fp32, at a negligible share of the FLOPs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_array, is_op, replace_with
from trtc.passes.registry import PassContext, register_pass


def _affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (s, b) of an inference BatchNormalization with constant parameters, else None."""
    if len(node.outputs) != 1 or len(node.inputs) != 5:
        return None
    if node.attributes.get_int("training_mode", 0):
        return None
    params = [const_array(v) for v in node.inputs[1:]]
    x = node.inputs[0]
    if any(p is None or p.ndim != 1 for p in params) or x.shape is None or len(x.shape) < 2:
        return None
    if x.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE):
        return None
    scale, bias, mean, var = (p.astype(np.float64) for p in params)
    eps = node.attributes.get_float("epsilon", 1e-5)
    s = scale / np.sqrt(var + eps)
    b = bias - mean * s
    if not (np.isfinite(s).all() and np.isfinite(b).all()):
        return None
    tail = (1,) * (len(x.shape) - 2)
    dtype = x.dtype.numpy()
    return s.reshape(-1, *tail).astype(dtype), b.reshape(-1, *tail).astype(dtype)


@register_pass("batchnorm-to-affine", order=45, default=False)
def batchnorm_to_affine(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Inference BatchNormalization left after conv folding -> per-channel Mul + Add."""
    graph = model.graph
    count = 0
    for node in list(graph):
        if not is_op(node, "BatchNormalization"):
            continue
        affine = _affine(node)
        if affine is None:
            continue
        s, b = affine
        name = node.name or node.outputs[0].name
        mul = ir.node("Mul", [node.inputs[0], add_constant(graph, s, f"{name}.scale")], name=f"{name}/mul")
        add = ir.node("Add", [mul.outputs[0], add_constant(graph, b, f"{name}.shift")], name=f"{name}/add")
        out = node.outputs[0]
        mul.outputs[0].type, mul.outputs[0].shape = out.type, out.shape
        replace_with(graph, node, [mul, add], [out], [add.outputs[0]], dead=[node])
        count += 1
    return {"batchnorm": count} if count else {}
