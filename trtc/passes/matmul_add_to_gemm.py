"""Turn a 2-D MatMul by a constant weight plus a constant bias into one Gemm.

    y = MatMul(A, B)            A: [M, K] activation, B: [K, N] constant
    z = Add(y, bias)      =>    z = Gemm(A, B, bias)
        (or Add(bias, y))       bias: constant, unidirectionally broadcastable to [M, N]

TensorRT's Gemm/fully-connected path takes only 2-D operands, so A of rank > 2 (a
transformer's [batch, seq, hidden]) is left as MatMul + Add: that is the form TensorRT's
own fusions expect, and wrapping it in reshapes buys nothing measured.
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.ir.rewrite import const_array, is_op, only_user, producer_of, replace_with
from trtc.passes.registry import PassContext, register_pass

GEMM_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})


@register_pass("matmul-add-to-gemm", order=80)
def matmul_add_to_gemm(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Rewrite MatMul(2-D activation, constant 2-D weight) + constant bias as Gemm."""
    graph = model.graph
    rewritten = 0
    for add in list(graph):
        if not is_op(add, "Add") or len(add.inputs) != 2:
            continue
        for mm_side in (0, 1):
            matmul = producer_of(add.inputs[mm_side], "MatMul")
            bias = add.inputs[1 - mm_side]
            if matmul is not None and _fits_gemm(matmul, add, bias):
                gemm = ir.node("Gemm", [matmul.inputs[0], matmul.inputs[1], bias], name=matmul.name)
                replace_with(graph, add, [gemm], [add.outputs[0]], [gemm.outputs[0]], dead=[add, matmul])
                rewritten += 1
                break
    return {"matmul-add": rewritten} if rewritten else {}


def _fits_gemm(matmul: ir.Node, add: ir.Node, bias: ir.Value | None) -> bool:
    """Whether Gemm(A, B, bias) computes exactly Add(MatMul(A, B), bias), as a 2-D Gemm."""
    if only_user(matmul.outputs[0]) is not add:
        return False  # the MatMul's result is needed on its own
    a, b = matmul.inputs
    weight, bias_data = const_array(b), const_array(bias)
    if weight is None or bias_data is None or weight.ndim != 2:
        return False
    same_type = a.dtype == b.dtype == bias.dtype
    if a.shape is None or len(a.shape) != 2 or not same_type or a.dtype not in GEMM_TYPES:
        return False
    rows, cols = a.shape[0], weight.shape[1]
    if bias_data.ndim > 2:
        return False  # would broadcast the sum to a higher rank
    # Gemm's C broadcasts one way only, to [M, N]: each dim is 1 or equal to the output's.
    aligned = (1,) * (2 - bias_data.ndim) + bias_data.shape
    return aligned[1] in (1, cols) and (aligned[0] == 1 or aligned[0] == rows)
