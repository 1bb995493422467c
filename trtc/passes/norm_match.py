"""Matching helpers shared by the normalisation fusions (fuse-layer-norm, fuse-rms-norm):
the reduced axes, per-channel parameters, the epsilon and the `1 / sqrt(var + eps)` tail,
(the loop that tries every ReduceMean is `trtc.ir.rewrite.fuse_matches`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import const_array, const_scalar, is_op, only_user, other_operand

# The normalisations are computed in float32 (stash_type=1): fusing a float64 one would lose precision.
NORM_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


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


def is_one(value: ir.Value) -> bool:
    """A constant 1 that broadcasts without adding dims (the numerator of 1/std)."""
    return const_scalar(value) == 1 and const_array(value).ndim <= 1


@dataclasses.dataclass
class StdTail:
    epsilon: float
    nodes: list[ir.Node]  # Add(eps), Sqrt, [Reciprocal | Div(1, std)], Div | Mul
    output: ir.Value  # numerator / std


def match_std_tail(var: ir.Value, numerator: ir.Value, label: str) -> StdTail | str:
    """numerator / Sqrt(var + eps), as Div(numerator, std), Mul(numerator, Reciprocal(std)) or
    Mul(numerator, Div(1, std)), each value read only by the next; or why not (`label` names
    the numerator there)."""
    add_eps = only_user(var)
    eps = epsilon_of(add_eps, var)
    if isinstance(eps, str):
        return eps
    sqrt = only_user(add_eps.outputs[0])
    if not is_op(sqrt, "Sqrt"):
        return "it + eps is not used only by Sqrt"
    nodes = [add_eps, sqrt]
    std = sqrt.outputs[0]
    divide = only_user(std)
    if is_op(divide, "Reciprocal") or (is_op(divide, "Div") and divide.inputs[1] is std and is_one(divide.inputs[0])):
        nodes.append(divide)
        inv_std = divide.outputs[0]
        divide = only_user(inv_std)
        if not is_op(divide, "Mul") or other_operand(divide, inv_std) is not numerator:
            return f"1/std is not used only by Mul({label}, 1/std)"
    elif not is_op(divide, "Div") or divide.inputs[0] is not numerator or divide.inputs[1] is not std:
        return f"std is not used only by Div({label}, std), Div(1, std) or Reciprocal"
    nodes.append(divide)
    return StdTail(eps, nodes, divide.outputs[0])
