"""Ops TensorRT's layers lack, rewritten in the IR into ops they have before lowering, so the
CPU reference proves the rewrite like any other graph: scatter reductions (below) and Resize's
tf_crop_and_resize and fractional half_pixel_symmetric (GridSample at the sample points,
`expand_linear_resize`), and its antialiasing filter (two matmuls, `expand_antialias_resize`).

ScatterElements / ScatterND with reduction add, mul, max or min (TensorRT's scatter layer only
overwrites): every update is matched against every target position with a mask, the masked
updates are reduced over the updates, and the result is combined with the data:

    ScatterND(data [P.., R..], indices [N.., k], updates [N.., R..], reduction=add)
 -> pos  = sum(wrap(indices) * strides)                      [N]   (row-major position in P)
    mask = pos[:, None] == arange(P)[None, :]                [N, P]
    out  = data + ReduceSum(Where(mask[..., None], updates[:, None, :], 0), axis 0)   [P, R]

The masked tensor has N x P x R elements, so a scatter is expanded only below MAX_ELEMENTS
(larger ones keep their "reduction not supported" reason).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import const_array
from trtc.lower.emulate import Emitter

D = ir.DataType
MAX_ELEMENTS = 1 << 24
REDUCE = {"add": ("ReduceSum", "Add"), "mul": ("ReduceProd", "Mul"), "max": ("ReduceMax", "Max"),
          "min": ("ReduceMin", "Min")}


def _neutral(reduction: str, dtype: ir.DataType) -> float | int:
    """The value a reduction ignores: 0, 1, the type's lowest or highest."""
    np_type = dtype.numpy()
    info = np.finfo(np_type) if np.issubdtype(np_type, np.floating) else np.iinfo(np_type)
    inf = np.issubdtype(np_type, np.floating)
    return {"add": 0, "mul": 1, "max": -np.inf if inf else info.min, "min": np.inf if inf else info.max}[reduction]


def _static(value: ir.Value) -> list[int] | None:
    dims = list(value.shape.dims) if value.shape is not None else None
    return dims if dims is not None and all(isinstance(d, int) for d in dims) else None


def _reduction(node: ir.Node) -> str:
    attr = node.attributes.get("reduction")
    value = "none" if attr is None else attr.value
    return value.decode() if isinstance(value, bytes) else value


def _wrapped(em: Emitter, indices: ir.Value, sizes: ir.Value) -> ir.Value:
    """ONNX's negative indices counted from the end: indices + size where indices < 0."""
    negative = em.like("Less", indices, em.const(0, indices.dtype), dtype=D.BOOL)
    return em.where(negative, em.like("Add", indices, sizes), indices)


def _masked_reduce(em: Emitter, mask: ir.Value, updates: ir.Value, reduction: str, axis: int,
                   shape: list[int]) -> ir.Value:
    """Reduce Where(mask, updates, neutral) over `axis` (shape: the broadcast shape before it)."""
    neutral = em.const(_neutral(reduction, updates.dtype), updates.dtype)
    masked = em.op("Where", [mask, updates, neutral], updates.dtype, ir.Shape(shape))
    reduced = [d for i, d in enumerate(shape) if i != axis]
    return em.op(REDUCE[reduction][0], [masked, em.const([axis], D.INT64)], updates.dtype, ir.Shape(reduced),
                 keepdims=0)


def _operands(node: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value, str, list[int], list[int]] | None:
    """(data, indices, updates, reduction, data dims, index dims) of a scatter that can be expanded."""
    data, indices, updates = node.inputs[:3]
    data_dims, index_dims = _static(data), _static(indices)
    if _reduction(node) not in REDUCE or data_dims is None or index_dims is None:
        return None
    return data, indices, updates, _reduction(node), data_dims, index_dims


def expand_scatter_nd(em: Emitter, node: ir.Node, opset: int) -> list[ir.Value] | None:
    operands = _operands(node)
    if operands is None:
        return None
    data, indices, updates, reduction, data_dims, index_dims = operands
    k = index_dims[-1]
    n, p, r = math.prod(index_dims[:-1]), math.prod(data_dims[:k]), math.prod(data_dims[k:])
    if n * p * r > MAX_ELEMENTS:
        return None
    strides = [math.prod(data_dims[j + 1:k]) for j in range(k)]
    wrapped = _wrapped(em, indices, em.const(data_dims[:k], indices.dtype))
    scaled = em.like("Mul", wrapped, em.const(strides, indices.dtype))
    pos = em.op("ReduceSum", [scaled, em.const([-1], D.INT64)], indices.dtype, ir.Shape(index_dims[:-1]), keepdims=0)
    pos = em.op("Reshape", [pos, em.const([n, 1], D.INT64)], indices.dtype, ir.Shape([n, 1]))
    mask = em.op("Equal", [pos, em.const(np.arange(p).reshape(1, p), indices.dtype)], D.BOOL, ir.Shape([n, p]))
    mask = em.op("Reshape", [mask, em.const([n, p, 1], D.INT64)], D.BOOL, ir.Shape([n, p, 1]))
    flat = em.op("Reshape", [updates, em.const([n, 1, r], D.INT64)], updates.dtype, ir.Shape([n, 1, r]))
    reduced = _masked_reduce(em, mask, flat, reduction, 0, [n, p, r])
    scattered = em.op("Reshape", [reduced, em.const(data_dims, D.INT64)], data.dtype, ir.Shape(data_dims))
    return [em.op(REDUCE[reduction][1], [data, scattered], data.dtype, ir.Shape(data_dims))]


def expand_scatter_elements(em: Emitter, node: ir.Node, opset: int) -> list[ir.Value] | None:
    operands = _operands(node)
    if operands is None:
        return None
    data, indices, updates, reduction, data_dims, index_dims = operands
    rank = len(data_dims)
    axis = node.attributes.get_int("axis", 0) % rank
    size = data_dims[axis]
    # Updates land on the same coordinates off the axis: only full-size updates there are expanded.
    if any(i != axis and index_dims[i] != data_dims[i] for i in range(rank)) or \
            math.prod(index_dims) * size > MAX_ELEMENTS:
        return None
    wrapped = _wrapped(em, indices, em.const(size, indices.dtype))
    grown = [*index_dims, 1]
    wrapped = em.op("Unsqueeze", [wrapped, em.const([rank], D.INT64)], indices.dtype, ir.Shape(grown))
    mask = em.op("Equal", [wrapped, em.const(np.arange(size), indices.dtype)], D.BOOL, ir.Shape([*index_dims, size]))
    values = em.op("Unsqueeze", [updates, em.const([rank], D.INT64)], updates.dtype, ir.Shape(grown))
    reduced = _masked_reduce(em, mask, values, reduction, axis, [*index_dims, size])  # the axis moved last
    perm = [*range(axis), rank - 1, *range(axis, rank - 1)]
    scattered = em.op("Transpose", [reduced], data.dtype, ir.Shape(data_dims), perm=perm)
    return [em.op(REDUCE[reduction][1], [data, scattered], data.dtype, ir.Shape(data_dims))]


def _sample_coordinates(mode: str, size_in: int, size_out: int, scale: float, start: float,
                        end: float) -> np.ndarray:
    """Where each output pixel of a linear Resize samples the input, in input pixels, for the two
    coordinate modes TensorRT's resize lacks (half_pixel_symmetric only where dim x scale is fractional)."""
    if mode == "tf_crop_and_resize":
        if size_out == 1:
            return np.array([0.5 * (start + end) * (size_in - 1)])
        return start * (size_in - 1) + np.arange(size_out) * (end - start) * (size_in - 1) / (size_out - 1)
    offset = size_in / 2 * (1 - size_out / (size_in * scale))  # half_pixel_symmetric
    return np.clip(offset + (np.arange(size_out) + 0.5) / scale - 0.5, 0, size_in - 1)


def _normalized(coordinates: np.ndarray, size: int) -> np.ndarray:
    """Input pixels -> GridSample's -1..1 with align_corners (a single pixel: its centre, 0)."""
    return np.zeros_like(coordinates) if size == 1 else 2 * coordinates / (size - 1) - 1


@dataclasses.dataclass
class ImageResize:
    """A Resize of an NCHW image with static shapes, batch and channels unchanged, its scales
    (when given) constant; roi and sizes are the constants, or None."""

    x: ir.Value
    dims_in: list[int]
    dims_out: list[int]
    roi: np.ndarray | None
    scales: np.ndarray | None
    sizes: np.ndarray | None
    has_sizes: bool


def _image_resize(node: ir.Node) -> ImageResize | None:
    x, out = node.inputs[0], node.outputs[0]
    inputs = [*node.inputs, None, None, None][:4]
    dims_in, dims_out = _static(x), _static(out)
    scales = const_array(inputs[2])
    if dims_in is None or dims_out is None or len(dims_in) != 4 or x.dtype not in (D.FLOAT, D.FLOAT16) \
            or dims_in[:2] != dims_out[:2] or (inputs[2] is not None and scales is None):
        return None
    return ImageResize(x, dims_in, dims_out, const_array(inputs[1]), scales, const_array(inputs[3]),
                       inputs[3] is not None)


def expand_linear_resize(em: Emitter, node: ir.Node, opset: int) -> list[ir.Value] | None:
    """Resize(linear) of H and W of an NCHW image in tf_crop_and_resize, or half_pixel_symmetric with
    a fractional dim x scale -> GridSample at the sample points (align_corners: -1..1 spans the
    first to the last pixel), with extrapolation_value where a crop point falls outside the image."""
    attrs = node.attributes
    mode = attrs.get_string("coordinate_transformation_mode", "half_pixel")
    image = _image_resize(node)
    if image is None or mode not in ("tf_crop_and_resize", "half_pixel_symmetric") \
            or attrs.get_string("mode", "nearest") != "linear" or (mode == "tf_crop_and_resize" and image.roi is None):
        return None
    x, dims_in, dims_out, roi, scales = image.x, image.dims_in, image.dims_out, image.roi, image.scales
    axes = [a % 4 for a in attrs.get_ints("axes", list(range(4)))]
    starts = dict(zip(axes, roi[:len(axes)])) if roi is not None and roi.size else {}
    ends = dict(zip(axes, roi[len(axes):])) if roi is not None and roi.size else {}
    factors = dict(zip(axes, scales)) if scales is not None and scales.size else {}
    factor = {a: float(factors.get(a, dims_out[a] / dims_in[a])) for a in range(4)}
    if any(starts.get(a, 0) != 0 or ends.get(a, 1) != 1 for a in (0, 1)):
        return None  # the roi crops batch or channels: not an image resize
    if mode == "half_pixel_symmetric" and all(float(dims_in[a] * factor[a]).is_integer() for a in (2, 3)):
        return None  # TensorRT's half-pixel resize is exact there: the converter lowers it
    ys, xs = (_sample_coordinates(mode, dims_in[a], dims_out[a], factor[a], float(starts.get(a, 0)),
                                  float(ends.get(a, 1))) for a in (2, 3))
    grid = np.stack(np.broadcast_arrays(_normalized(xs, dims_in[3])[None, :], _normalized(ys, dims_in[2])[:, None]),
                    axis=-1)
    grid = np.broadcast_to(grid, (dims_in[0], *grid.shape)).astype(x.dtype.numpy())
    sampled = em.op("GridSample", [x, em.const(grid, x.dtype)], x.dtype, ir.Shape(dims_out), align_corners=1,
                    mode="linear" if opset >= 20 else "bilinear", padding_mode="border")  # GridSample-20 renamed it
    inside = ((ys >= 0) & (ys <= dims_in[2] - 1))[:, None] & ((xs >= 0) & (xs <= dims_in[3] - 1))[None, :]
    if inside.all():
        return [sampled]
    fill = em.const(attrs.get_float("extrapolation_value", 0.0), x.dtype)
    return [em.op("Where", [em.const(inside[None, None], D.BOOL), sampled, fill], x.dtype, ir.Shape(dims_out))]


def _axis_matrix(node: ir.Node, size_in: int, size_out: int, scale: float | None, opset: int) -> np.ndarray:
    """The [size_out, size_in] matrix the Resize applies along one axis, read off ONNX's reference
    by resizing the identity (Resize is linear in its input, and separable per axis)."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    attrs = {a.name: a.value for a in node.attributes.values() if a.name not in ("axes", "keep_aspect_ratio_policy")}
    eye = np.eye(size_in, dtype=np.float32)[None, None]
    inputs, feeds = ["x", "", "scales"], {"x": eye, "scales": np.array([1, 1, scale, 1], np.float32)}
    if scale is None:
        inputs, feeds = ["x", "", "", "sizes"], {"x": eye, "sizes": np.array([1, 1, size_out, size_in], np.int64)}
    resize = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph([resize], "axis", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT if n != "sizes"
                              else onnx.TensorProto.INT64, None) for n in inputs if n],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 18))])
    return ReferenceEvaluator(model).run(None, feeds)[0][0, 0]


def expand_antialias_resize(em: Emitter, node: ir.Node, opset: int) -> list[ir.Value] | None:
    """Resize(linear or cubic, antialias=1) of H and W of an NCHW image -> A_h @ X @ A_w^T, the
    two matrices read off ONNX's reference (TensorRT's resize has no antialiasing filter)."""
    attrs = node.attributes
    image = _image_resize(node)
    if image is None or attrs.get_int("antialias", 0) != 1 \
            or attrs.get_string("mode", "nearest") not in ("linear", "cubic") \
            or attrs.get_string("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize" \
            or (image.has_sizes and image.sizes is None) or "axes" in attrs:
        return None
    x, dims_in, dims_out, scales = image.x, image.dims_in, image.dims_out, image.scales
    given = scales if scales is not None and scales.size else None
    rows, cols = (_axis_matrix(node, dims_in[a], dims_out[a], None if given is None else float(given[a]), opset)
                  for a in (2, 3))
    if rows.shape != (dims_out[2], dims_in[2]) or cols.shape != (dims_out[3], dims_in[3]):
        return None
    dtype = x.dtype.numpy()
    left = em.const(rows.astype(dtype)[None, None], x.dtype)
    right = em.const(cols.T.astype(dtype)[None, None], x.dtype)
    tall = em.op("MatMul", [left, x], x.dtype, ir.Shape([*dims_in[:2], dims_out[2], dims_in[3]]))
    return [em.op("MatMul", [tall, right], x.dtype, ir.Shape(dims_out))]


def expand_resize(em: Emitter, node: ir.Node, opset: int) -> list[ir.Value] | None:
    """The Resize forms TensorRT's resize layer lacks: antialiasing, and two coordinate modes."""
    if node.attributes.get_int("antialias", 0) == 1:
        return expand_antialias_resize(em, node, opset)
    return expand_linear_resize(em, node, opset)


EXPANSIONS = {"ScatterND": expand_scatter_nd, "ScatterElements": expand_scatter_elements,
              "Resize": expand_resize}


def expand_ops(model: ir.Model) -> int:
    """Rewrite, in place, the nodes TensorRT's layers lack but its other layers express; the count."""
    count = 0
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    for node in list(model.graph):
        expand = EXPANSIONS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if expand is None:
            continue
        em = Emitter(model.graph, node)
        outputs = expand(em, node, opset)
        if outputs is not None:
            em.commit(outputs)
            count += 1
    return count
