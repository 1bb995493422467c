"""Fuse decomposed LayerNorm into LayerNormalization (opset 17).

Before (torch's opset < 17 export and hand-written forms; `axes` the trailing k axes, keepdims=1):
    mean = ReduceMean(x, axes)            d = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
    n    = Div(d, Sqrt(Add(var, eps)))  |  Mul(d, Reciprocal(Sqrt(Add(var, eps))))
    y    = Add(Mul(n, scale), bias)       (scale and bias optional, either operand order)
After:
    y = LayerNormalization(x, scale, bias, axis=-k, epsilon=eps)   (ones / zeros when absent)

A Cast-wrapped form (x cast to float32 before the statistics, the result cast back) fuses
its inner part: the Casts stay. `why_not(node)` says why a ReduceMean does not start one.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_scalar, fuse_matches, is_op, only_user, replace_with
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
class LayerNormMatch:
    x: ir.Value
    k: int  # normalize over the last k axes
    epsilon: float
    scale: np.ndarray | None
    bias: np.ndarray | None
    output: ir.Value
    nodes: list[ir.Node]


def match_layer_norm(mean_node: ir.Node) -> LayerNormMatch | str:
    """The LayerNorm that `mean_node` (the ReduceMean of x) starts, or why there is none."""
    if not is_op(mean_node, "ReduceMean"):
        return "not a ReduceMean"
    x, mean = mean_node.inputs[0], mean_node.outputs[0]
    if x.dtype not in NORM_DTYPES:
        return f"input dtype {x.dtype} is not float32/float16/bfloat16"
    k = trailing_axes(mean_node)
    if isinstance(k, str):
        return f"mean: {k}"
    if normalized_shape(x, k) is None:
        return "the normalized dims of the input are not static"
    sub = only_user(mean)
    if not is_op(sub, "Sub") or sub.inputs[0] is not x or sub.inputs[1] is not mean:
        return "the mean is not used only by Sub(x, mean)"
    d = sub.outputs[0]
    squares = [u for u in d.consumers() if is_op(u, "Pow", "Mul") and u.inputs[0] is d]
    squares = [u for u in squares if u.op_type == "Pow" or u.inputs[1] is d]
    if len(squares) != 1:
        return "x - mean is not squared once (Pow(d, 2) or Mul(d, d))"
    square = squares[0]
    if square.op_type == "Pow" and const_scalar(square.inputs[1]) != 2:
        return f"Pow exponent is {const_scalar(square.inputs[1])}, not 2"
    var_node = only_user(square.outputs[0])
    if not is_op(var_node, "ReduceMean"):
        return "the square is not used only by a ReduceMean"
    var_k = trailing_axes(var_node)
    if var_k != k:
        return f"variance: {var_k}" if isinstance(var_k, str) else f"variance reduces the last {var_k} axes, not {k}"
    tail = match_std_tail(var_node.outputs[0], d, "x - mean")
    if isinstance(tail, str):
        return f"variance: {tail}"
    nodes = [mean_node, sub, square, var_node, *tail.nodes]
    divide = tail.nodes[-1]
    if set(d.consumers()) != {square, divide} or d.is_graph_output():
        return "x - mean has users outside the pattern"
    match = LayerNormMatch(x, k, tail.epsilon, None, None, tail.output, nodes)
    absorb_affine(match, "Mul")
    absorb_affine(match, "Add")
    return match


def absorb_affine(match: LayerNormMatch, op_type: str) -> None:
    """Take a following Mul(scale) / Add(bias) into the match when it is per-channel."""
    user = only_user(match.output)
    if not is_op(user, op_type):
        return
    param = affine_param(other_operand(user, match.output), match.x, match.k)
    if isinstance(param, str):
        log.debug("%s %s not absorbed: %s", op_type, user.name, param)
        return
    if op_type == "Mul":
        match.scale = param
    else:
        match.bias = param
    match.output = user.outputs[0]
    match.nodes.append(user)


def why_not(node: ir.Node) -> str | None:
    """Why `node` does not start a decomposed LayerNorm (None: it does)."""
    result = match_layer_norm(node)
    return result if isinstance(result, str) else None


def fuse(graph: ir.Graph, match: LayerNormMatch) -> None:
    shape = normalized_shape(match.x, match.k)
    dtype = match.x.dtype.numpy()
    scale = match.scale if match.scale is not None else np.ones(shape, dtype)
    bias = match.bias if match.bias is not None else np.zeros(shape, dtype)
    base = match.output.name or "layer_norm"
    node = ir.node("LayerNormalization",
                   [match.x, add_constant(graph, scale, f"{base}_scale"), add_constant(graph, bias, f"{base}_bias")],
                   {"axis": -match.k, "epsilon": match.epsilon},
                   name=f"{match.nodes[0].name or base}_fused")
    replace_with(graph, match.nodes[-1], [node], [match.output], node.outputs, dead=match.nodes[::-1])


@register_pass("fuse-layer-norm", order=50)
def fuse_layer_norm(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div[/Mul/Add]) into LayerNormalization."""
    fused = len(fuse_matches(model, "fuse-layer-norm", ["ReduceMean"], match_layer_norm, fuse, opset=17))
    return {"layer-norm": fused} if fused else {}
