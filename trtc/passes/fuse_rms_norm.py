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

from trtc.ir.rewrite import add_constant, const_scalar, fuse_matches, is_op, only_user, producer_of, replace_with
from trtc.passes.norm_match import (
    NORM_DTYPES,
    affine_param,
    match_std_tail,
    normalized_shape,
    other_operand,
    trailing_axes,
)
from trtc.passes.registry import PassContext, register_pass

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
    tail = match_std_tail(mean_node.outputs[0], x, "x")
    if isinstance(tail, str):
        return f"mean square: {tail}"
    nodes = [square, mean_node, *tail.nodes]
    match = RmsNormMatch(x, k, tail.epsilon, None, tail.output, nodes)
    scale = only_user(match.output)
    if is_op(scale, "Mul"):
        weight = affine_param(other_operand(scale, match.output), x, k)
        if isinstance(weight, str):
            log.debug("Mul %s not absorbed: %s", scale.name, weight)
        else:
            match.weight, match.output = weight, scale.outputs[0]
            nodes.append(scale)
    return match


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
    fused = len(fuse_matches(model, "fuse-rms-norm", ["ReduceMean"], match_rms_norm, fuse, opset=23))
    return {"rms-norm": fused} if fused else {}
