"""No-op elimination: remove nodes that return their input, merge chains that cancel.

    y = Identity(x)                        ->   y = x              (identity)
    y = Transpose(Transpose(x, p1), p2)    ->   y = Transpose(x, p1[p2])   (transpose-merge;
                                                y = x when the composition is the identity)
    y = Mul(x, 1) with x's shape kept      ->   y = x              (mul-one)

Each rule below matches one op and returns either a `Forward` (the node's output equals
an existing value: every use moves there) or a `Rewire` (the node reads its input from
further up, e.g. Reshape(Reshape(x, a), b) -> Reshape(x, b)). Rules only fire on facts
known statically: constant operands, shapes whose dims are equal ints or the same named
symbol. A node whose output is a graph output is kept when it would forward to a graph
input, an initializer, another graph output or an outer-scope value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import same_dim
from trtc.ir.rewrite import add_constant, const_array, is_op, producer_of, remove_if_dead, replace_with
from trtc.ir.walk import all_graphs
from trtc.passes.registry import PassContext, register_pass

INT64_MAX = np.iinfo(np.int64).max
_D = ir.DataType
_FLOATS_WIDE = {_D.FLOAT, _D.DOUBLE}
# Casts T0 -> T1 that represent every T0 value exactly (bool as 0/1).
EXACT_CASTS: dict[ir.DataType, set[ir.DataType]] = {
    _D.BOOL: {_D.INT8, _D.UINT8, _D.INT16, _D.UINT16, _D.INT32, _D.UINT32, _D.INT64, _D.UINT64,
              _D.FLOAT16, _D.BFLOAT16, *_FLOATS_WIDE},
    _D.UINT8: {_D.UINT16, _D.UINT32, _D.UINT64, _D.INT16, _D.INT32, _D.INT64, _D.FLOAT16, _D.BFLOAT16,
               *_FLOATS_WIDE},
    _D.INT8: {_D.INT16, _D.INT32, _D.INT64, _D.FLOAT16, _D.BFLOAT16, *_FLOATS_WIDE},
    _D.UINT16: {_D.UINT32, _D.UINT64, _D.INT32, _D.INT64, *_FLOATS_WIDE},
    _D.INT16: {_D.INT32, _D.INT64, *_FLOATS_WIDE},
    _D.UINT32: {_D.UINT64, _D.INT64, _D.DOUBLE},
    _D.INT32: {_D.INT64, _D.DOUBLE},
    _D.FLOAT16: _FLOATS_WIDE,
    _D.BFLOAT16: _FLOATS_WIDE,
    _D.FLOAT: {_D.DOUBLE},
}


@dataclasses.dataclass
class Forward:
    pattern: str
    value: ir.Value  # the node's (first) output equals this value


@dataclasses.dataclass
class Rewire:
    pattern: str
    inputs: dict[int, ir.Value]
    attributes: Sequence[ir.Attr] = ()
    bypassed: ir.Node | None = None  # the producer no longer read (removed if now dead)


Rule = Callable[[ir.Graph, ir.Node], "Forward | Rewire | None"]


def _dims(value: ir.Value | None) -> tuple | None:
    return None if value is None or value.shape is None else value.shape.dims


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    return None if value is None or not isinstance(value.type, ir.TensorType) else value.type.dtype


def broadcasts_into(small: Sequence, big: Sequence) -> bool:
    """Broadcasting a `small`-shaped operand against `big` leaves `big`'s shape unchanged."""
    return len(small) <= len(big) and all(
        s == 1 or same_dim(s, b) for s, b in zip(reversed(small), reversed(big), strict=False))


def _ints(value: ir.Value | None) -> list[int] | None:
    data = const_array(value)
    return None if data is None or data.dtype.kind not in "iu" else [int(v) for v in data.reshape(-1)]


def _perm(node: ir.Node) -> list[int] | None:
    attr = node.attributes.get("perm")
    if attr is not None:
        return list(attr.value)
    dims = _dims(node.inputs[0])
    return None if dims is None else list(reversed(range(len(dims))))


def _axes(values: list[int] | None, rank: int) -> set[int] | None:
    """`values` as a set of axes in [0, rank), or None if empty, out of range or repeated."""
    if not values or any(not -rank <= a < rank for a in values):
        return None
    axes = {a % rank for a in values}
    return axes if len(axes) == len(values) else None


def identity(graph: ir.Graph, node: ir.Node) -> Forward:
    return Forward("identity", node.inputs[0])


def dropout(graph: ir.Graph, node: ir.Node) -> Forward | None:
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None and (const_array(training) is None or const_array(training).any()):
        return None
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    if mask is not None and (mask.uses() or mask.is_graph_output()):
        return None
    return Forward("dropout", node.inputs[0])


def cast_same_type(graph: ir.Graph, node: ir.Node) -> Forward | None:
    x = node.inputs[0]
    target = _dtype(node.inputs[1]) if node.op_type == "CastLike" else ir.DataType(node.attributes["to"].value)
    return Forward("cast-same-type", x) if _dtype(x) is not None and _dtype(x) == target else None


def cast_merge(graph: ir.Graph, node: ir.Node) -> Forward | Rewire | None:
    """Cast(Cast(x, T1), T2) -> Cast(x, T2) when T1 holds every value of x's type exactly."""
    first = producer_of(node.inputs[0], "Cast")
    if first is None:
        return None
    x = first.inputs[0]
    if ir.DataType(first.attributes["to"].value) not in EXACT_CASTS.get(_dtype(x), ()):
        return None
    if _dtype(x) == ir.DataType(node.attributes["to"].value):
        return Forward("cast-merge", x)
    return Rewire("cast-merge", {0: x}, bypassed=first)


def reshape_same_shape(graph: ir.Graph, node: ir.Node) -> Forward | None:
    dims, target = _dims(node.inputs[0]), _ints(node.inputs[1])
    if dims is None or target is None or len(dims) != len(target):
        return None
    allow_zero = node.attributes.get_int("allowzero", 0)
    # Same rank and every other dim kept: a single -1 must be the remaining dim too.
    kept = [t == -1 or (t == 0 and not allow_zero) or same_dim(d, t) for d, t in zip(dims, target, strict=True)]
    return Forward("reshape-same-shape", node.inputs[0]) if all(kept) and target.count(-1) <= 1 else None


def flatten_rank2(graph: ir.Graph, node: ir.Node) -> Forward | None:
    """Flatten(x, axis=1) of a rank-2 x (the legacy Softmax form of a [N, C] input) is x."""
    dims = _dims(node.inputs[0])
    if dims is None or len(dims) != 2:
        return None
    return Forward("flatten-rank2", node.inputs[0]) if node.attributes.get_int("axis", 1) in (1, -1) else None


def reshape_merge(graph: ir.Graph, node: ir.Node) -> Rewire | None:
    """Reshape(Reshape(x, a), b) -> Reshape(x, b), b's 0s (copy a dim) resolved from the middle shape."""
    first = producer_of(node.inputs[0], "Reshape")
    if first is None:
        return None
    if node.attributes.get_int("allowzero", 0):
        return Rewire("reshape-merge", {0: first.inputs[0]}, bypassed=first)
    target, middle = _ints(node.inputs[1]), _dims(node.inputs[0])
    if target is None:
        return None  # a computed shape may hold 0s that copy dims of the middle tensor
    if 0 not in target:
        return Rewire("reshape-merge", {0: first.inputs[0]}, bypassed=first)
    source = _dims(first.inputs[0]) or ()
    if middle is None or max(i for i, t in enumerate(target) if t == 0) >= len(middle):
        return None
    resolved = []
    for i, t in enumerate(target):
        if t != 0 or (i < len(source) and same_dim(source[i], middle[i])):
            resolved.append(t)  # a 0 copying a dim that x has there too stays a 0
        elif isinstance(middle[i], int) and middle[i] != 0:
            resolved.append(middle[i])
        else:
            return None
    if resolved == target:
        return Rewire("reshape-merge", {0: first.inputs[0]}, bypassed=first)
    shape = add_constant(graph, np.array(resolved, dtype=np.int64), f"{node.inputs[1].name}_resolved")
    return Rewire("reshape-merge", {0: first.inputs[0], 1: shape}, bypassed=first)


def expand_same_shape(graph: ir.Graph, node: ir.Node) -> Forward | None:
    dims, target = _dims(node.inputs[0]), _ints(node.inputs[1])
    if dims is None or target is None or not broadcasts_into(target, dims):
        return None
    return Forward("expand-same-shape", node.inputs[0])


def transpose_identity(graph: ir.Graph, node: ir.Node) -> Forward | None:
    perm = _perm(node)
    return Forward("transpose-identity", node.inputs[0]) if perm == list(range(len(perm or ()))) else None


def transpose_merge(graph: ir.Graph, node: ir.Node) -> Forward | Rewire | None:
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, [p1[i] for i in p2])."""
    first = producer_of(node.inputs[0], "Transpose")
    outer, inner = _perm(node), _perm(first) if first is not None else None
    if outer is None or inner is None or len(outer) != len(inner):
        return None
    perm = [inner[i] for i in outer]
    if perm == list(range(len(perm))):
        return Forward("transpose-merge", first.inputs[0])
    return Rewire("transpose-merge", {0: first.inputs[0]}, [ir.AttrInt64s("perm", perm)], bypassed=first)


def pad_zero(graph: ir.Graph, node: ir.Node) -> Forward | None:
    pads = _ints(node.inputs[1])
    return Forward("pad-zero", node.inputs[0]) if pads is not None and not any(pads) else None


def _slice_params(node: ir.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """A Slice's constant (starts, ends, axes in [0, rank), steps), or None when any is not constant."""
    dims = _dims(node.inputs[0])
    starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
    if dims is None or starts is None or ends is None or len(starts) != len(ends):
        return None
    optional = list(node.inputs[3:5]) + [None] * (5 - len(node.inputs))
    axes = _ints(optional[0]) if optional[0] is not None else list(range(len(starts)))
    steps = _ints(optional[1]) if optional[1] is not None else [1] * len(starts)
    if steps is None or axes is None or len(steps) != len(starts) or len(axes) != len(starts) \
            or _axes(axes, len(dims)) is None:
        return None
    return starts, ends, [a % len(dims) for a in axes], steps


def slice_full(graph: ir.Graph, node: ir.Node) -> Forward | None:
    params = _slice_params(node)
    if params is None:
        return None
    dims = _dims(node.inputs[0])
    for start, end, axis, step in zip(*params, strict=True):
        dim = dims[axis]
        whole_start = start == 0 or (isinstance(dim, int) and start <= -dim)
        whole_end = end == INT64_MAX or (isinstance(dim, int) and end >= dim)
        if step != 1 or not whole_start or not whole_end:
            return None
    return Forward("slice-full", node.inputs[0])


def slice_merge(graph: ir.Graph, node: ir.Node) -> Rewire | None:
    """Slice(Slice(x, a), b) over disjoint axes -> one Slice(x, a + b) (YOLO's Focus: x[..., ::2, ::2])."""
    inner = producer_of(node.inputs[0], "Slice")
    outer, first = _slice_params(node), inner and _slice_params(inner)
    if not outer or not first or set(outer[2]) & set(first[2]):
        return None
    merged = [np.array(a + b, np.int64) for a, b in zip(first, outer, strict=True)]
    base = node.name or "slice"
    parts = ("starts", "ends", "axes", "steps")
    inputs = {0: inner.inputs[0]} | {i + 1: add_constant(graph, array, f"{base}_{part}")
                                     for i, (part, array) in enumerate(zip(parts, merged, strict=True))}
    return Rewire("slice-merge", inputs, bypassed=inner)


def squeeze_unsqueeze(graph: ir.Graph, node: ir.Node) -> Forward | None:
    """Squeeze(Unsqueeze(x, a), a) -> x and Unsqueeze(Squeeze(x, a), a) -> x."""
    inverse = "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze"
    first = producer_of(node.inputs[0], inverse)
    squeeze = node if node.op_type == "Squeeze" else first
    wide = _dims(node.inputs[0] if node.op_type == "Squeeze" else first.inputs[0]) if first else None
    if wide is None:
        return None
    explicit = len(squeeze.inputs) > 1 and squeeze.inputs[1] is not None
    squeezed = _axes(_ints(squeeze.inputs[1]), len(wide)) if explicit else None
    if not explicit and all(isinstance(d, int) for d in wide):
        squeezed = {i for i, d in enumerate(wide) if d == 1} or None
    unsqueeze = first if node.op_type == "Squeeze" else node
    unsqueezed = _axes(_ints(unsqueeze.inputs[1]), len(wide))
    if squeezed is None or squeezed != unsqueezed:
        return None
    return Forward("squeeze-unsqueeze", first.inputs[0])


NEUTRAL_OPERANDS = {"Mul": ("mul-one", 1, (0, 1)), "Div": ("div-one", 1, (1,)),
                    "Add": ("add-zero", 0, (0, 1)), "Sub": ("sub-zero", 0, (1,))}


def neutral_operand(graph: ir.Graph, node: ir.Node) -> Forward | None:
    """x*1, 1*x, x/1, x+0, 0+x, x-0 -> x when the constant does not broadcast x to a larger shape."""
    pattern, neutral, positions = NEUTRAL_OPERANDS[node.op_type]
    for i in positions:
        const, other = node.inputs[i], node.inputs[1 - i]
        data, dims = const_array(const), _dims(other)
        if data is None or dims is None or not np.all(data == neutral):
            continue
        if broadcasts_into(data.shape, dims) and _dtype(other) == _dtype(node.outputs[0]):
            return Forward(pattern, other)
    return None


def where_constant(graph: ir.Graph, node: ir.Node) -> Forward | None:
    condition = const_array(node.inputs[0])
    if condition is None or not (condition.all() or not condition.any()):
        return None
    chosen, other = (node.inputs[1], node.inputs[2]) if condition.all() else (node.inputs[2], node.inputs[1])
    dims, other_dims = _dims(chosen), _dims(other)
    if dims is None or other_dims is None or not broadcasts_into(condition.shape, dims):
        return None
    return Forward("where-const", chosen) if broadcasts_into(other_dims, dims) else None


RULES: dict[str, list[Rule]] = {
    "Identity": [identity], "Dropout": [dropout],
    "Cast": [cast_same_type, cast_merge], "CastLike": [cast_same_type],
    "Reshape": [reshape_same_shape, reshape_merge], "Expand": [expand_same_shape], "Flatten": [flatten_rank2],
    "Transpose": [transpose_identity, transpose_merge], "Pad": [pad_zero], "Slice": [slice_full, slice_merge],
    "Squeeze": [squeeze_unsqueeze], "Unsqueeze": [squeeze_unsqueeze],
    **dict.fromkeys(NEUTRAL_OPERANDS, [neutral_operand]), "Where": [where_constant],
}


def _forward(graph: ir.Graph, node: ir.Node, value: ir.Value) -> bool:
    output = node.outputs[0]
    if output.is_graph_output():
        # The graph output takes `value`'s place under its own name, which only a value
        # computed by a node of this graph, not itself an output, can do.
        producer = value.producer()
        if producer is None or producer.graph is not graph or value.is_graph_output():
            return False
    # A producer that only fed `node` (the first Transpose of a cancelling pair) dies with it.
    producers = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
    dead = dict.fromkeys([node, *(p for p in producers if p.graph is graph)])
    replace_with(graph, node, [], [output], [value], dead=list(dead))
    return True


def _rewire(graph: ir.Graph, node: ir.Node, rewire: Rewire) -> bool:
    if max(rewire.inputs) >= len(node.inputs):  # optional inputs the node left out (Slice's axes, steps)
        node.resize_inputs(max(rewire.inputs) + 1)
    for index, value in rewire.inputs.items():
        node.replace_input_with(index, value)
    for attr in rewire.attributes:
        node.attributes[attr.name] = attr
    if rewire.bypassed is not None:  # it may sit in an outer graph when `node` is in a subgraph
        remove_if_dead(rewire.bypassed.graph, [rewire.bypassed])
    return True


@register_pass("eliminate-noops", order=10)
def eliminate_noops(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Remove no-op nodes (Identity, same-type Cast, identity Transpose, x*1, ...) and merge cancelling chains."""
    counts: dict[str, int] = {}
    for graph in list(all_graphs(model.graph)):
        for node in list(graph):  # topological: a node's inputs are already simplified
            changed = True
            while changed and node.graph is graph and is_op(node, *RULES):
                changed = False
                for rule in RULES[node.op_type]:
                    result = rule(graph, node)
                    if result is None:
                        continue
                    if isinstance(result, Forward):
                        changed = _forward(graph, node, result.value)
                    else:
                        changed = _rewire(graph, node, result)
                    if changed:
                        counts[result.pattern] = counts.get(result.pattern, 0) + 1
                        break
    return counts
