"""Binary and variadic elementwise ops -> IElementWiseLayer (numpy broadcasting by
unsqueezing the lower-rank operand)."""

from __future__ import annotations

import functools

from trtc.lower.context import trt_dtype
from trtc.lower.registry import converter, tensor_types

BINARY = {
    "Add": "SUM", "Sub": "SUB", "Mul": "PROD", "Div": "DIV", "Pow": "POW",
    "Max": "MAX", "Min": "MIN", "Sum": "SUM",
    "Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS",
    "And": "AND", "Or": "OR", "Xor": "XOR",
}


@converter(list(BINARY), constraints=[tensor_types()])
def lower_binary(ctx, node):
    """Add/Sub/Mul/Div/Pow/Max/Min/Sum/Equal/Greater/Less/And/Or/Xor (variadic ones folded left)."""
    op = getattr(ctx.trt.ElementWiseOperation, BINARY[node.op_type])
    values = [v for v in node.inputs if v is not None]
    if len(values) == 1:
        return [ctx.check(ctx.network.add_identity(ctx.tensor(values[0]))).get_output(0)]
    original = trt_dtype(ctx.trt, values[0].dtype)
    tensors, compute = _computable(ctx, values, pow_op=node.op_type == "Pow")
    out = functools.reduce(lambda a, b: ctx.elementwise(a, b, op), tensors)
    if compute != original and out.dtype == compute:
        out = ctx.cast(out, original)
    return [out]


def _computable(ctx, values, pow_op: bool = False):
    """The operands (IR values) as tensors of a type TensorRT computes in, and that type: (u)int8 only
    exists at I/O and around quantization, so it is computed in int32; Pow's exponent may differ in
    type from its base (computed in float32 then)."""
    trt = ctx.trt
    types = [trt_dtype(trt, v.dtype) for v in values]
    first = types[0]
    if first in (trt.uint8, trt.int8):
        compute = trt.int32
    elif pow_op and any(t != first for t in types):
        compute = trt.float32
    else:
        return ctx.operands(values), first
    return ctx.operands(values, compute), compute


@converter(["GreaterOrEqual", "LessOrEqual"], constraints=[tensor_types()])
def lower_compare_or_equal(ctx, node):
    """a >= b as NOT(a < b); a <= b as NOT(a > b)."""
    E = ctx.trt.ElementWiseOperation
    strict = E.LESS if node.op_type == "GreaterOrEqual" else E.GREATER
    (a, b), _ = _computable(ctx, list(node.inputs))
    return [ctx.unary(ctx.elementwise(a, b, strict), ctx.trt.UnaryOperation.NOT)]


@converter("Mean", constraints=[tensor_types()])
def lower_mean(ctx, node):
    """Mean(x1..xn) = Sum / n."""
    import numpy as np

    E = ctx.trt.ElementWiseOperation
    tensors = ctx.operands(list(node.inputs))
    total = functools.reduce(lambda a, b: ctx.elementwise(a, b, E.SUM), tensors)
    n = ctx.constant(np.array(len(tensors), dtype=node.outputs[0].dtype.numpy()).reshape((1,) * ctx.rank(total)))
    return [ctx.elementwise(total, n, E.DIV)]
