"""Fuse decomposed RMSNorm (T5's LayerNorm, LLaMA's RMSNorm) into RMSNormalization (opset 23).

Before (`axes` the trailing k axes, keepdims=1; Mul operands in either order):
    std = Sqrt(Add(ReduceMean(Pow(x, 2) | Mul(x, x), axes), eps))
    n   = Div(x, std)  |  Mul(x, Reciprocal(std))  |  Mul(x, Div(1, std))
    y   = Mul(n, weight)                          (optional)
After:
    y = RMSNormalization(x, weight, axis=-k, epsilon=eps)   (weight: ones when absent)

Exports that compute the statistics in float32 cast x up first and the result back before
the weight: x is then the Cast's output, the Casts stay, and the weight, of the other dtype,
stays a Mul after the cast back (scale = ones), so the rounding is the model's.
`why_not(node)` says why a ReduceMean does not start one.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from trtc.ir.walk import all_graphs
from trtc.passes.fuse_layer_norm import (
    NORM_DTYPES,
    affine_param,
    epsilon_of,
    normalized_shape,
    other_operand,
    trailing_axes,
)
from trtc.passes.registry import PassContext, register_pass
from trtc.passes.rewrite import (
    add_constant,
    const_array,
    const_scalar,
    is_op,
    only_user,
    producer_of,
    replace_with,
    require_opset,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RmsNormMatch:
    x: ir.Value
    k: int  # normalize over the last k axes
    epsilon: float
    weight: np.ndarray | None
    output: ir.Value
    nodes: list[ir.Node]


def match_rms_norm(mean_node: ir.Node) -> RmsNormMatch | str:
    """The RMSNorm whose mean of squares `mean_node` computes, or why there is none."""
    if not is_op(mean_node, "ReduceMean"):
        return "not a ReduceMean"
    square = producer_of(mean_node.inputs[0], "Pow", "Mul")
    if square is None:
        return "the input is not Pow(x, 2) or Mul(x, x)"
    x = square.inputs[0]
    if square.op_type == "Mul" and square.inputs[1] is not x:
        return "the input is a Mul of two different values, not Mul(x, x)"
    if square.op_type == "Pow" and const_scalar(square.inputs[1]) != 2:
        return f"Pow exponent is {const_scalar(square.inputs[1])}, not 2"
    if only_user(square.outputs[0]) is not mean_node:
        return "the square has users outside the pattern"
    if x.dtype not in NORM_DTYPES:
        return f"input dtype {x.dtype} is not float32/float16/bfloat16"
    k = trailing_axes(mean_node)
    if isinstance(k, str):
        return k
    if normalized_shape(x, k) is None:
        return "the normalized dims of the input are not static"
    mean_square = mean_node.outputs[0]
    add_eps = only_user(mean_square)
    eps = epsilon_of(add_eps, mean_square)
    if isinstance(eps, str):
        return f"mean square: {eps}"
    sqrt = only_user(add_eps.outputs[0])
    if not is_op(sqrt, "Sqrt"):
        return "mean square + eps is not used only by Sqrt"
    nodes = [square, mean_node, add_eps, sqrt]
    std = sqrt.outputs[0]
    divide = only_user(std)
    if is_op(divide, "Reciprocal") or (is_op(divide, "Div") and divide.inputs[1] is std and is_one(divide.inputs[0])):
        nodes.append(divide)
        inv_std = divide.outputs[0]
        divide = only_user(inv_std)
        if not is_op(divide, "Mul") or other_operand(divide, inv_std) is not x:
            return "1/std is not used only by Mul(x, 1/std)"
    elif not is_op(divide, "Div") or divide.inputs[0] is not x or divide.inputs[1] is not std:
        return "std is not used only by Div(x, std), Div(1, std) or Reciprocal"
    nodes.append(divide)
    match = RmsNormMatch(x, k, eps, None, divide.outputs[0], nodes)
    scale = only_user(match.output)
    if is_op(scale, "Mul"):
        weight = affine_param(other_operand(scale, match.output), x, k)
        if isinstance(weight, str):
            log.debug("Mul %s not absorbed: %s", scale.name, weight)
        else:
            match.weight, match.output = weight, scale.outputs[0]
            nodes.append(scale)
    return match


def is_one(value: ir.Value) -> bool:
    """A constant 1 that broadcasts without adding dims (the numerator of 1/std)."""
    return const_scalar(value) == 1 and const_array(value).ndim <= 1


def why_not(node: ir.Node) -> str | None:
    """Why `node` is not the mean of squares of an RMSNorm (None: it is)."""
    result = match_rms_norm(node)
    return result if isinstance(result, str) else None


def fuse(graph: ir.Graph, match: RmsNormMatch) -> None:
    shape = normalized_shape(match.x, match.k)
    weight = match.weight if match.weight is not None else np.ones(shape, match.x.dtype.numpy())
    base = match.output.name or "rms_norm"
    node = ir.node("RMSNormalization", [match.x, add_constant(graph, weight, f"{base}_scale")],
                   {"axis": -match.k, "epsilon": match.epsilon}, name=f"{match.nodes[1].name or base}_fused")
    replace_with(graph, match.nodes[-1], [node], [match.output], node.outputs, dead=match.nodes[::-1])


@register_pass("fuse-rms-norm", order=55)
def fuse_rms_norm(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse decomposed RMSNorm (Pow/ReduceMean/Add/Sqrt/Div[/Mul]) into RMSNormalization."""
    fused = 0
    for graph in list(all_graphs(model.graph)):
        for node in [n for n in graph if is_op(n, "ReduceMean")]:
            if node.graph is not graph:
                continue  # removed by an earlier fusion
            match = match_rms_norm(node)
            if isinstance(match, str):
                log.debug("fuse-rms-norm: %s: %s", node.name, match)
                continue
            require_opset(model, 23)
            fuse(graph, match)
            fused += 1
    return {"rms-norm": fused} if fused else {}
