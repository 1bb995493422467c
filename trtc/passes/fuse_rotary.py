"""Fuse rotary position embedding (the rotate_half form) into ONNX RotaryEmbedding (opset 23).

Before (x [B, H, S, D]; cos/sin tables [P, D] whose two halves are equal, as rotate_half models build them,
or computed per position: cos = Unsqueeze(Cos(Concat(f, f, axis=-1)), [1]) with angles f [B, S, D/2]):
    x1, x2 = Split(x, [D/2, D/2], axis=-1)      or Slice(x, 0:D/2) and Slice(x, D/2:) on the last axis
    cos = Gather(cos_table, pos, axis=0)        pos [S], [1, S] or [B, S]; an Unsqueeze may line it up with x
    y = Add(Mul(x, cos), Mul(Concat(Neg(x2), x1, axis=-1), sin))     either operand order
After:
    y = RotaryEmbedding(x, cos_table[:, :D/2], sin_table[:, :D/2], position_ids, interleaved=0)
    (position_ids = pos, or pos expanded to [B, S] when it is shared across the batch)
    y = RotaryEmbedding(x, Cos(f), Sin(f), interleaved=0)              computed angles: [B, S, D/2] caches
When only the rotation reads x = Transpose(Reshape(x3 [B, S, H*D], [B, S, H, D]), [0, 2, 1, 3]), x3 is
rotated instead (RotaryEmbedding's 3-D form, num_heads=H) and split into heads as x was, so that
fuse-attention can take the 3-D Attention form around it.

That is RotaryEmbedding's half-split layout: real = cos*x1 - sin*x2, imag = sin*x1 + cos*x2. The
interleaved layout (rotate_every_two: x[..., 0::2], x[..., 1::2]) is not matched, and tables whose
halves differ are left alone. Position ids index the tables as Gather does for ids in [0, P); a
negative id, which Gather would wrap around, is outside RotaryEmbedding's domain.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import (
    add_constant,
    const_array,
    fuse_matches,
    is_op,
    producer_of,
    replace_with,
    sole_reader,
)
from trtc.passes.attention_heads import split_heads
from trtc.passes.registry import PassContext, register_pass

ROTARY_OPSET = 23


def last_axis(node: ir.Node, rank: int, axis: int | None = None) -> bool:
    axis = node.attributes.get_int("axis", 0) if axis is None else axis
    return axis in (-1, rank - 1)


def split_halves(x1: ir.Value, x2: ir.Value) -> ir.Value | None:
    """x when (x1, x2) are the first and second halves of x [..., D] on the last axis, else None."""
    split = producer_of(x1, "Split")
    if split is not None and len(split.outputs) == 2 and split.outputs[0] is x1 and split.outputs[1] is x2:
        x = split.inputs[0]
        shape = dims(x)
        if shape is None or not isinstance(shape[-1], int) or shape[-1] % 2 or not last_axis(split, len(shape)):
            return None
        sizes = const_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        halves = sizes is None or np.ravel(sizes).tolist() == [shape[-1] // 2] * 2
        return x if halves else None
    first, second = producer_of(x1, "Slice"), producer_of(x2, "Slice")
    if first is None or second is None or first.inputs[0] is not second.inputs[0]:
        return None
    x = first.inputs[0]
    shape = dims(x)
    if shape is None or not isinstance(shape[-1], int) or shape[-1] % 2:
        return None
    half, second_range = shape[-1] // 2, slice_of(second, len(shape))
    second_half = second_range is not None and second_range[0] == half and second_range[1] >= shape[-1]  # clamped
    return x if slice_of(first, len(shape)) == (0, half) and second_half else None


def slice_of(node: ir.Node, rank: int) -> tuple[int, int] | None:
    """(start, end) of a step-1 Slice over the last axis alone."""
    args = [const_array(v) if v is not None else None for v in (list(node.inputs) + [None] * 5)[1:5]]
    starts, ends, axes, steps = args
    if starts is None or ends is None or starts.size != 1 or (len(node.inputs) > 3 and node.inputs[3] is not None
                                                              and axes is None):
        return None
    axis = int(np.ravel(axes)[0]) if axes is not None else 0
    if not last_axis(node, rank, axis) or (steps is not None and np.ravel(steps).tolist() != [1]):
        return None
    return int(np.ravel(starts)[0]), int(np.ravel(ends)[0])


@dataclasses.dataclass
class TableLookup:
    table: ir.Value  # [P, D]
    positions: ir.Value
    layout: tuple  # the lookup's dims lined up with x [B, H, S, D]: "b", "s", "d" or 1
    nodes: list[ir.Node]


def table_lookup(value: ir.Value) -> TableLookup | None:
    """`value` as Unsqueeze?(Gather(table [P, D], pos, axis=0)) with its layout against x's [B, H, S, D]."""
    unsqueeze = producer_of(value, "Unsqueeze")
    gather = producer_of(unsqueeze.inputs[0] if unsqueeze else value, "Gather")
    if gather is None or gather.attributes.get_int("axis", 0) != 0 or const_array(gather.inputs[0]) is None:
        return None
    pos_dims = dims(gather.inputs[1])
    if const_array(gather.inputs[0]).ndim != 2 or pos_dims is None or not 1 <= len(pos_dims) <= 2:
        return None
    labels = [1 if d == 1 else name for d, name in zip(pos_dims, ("b", "s")[-len(pos_dims):])] + ["d"]
    if unsqueeze is not None:
        axes = const_array(unsqueeze.inputs[1])
        if axes is None:
            return None
        rank = len(labels) + axes.size
        for axis in sorted(int(a) % rank for a in np.ravel(axes)):
            labels.insert(axis, 1)
    if len(labels) > 4:
        return None
    layout = tuple([1] * (4 - len(labels)) + labels)
    if layout[1:] != (1, "s", "d") and layout[1:] != (1, 1, "d") or layout[0] not in (1, "b"):
        return None
    return TableLookup(gather.inputs[0], gather.inputs[1], layout, [n for n in (unsqueeze, gather) if n])


def rotate_half(value: ir.Value) -> tuple[ir.Value, list[ir.Node]] | None:
    """(x, nodes) when `value` is Concat(Neg(x2), x1, axis=-1) of x's halves, every step single-use."""
    concat = producer_of(value, "Concat")
    neg = producer_of(concat.inputs[0], "Neg") if concat is not None and len(concat.inputs) == 2 else None
    if neg is None or sole_reader(value) is None:
        return None
    x1, x2 = concat.inputs[1], neg.inputs[0]
    x = split_halves(x1, x2)
    if x is None or not last_axis(concat, len(dims(x))):
        return None
    if sole_reader(x1) is not concat or sole_reader(x2) is not neg or sole_reader(neg.outputs[0]) is not concat:
        return None
    return x, [concat, neg, *dict.fromkeys([x1.producer(), x2.producer()])]


@dataclasses.dataclass
class ComputedAngles:
    """cos or sin computed per position rather than looked up: Unsqueeze(Cos|Sin(Concat(f, f, axis=-1)), [1])
    with the angles f [B, S, D/2] (positions times inverse frequencies, as torch's dynamo exports build them)."""

    angles: ir.Value
    nodes: list[ir.Node]


def computed_angles(value: ir.Value, op_type: str, x_dims: tuple) -> ComputedAngles | None:
    """`value` [B, 1, S, D] as Unsqueeze(op_type(Concat(f, f, axis=-1)), [1]), f [B, S, D/2] lined up with x."""
    unsqueeze = producer_of(value, "Unsqueeze")
    trig = producer_of(unsqueeze.inputs[0], op_type) if unsqueeze else None
    concat = producer_of(trig.inputs[0], "Concat") if trig else None
    if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not concat.inputs[1]:
        return None
    axes, angles = const_array(unsqueeze.inputs[1]), concat.inputs[0]
    f_dims = dims(angles)
    if axes is None or np.ravel(axes).tolist() != [1] or f_dims is None or len(f_dims) != 3 \
            or not last_axis(concat, 3) or not isinstance(x_dims[3], int):
        return None
    if not (same_dim(f_dims[0], x_dims[0]) and same_dim(f_dims[1], x_dims[2]) and f_dims[2] * 2 == x_dims[3]):
        return None
    return ComputedAngles(angles, [unsqueeze, trig, concat])


@dataclasses.dataclass
class RotaryMatch:
    x: ir.Value
    cos: TableLookup | ComputedAngles
    sin: TableLookup | ComputedAngles
    output: ir.Value
    nodes: list[ir.Node]  # consumers first: the Add anchors the rewrite


def match_rotary(add: ir.Node) -> RotaryMatch | str:
    """The rotary embedding `add` completes, or why there is none."""
    if not is_op(add, "Add"):
        return "not an Add"
    for cos_term, sin_term in (add.inputs, add.inputs[::-1]):
        cos_mul, sin_mul = producer_of(cos_term, "Mul"), producer_of(sin_term, "Mul")
        if cos_mul is None or sin_mul is None or sole_reader(cos_term) is None or sole_reader(sin_term) is None:
            continue
        for rotated, sin in (sin_mul.inputs, sin_mul.inputs[::-1]):
            found = rotate_half(rotated)
            if found is None or found[0] not in cos_mul.inputs:
                continue
            x, rotate_nodes = found
            cos = cos_mul.inputs[1] if cos_mul.inputs[0] is x else cos_mul.inputs[0]
            nodes = [add, cos_mul, sin_mul, *rotate_nodes]
            angles = computed(x, cos, sin, [cos_term, sin_term])
            if angles is not None:
                return RotaryMatch(x, *angles, add.outputs[0], nodes)
            reason = check_tables(x, cos, sin, [cos_term, sin_term])
            if reason:
                return reason
            return RotaryMatch(x, table_lookup(cos), table_lookup(sin), add.outputs[0], nodes)
    return "not Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin)) of x's halves"


def computed(x: ir.Value, cos: ir.Value, sin: ir.Value, products: list[ir.Value]
             ) -> tuple[ComputedAngles, ComputedAngles] | None:
    """cos and sin as Cos and Sin of the same angles f [B, S, D/2], each half of x's head_dim seeing f."""
    x_dims = dims(x)
    if x_dims is None or len(x_dims) != 4 or \
            any(dims(p) is None or not all(map(same_dim, dims(p), x_dims)) for p in products):
        return None
    found = computed_angles(cos, "Cos", x_dims), computed_angles(sin, "Sin", x_dims)
    if None in found or found[0].angles is not found[1].angles or x.dtype != found[0].angles.dtype:
        return None
    return found


def check_tables(x: ir.Value, cos: ir.Value, sin: ir.Value, products: list[ir.Value]) -> str | None:
    """Why cos and sin are not lookups of rotate_half tables lined up with x (None: they are)."""
    x_dims = dims(x)
    if x_dims is None or len(x_dims) != 4:
        return "x is not of known rank 4 [batch, heads, seq, head_dim]"
    if any(dims(p) is None or len(dims(p)) != 4 or not all(map(same_dim, dims(p), x_dims)) for p in products):
        return "cos or sin broadcasts x to a larger shape"
    cos_lookup, sin_lookup = table_lookup(cos), table_lookup(sin)
    if cos_lookup is None or sin_lookup is None:
        return "cos or sin is not Gather(table, positions) lined up with x's sequence axis"
    if cos_lookup.positions is not sin_lookup.positions or cos_lookup.layout != sin_lookup.layout:
        return "cos and sin are looked up differently"
    if cos_lookup.positions.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return "positions are not int64/int32"
    half = x_dims[3] // 2
    for lookup in (cos_lookup, sin_lookup):
        table = const_array(lookup.table)
        if lookup.table.dtype != x.dtype or table.shape[1] != x_dims[3]:
            return f"table {lookup.table.name} is not [positions, {x_dims[3]}] of x's type"
        if not np.array_equal(table[:, :half], table[:, half:]):
            return f"the halves of table {lookup.table.name} differ (not the rotate_half layout)"
    return None


def why_not(node: ir.Node) -> str | None:
    """Why `node` (an Add) does not complete a rotary embedding (None: it does)."""
    result = match_rotary(node)
    return result if isinstance(result, str) else None


def heads_split(match: RotaryMatch) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """x's head split of a 3-D x3 (see fuse_attention.split_heads) when only the rotation reads x."""
    split = split_heads(match.x)
    return split if split and all(n in match.nodes for n in match.x.consumers()) else None


@dataclasses.dataclass
class Shared:
    """What one run of the pass builds once and reuses: half tables, position ids broadcast over a batch."""

    halves: dict[ir.Value, ir.Value] = dataclasses.field(default_factory=dict)
    positions: dict[tuple, ir.Value] = dataclasses.field(default_factory=dict)
    computed: dict[tuple[ir.Value, str], ir.Node] = dataclasses.field(default_factory=dict)  # Cos/Sin of angles


def angle_caches(match: RotaryMatch, shared: Shared, name: str) -> tuple[list[ir.Node], list[ir.Value]]:
    """(new nodes, [Cos(f), Sin(f)]): RotaryEmbedding's [B, S, D/2] caches of computed angles, made once."""
    new_nodes, caches = [], []
    for op_type in ("Cos", "Sin"):
        key = (match.cos.angles, op_type)
        if key not in shared.computed:
            node = ir.node(op_type, [match.cos.angles], name=f"{name}_{op_type.lower()}")
            node.outputs[0].type, node.outputs[0].shape = match.cos.angles.type, match.cos.angles.shape
            shared.computed[key] = node
            new_nodes.append(node)
        caches.append(shared.computed[key].outputs[0])
    return new_nodes, caches


def half_table(graph: ir.Graph, table: ir.Value, shared: Shared) -> ir.Value:
    if table not in shared.halves:
        data = const_array(table)
        shared.halves[table] = add_constant(graph, np.ascontiguousarray(data[:, :data.shape[1] // 2]),
                                            f"{table.name}_half")
    return shared.halves[table]


def position_ids(match: RotaryMatch, x: ir.Value, batch_seq: tuple[int, int], shared: Shared,
                 name: str) -> tuple[list[ir.Node], ir.Value]:
    """(new nodes, RotaryEmbedding's position ids [B, S]) with B, S the dims of x at `batch_seq`."""
    positions, new_nodes = match.cos.positions, []
    x_dims, pos_dims = dims(x), dims(positions)
    batch, seq = (x_dims[i] for i in batch_seq)
    if match.cos.layout == ("b", 1, "s", "d") and same_dim(pos_dims[0], batch) and same_dim(pos_dims[1], seq) \
            and positions.dtype == ir.DataType.INT64:
        return [], positions
    key = (positions, str(batch), str(seq))
    named = all(isinstance(d, int) or d.value is not None for d in (batch, seq))
    if named and key in shared.positions:  # the same ids broadcast to the same [B, S] before
        return [], shared.positions[key]
    if positions.dtype != ir.DataType.INT64:
        new_nodes.append(ir.node("Cast", [positions], {"to": ir.DataType.INT64}, name=f"{name}_positions_int64"))
        positions = new_nodes[-1].outputs[0]
    # Shared ids ([S], [1, S]): broadcast over the batch, as the Mul did (Expand is a no-op on [B, S]).
    new_nodes += [ir.node("Shape", [x], {"start": i, "end": i + 1}, name=f"{name}_dim{i}") for i in batch_seq]
    new_nodes.append(ir.node("Concat", [new_nodes[-2].outputs[0], new_nodes[-1].outputs[0]], {"axis": 0},
                             name=f"{name}_positions_shape"))
    new_nodes.append(ir.node("Expand", [positions, new_nodes[-1].outputs[0]], name=f"{name}_positions"))
    new_nodes[-1].outputs[0].type = ir.TensorType(ir.DataType.INT64)
    new_nodes[-1].outputs[0].shape = ir.Shape([batch, seq])
    if named:
        shared.positions[key] = new_nodes[-1].outputs[0]
    return new_nodes, new_nodes[-1].outputs[0]


def fuse(graph: ir.Graph, match: RotaryMatch, shared: Shared) -> None:
    name = match.nodes[0].name or "rotary"
    angles = isinstance(match.cos, ComputedAngles)
    if angles:  # per-position caches [B, S, D/2], no position ids
        new_nodes, caches = angle_caches(match, shared, name)
    else:
        new_nodes, caches = [], [half_table(graph, lookup.table, shared) for lookup in (match.cos, match.sin)]
    split = heads_split(match)
    if split is None:
        lookup_nodes, positions = ([], None) if angles else position_ids(match, match.x, (0, 2), shared, name)
        new_nodes += lookup_nodes
        new_nodes.append(ir.node("RotaryEmbedding", [match.x, *caches, *([positions] if positions else [])],
                                 {"interleaved": 0}, name=name))
    else:  # x = heads of x3 [B, S, H*D]: rotate x3 (the 3-D form) and split the result as x was
        x3, heads, (_, reshape) = split
        lookup_nodes, positions = ([], None) if angles else position_ids(match, x3, (0, 1), shared, name)
        new_nodes += lookup_nodes
        rotated = ir.node("RotaryEmbedding", [x3, *caches, *([positions] if positions else [])],
                          {"interleaved": 0, "num_heads": heads}, name=name)
        heads4 = ir.node("Reshape", [rotated.outputs[0], reshape.inputs[1]],
                         {"allowzero": reshape.attributes.get_int("allowzero", 0)}, name=f"{name}_heads")
        for node, like in ((rotated, x3), (heads4, reshape.outputs[0])):  # shapes for the attention fusion
            node.outputs[0].type, node.outputs[0].shape = like.type, like.shape
        new_nodes += [rotated, heads4, ir.node("Transpose", [heads4.outputs[0]], {"perm": [0, 2, 1, 3]},
                                               name=f"{name}_split")]
        match.nodes += split[2]
    dead = match.nodes + match.cos.nodes + match.sin.nodes
    replace_with(graph, match.nodes[0], new_nodes, [match.output], new_nodes[-1].outputs, dead=dead)


@register_pass("fuse-rotary", order=75)
def fuse_rotary(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fuse rotate_half rotary position embedding (Split/Neg/Concat/Mul/Add) into RotaryEmbedding."""
    shared: dict[int, Shared] = {}  # per graph: the cos/sin caches fusions there share

    def fuse_shared(graph: ir.Graph, match: RotaryMatch) -> None:
        counts["rotary-3d" if heads_split(match) else "rotary"] += 1  # before fusing consumes the match
        fuse(graph, match, shared.setdefault(id(graph), Shared()))

    counts = {"rotary": 0, "rotary-3d": 0}
    fuse_matches(model, "fuse-rotary", ["Add"], match_rotary, fuse_shared, opset=ROTARY_OPSET)
    return {k: n for k, n in counts.items() if n}
