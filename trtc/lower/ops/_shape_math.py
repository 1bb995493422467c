"""Integer arithmetic on shape values that folds at build time when it can.

A shape value is either a numpy int64 array (known while building the network) or a
TensorRT int64 tensor (known only at run time). Each operation computes in numpy when all
its operands are numpy and adds TensorRT layers otherwise, so a converter writes ONNX's
formula once and gets static dims where the model has them and shape-tensor arithmetic
where it does not. (Not a converter module: the leading underscore keeps it out of the
auto-import.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.lower.registry import Constraint

INTEGER_TYPES = {ir.DataType.INT32, ir.DataType.INT64}


class ShapeMath:
    """Folding int64 arithmetic bound to one lowering context."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.E = ctx.trt.ElementWiseOperation

    # ------------------------------------------------------------ conversions
    @staticmethod
    def is_static(value) -> bool:
        return isinstance(value, np.ndarray)

    def tensor(self, value, rank: int = 0):
        """A TensorRT tensor for a shape value (int64 constants for numpy ones, made with at least `rank`
        dims so that no layer has to broadcast them)."""
        if isinstance(value, np.ndarray):
            array = value.astype(np.int64)
            return constant(self.ctx, array.reshape((1,) * (rank - array.ndim) + array.shape))
        return self.ctx.cast(value, self.ctx.trt.int64)

    def _rank(self, *values) -> int:
        return max(v.ndim if self.is_static(v) else len(v.shape) for v in values)

    def dims(self, tensor, axes=None):
        """`tensor`'s dims (at `axes`, a sequence or a shape value) as a 1-D shape value: numpy
        when all those dims are static."""
        if axes is not None and not self.is_static(axes) and not isinstance(axes, (list, tuple)):
            return self.gather(self.ctx.shape_of(tensor), axes)
        axes = list(range(len(tensor.shape))) if axes is None else [int(a) for a in axes]
        known = [tensor.shape[a] for a in axes]
        if all(d >= 0 for d in known):
            return np.array(known, np.int64)
        shape = self.ctx.shape_of(tensor)
        if axes == list(range(len(tensor.shape))):
            return shape
        return self.gather(shape, np.array(axes, np.int64))

    # ------------------------------------------------------------ arithmetic
    def _binary(self, a, b, numpy_fn, op):
        if self.is_static(a) and self.is_static(b):
            with np.errstate(over="ignore"):
                return np.asarray(numpy_fn(a, b)).astype(a.dtype if a.dtype == np.bool_ else np.int64)
        rank = self._rank(a, b)
        return self.ctx.elementwise(self.tensor(a, rank), self.tensor(b, rank), op)

    def add(self, a, b):
        return self._binary(a, b, np.add, self.E.SUM)

    def sub(self, a, b):
        return self._binary(a, b, np.subtract, self.E.SUB)

    def mul(self, a, b):
        return self._binary(a, b, np.multiply, self.E.PROD)

    def floor_div(self, a, b):
        return self._binary(a, b, np.floor_divide, self.E.FLOOR_DIV)

    def ceil_div(self, a, b):
        """ceil(a / b) for either sign of b, as -floor(-a / b)."""
        return self.sub(np.zeros((), np.int64), self.floor_div(self.sub(np.zeros((), np.int64), a), b))

    def min(self, a, b):
        return self._binary(a, b, np.minimum, self.E.MIN)

    def max(self, a, b):
        return self._binary(a, b, np.maximum, self.E.MAX)

    def clamp(self, value, lo, hi):
        return self.min(self.max(value, lo), hi)

    def less(self, a, b):
        if self.is_static(a) and self.is_static(b):
            return np.less(a, b)
        rank = self._rank(a, b)
        return self.ctx.elementwise(self.tensor(a, rank), self.tensor(b, rank), self.E.LESS)

    def where(self, cond, a, b):
        if self.is_static(cond) and self.is_static(a) and self.is_static(b):
            return np.where(cond, a, b).astype(np.int64)
        rank = self._rank(cond, a, b)
        if self.is_static(cond):
            cond = np.asarray(cond, np.bool_)
            cond = constant(self.ctx, cond.reshape((1,) * (rank - cond.ndim) + cond.shape))
        a, b = self.tensor(a, rank), self.tensor(b, rank)
        cond, a, b = self.ctx.broadcast(cond, a, b)
        return self.ctx.check(self.ctx.network.add_select(cond, a, b)).get_output(0)

    # ------------------------------------------------------------ structure
    def gather(self, value, indices):
        """value[indices] along axis 0 (`indices` a numpy array or a tensor)."""
        if self.is_static(value) and self.is_static(indices):
            return value[indices]
        layer = self.ctx.check(self.ctx.network.add_gather(self.tensor(value), self.tensor(indices), 0))
        return layer.get_output(0)

    def concat(self, values: Sequence[Any]):
        """1-D shape values joined end to end."""
        values = [v for v in values if not (self.is_static(v) and v.size == 0)]
        if not values:
            return np.zeros(0, np.int64)
        if all(self.is_static(v) for v in values):
            return np.concatenate(values).astype(np.int64)
        if len(values) == 1:
            return values[0]
        layer = self.ctx.check(self.ctx.network.add_concatenation([self.tensor(v) for v in values]))
        return layer.get_output(0)

    def product(self, value):
        """The product of a 1-D shape value, as a 1-element shape value."""
        if self.is_static(value):
            return np.array([int(np.prod(value))], np.int64)
        layer = self.ctx.check(self.ctx.network.add_reduce(value, self.ctx.trt.ReduceOperation.PROD, 1, True))
        return layer.get_output(0)


def constant(ctx, array):
    """ctx.constant that keeps a 0-d array 0-d (numpy's ascontiguousarray makes it 1-d)."""
    array = np.asarray(array)
    tensor = ctx.constant(array)
    if len(tensor.shape) != array.ndim:
        tensor = ctx.reshape(tensor, list(array.shape))
    return tensor


def broadcast_scalar(ctx, scalar, shape):
    """A 0-d tensor (or numpy value, made a constant of `shape`'s rank directly) repeated to `shape` (a 1-D
    shape value) by a stride-0 slice."""
    rank = int(shape.shape[0]) if not ShapeMath.is_static(shape) else len(shape)
    if isinstance(scalar, np.ndarray):
        scalar = ctx.constant(scalar.reshape((1,) * rank))
    if rank == 0:
        return scalar
    ones = ctx.reshape(scalar, [1] * rank)
    layer = ctx.check(ctx.network.add_slice(ones, (0,) * rank, (1,) * rank, (0,) * rank))
    if ShapeMath.is_static(shape):
        layer.shape = tuple(int(d) for d in shape)
    else:
        layer.set_input(2, shape)
    return layer.get_output(0)


def tensor_of(ctx, value):
    """ctx.tensor(value), with a 0-d constant kept 0-d (see `constant`)."""
    tensor = ctx.tensor(value)
    if value.const_value is not None and len(value.const_value.shape) != len(tensor.shape):
        tensor = ctx.reshape(tensor, list(value.const_value.shape))
    return tensor


def wrap_negative(ctx, indices, dim):
    """ONNX index semantics: a negative index counts from the end (index + dim where index < 0).

    `indices` is a TensorRT tensor of int32/int64, `dim` a shape value broadcastable to it; the
    result is a run-time select (callers fold constant indices themselves)."""
    math = ShapeMath(ctx)
    index_type = np.dtype(np.int32 if indices.dtype == ctx.trt.int32 else np.int64)
    rank = ctx.rank(indices)
    if math.is_static(dim):  # made in the indices' type and rank: no cast or shuffle layer after it
        dim = np.asarray(dim)
        dim_t = constant(ctx, dim.astype(index_type).reshape((1,) * (rank - dim.ndim) + dim.shape))
    else:
        dim_t = ctx.cast(dim, indices.dtype)
    zero = constant(ctx, np.zeros((1,) * rank, index_type))
    negative = ctx.elementwise(indices, zero, ctx.trt.ElementWiseOperation.LESS)
    shifted = ctx.elementwise(indices, dim_t, ctx.trt.ElementWiseOperation.SUM)
    negative, shifted, indices = ctx.broadcast(negative, shifted, indices)
    return ctx.check(ctx.network.add_select(negative, shifted, indices)).get_output(0)


def _float_graph_input_behind(value: ir.Value, limit: int = 200) -> ir.Value | None:
    """A non-integer graph input that `value` is computed from (not through Shape/Size), if any."""
    stack, seen = [value], set()
    while stack and len(seen) < limit:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.add(current)
        if current.is_graph_input():
            return None if current.dtype in INTEGER_TYPES else current
        producer = current.producer()
        if producer is not None and producer.op_type not in ("Shape", "Size"):
            stack.extend(producer.inputs)
    return None


def integral_shape_source(indices: tuple[int, ...], what: str) -> Constraint:
    """Inputs that size the output must not come from a float graph input: TensorRT computes
    sizes as shape tensors, and a network input feeding one must be int32/int64."""

    def check(node: ir.Node) -> str | None:
        for index in indices:
            if index < len(node.inputs) and node.inputs[index] is not None:
                source = _float_graph_input_behind(node.inputs[index])
                if source is not None:
                    return (f"{what} comes from the {source.dtype.name} graph input {source.name!r}; TensorRT "
                            "computes output sizes as shape tensors, whose network inputs must be int32/int64: "
                            f"give its value with --freeze {source.name}=VALUES")
        return None

    return Constraint(f"{what} not from a float graph input", check)
