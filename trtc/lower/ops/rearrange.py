"""Element rearrangements: DepthToSpace and SpaceToDepth (reshape -> transpose -> reshape, with
shape tensors where dims are dynamic) and ReverseSequence -> IReverseSequenceLayer."""

from __future__ import annotations

import numpy as np

from trtc.lower.ops._shape_math import ShapeMath
from trtc.lower.registry import Constraint, attribute_in, converter, tensor_types


def _rank_4(node) -> str | None:
    x = node.inputs[0]
    if x.shape is None or x.shape.rank() != 4:
        return f"input {x.name!r} must be known to be 4-D (N, C, H, W)"
    return None


RANK_4 = Constraint("4-D input", _rank_4)


def _reshape(ctx, x, parts):
    """Reshape `x` to the concatenation of 1-element shape values `parts`."""
    shape = ShapeMath(ctx).concat(parts)
    if ShapeMath.is_static(shape):
        return ctx.reshape(x, [int(d) for d in shape], zero_is_placeholder=False)
    return ctx.reshape(x, shape, zero_is_placeholder=False)


def _transpose(ctx, x, perm):
    layer = ctx.check(ctx.network.add_shuffle(x))
    layer.first_transpose = tuple(perm)
    return layer.get_output(0)


def _nchw(ctx, x):
    math = ShapeMath(ctx)
    return [math.dims(x, [axis]) for axis in range(4)]


@converter("DepthToSpace", constraints=[tensor_types(), RANK_4, attribute_in("mode", ("DCR", "CRD"), "DCR")])
def lower_depth_to_space(ctx, node):
    """DepthToSpace(x, blocksize b): DCR reshapes to [N, b, b, C/b², H, W] and transposes
    (0, 3, 4, 1, 5, 2); CRD reshapes to [N, C/b², b, b, H, W] and transposes (0, 1, 4, 2, 5, 3);
    both end as [N, C/b², H*b, W*b]."""
    x = ctx.tensor(node.inputs[0])
    math = ShapeMath(ctx)
    b = node.attributes.get_int("blocksize")
    block = np.array([b], np.int64)
    n, c, h, w = _nchw(ctx, x)
    depth = math.floor_div(c, np.array([b * b], np.int64))
    if node.attributes.get_string("mode", "DCR") == "DCR":
        x = _transpose(ctx, _reshape(ctx, x, [n, block, block, depth, h, w]), (0, 3, 4, 1, 5, 2))
    else:
        x = _transpose(ctx, _reshape(ctx, x, [n, depth, block, block, h, w]), (0, 1, 4, 2, 5, 3))
    return [_reshape(ctx, x, [n, depth, math.mul(h, block), math.mul(w, block)])]


@converter("SpaceToDepth", constraints=[tensor_types(), RANK_4])
def lower_space_to_depth(ctx, node):
    """SpaceToDepth(x, blocksize b): [N, C, H/b, b, W/b, b] -> transpose (0, 3, 5, 1, 2, 4)
    -> [N, C*b², H/b, W/b]."""
    x = ctx.tensor(node.inputs[0])
    math = ShapeMath(ctx)
    b = node.attributes.get_int("blocksize")
    block = np.array([b], np.int64)
    n, c, h, w = _nchw(ctx, x)
    rows, cols = math.floor_div(h, block), math.floor_div(w, block)
    x = _transpose(ctx, _reshape(ctx, x, [n, c, rows, block, cols, block]), (0, 3, 5, 1, 2, 4))
    return [_reshape(ctx, x, [n, math.mul(c, np.array([b * b], np.int64)), rows, cols])]


@converter("ReverseSequence", constraints=[tensor_types()])
def lower_reverse_sequence(ctx, node):
    """ReverseSequence(x, sequence_lens, batch_axis, time_axis) -> IReverseSequenceLayer."""
    x = ctx.tensor(node.inputs[0])
    lengths = ctx.tensor(node.inputs[1])
    layer = ctx.check(ctx.network.add_reverse_sequence(x, lengths))
    layer.batch_axis = node.attributes.get_int("batch_axis", 1)
    layer.sequence_axis = node.attributes.get_int("time_axis", 0)
    return [layer.get_output(0)]
