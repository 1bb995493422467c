"""Einsum -> IEinsumLayer. TensorRT takes ONNX's equations (implicit and explicit output,
ellipsis, diagonals, more than two operands) but only lower-case labels and floating types:
upper-case labels are renamed to unused lower-case ones."""

from __future__ import annotations

import string

import onnx_ir as ir

from trtc.lower.registry import Constraint, converter, tensor_types

FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


def lower_case_equation(equation: str) -> str | None:
    """The equation with spaces dropped and upper-case labels renamed (None: over 26 labels)."""
    equation = equation.replace(" ", "")
    labels = {c for c in equation if c.isalpha()}
    free = iter(sorted(set(string.ascii_lowercase) - labels))
    renames = {}
    for label in sorted(c for c in labels if c.isupper()):
        renames[label] = next(free, None)
        if renames[label] is None:
            return None
    return "".join(renames.get(c, c) for c in equation)


def _einsum_supported(node) -> str | None:
    for value in node.inputs:
        if value is not None and value.dtype not in FLOATS:
            return f"input {value.name!r} is {value.dtype.name}: TensorRT's einsum takes floating types only"
    if lower_case_equation(node.attributes.get_string("equation", "")) is None:
        return "the equation has more distinct labels than TensorRT's 26 lower-case letters"
    return None


@converter("Einsum", since=12, constraints=[tensor_types(), Constraint("float operands, <= 26 labels",
                                                                      _einsum_supported)])
def lower_einsum(ctx, node):
    """Einsum(inputs..., equation) -> IEinsumLayer with a lower-case equation."""
    tensors = [ctx.tensor(v) for v in node.inputs]
    equation = lower_case_equation(node.attributes.get_string("equation"))
    return [ctx.check(ctx.network.add_einsum(tensors, equation)).get_output(0)]
