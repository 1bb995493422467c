"""Binary and variadic elementwise ops -> IElementWiseLayer (numpy broadcasting by
unsqueezing the lower-rank operand)."""

from __future__ import annotations

import functools

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
    tensors = [ctx.tensor(v) for v in node.inputs if v is not None]
    if len(tensors) == 1:
        return [ctx.check(ctx.network.add_identity(tensors[0])).get_output(0)]
    narrow = tensors[0].dtype in (ctx.trt.uint8, ctx.trt.int8)
    if narrow:  # TensorRT keeps (u)int8 for I/O and quantization: compute in int32, cast back
        original = tensors[0].dtype
        tensors = [ctx.cast(t, ctx.trt.int32) for t in tensors]
    out = functools.reduce(lambda a, b: ctx.elementwise(a, b, op), tensors)
    if narrow and out.dtype == ctx.trt.int32:
        out = ctx.cast(out, original)
    return [out]


@converter(["GreaterOrEqual", "LessOrEqual"], constraints=[tensor_types()])
def lower_compare_or_equal(ctx, node):
    """a >= b as NOT(a < b); a <= b as NOT(a > b)."""
    E = ctx.trt.ElementWiseOperation
    strict = E.LESS if node.op_type == "GreaterOrEqual" else E.GREATER
    a, b = (ctx.tensor(v) for v in node.inputs)
    return [ctx.unary(ctx.elementwise(a, b, strict), ctx.trt.UnaryOperation.NOT)]


@converter("Mean", constraints=[tensor_types()])
def lower_mean(ctx, node):
    """Mean(x1..xn) = Sum / n."""
    import numpy as np

    E = ctx.trt.ElementWiseOperation
    tensors = [ctx.tensor(v) for v in node.inputs]
    total = functools.reduce(lambda a, b: ctx.elementwise(a, b, E.SUM), tensors)
    n = ctx.constant(np.array(len(tensors), dtype=node.outputs[0].dtype.numpy()).reshape(()))
    return [ctx.elementwise(total, n, E.DIV)]
