"""Constraints and small layer helpers shared by the sampling, spectral and other converters."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.ops.attention import scalar
from trtc.lower.registry import Constraint


def rank_is(index: int, ranks: tuple[int, ...], what: str) -> Constraint:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index]
        if value.shape is None or value.shape.rank() not in ranks:
            rank = "unknown" if value.shape is None else value.shape.rank()
            return f"{what} must be {' or '.join(f'{r}-D' for r in ranks)} (it is {rank}-D)"
        return None

    return Constraint(f"{what} rank in {ranks}", check)


def static_dims(index: int, axes: tuple[int, ...], what: str) -> Constraint:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index]
        if value.shape is None or any(not isinstance(value.shape[a], int) for a in axes):
            return f"{what} must have static dims {axes} (shape {value.shape})"
        return None

    return Constraint(f"{what} dims {axes} static", check)


def const_scalar(ctx, value: float, dtype):
    """A 0-D constant of TensorRT type `dtype`."""
    return scalar(ctx, value, dtype, 0)


def elementwise_chain(ctx, first, *steps):
    """first op1 b1 op2 b2 ... (steps are (operation name, operand) pairs)."""
    E = ctx.trt.ElementWiseOperation
    out = first
    for op, operand in steps:
        out = ctx.elementwise(out, operand, getattr(E, op))
    return out


def pick_axis(ctx, tensor, index: int, axis: int):
    """tensor[..., index, ...] at `axis` (the axis is dropped)."""
    indices = ctx.constant(np.array(index, np.int32))
    return ctx.check(ctx.network.add_gather(tensor, indices, axis)).get_output(0)


def concat_last(ctx, tensors):
    """Stack same-shape tensors along a new last axis."""
    axes = ctx.constant(np.array([ctx.rank(tensors[0])], np.int64))
    expanded = [ctx.check(ctx.network.add_unsqueeze(t, axes)).get_output(0) for t in tensors]
    layer = ctx.check(ctx.network.add_concatenation(expanded))
    layer.axis = ctx.rank(tensors[0])
    return layer.get_output(0)


def unit_last(ctx, tensor):
    """`tensor` with a size-1 dim appended. TensorRT's convolution, deconvolution and pooling layers take
    2 or 3 spatial dims, so 1-D ones run as 2-D over [N, C, L, 1]: kernel, stride and dilation 1 and no
    padding along the unit dim leave it as it is."""
    return ctx.unsqueeze(tensor, [ctx.rank(tensor)])


def drop_last(ctx, tensor):
    """`tensor` without its last dim, a unit one (`unit_last` undone)."""
    return ctx.squeeze(tensor, [ctx.rank(tensor) - 1])
