"""Fuse decomposed GELU into Gelu (opset 20).

Before (Mul/Add operands in either order, 0.5 applied to x, to the bracket or last):
    erf:  0.5 * x * (1 + Erf(x / 1.41421...))        (or Erf(x * 0.70710...))
    tanh: 0.5 * x * (1 + Tanh(0.79788... * (x + 0.044715 * x^3)))   (x^3: Pow(x, 3) or x * x * x)
After:
    Gelu(x)  /  Gelu(x, approximate="tanh")

Constants match within 1e-4 relative. `why_not(node)` says why an Erf or Tanh is not one.
"""

from __future__ import annotations

import dataclasses
import math

import onnx_ir as ir

from trtc.ir.rewrite import (
    const_array,
    const_scalar,
    fuse_matches,
    is_op,
    only_user,
    other_operand,
    producer_of,
    replace_with,
)
from trtc.passes.registry import PassContext, register_pass

GELU_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715
NOT_A_TERM = "no Mul used only once"


def is_const(value: ir.Value | None, target: float, x: ir.Value, rtol: float = 1e-4) -> bool:
    """`value` is a scalar constant within `rtol` of `target` that broadcasts without adding dims to x."""
    scalar = const_scalar(value)
    if scalar is None or not math.isclose(scalar, target, rel_tol=rtol):
        return False
    ndim = const_array(value).ndim
    return ndim == 0 or (x.shape is not None and ndim <= x.shape.rank())


@dataclasses.dataclass
class GeluMatch:
    x: ir.Value
    approximate: str  # "none" or "tanh"
    output: ir.Value
    nodes: list[ir.Node]


def match_erf_argument(erf: ir.Node) -> tuple[ir.Value, list[ir.Node]] | str:
    """(x, nodes) for Erf(x / sqrt(2)) or Erf(x * (1/sqrt(2))), or why not."""
    scaled = erf.inputs[0]
    node = producer_of(scaled, "Div", "Mul")
    if node is None or only_user(scaled) is not erf:
        return "the Erf input is not a Div/Mul used only by the Erf"
    x = node.inputs[0]
    if node.op_type == "Div" and is_const(node.inputs[1], SQRT_2, x):
        return x, [node]
    if node.op_type == "Mul":
        for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if is_const(c, 1 / SQRT_2, x):
                return x, [node]
    return "the Erf input is not x / 1.41421 or x * 0.70711"


def match_tanh_argument(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node]] | str:
    """(x, nodes) for Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)), or why not."""
    scaled = tanh.inputs[0]
    outer = producer_of(scaled, "Mul")
    if outer is None or only_user(scaled) is not tanh:
        return "the Tanh input is not a Mul used only by the Tanh"
    inner = next((v for v in outer.inputs if producer_of(v, "Add")), None)
    if inner is None or only_user(inner) is not outer or not is_const(other_operand(outer, inner), SQRT_2_OVER_PI,
                                                                         inner):
        return "the Tanh input is not 0.79788 * (x + ...)"
    add = inner.producer()
    reasons = []
    for x, cubic in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        cubic_nodes = match_cubic_term(cubic, x)
        if not isinstance(cubic_nodes, str):
            return x, [*cubic_nodes, add, outer]
        reasons.append(cubic_nodes)
    # Report the operand order that got furthest: the one whose term is a Mul at all.
    reason = next((r for r in reasons if r != NOT_A_TERM), NOT_A_TERM)
    return f"the sum under Tanh is not x + 0.044715 * x^3 ({reason})"


def match_cubic_term(term: ir.Value, x: ir.Value) -> list[ir.Node] | str:
    """The nodes of 0.044715 * x^3 (x^3: Pow(x, 3), Mul(Mul(x, x), x) or Mul(Pow(x, 2), x)), or why not."""
    scale = producer_of(term, "Mul")
    if scale is None or only_user(term) is None:
        return NOT_A_TERM
    cube = next((v for v in scale.inputs if is_const(other_operand(scale, v), CUBIC, x)), None)
    if cube is None or only_user(cube) is not scale:
        return "no 0.044715 factor"
    node = cube.producer()
    if is_op(node, "Pow") and node.inputs[0] is x and const_scalar(node.inputs[1]) == 3:
        return [node, scale]
    if is_op(node, "Mul"):
        square = other_operand(node, x)
        square_node = producer_of(square, "Mul", "Pow")
        if square_node is not None and only_user(square) is node and square_node.inputs[0] is x and (
                square_node.inputs[1] is x or const_scalar(square_node.inputs[1]) == 2):
            return [square_node, node, scale]
    return "the cube is not Pow(x, 3) or x * x * x"


def match_gelu(node: ir.Node) -> GeluMatch | str:
    """The GELU around `node` (its Erf or Tanh), or why there is none."""
    if is_op(node, "Erf"):
        argument, approximate = match_erf_argument(node), "none"
    elif is_op(node, "Tanh"):
        argument, approximate = match_tanh_argument(node), "tanh"
    else:
        return "not an Erf or Tanh"
    if isinstance(argument, str):
        return argument
    x, nodes = argument
    if x.dtype not in GELU_DTYPES:
        return f"input dtype {x.dtype} is not floating point"
    nodes.append(node)
    plus_one = only_user(node.outputs[0])
    if not is_op(plus_one, "Add") or not is_const(other_operand(plus_one, node.outputs[0]), 1.0, x):
        return f"the {node.op_type} is not used only by Add(., 1)"
    nodes.append(plus_one)
    tail = match_half_x_times(plus_one.outputs[0], x)
    if isinstance(tail, str):
        return tail
    output, tail_nodes = tail
    return GeluMatch(x, approximate, output, nodes + tail_nodes)


def match_half_x_times(bracket: ir.Value, x: ir.Value) -> tuple[ir.Value, list[ir.Node]] | str:
    """(output, nodes) of 0.5 * x * bracket, grouped any way, or why not."""
    first = only_user(bracket)
    if not is_op(first, "Mul"):
        return "1 + erf/tanh is not used only by a Mul"
    factor = other_operand(first, bracket)
    if factor is x or is_const(factor, 0.5, x):
        last = only_user(first.outputs[0])
        wanted_last = (lambda v: is_const(v, 0.5, x)) if factor is x else (lambda v: v is x)
        if is_op(last, "Mul") and wanted_last(other_operand(last, first.outputs[0])):
            return last.outputs[0], [first, last]
        return "the product is not completed by a single Mul with 0.5 and x"
    half_x = producer_of(factor, "Mul")
    if half_x is not None and only_user(factor) is first and is_const(other_operand(half_x, x), 0.5, x):
        return first.outputs[0], [half_x, first]
    return "the bracket is not multiplied by x and 0.5"


def why_not(node: ir.Node) -> str | None:
    """Why the Erf / Tanh `node` is not the core of a GELU (None: it is)."""
    result = match_gelu(node)
    return result if isinstance(result, str) else None


@register_pass("fuse-gelu", order=60)
def fuse_gelu(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse decomposed GELU (erf and tanh forms) into Gelu."""
    def fuse(graph: ir.Graph, match: GeluMatch) -> None:
        attributes = {"approximate": "tanh"} if match.approximate == "tanh" else {}
        anchor = next(n for n in match.nodes if is_op(n, "Erf", "Tanh"))
        gelu = ir.node("Gelu", [match.x], attributes, name=f"{anchor.name or 'gelu'}_fused")
        replace_with(graph, match.nodes[-1], [gelu], [match.output], gelu.outputs, dead=match.nodes[::-1])

    fused = fuse_matches(model, "fuse-gelu", ["Erf", "Tanh"], match_gelu, fuse, opset=20)
    counts = {"gelu-erf": sum(m.approximate != "tanh" for m in fused),
              "gelu-tanh": sum(m.approximate == "tanh" for m in fused)}
    return {k: v for k, v in counts.items() if v}
