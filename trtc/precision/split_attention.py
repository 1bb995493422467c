"""Split a fused Attention back into its two matmuls, so that both can be quantized.

Before (3-D form, H heads of D; or Q, K, V already [B, H, S, D]):
    Y = Attention(Q [B,S,H*D], K [B,Skv,H*D], V [B,Skv,H*Dv], mask?, scale=a, is_causal=c)
After:
    q = Transpose(Reshape(Q, [0,0,H,D]), [0,2,1,3])             k^T = Transpose(Reshape(K, [0,0,H,D]), [0,2,3,1])
    s = MatMul(q, k^T) * a                                      v = Transpose(Reshape(V, [0,0,H,Dv]), [0,2,1,3])
    s = s + mask  |  Where(mask, s, -inf)                       (a float / boolean mask)
    s = Where(Trilu(ones [S, Skv], upper=0), s, -inf)           (is_causal: ONNX's upper-left alignment)
    Y = Reshape(Transpose(MatMul(Softmax(s, -1), v), [0,2,1,3]), [0,0,H*Dv])
which is ONNX's definition of Attention. Quantization splits an Attention only where both matmuls
are worth an int8 kernel (`why_not_split`: the key length and the head size at least 16 at the
calibration shapes, as ModelOpt's MatMul rule) and the node has no KV cache, softcap, GQA or
extra outputs; elsewhere it stays fused and in float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant
from trtc.precision.qdq_placement import MIN_DIM

FLOAT = ir.DataType.FLOAT


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def _dims(node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int, int, int] | None:
    """(heads, head size, value head size, key length) at the calibration shapes."""
    q, k, v = (shapes.get(x.name) if x is not None else None for x in node.inputs[:3])
    if q is None or k is None or v is None or len(q) != len(k) or len(q) not in (3, 4):
        return None
    if len(q) == 4:
        return q[1], q[3], v[3], k[2]
    heads = node.attributes.get_int("q_num_heads", 0)
    if heads <= 0 or q[2] % heads or v[2] % heads:
        return None
    return heads, q[2] // heads, v[2] // heads, k[1]


def why_not_split(node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why quantization leaves this Attention fused (and in float), or None."""
    attrs = node.attributes
    if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
        return "it reads a KV cache"
    if any(_used(v) for v in node.outputs[1:]):
        return "its present/qk outputs are read"
    if attrs.get_float("softcap", 0.0) or attrs.get_int("qk_matmul_output_mode", 0):
        return "softcap or qk output mode"
    if attrs.get_int("q_num_heads", 0) != attrs.get_int("kv_num_heads", 0):
        return "grouped-query heads"
    if any(v.dtype != FLOAT for v in node.inputs[:3]):
        return "its inputs are not fp32"
    dims = _dims(node, shapes)
    if dims is None:
        return "its shapes are unknown (it did not run on the calibration data)"
    heads, d, dv, skv = dims
    if skv < MIN_DIM:
        return f"{skv} keys < {MIN_DIM} at the calibration shapes: its matmuls are too small for int8 kernels"
    if min(d, dv) < MIN_DIM:
        return f"head size {min(d, dv)} < {MIN_DIM}: its matmuls are too small for int8 kernels"
    return None


class _Builder:
    def __init__(self, graph: ir.Graph, anchor: ir.Node):
        self.graph, self.anchor, self.prefix, self.nodes = graph, anchor, anchor.name, []

    def op(self, op: str, inputs, attributes=None, name: str = "", dtype: ir.DataType = FLOAT) -> ir.Value:
        node = ir.node(op, inputs, attributes or {}, name=f"{self.prefix}/{name or op}")
        node.outputs[0].name = f"{self.prefix}/{name or op}_output"
        node.outputs[0].type = ir.TensorType(dtype)
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray, name: str) -> ir.Value:
        return add_constant(self.graph, array, f"{self.prefix}/{name}")

    def heads(self, x: ir.Value, heads: int, size: int, perm: list[int], name: str) -> ir.Value:
        shape = self.const(np.array([0, 0, heads, size], np.int64), f"{name}_heads_shape")
        return self.op("Transpose", [self.op("Reshape", [x, shape], name=f"{name}_heads")], {"perm": perm},
                       name=f"{name}_heads_t")


def split(graph: ir.Graph, node: ir.Node, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Replace `node` (for which `why_not_split` is None) by its decomposition."""
    b = _Builder(graph, node)
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    heads, d, dv, _ = _dims(node, shapes)
    three_d = len(shapes[q.name]) == 3
    if three_d:
        q, kt, v = (b.heads(q, heads, d, [0, 2, 1, 3], "q"), b.heads(k, heads, d, [0, 2, 3, 1], "k"),
                    b.heads(v, heads, dv, [0, 2, 1, 3], "v"))
    else:
        kt = b.op("Transpose", [k], {"perm": [0, 1, 3, 2]}, name="k_t")
    scale = node.attributes.get_float("scale", 1.0 / math.sqrt(d))
    scores = b.op("Mul", [b.op("MatMul", [q, kt], name="qk"), b.const(np.array(scale, np.float32), "scale")],
                  name="scaled")
    minus_inf = b.const(np.array(-np.inf, np.float32), "minus_inf")
    if mask is not None and mask.dtype == ir.DataType.BOOL:
        scores = b.op("Where", [mask, scores, minus_inf], name="masked")
    elif mask is not None:
        scores = b.op("Add", [scores, mask], name="masked")
    if node.attributes.get_int("is_causal", 0):
        last_two = b.op("Slice", [b.op("Shape", [scores], name="scores_shape", dtype=ir.DataType.INT64),
                                  b.const(np.array([-2], np.int64), "from"), b.const(np.array([4], np.int64), "to")],
                        name="square", dtype=ir.DataType.INT64)
        ones = b.op("ConstantOfShape", [last_two], {"value": ir.tensor(np.array([True]))}, name="ones",
                    dtype=ir.DataType.BOOL)
        causal = b.op("Trilu", [ones], {"upper": 0}, name="causal", dtype=ir.DataType.BOOL)
        scores = b.op("Where", [causal, scores, minus_inf], name="causal_masked")
    probs = b.op("Softmax", [scores], {"axis": -1}, name="probs")
    out = b.op("MatMul", [probs, v], name="pv")
    if three_d:
        merged = b.const(np.array([0, 0, heads * dv], np.int64), "merged_shape")
        out = b.op("Reshape", [b.op("Transpose", [out], {"perm": [0, 2, 1, 3]}, name="merge_t"), merged],
                   name="merged")
    graph.insert_before(node, b.nodes)
    y = node.outputs[0]
    out.type, out.shape = y.type, y.shape
    if y.is_graph_output():
        name, y.name = y.name, None
        out.name = name
    y.replace_all_uses_with(out, replace_graph_outputs=True)
    graph.remove(node, safe=True)


def split_attentions(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Split every main-graph Attention that `why_not_split` allows (shapes inferred for the new
    values); returns their names."""
    from trtc.frontend.shapes import infer_shapes

    done = []
    for node in list(model.graph):
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx") and why_not_split(node, shapes) is None:
            split(model.graph, node, shapes)
            done.append(node.name)
    if done:
        infer_shapes(model)
    return done
