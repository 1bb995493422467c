"""QuantizeLinear / DequantizeLinear -> IQuantizeLayer / IDequantizeLayer (TensorRT's int8, fp8
and int4 quantization, which it fuses into low-precision kernels), else exact arithmetic.

TensorRT quantizes symmetrically only: the native layers are used when the zero point is absent
or a constant of zeros and the quantized type is INT8, FLOAT8E4M3FN or INT4. Anything else
TensorRT can hold (uint8, a runtime or non-zero zero point, blocks that do not divide the axis)
is lowered to the ONNX formula, y = saturate(round(x / scale) + zero_point) and
y = (x - zero_point) * scale, with FP8/INT4 values converted through unit-scale Q/DQ layers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops.attention import arange, given
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types

NATIVE = (ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4)
PACKED = (ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4)  # no Cast to or from them in TensorRT
RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255), ir.DataType.INT4: (-8, 7),
          ir.DataType.INT32: (-(2 ** 31), 2 ** 31 - 1)}


def _check_granularity(node: ir.Node) -> str | None:
    x, scale = node.inputs[0], node.inputs[1]
    rank, scale_rank = x.shape.rank(), scale.shape.rank()
    if scale_rank <= 1:
        return None
    if scale_rank != rank:
        return f"the scale must be a scalar, 1-D (per-axis) or of the input's rank (blocked), not {scale_rank}-D"
    if node.attributes.get_int("block_size", 0) <= 0:
        return "a blocked scale needs a positive block_size"
    return None


def _check_int4_volume(node: ir.Node) -> str | None:
    for value in [*node.inputs, *node.outputs]:
        if value is None or value.dtype != ir.DataType.INT4 or value.shape is None:
            continue
        dims = list(value.shape.dims)
        if all(isinstance(d, int) for d in dims) and int(np.prod(dims, dtype=np.int64)) % 2:
            return f"INT4 tensor {value.name!r} has an odd number of elements, which TensorRT cannot pack"
    return None


QDQ_CONSTRAINTS = [tensor_types(), known_rank(0), known_rank(1),
                   Constraint("per-tensor, per-axis or blocked scale", _check_granularity),
                   Constraint("INT4 tensors of even volume", _check_int4_volume)]


@converter("DequantizeLinear", since=10, constraints=QDQ_CONSTRAINTS)
def lower_dequantize_linear(ctx, node):
    """DequantizeLinear: IDequantizeLayer for symmetric INT8/FP8/INT4, else (x - zero_point) * scale."""
    x_value, out_type = node.inputs[0], trt_dtype(ctx.trt, node.outputs[0].dtype)
    scale, rank = ctx.tensor(node.inputs[1]), x_value.shape.rank()
    axis = ctx.axis(node.attributes.get_int("axis", 1), rank)
    if x_value.dtype in NATIVE and zero_point_is_zero(ctx, node) and native_blocks(node, axis):
        x = ctx.tensor(x_value)
        layer = ctx.check(ctx.network.add_dequantize(x, per_tensor(ctx, scale), out_type))
        if ctx.rank(layer.get_input(1)) > 0:
            layer.axis = axis
        return [layer.get_output(0)]
    values = as_float(ctx, x_value, out_type)
    if given(node.inputs, 2):
        zero = as_float(ctx, node.inputs[2], out_type)
        values = ctx.elementwise(values, spread(ctx, node, zero, axis, rank), ctx.trt.ElementWiseOperation.SUB)
    scale = spread(ctx, node, ctx.cast(scale, out_type), axis, rank)
    return [ctx.elementwise(values, scale, ctx.trt.ElementWiseOperation.PROD)]


@converter("QuantizeLinear", since=10, constraints=[*QDQ_CONSTRAINTS, attribute_in("saturate", (1,), 1)])
def lower_quantize_linear(ctx, node):
    """QuantizeLinear: IQuantizeLayer for symmetric INT8/FP8/INT4, else saturate(round(x / scale) + zero_point)."""
    E = ctx.trt.ElementWiseOperation
    out_ir = node.outputs[0].dtype
    out_type = trt_dtype(ctx.trt, out_ir)
    x, scale = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    rank = ctx.rank(x)
    axis = ctx.axis(node.attributes.get_int("axis", 1), rank)
    if out_ir in NATIVE and x.dtype != ctx.trt.int32 and zero_point_is_zero(ctx, node) and native_blocks(node, axis):
        layer = ctx.check(ctx.network.add_quantize(x, per_tensor(ctx, scale), out_type))
        if ctx.rank(layer.get_input(1)) > 0:
            layer.axis = axis
        return [layer.get_output(0)]
    precision_attr = node.attributes.get_int("precision", 0)
    precision = trt_dtype(ctx.trt, ir.DataType(precision_attr)) if precision_attr else scale.dtype
    if precision == ctx.trt.int32:
        precision = ctx.trt.float32
    values = ctx.elementwise(ctx.cast(x, precision), spread(ctx, node, ctx.cast(scale, precision), axis, rank), E.DIV)
    if out_ir != ir.DataType.FLOAT8E4M3FN:
        values = ctx.unary(values, ctx.trt.UnaryOperation.ROUND)  # ties to even, as ONNX
    if given(node.inputs, 2):
        zero = as_float(ctx, node.inputs[2], precision)
        values = ctx.elementwise(values, spread(ctx, node, zero, axis, rank), E.SUM)
    if out_ir in RANGES:
        low, high = (np.full((1,) * rank, v, np.float32) for v in RANGES[out_ir])
        values = ctx.elementwise(values, ctx.constant_as(low, precision), E.MAX)
        values = ctx.elementwise(values, ctx.constant_as(high, precision), E.MIN)
    return [from_float(ctx, values, out_ir)]


# ------------------------------------------------------------------ helpers


def zero_point_is_zero(ctx, node) -> bool:
    """The zero point is absent or a constant of zeros (TensorRT's only kind)."""
    if not given(node.inputs, 2):
        return True
    value = node.inputs[2]
    if value.const_value is None or value.is_graph_input():
        return False
    return not np.asarray(value.const_value.numpy()).astype(np.float32).any()


def native_blocks(node, axis: int) -> bool:
    """TensorRT infers the block size from the volumes, so the block must divide the axis."""
    x, scale = node.inputs[0], node.inputs[1]
    if scale.shape.rank() <= 1:
        return True
    size, blocks = x.shape[axis], scale.shape[axis]
    block = node.attributes.get_int("block_size", 0)
    return isinstance(size, int) and isinstance(blocks, int) and size == blocks * block


def per_tensor(ctx, scale):
    """A one-element 1-D scale is a per-tensor scale: give TensorRT the scalar."""
    if ctx.rank(scale) == 1 and scale.shape[0] == 1:
        return ctx.reshape(scale, [])
    return scale


def spread(ctx, node, scale, axis: int, rank: int):
    """A scale/zero point broadcastable to the input: per-tensor, per-axis ([C] at `axis`) or blocked
    (each scale repeated block_size times along `axis`, then cut to the input's length)."""
    if ctx.rank(scale) == 0 or tuple(scale.shape) == (1,):
        return ctx.reshape(scale, [1] * rank)
    if ctx.rank(scale) == 1:
        return ctx.reshape(scale, [1] * axis + [-1] + [1] * (rank - axis - 1))
    size = node.inputs[0].shape[axis]
    if not isinstance(size, int):  # a run-time input (constants have static shapes)
        size = ctx.check(ctx.network.add_slice(ctx.shape_of(ctx.tensor(node.inputs[0])), (axis,), (1,), (1,)))
        size = size.get_output(0)
    block = ctx.constant(np.array([node.attributes.get_int("block_size")], np.int64))
    index = ctx.elementwise(arange(ctx, size), block, ctx.trt.ElementWiseOperation.FLOOR_DIV)
    return ctx.check(ctx.network.add_gather(scale, index, axis)).get_output(0)


def _unit_scale(ctx, dtype):
    return ctx.constant_as(np.array(1.0, np.float32), dtype)  # per-tensor


def as_float(ctx, value: ir.Value, dtype):
    """Quantized values as floats of TensorRT type `dtype`: constants converted here (TensorRT takes
    no UINT8 constant, and INT8 ones only into a dequantize), FP8/INT4 tensors through a unit-scale
    dequantize, the others cast."""
    data = ctx.const(value)
    if data is not None:
        return ctx.constant_as(np.asarray(data).astype(np.float32), dtype)
    tensor = ctx.tensor(value)
    if value.dtype in PACKED:
        return ctx.check(ctx.network.add_dequantize(tensor, _unit_scale(ctx, dtype), dtype)).get_output(0)
    return ctx.cast(tensor, dtype)


def from_float(ctx, values, ir_dtype: ir.DataType):
    """Rounded, clipped floats as the quantized type (FP8/INT4 through a unit-scale quantize)."""
    dtype = trt_dtype(ctx.trt, ir_dtype)
    if ir_dtype in PACKED:
        return ctx.check(ctx.network.add_quantize(values, _unit_scale(ctx, values.dtype), dtype)).get_output(0)
    return ctx.cast(values, dtype)
