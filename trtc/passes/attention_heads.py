"""Attention between a head split and a head merge, rewritten into ONNX Attention's 3-D form
(q_num_heads/kv_num_heads): Transpose(Reshape(x [B,S,H*D] -> [B,S,H,D]), [0,2,1,3]) on the
inputs and Transpose(0,2,1,3) -> Reshape to [B,S,H*D] (or [B*S,H*D]) on the output; a Shape reading
only the batch of a 4-D input (a tiled window mask's) reads it off x instead. fuse-rotary uses the
same head split."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims, same_dim
from trtc.ir.rewrite import add_constant, is_op, producer_of, replace_with, sole_reader

Dims = tuple  # a known-rank shape: ints and ir.SymbolicDim


def perm_of(node: ir.Node | None) -> tuple[int, ...] | None:
    return tuple(node.attributes.get_ints("perm", ())) if is_op(node, "Transpose") else None


def remove_dead_cone(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Remove the producers of `values` that nothing reads any more, and theirs in turn."""
    pending = [v.producer() for v in values]
    while pending:
        node = pending.pop()
        if node is None or node.graph is not graph or any(v.uses() or v.is_graph_output() for v in node.outputs):
            continue
        pending += [v.producer() for v in node.inputs if v is not None]
        graph.remove(node, safe=True)


# ---- 4-D Attention between head split/merge -> 3-D Attention --------------------------------------------

def split_heads(value: ir.Value) -> tuple[ir.Value, int, list[ir.Node]] | None:
    """(x, heads, nodes) when `value` is Transpose(Reshape(x [B, S, H*D], [B, S, H, D]), [0, 2, 1, 3])."""
    transpose = value.producer()
    reshape = producer_of(transpose.inputs[0], "Reshape") if perm_of(transpose) == (0, 2, 1, 3) else None
    if reshape is None:
        return None
    x = reshape.inputs[0]
    x_dims, split = dims(x), dims(reshape.outputs[0])
    if x_dims is None or split is None or (len(x_dims), len(split)) != (3, 4):
        return None
    if not (same_dim(split[0], x_dims[0]) and same_dim(split[1], x_dims[1])
            and all(isinstance(d, int) for d in (*split[2:], x_dims[2])) and x_dims[2] == split[2] * split[3]):
        return None
    return x, split[2], [transpose, reshape]


@dataclasses.dataclass
class HeadMerge:
    """Y [B, H, S, D] -> Transpose(0, 2, 1, 3) -> Reshape to [B, S, H*D] or [B*S, H*D], Shape readers aside."""

    transpose: ir.Node
    reshape: ir.Node
    shape_readers: list[ir.Node]
    split_dims: Dims  # [B, S, H, D]


def merge_heads(value: ir.Value) -> HeadMerge | None:
    transpose = sole_reader(value)
    if perm_of(transpose) != (0, 2, 1, 3) or transpose.outputs[0].is_graph_output():
        return None
    users = transpose.outputs[0].consumers()
    reshapes = [u for u in users if is_op(u, "Reshape") and u.inputs[0] is transpose.outputs[0]]
    # TorchScript computes the merged shape from Shape(transpose): those readers get it from the 3-D output.
    readers = [u for u in users if is_op(u, "Shape") and not u.attributes]
    if len(reshapes) != 1 or len(reshapes) + len(readers) != len(users):
        return None
    split, merged = dims(transpose.outputs[0]), dims(reshapes[0].outputs[0])
    if split is None or merged is None or len(split) != 4 or len(merged) not in (2, 3):
        return None
    if not all(isinstance(d, int) for d in (*split[2:], merged[-1])) or merged[-1] != split[2] * split[3]:
        return None
    if len(merged) == 3 and not (same_dim(merged[0], split[0]) and same_dim(merged[1], split[1])):
        return None
    return HeadMerge(transpose, reshapes[0], readers, split)


def absorb_heads(graph: ir.Graph, attention: ir.Node) -> bool:
    """Rewrite a 4-D Attention whose inputs and output only split and merge heads into the 3-D form."""
    if not is_op(attention, "Attention") or len(attention.outputs) != 1 or len(attention.inputs) > 4 \
            or "q_num_heads" in attention.attributes or "kv_num_heads" in attention.attributes:
        return False
    splits = [split_heads(v) for v in attention.inputs[:3]]
    merge = merge_heads(attention.outputs[0])
    if merge is None or None in splits or splits[1][1] != splits[2][1]:
        return False
    (q, q_heads, q_nodes), (k, kv_heads, k_nodes), (v, _, v_nodes) = splits
    for value, (x, _, _) in zip(attention.inputs[:3], splits, strict=True):
        # A tiled window mask reads the batch off the 4-D Q: [B, S, H*D] has the same batch, and
        # reading it there lets the head split go with the rest.
        for use in list(value.uses()):
            reader = use.node
            if is_op(reader, "Shape") and reader.attributes.get_int("start", 0) == 0 \
                    and "end" in reader.attributes and reader.attributes.get_int("end") == 1:
                reader.replace_input_with(use.idx, x)
    attributes = {**{a.name: a.value for a in attention.attributes.values()},
                  "q_num_heads": q_heads, "kv_num_heads": kv_heads}
    fused = ir.node("Attention", [q, k, v, *attention.inputs[3:]], attributes, name=attention.name)
    output = fused.outputs[0]
    batch, seq, heads, head_dim = merge.split_dims
    output.type, output.shape = attention.outputs[0].type, ir.Shape([batch, seq, heads * head_dim])
    new_nodes, readers_new = [fused], []
    if merge.shape_readers:  # Shape([B, S, H, D]) = Concat(Shape(y3)[:2], [H, D])
        head = ir.node("Shape", [output], {"start": 0, "end": 2}, name=f"{attention.name}_batch_seq")
        heads_dims = add_constant(graph, np.array([heads, head_dim], np.int64), f"{attention.name}_heads_dims")
        new_nodes += [head, ir.node("Concat", [head.outputs[0], heads_dims], {"axis": 0},
                                    name=f"{attention.name}_shape")]
        readers_new = [new_nodes[-1].outputs[0]] * len(merge.shape_readers)
    replace_with(graph, attention, new_nodes, [r.outputs[0] for r in merge.shape_readers], readers_new)
    merged = [] if len(dims(merge.reshape.outputs[0])) == 3 else [ir.node(
        "Reshape", [output, merge.reshape.inputs[1]], {"allowzero": merge.reshape.attributes.get_int("allowzero", 0)},
        name=merge.reshape.name)]  # [B*S, H*D]: the same target reads the same from [B, S, H*D]
    dead = [merge.reshape, merge.transpose, *merge.shape_readers, attention, *q_nodes, *k_nodes, *v_nodes]
    target = merge.reshape.inputs[1]
    replace_with(graph, merge.reshape, merged, [merge.reshape.outputs[0]], [merged[0].outputs[0] if merged else output],
                 dead=dead)
    remove_dead_cone(graph, [target])
    return True
