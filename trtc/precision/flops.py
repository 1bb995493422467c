"""FLOPs per node from concrete shapes seen on calibration data (for the fp16 FLOP share)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx_ir as ir

Shapes = Mapping[str, Sequence[int]]


def _numel(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def node_flops(node: ir.Node, shapes: Shapes) -> int:
    """Multiply-adds count 2; everything else one FLOP per output element."""
    out = shapes.get(node.outputs[0].name) if node.outputs else None
    ins = [shapes.get(v.name) if v is not None else None for v in node.inputs]
    op = node.op_type
    if op in ("MatMul", "Gemm") and ins and ins[0] is not None and out is not None:
        a = ins[0]
        k = a[-1] if op == "MatMul" or not node.attributes.get_int("transA", 0) else a[0]
        return 2 * _numel(out) * k
    if op == "Conv" and len(ins) > 1 and ins[1] is not None and out is not None:
        return 2 * _numel(out) * _numel(ins[1][1:])  # W: [Cout, Cin/group, k...]
    if op == "ConvTranspose" and len(ins) > 1 and ins[0] is not None and ins[1] is not None:
        return 2 * _numel(ins[0]) * _numel(ins[1][1:])  # W: [Cin, Cout/group, k...]
    if op == "Attention" and len(ins) > 2 and ins[2] is not None and out is not None:
        # Q·K^T and P·V over kv_len keys (3-D and 4-D V both have it at axis -2),
        # head dims of Q and V taken as equal.
        return 2 * 2 * _numel(out) * ins[2][-2]
    return _numel(out)
