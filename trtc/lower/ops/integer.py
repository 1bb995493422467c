"""Integer arithmetic TensorRT has no layer for, built from elementwise ones: Mod (fmod 0/1),
BitShift and BitwiseAnd/Or/Xor/Not. Narrow types (INT8/UINT8) are widened to do the
arithmetic and cast back; bit operations decompose the operands into bits with floor
divisions by powers of two (two's complement for signed types)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops._shape_math import constant
from trtc.lower.registry import Constraint, converter, tensor_types

NARROW = {ir.DataType.INT8, ir.DataType.UINT8}
BITS = {ir.DataType.INT8: 8, ir.DataType.UINT8: 8, ir.DataType.INT32: 32, ir.DataType.INT64: 64}
SIGNED = {ir.DataType.INT8, ir.DataType.INT32, ir.DataType.INT64}


def _operands(ctx, node, compute):
    return ctx.operands(node.inputs, compute)


@converter("Mod", since=10, constraints=[tensor_types()])
def lower_mod(ctx, node):
    """Mod(a, b): fmod=0 takes the divisor's sign, a - b * floor(a / b); fmod=1 the dividend's,
    sign(a) * (|a| - |b| * floor(|a| / |b|)). INT8/UINT8 are computed in int32."""
    E, U = ctx.trt.ElementWiseOperation, ctx.trt.UnaryOperation
    dtype = node.outputs[0].dtype
    out_type = trt_dtype(ctx.trt, dtype)
    a, b = _operands(ctx, node, ctx.trt.int32 if dtype in NARROW else out_type)
    if node.attributes.get_int("fmod", 0):
        abs_a, abs_b = ctx.unary(a, U.ABS), ctx.unary(b, U.ABS)
        rest = ctx.elementwise(abs_a, ctx.elementwise(abs_b, ctx.elementwise(abs_a, abs_b, E.FLOOR_DIV), E.PROD), E.SUB)
        result = ctx.elementwise(ctx.unary(a, U.SIGN), rest, E.PROD)
    else:
        result = ctx.elementwise(a, ctx.elementwise(b, ctx.elementwise(a, b, E.FLOOR_DIV), E.PROD), E.SUB)
    return [ctx.cast(result, out_type)]


def _wrap(ctx, value, dtype: ir.DataType):
    """An int64 value reduced to `dtype`'s range with two's-complement wraparound."""
    E = ctx.trt.ElementWiseOperation
    bits = BITS[dtype]
    offset = np.array(1 << (bits - 1) if dtype in SIGNED else 0, np.int64)
    modulus = constant(ctx, np.full((1,) * ctx.rank(value), 1 << bits, np.int64))
    shifted = ctx.elementwise(value, offset, E.SUM)
    rest = ctx.elementwise(shifted, ctx.elementwise(modulus, ctx.elementwise(shifted, modulus, E.FLOOR_DIV), E.PROD),
                           E.SUB)
    return ctx.elementwise(rest, offset, E.SUB)


def _shift_type(node) -> str | None:
    dtype = node.inputs[0].dtype
    if dtype == ir.DataType.INT64:
        return "BitShift on INT64 is not supported (it is computed in int64 with room for the shifted-out bits)"
    return None


@converter("BitShift", since=11, constraints=[tensor_types(), Constraint("not INT64", _shift_type)])
def lower_bit_shift(ctx, node):
    """BitShift(x, y): in int64, LEFT = x * 2^y wrapped to the type's width, RIGHT = floor(x / 2^y);
    2^y is looked up in a table (shifts past the width give 2^width)."""
    E = ctx.trt.ElementWiseOperation
    dtype = node.inputs[0].dtype
    x, y = _operands(ctx, node, ctx.trt.int64)
    bits = BITS[dtype]
    y = ctx.elementwise(ctx.elementwise(y, np.array(0, np.int64), E.MAX), np.array(bits, np.int64), E.MIN)
    table = constant(ctx, np.array([1 << k for k in range(bits + 1)], np.int64))
    power = ctx.check(ctx.network.add_gather(table, y, 0)).get_output(0)
    if node.attributes.get_string("direction") == "LEFT":
        result = _wrap(ctx, ctx.elementwise(x, power, E.PROD), dtype)
    else:
        result = ctx.elementwise(x, power, E.FLOOR_DIV)
    return [ctx.cast(result, trt_dtype(ctx.trt, dtype))]


@converter("BitwiseNot", since=18, constraints=[tensor_types()])
def lower_bitwise_not(ctx, node):
    """BitwiseNot(x) = -1 - x for signed types, 255 - x for UINT8 (in int64)."""
    dtype = node.inputs[0].dtype
    x = ctx.cast(ctx.tensor(node.inputs[0]), ctx.trt.int64)
    all_ones = np.array(-1 if dtype in SIGNED else (1 << BITS[dtype]) - 1, np.int64)
    return [ctx.cast(ctx.elementwise(all_ones, x, ctx.trt.ElementWiseOperation.SUB), trt_dtype(ctx.trt, dtype))]


def _bits(ctx, x, powers):
    """Bits of an int64 `x` at the given powers of two, along a new last axis (0/1, int64)."""
    E = ctx.trt.ElementWiseOperation
    x = ctx.unsqueeze(x, [ctx.rank(x)])
    quotient = ctx.elementwise(x, powers, E.FLOOR_DIV)
    two = constant(ctx, np.full((1,) * ctx.rank(quotient), 2, np.int64))
    return ctx.elementwise(quotient, ctx.elementwise(two, ctx.elementwise(quotient, two, E.FLOOR_DIV), E.PROD), E.SUB)


def _combine(ctx, op: str, a, b):
    """AND = a*b, OR = a+b-a*b, XOR = a+b-2ab on 0/1 values."""
    E = ctx.trt.ElementWiseOperation
    both = ctx.elementwise(a, b, E.PROD)
    if op == "BitwiseAnd":
        return both
    either = ctx.elementwise(a, b, E.SUM)
    if op == "BitwiseXor":
        both = ctx.elementwise(both, np.array(2, np.int64), E.PROD)
    return ctx.elementwise(either, both, E.SUB)


@converter(["BitwiseAnd", "BitwiseOr", "BitwiseXor"], since=18, constraints=[tensor_types()])
def lower_bitwise(ctx, node):
    """BitwiseAnd/Or/Xor in int64: both operands split into bits (floor division by 2^k, mod 2),
    combined per bit, and summed back with weights 2^k; for signed types the sign bit is x < 0
    with weight -2^(width-1)."""
    E = ctx.trt.ElementWiseOperation
    dtype = node.outputs[0].dtype
    a, b = _operands(ctx, node, ctx.trt.int64)
    a, b = ctx.broadcast(a, b)
    signed = dtype in SIGNED
    count = BITS[dtype] - 1 if signed else BITS[dtype]
    powers = np.array([1 << k for k in range(count)], np.int64)
    bits = _combine(ctx, node.op_type, _bits(ctx, a, powers), _bits(ctx, b, powers))
    weighted = ctx.elementwise(bits, powers, E.PROD)
    rank = ctx.rank(weighted)
    result = ctx.check(ctx.network.add_reduce(weighted, ctx.trt.ReduceOperation.SUM, 1 << (rank - 1), False))
    result = result.get_output(0)
    if signed:
        zero = np.array(0, np.int64)
        sign_a, sign_b = (ctx.cast(ctx.elementwise(v, zero, E.LESS), ctx.trt.int64) for v in (a, b))
        top = np.array(np.iinfo(np.int64).min if BITS[dtype] == 64 else -(1 << (BITS[dtype] - 1)), np.int64)
        result = ctx.elementwise(result, ctx.elementwise(_combine(ctx, node.op_type, sign_a, sign_b), top, E.PROD),
                                 E.SUM)
    return [ctx.cast(result, trt_dtype(ctx.trt, dtype))]
