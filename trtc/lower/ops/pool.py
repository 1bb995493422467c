"""Pooling. MaxPool/AveragePool/LpPool -> IPoolingLayer where it fits (no dilation, 1-3 spatial
dims, 1-D pooled as 2-D); otherwise, with static spatial dims, as the max/sum of strided "tap"
slices, one per kernel offset, whose out-of-bounds reads are the padding. Global*Pool -> reductions.

With static spatial dims the output size follows ONNX exactly (ceil_mode's last window must
start inside the input or the left padding): the ceil overhang becomes explicit end padding.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import onnx_ir as ir

from trtc.lower.ops._helpers import drop_last, unit_last
from trtc.lower.ops.reduce import const_like, reduce
from trtc.lower.registry import Constraint, converter, known_rank, tensor_types

MAX_TAPS = 512  # kernel volume up to which a pool may be built from slices


@dataclasses.dataclass
class Window:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: list[int]
    end: list[int]
    auto_pad: str
    ceil_mode: bool

    @classmethod
    def of(cls, node: ir.Node, spatial: int) -> Window:
        attrs = node.attributes
        pads = list(attrs.get_ints("pads", [0] * 2 * spatial))
        return cls(list(attrs.get_ints("kernel_shape")), list(attrs.get_ints("strides", [1] * spatial)),
                   list(attrs.get_ints("dilations", [1] * spatial)), pads[:spatial], pads[spatial:],
                   attrs.get_string("auto_pad", "NOTSET"), bool(attrs.get_int("ceil_mode", 0)))

    def extent(self, i: int) -> int:
        return (self.kernel[i] - 1) * self.dilations[i] + 1

    def plan(self, sizes: list[int]) -> tuple[list[int], list[int], list[int]]:
        """(begin padding, end padding including the ceil overhang, output size) per spatial dim."""
        begin, end, out = [], [], []
        for i, size in enumerate(sizes):
            s, k = self.strides[i], self.extent(i)
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                n = -(-size // s)
                total = max(0, (n - 1) * s + k - size)
                b = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            elif self.auto_pad == "VALID":
                n, b = (size - k) // s + 1, 0
            else:
                b, span = self.begin[i], size + self.begin[i] + self.end[i] - k
                n = (-(-span // s) if self.ceil_mode else span // s) + 1
                if self.ceil_mode and (n - 1) * s >= size + b:
                    n -= 1  # the last window would start in the end padding
            begin.append(b)
            end.append(max(0, (n - 1) * s + k - size - b))
            out.append(n)
        return begin, end, out


def _spatial_sizes(value: ir.Value) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in value.shape.dims[2:]]


def _indices_wanted(node: ir.Node) -> bool:
    value = node.outputs[1] if len(node.outputs) > 1 else None
    return value is not None and bool(value.name) and bool(value.uses() or value.is_graph_output())


def _tap_reason(node: ir.Node, window: Window, sizes: list[int | None]) -> str | None:
    """Why IPoolingLayer cannot compute this pool (None: it can)."""
    if any(d != 1 for d in window.dilations):
        return "dilations"
    if not 1 <= len(sizes) <= 3:
        return f"{len(sizes)} spatial dims"
    if node.op_type == "MaxPool" and _indices_wanted(node):
        return "the Indices output"
    average = node.op_type == "AveragePool"
    include_pad = average and node.attributes.get_int("count_include_pad", 0) == 1
    static = None not in sizes
    begin, end, _ = window.plan(sizes) if static else (window.begin, window.end, None)
    if average and not include_pad and any(p >= k for p, k in zip(begin + end, window.kernel * 2)):
        return "padding as large as the kernel"  # IPoolingLayer refuses it when excluding padding
    if static and include_pad and window.auto_pad == "NOTSET" and any(e > p for e, p in zip(end, window.end)):
        return "count_include_pad with ceil_mode"  # the overhang past the pads must not count
    return None


def _pool_support(node: ir.Node) -> str | None:
    value = node.inputs[0]
    if value.shape is None or value.shape.rank() < 3:
        return f"{node.op_type} needs an input of rank >= 3 (N, C, spatial...)"
    sizes = _spatial_sizes(value)
    window = Window.of(node, len(sizes))
    declared = node.outputs[0].shape
    if None not in sizes and declared is not None and declared.rank() == len(sizes) + 2:
        out = window.plan(sizes)[2]
        if any(isinstance(d, int) and d != n for d, n in zip(declared.dims[2:], out)):
            return (f"the model gives {node.op_type} output spatial dims {list(declared.dims[2:])}, ONNX's pooling "
                    f"rule {out} (ceil_mode drops a last window that starts past the input and left padding)")
    reason = _tap_reason(node, window, sizes)
    if reason is not None:
        if None in sizes or (reason == "the Indices output" and not value.shape.is_static()):
            return f"{node.op_type} with {reason} needs static {'input' if 'Indices' in reason else 'spatial'} dims"
        if math.prod(window.kernel) > MAX_TAPS:
            return f"{node.op_type} with {reason} is built from one slice per kernel element, at most {MAX_TAPS}"
    elif None in sizes and window.ceil_mode and window.auto_pad == "NOTSET":
        if node.op_type == "LpPool" or any(e + s > window.extent(i) for i, (e, s) in
                                           enumerate(zip(window.end, window.strides))):
            return f"{node.op_type} with ceil_mode and these pads needs static spatial dims"
    return None


POOL_CONSTRAINTS = [tensor_types(), known_rank(), Constraint("pooling geometry TensorRT can build", _pool_support)]


# ---------------------------------------------------------------- IPoolingLayer


def _native(ctx, node, x, kind, window: Window, exclude_padding: bool):
    """IPoolingLayer; 1-D pools run as 2-D over a unit last dim (`unit_last`)."""
    P = ctx.trt.PaddingMode
    flat = len(window.kernel) == 1
    if flat:
        x = unit_last(ctx, x)
        window = Window(window.kernel + [1], window.strides + [1], [1, 1], window.begin + [0], window.end + [0],
                        window.auto_pad, window.ceil_mode)
    layer = ctx.check(ctx.network.add_pooling_nd(x, kind, tuple(window.kernel)))
    layer.stride_nd = tuple(window.strides)
    sizes = list(x.shape[2:])
    if all(d >= 0 for d in sizes):
        begin, end, _ = window.plan(sizes)
        layer.pre_padding, layer.post_padding = tuple(begin), tuple(end)
    elif window.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        layer.padding_mode = P.SAME_UPPER if window.auto_pad == "SAME_UPPER" else P.SAME_LOWER
    elif window.auto_pad == "NOTSET":
        layer.pre_padding, layer.post_padding = tuple(window.begin), tuple(window.end)
        layer.padding_mode = P.EXPLICIT_ROUND_UP if window.ceil_mode else P.EXPLICIT_ROUND_DOWN
    if kind == ctx.trt.PoolingType.AVERAGE:
        layer.average_count_excludes_padding = exclude_padding
    out = layer.get_output(0)
    return drop_last(ctx, out) if flat else out


# ---------------------------------------------------------------- slices ("taps")


def _taps(ctx, x, window: Window, fill: float):
    """For each kernel offset, the [N, C, *out] strided slice of x it reads in every window
    (reads outside x give `fill`)."""
    sizes = list(x.shape[2:])
    begin, _, out = window.plan(sizes)
    lead = None
    if x.shape[0] < 0 or x.shape[1] < 0:
        lead = ctx.check(ctx.network.add_slice(ctx.shape_of(x), (0,), (2,), (1,))).get_output(0)
        lead = ctx.check(ctx.network.add_concatenation([lead, ctx.constant(np.array(out, np.int64))])).get_output(0)
    fill_value = const_like(ctx, fill, x, ())
    for offset in itertools.product(*(range(k) for k in window.kernel)):
        start = (0, 0, *(o * d - b for o, d, b in zip(offset, window.dilations, begin)))
        layer = ctx.check(ctx.network.add_slice(x, start, (*x.shape[:2], *out), (1, 1, *window.strides)))
        if lead is not None:
            layer.set_input(2, lead)
        layer.mode = ctx.trt.SampleMode.FILL
        layer.set_input(4, fill_value)
        yield layer.get_output(0)


def _tap_sum(ctx, x, window: Window):
    E = ctx.trt.ElementWiseOperation
    total = None
    for tap in _taps(ctx, x, window, 0.0):
        total = tap if total is None else ctx.elementwise(total, tap, E.SUM)
    return total


def _window_counts(window: Window, sizes: list[int], include_pad: bool) -> np.ndarray:
    """[1, 1, *out]: how many of each window's taps read the input (with include_pad, also the
    padding, but never the ceil overhang)."""
    begin, end, out = window.plan(sizes)
    pad_end = window.end if window.auto_pad == "NOTSET" else end
    counts = []
    for i, size in enumerate(sizes):
        lo, hi = (-begin[i], size + pad_end[i]) if include_pad else (0, size)
        pos = np.arange(out[i])[:, None] * window.strides[i] + np.arange(window.kernel[i]) * window.dilations[i]
        pos = pos - begin[i]
        counts.append(((pos >= lo) & (pos < hi)).sum(axis=1))
    grid = counts[0]
    for count in counts[1:]:
        grid = np.multiply.outer(grid, count)
    return grid.reshape((1, 1, *out))


def _flat_indices(shape: tuple[int, ...], column_major: bool) -> np.ndarray:
    """Each element's index into the flattened input, as MaxPool's Indices output counts
    (storage_order=1: the spatial dims in column-major order)."""
    spatial = shape[2:]
    inner = np.arange(math.prod(spatial), dtype=np.int64)
    inner = inner.reshape(spatial[::-1]).transpose() if column_major else inner.reshape(spatial)
    outer = np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape[0], shape[1], *[1] * len(spatial))
    return outer * math.prod(spatial) + inner


def _tap_max(ctx, node, x, window: Window):
    """Running max over the taps; the Indices output keeps the first tap that is strictly greater."""
    E = ctx.trt.ElementWiseOperation
    taps = _taps(ctx, x, window, -np.inf)
    if not _indices_wanted(node):
        best = next(taps)
        for tap in taps:
            best = ctx.elementwise(best, tap, E.MAX)
        return [best, None]
    index_taps = _taps(ctx, ctx.constant(_flat_indices(tuple(x.shape), node.attributes.get_int("storage_order", 0)
                                                       == 1)), window, 0)
    best, best_index = next(taps), next(index_taps)
    for tap, index in zip(taps, index_taps):
        better = ctx.elementwise(tap, best, E.GREATER)
        best_index = ctx.check(ctx.network.add_select(better, index, best_index)).get_output(0)
        best = ctx.elementwise(best, tap, E.MAX)
    return [best, best_index]


# ---------------------------------------------------------------- converters


def _plain(ctx, node):
    """The input, the window, and whether the taps are needed."""
    x = ctx.tensor(node.inputs[0])
    window = Window.of(node, ctx.rank(x) - 2)
    return x, window, _tap_reason(node, window, _spatial_sizes(node.inputs[0])) is not None


@converter("MaxPool", constraints=POOL_CONSTRAINTS)
def lower_max_pool(ctx, node):
    """MaxPool; 8-bit integers pooled as float32 (exact) and cast back."""
    x, window, taps = _plain(ctx, node)
    dtype = x.dtype
    if dtype in (ctx.trt.int8, ctx.trt.uint8):
        x = ctx.cast(x, ctx.trt.float32)
    if taps:
        out, indices = _tap_max(ctx, node, x, window)
    else:
        out, indices = _native(ctx, node, x, ctx.trt.PoolingType.MAX, window, True), None
    return [ctx.cast(out, dtype), indices]


@converter("AveragePool", constraints=POOL_CONSTRAINTS)
def lower_average_pool(ctx, node):
    """AveragePool; count_include_pad counts the padding but never the ceil overhang."""
    x, window, taps = _plain(ctx, node)
    include_pad = node.attributes.get_int("count_include_pad", 0) == 1
    if not taps:
        return [_native(ctx, node, x, ctx.trt.PoolingType.AVERAGE, window, not include_pad)]
    counts = _window_counts(window, list(x.shape[2:]), include_pad)
    total = _tap_sum(ctx, x, window)
    return [ctx.elementwise(total, const_like(ctx, counts, x, counts.shape), ctx.trt.ElementWiseOperation.DIV)]


def _p_of(node) -> float:
    attr = node.attributes.get("p")
    return 2.0 if attr is None else float(attr.value)


def _power(ctx, x, p: float):
    """|x|^p (x*x for p=2)."""
    if p == 2:
        return ctx.elementwise(x, x, ctx.trt.ElementWiseOperation.PROD)
    magnitude = ctx.unary(x, ctx.trt.UnaryOperation.ABS)
    if p == 1:
        return magnitude
    return ctx.elementwise(magnitude, const_like(ctx, p, x), ctx.trt.ElementWiseOperation.POW)


def _root(ctx, x, p: float):
    if p == 1:
        return x
    if p == 2:
        return ctx.unary(x, ctx.trt.UnaryOperation.SQRT)
    return ctx.elementwise(x, const_like(ctx, 1.0 / p, x), ctx.trt.ElementWiseOperation.POW)


@converter("LpPool", constraints=POOL_CONSTRAINTS)
def lower_lp_pool(ctx, node):
    """(sum over the window of |x|^p)^(1/p): the sum is an average pool counting the padding
    (zeros) times the kernel volume, or the sum of the taps."""
    x, window, taps = _plain(ctx, node)
    p = _p_of(node)
    powered = _power(ctx, x, p)
    if taps:
        return [_root(ctx, _tap_sum(ctx, powered, window), p)]
    mean = _native(ctx, node, powered, ctx.trt.PoolingType.AVERAGE, window, False)
    volume = const_like(ctx, math.prod(window.kernel), mean)
    return [_root(ctx, ctx.elementwise(mean, volume, ctx.trt.ElementWiseOperation.PROD), p)]


def _rank3(node: ir.Node) -> str | None:
    shape = node.inputs[0].shape
    if shape is not None and shape.rank() < 3:
        return f"{node.op_type} needs an input of rank >= 3 (N, C, spatial...)"
    return None


@converter(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"],
           constraints=[tensor_types(), known_rank(), Constraint("rank >= 3", _rank3)])
def lower_global_pool(ctx, node):
    """Reductions over the spatial axes (kept as size-1 dims); GlobalLpPool = (sum |x|^p)^(1/p)."""
    R = ctx.trt.ReduceOperation
    x = ctx.tensor(node.inputs[0])
    axes = list(range(2, ctx.rank(x)))
    if node.op_type == "GlobalLpPool":
        p = _p_of(node)
        return [_root(ctx, reduce(ctx, _power(ctx, x, p), R.SUM, axes), p)]
    return [reduce(ctx, x, R.AVG if node.op_type == "GlobalAveragePool" else R.MAX, axes)]
