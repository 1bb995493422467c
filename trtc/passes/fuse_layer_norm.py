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

from trtc.ir.walk import all_graphs
from trtc.passes.registry import PassContext, register_pass
from trtc.passes.rewrite import (
    add_constant,
    const_array,
    const_scalar,
    is_op,
    only_user,
    replace_with,
    require_opset,
)

log = logging.getLogger(__name__)

# The normalisations are computed in float32 (stash_type=1): fusing a float64 one would lose precision.
NORM_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def other_operand(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary commutative `node` that reads `value` once, else None."""
    a, b = (list(node.inputs) + [None, None])[:2]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def trailing_axes(reduce: ir.Node) -> int | str:
    """k when `reduce` (keepdims=1) reduces exactly the last k axes of its input, else why not."""
    if reduce.attributes.get_int("keepdims", 1) != 1:
        return "keepdims is 0"
    axes_attr = reduce.attributes.get_ints("axes")
    axes = const_array(reduce.inputs[1]) if len(reduce.inputs) > 1 else None
    if axes is None and axes_attr is None:
        return "the axes are not constant (or reduce everything)"
    axes = [int(a) for a in (np.ravel(axes) if axes is not None else axes_attr)]
    rank = reduce.inputs[0].shape.rank() if reduce.inputs[0].shape is not None else None
    if rank is not None:
        axes = [a - rank if a >= 0 else a for a in axes]
    k = len(axes)
    if k == 0 or sorted(axes) != list(range(-k, 0)):
        return f"axes {axes} are not the trailing axes"
    return k


def normalized_shape(x: ir.Value, k: int) -> tuple[int, ...] | None:
    """The static trailing k dims of `x`, or None when any is symbolic or the rank is unknown."""
    if x.shape is None or x.shape.rank() < k:
        return None
    dims = tuple(x.shape[x.shape.rank() - k:])
    return dims if all(isinstance(d, int) for d in dims) else None


def affine_param(value: ir.Value | None, x: ir.Value, k: int) -> np.ndarray | str:
    """A per-channel scale or bias as an array of the normalized shape, or why it is not one.

    It must be a constant of x's dtype whose broadcast against x changes nothing but the
    normalized dims: leading 1s dropped, it broadcasts to x's trailing k dims.
    """
    data = const_array(value)
    if data is None:
        return "not a constant"
    if value.dtype != x.dtype:
        return f"dtype {value.dtype} differs from the input's {x.dtype}"
    shape = normalized_shape(x, k)
    if shape is None:
        return "the normalized dims of the input are not static"
    if data.ndim > x.shape.rank():
        return f"shape {list(data.shape)} has more dims than the input"
    squeezed = data.reshape(data.shape[next((i for i, d in enumerate(data.shape) if d != 1), data.ndim):])
    try:
        return np.ascontiguousarray(np.broadcast_to(squeezed, shape))
    except ValueError:
        return f"shape {list(data.shape)} does not broadcast to the normalized dims {list(shape)}"


def epsilon_of(add: ir.Node | None, var: ir.Value) -> float | str:
    """The scalar constant `add` adds to `var`, or why there is none."""
    if not is_op(add, "Add"):
        return f"it feeds {add.op_type if add else 'several nodes'}, not Add(eps)"
    eps_value = other_operand(add, var)
    eps = const_scalar(eps_value)
    if eps is None or not np.isfinite(eps) or eps < 0:
        return "Add's other operand is not a constant non-negative scalar"
    if const_array(eps_value).ndim > (var.shape.rank() if var.shape is not None else 1):
        return "epsilon has more dims than the variance"
    return float(eps)


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
    var = var_node.outputs[0]
    add_eps = only_user(var)
    eps = epsilon_of(add_eps, var)
    if isinstance(eps, str):
        return f"variance: {eps}"
    sqrt = only_user(add_eps.outputs[0])
    if not is_op(sqrt, "Sqrt"):
        return "variance + eps is not used only by Sqrt"
    nodes = [mean_node, sub, square, var_node, add_eps, sqrt]
    std = sqrt.outputs[0]
    divide = only_user(std)
    if is_op(divide, "Reciprocal"):
        nodes.append(divide)
        inv_std = divide.outputs[0]
        divide = only_user(inv_std)
        if not is_op(divide, "Mul") or other_operand(divide, inv_std) is not d:
            return "1/std is not used only by Mul(x - mean, 1/std)"
    elif not is_op(divide, "Div") or divide.inputs[0] is not d or divide.inputs[1] is not std:
        return "std is not used only by Div(x - mean, std) or Reciprocal"
    nodes.append(divide)
    if set(d.consumers()) != {square, divide} or d.is_graph_output():
        return "x - mean has users outside the pattern"
    match = LayerNormMatch(x, k, eps, None, None, divide.outputs[0], nodes)
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
    fused = 0
    for graph in list(all_graphs(model.graph)):
        for node in [n for n in graph if is_op(n, "ReduceMean")]:
            if node.graph is not graph:
                continue  # removed by an earlier fusion
            match = match_layer_norm(node)
            if isinstance(match, str):
                log.debug("fuse-layer-norm: %s: %s", node.name, match)
                continue
            require_opset(model, 17)
            fuse(graph, match)
            fused += 1
    return {"layer-norm": fused} if fused else {}

