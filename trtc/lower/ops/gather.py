"""Indexing: Gather, GatherElements, GatherND, ScatterElements (and the opset-9 Scatter),
ScatterND, TensorScatter -> IGatherLayer / IScatterLayer, with ONNX's negative indices wrapped; NonZero and
Compress -> INonZeroLayer (+ gather)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.lower.ops._shape_math import ShapeMath, constant, tensor_of, wrap_negative
from trtc.lower.ops.generate import iota
from trtc.lower.ops.slice import slice_axes
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types


def _indices(ctx, node, index: int, dims_of: Callable[[], Any]):
    """The indices input with negatives wrapped by the dims `dims_of()` gives (a shape value
    broadcastable to it; asked for only when needed, as a run-time dim costs shape layers).

    Constant indices with static dims are wrapped while building; constant indices without a
    negative need no wrapping at all; everything else is wrapped at run time."""
    data = ctx.const(node.inputs[index])
    if data is not None:
        if not (data < 0).any():
            return tensor_of(ctx, node.inputs[index])
        dims = dims_of()
        if ShapeMath.is_static(dims):
            return constant(ctx, np.where(data < 0, data + dims.astype(data.dtype), data))
        return wrap_negative(ctx, tensor_of(ctx, node.inputs[index]), dims)
    return wrap_negative(ctx, tensor_of(ctx, node.inputs[index]), dims_of())


@converter("Gather", constraints=[tensor_types(), known_rank(0)])
def lower_gather(ctx, node):
    """Gather(data, indices, axis) -> IGatherLayer (DEFAULT mode); negative indices + dim(axis)."""
    data = ctx.tensor(node.inputs[0])
    axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(data))

    def dim():
        size = ShapeMath(ctx).dims(data, [axis])
        return size.reshape(()) if ShapeMath.is_static(size) else ctx.reshape(size, [])

    indices = _indices(ctx, node, 1, dim)
    return [ctx.check(ctx.network.add_gather(data, indices, axis)).get_output(0)]


@converter("GatherElements", constraints=[tensor_types(), known_rank(0)])
def lower_gather_elements(ctx, node):
    """GatherElements(data, indices, axis) -> IGatherLayer in ELEMENT mode."""
    data = ctx.tensor(node.inputs[0])
    axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(data))
    indices = _indices(ctx, node, 1, lambda: _axis_dim(ctx, data, axis))
    layer = ctx.check(ctx.network.add_gather_v2(data, indices, ctx.trt.GatherMode.ELEMENT))
    layer.axis = axis
    return [layer.get_output(0)]


def _axis_dim(ctx, data, axis: int):
    """dim(axis) of `data` shaped to broadcast against an index tensor of the same rank."""
    dim = ShapeMath(ctx).dims(data, [axis])
    rank = ctx.rank(data)
    if ShapeMath.is_static(dim):
        return dim.reshape((1,) * rank)
    return ctx.reshape(dim, [1] * rank)


def _index_depth_known(node) -> str | None:
    indices = node.inputs[1]
    if indices.shape is None or not isinstance(indices.shape.dims[-1], int):
        return f"the last dim of the indices ({indices.name!r}) must be static"
    return None


INDEX_DEPTH = Constraint("static index depth (last dim of the indices)", _index_depth_known)


def _nd_dims(ctx, data, batch_dims: int, depth: int):
    """The dims an ND index tuple addresses: data dims [batch_dims, batch_dims + depth)."""
    return ShapeMath(ctx).dims(data, list(range(batch_dims, batch_dims + depth)))


@converter("GatherND", since=12, constraints=[tensor_types(), known_rank(0), known_rank(1), INDEX_DEPTH])
def lower_gather_nd(ctx, node):
    """GatherND(data, indices, batch_dims) -> IGatherLayer in ND mode (batch dims elementwise)."""
    data = ctx.tensor(node.inputs[0])
    batch_dims = node.attributes.get_int("batch_dims", 0)
    depth = node.inputs[1].shape.dims[-1]
    indices = _indices(ctx, node, 1, lambda: _nd_dims(ctx, data, batch_dims, depth))
    layer = ctx.check(ctx.network.add_gather_v2(data, indices, ctx.trt.GatherMode.ND))
    layer.num_elementwise_dims = batch_dims
    return [layer.get_output(0)]


NO_REDUCTION = attribute_in("reduction", ("none",), "none")  # IScatterLayer only overwrites


@converter(["ScatterElements", "Scatter"], constraints=[tensor_types(), known_rank(0), NO_REDUCTION])
def lower_scatter_elements(ctx, node):
    """ScatterElements / Scatter(data, indices, updates, axis) -> IScatterLayer in ELEMENT mode."""
    data = ctx.tensor(node.inputs[0])
    axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(data))
    indices = _indices(ctx, node, 1, lambda: _axis_dim(ctx, data, axis))
    layer = ctx.check(ctx.network.add_scatter(data, indices, ctx.tensor(node.inputs[2]),
                                              ctx.trt.ScatterMode.ELEMENT))
    layer.axis = axis
    return [layer.get_output(0)]


@converter("ScatterND", constraints=[tensor_types(), known_rank(0), known_rank(1), INDEX_DEPTH, NO_REDUCTION])
def lower_scatter_nd(ctx, node):
    """ScatterND(data, indices, updates) -> IScatterLayer in ND mode."""
    data = ctx.tensor(node.inputs[0])
    depth = node.inputs[1].shape.dims[-1]
    indices = _indices(ctx, node, 1, lambda: _nd_dims(ctx, data, 0, depth))
    layer = ctx.check(ctx.network.add_scatter(data, indices, ctx.tensor(node.inputs[2]), ctx.trt.ScatterMode.ND))
    return [layer.get_output(0)]


def _sequence_axis(node) -> str | None:
    if node.attributes.get_int("axis", -2) % node.inputs[0].shape.rank() == 0:
        return "axis 0 is the batch dim (write_indices index it); the sequence axis must be another"
    return None


@converter("TensorScatter", since=24, constraints=[tensor_types(), known_rank(0), known_rank(1),
                                                   attribute_in("mode", ("linear", "circular"), "linear"),
                                                   Constraint("sequence axis is not the batch dim", _sequence_axis)])
def lower_tensor_scatter(ctx, node):
    """TensorScatter(past_cache, update, write_indices, axis, mode) -> IKVCacheUpdateLayer for an in-place
    KV cache (`kv_cache_update_fits`), else IScatterLayer in ELEMENT mode along the sequence axis: update's
    position s of batch b goes to write_indices[b] + s (modulo max_sequence_length when circular), those
    indices broadcast to update's shape by a stride-0 slice."""
    if kv_cache_update_fits(node) is None:
        write_indices = ctx.cast(ctx.tensor(node.inputs[2]), ctx.trt.int32)  # the layer takes int32 only
        layer = ctx.check(ctx.network.add_kv_cache_update(ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1]),
                                                          write_indices, ctx.trt.KVCacheMode.LINEAR))
        return [layer.get_output(0)]
    past, update = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    rank = ctx.rank(past)
    axis = ctx.axis(node.attributes.get_int("axis", -2), rank)
    math = ShapeMath(ctx)
    position = iota(ctx, math.dims(update, [axis]), rank, axis)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        start = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), ctx.trt.int64), [-1] + [1] * (rank - 1))
        position = math.add(position, start)
    if node.attributes.get_string("mode", "linear") == "circular":
        length = _axis_dim(ctx, past, axis)
        position = math.sub(position, math.mul(length, math.floor_div(position, length)))
    strides = np.array([0 if d == 1 else 1 for d in position.shape], np.int64)
    indices = slice_axes(ctx, position, list(range(rank)), np.zeros(rank, np.int64), math.dims(update), strides)
    layer = ctx.check(ctx.network.add_scatter(past, indices, update, ctx.trt.ScatterMode.ELEMENT))
    layer.axis = axis
    return [layer.get_output(0)]


KV_CACHE_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def kv_cache_update_fits(node: ir.Node) -> str | None:
    """Why TensorScatter is not an in-place KV cache update for IKVCacheUpdateLayer (None: it is): a
    [B, H, Smax, D] float graph input with a static Smax, written linearly on axis 2 at given write indices
    into the graph output that aliases it (TensorRT binds both to one buffer)."""
    cache, update = node.inputs[0], node.inputs[1]
    write = node.inputs[2] if len(node.inputs) > 2 else None
    shape = cache.shape.dims if cache.shape is not None else ()
    if not cache.is_graph_input() or not node.outputs[0].is_graph_output() or write is None:
        return "not a graph input scattered into a graph output at given write indices"
    if len(shape) != 4 or node.attributes.get_int("axis", -2) % 4 != 2 or not isinstance(shape[2], int):
        return "not [batch, heads, static max_seq, head_dim] written along axis 2"
    if node.attributes.get_string("mode", "linear") != "linear" or cache.dtype not in KV_CACHE_TYPES:
        return "circular, or not a float cache"
    if update.shape is None or len(update.shape) != 4:
        return "the update is not 4-D"
    return None


NON_ZERO_ON_RTX = ("TensorRT-RTX has no NonZero implementation (its data-dependent output size needs full "
                   "TensorRT; NVIDIA/TensorRT-RTX issue 32)")


def _non_zero_builds(node, backend: str) -> str | None:
    """NonZero, and Compress with a run-time condition, need INonZeroLayer, which TensorRT-RTX lacks."""
    if backend != "tensorrt-rtx":
        return None
    condition = node.inputs[1] if node.op_type == "Compress" else None
    if condition is not None and condition.const_value is not None and not condition.is_graph_input():
        return None  # constant positions, no NonZero
    return NON_ZERO_ON_RTX


NON_ZERO = Constraint("a backend with NonZero", _non_zero_builds, on_backend=True)


def non_zero(ctx, x):
    """INonZeroLayer (int64 indices)."""
    layer = ctx.check(ctx.network.add_non_zero(x))
    layer.indices_type = ctx.trt.int64
    return layer.get_output(0)


@converter("NonZero", since=9, constraints=[tensor_types(), known_rank(0), NON_ZERO])
def lower_non_zero(ctx, node):
    """NonZero(x) -> INonZeroLayer: int64 indices, [rank, count] (a scalar as a 1-element vector
    whose one index row is then dropped)."""
    x = ctx.tensor(node.inputs[0])
    if ctx.rank(x) == 0:
        return [ctx.reshape(non_zero(ctx, ctx.reshape(x, [1])), [0, -1], zero_is_placeholder=False)]
    return [non_zero(ctx, x)]


@converter("Compress", since=9, constraints=[tensor_types(), known_rank(0), NON_ZERO])
def lower_compress(ctx, node):
    """Compress(x, condition, axis): gather along axis (x flattened without axis) at the
    positions where condition is true; constant conditions give constant positions."""
    x = ctx.tensor(node.inputs[0])
    axis_attr = node.attributes.get("axis")
    if axis_attr is None:
        x, axis = ctx.reshape(x, [-1]), 0
    else:
        axis = ctx.axis(axis_attr.value, ctx.rank(x))
    condition = ctx.const(node.inputs[1])
    if condition is not None:
        positions = np.flatnonzero(condition.reshape(-1)).astype(np.int64)
        if positions.size == 0:  # nothing kept: an empty slice (TensorRT has no empty constants)
            return [slice_axes(ctx, x, [axis], np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.int64))]
        positions = ctx.constant(positions)
    else:
        positions = ctx.reshape(non_zero(ctx, ctx.reshape(ctx.tensor(node.inputs[1]), [-1])), [-1])
    return [ctx.check(ctx.network.add_gather(x, positions, axis)).get_output(0)]
