"""Reductions: Reduce* -> IReduceLayer (plus the elementwise steps of L1/L2/LogSum/...),
ArgMax/ArgMin and TopK -> ITopKLayer, CumSum -> ICumulativeLayer.

Also the helpers and constraints the other families of this kind (pool, norm, softmax) share.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.registry import Constraint, constant_input, converter, known_rank, tensor_types

TOPK_MAX_K = 3840  # ITopKLayer's limit


# ---------------------------------------------------------------- shared constraints


def float_input(index: int = 0) -> Constraint:
    """Input `index` is a floating-point tensor (ops built from Exp/Log/Sqrt)."""
    floats = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}

    def check(node: ir.Node) -> str | None:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and value.dtype is not None and value.dtype not in floats:
            return f"{node.op_type} of {value.dtype.name} input is not supported (floating-point only)"
        return None

    return Constraint(f"input {index} floating-point", check)


def unused_outputs(*indices: int) -> Constraint:
    """The optional outputs at `indices` are absent or unused (the converter does not produce them)."""

    def check(node: ir.Node) -> str | None:
        for index in indices:
            value = node.outputs[index] if index < len(node.outputs) else None
            if value is not None and value.name and (value.uses() or value.is_graph_output()):
                return f"output {index} ({value.name!r}) is used, and only output 0 is supported"
        return None

    return Constraint(f"outputs {indices} unused", check)


# ---------------------------------------------------------------- shared helpers


def const_like(ctx, values, like, shape=None):
    """A constant of `like`'s TensorRT type (and rank, when `shape` is None: all ones)."""
    trt = ctx.trt
    if like.dtype == trt.bfloat16:
        import ml_dtypes

        array = np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    else:
        array = np.asarray(values, dtype=trt.nptype(like.dtype))
    return ctx.constant(array.reshape(shape if shape is not None else (1,) * ctx.rank(like)))


def scalar_tensor(ctx, value: int, dtype=np.int64):
    """A 0-D constant (e.g. an axis or a depth)."""
    return ctx.constant(np.array(value, dtype))


def reduce(ctx, x, op, axes, keepdims: bool = True):
    """IReduceLayer over `axes` (already normalised); no axes is the identity."""
    if not axes:
        return x
    return ctx.check(ctx.network.add_reduce(x, op, ctx.axes_mask(axes, ctx.rank(x)), keepdims)).get_output(0)


def square(ctx, x):
    return ctx.elementwise(x, x, ctx.trt.ElementWiseOperation.PROD)


def dim_size(ctx, x, axis: int):
    """The size of `x` along `axis` as an int64 [1] tensor (a constant when static)."""
    if x.shape[axis] >= 0:
        return ctx.constant(np.array([x.shape[axis]], np.int64))
    return ctx.check(ctx.network.add_slice(ctx.shape_of(x), (axis,), (1,), (1,))).get_output(0)


def squeeze(ctx, x, axes):
    """`x` without its unit dims at `axes` (one shuffle layer, `LowerCtx.squeeze`)."""
    return ctx.squeeze(x, [ctx.axis(int(a), ctx.rank(x)) for a in axes])


def reverse(ctx, x, axis: int):
    """`x` read backwards along `axis` (a slice with stride -1)."""
    rank = ctx.rank(x)
    stride = tuple(-1 if i == axis else 1 for i in range(rank))
    if all(d >= 0 for d in x.shape):
        start = tuple(x.shape[i] - 1 if i == axis else 0 for i in range(rank))
        return ctx.check(ctx.network.add_slice(x, start, tuple(x.shape), stride)).get_output(0)
    E = ctx.trt.ElementWiseOperation
    shape = ctx.shape_of(x)
    one_hot = ctx.constant(np.eye(rank, dtype=np.int64)[axis])
    start = ctx.elementwise(ctx.elementwise(shape, one_hot, E.SUB), one_hot, E.PROD)
    layer = ctx.check(ctx.network.add_slice(x, (0,) * rank, (1,) * rank, stride))
    layer.set_input(1, start)
    layer.set_input(2, shape)
    return layer.get_output(0)


def widen(ctx, x):
    """uint8/bool as int32 (exact): TopK, reductions and slices of them only make TensorRT
    tensors of those types at the network's inputs and outputs."""
    return ctx.cast(x, ctx.trt.int32) if x.dtype in (ctx.trt.uint8, ctx.trt.bool) else x


def topk(ctx, x, op, k, axis: int):
    """ITopKLayer along `axis`: (values in x's type, int64 indices); `k` an int, or a run-time
    0-D int tensor (a shape tensor to TensorRT). 1-D inputs, which the layer refuses, get a
    leading unit dim for it."""
    dtype, x = x.dtype, widen(ctx, x)
    flat = ctx.rank(x) == 1
    if flat:
        x, axis = ctx.unsqueeze_to(x, 2), 1
    layer = ctx.check(ctx.network.add_topk(x, op, k if isinstance(k, int) else 1, 1 << axis, ctx.trt.int64))
    if not isinstance(k, int):
        layer.set_input(1, k)
    values, indices = layer.get_output(0), layer.get_output(1)
    if flat:
        values, indices = squeeze(ctx, values, [0]), squeeze(ctx, indices, [0])
    return ctx.cast(values, dtype), indices


def top_index(ctx, x, op, axis: int):
    """The int64 index of the first max/min along `axis` (TopK with k=1, keeping the axis)."""
    return topk(ctx, x, op, 1, axis)[1]


# ---------------------------------------------------------------- Reduce*


def _reduce_axes(ctx, node, rank: int) -> list[int]:
    """The axes to reduce: the constant `axes` input (opset 13/18+) or attribute (older);
    none given means all, unless noop_with_empty_axes (then none)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = [int(a) for a in np.atleast_1d(ctx.const(node.inputs[1]))]
    else:
        axes = list(node.attributes.get_ints("axes", []))
    if not axes:
        return [] if node.attributes.get_int("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({ctx.axis(a, rank) for a in axes})


REDUCE = {  # op: (ReduceOperation, before, after)
    "ReduceSum": ("SUM", None, None), "ReduceMean": ("AVG", None, None),
    "ReduceMax": ("MAX", None, None), "ReduceMin": ("MIN", None, None), "ReduceProd": ("PROD", None, None),
    "ReduceL1": ("SUM", "ABS", None), "ReduceSumSquare": ("SUM", "SQUARE", None),
    "ReduceL2": ("SUM", "SQUARE", "SQRT"), "ReduceLogSum": ("SUM", None, "LOG"),
}
FLOAT_ONLY = ("ReduceL2", "ReduceLogSum")  # Sqrt/Log of an integer sum is not defined here


def _apply(ctx, x, step):
    if step is None:
        return x
    return square(ctx, x) if step == "SQUARE" else ctx.unary(x, getattr(ctx.trt.UnaryOperation, step))


@converter([op for op in REDUCE if op not in FLOAT_ONLY],
           constraints=[tensor_types(), known_rank(), constant_input(1, "the axes")])
@converter(FLOAT_ONLY, constraints=[tensor_types(), known_rank(), constant_input(1, "the axes"), float_input()])
def lower_reduce(ctx, node):
    """Reduce{Sum,Mean,Max,Min,Prod} -> IReduceLayer; L1/L2/SumSquare/LogSum add Abs/x*x before and
    Sqrt/Log after. bool/uint8 reduce as int32 and are cast back. Empty axes with noop_with_empty_axes: only the
    elementwise steps (as the reference does)."""
    op, before, after = REDUCE[node.op_type]
    x = ctx.tensor(node.inputs[0])
    keepdims = bool(node.attributes.get_int("keepdims", 1))
    axes = _reduce_axes(ctx, node, ctx.rank(x))
    dtype, x = x.dtype, widen(ctx, x)
    out = reduce(ctx, _apply(ctx, x, before), getattr(ctx.trt.ReduceOperation, op), axes, keepdims)
    return [ctx.cast(_apply(ctx, out, after), dtype)]


@converter("ReduceLogSumExp", constraints=[tensor_types(), known_rank(), constant_input(1, "the axes"),
                                           float_input()])
def lower_reduce_log_sum_exp(ctx, node):
    """log(sum(exp(x - max))) + max, the max taken over the same axes (no overflow)."""
    E, R = ctx.trt.ElementWiseOperation, ctx.trt.ReduceOperation
    x = ctx.tensor(node.inputs[0])
    keepdims = bool(node.attributes.get_int("keepdims", 1))
    axes = _reduce_axes(ctx, node, ctx.rank(x))
    peak = reduce(ctx, x, R.MAX, axes, True)
    total = reduce(ctx, ctx.unary(ctx.elementwise(x, peak, E.SUB), ctx.trt.UnaryOperation.EXP), R.SUM, axes, True)
    out = ctx.elementwise(ctx.unary(total, ctx.trt.UnaryOperation.LOG), peak, E.SUM)
    return [out if keepdims or not axes else squeeze(ctx, out, axes)]


# ---------------------------------------------------------------- ArgMax / ArgMin / TopK


@converter(["ArgMax", "ArgMin"], constraints=[tensor_types(), known_rank()])
def lower_arg_extreme(ctx, node):
    """ArgMax/ArgMin -> TopK(k=1) indices (int64); select_last_index reads the axis backwards
    and maps the index back (size - 1 - i)."""
    x = widen(ctx, ctx.tensor(node.inputs[0]))
    axis = ctx.axis(node.attributes.get_int("axis", 0), ctx.rank(x))
    last = bool(node.attributes.get_int("select_last_index", 0))
    op = ctx.trt.TopKOperation.MAX if node.op_type == "ArgMax" else ctx.trt.TopKOperation.MIN
    source = reverse(ctx, x, axis) if last else x
    index = top_index(ctx, source, op, axis)
    if last:
        E = ctx.trt.ElementWiseOperation
        top = ctx.elementwise(dim_size(ctx, x, axis), ctx.constant(np.array([1], np.int64)), E.SUB)
        index = ctx.elementwise(top, index, E.SUB)
    if not node.attributes.get_int("keepdims", 1):
        index = squeeze(ctx, index, [axis])
    return [index]


def _k_in_range(node: ir.Node) -> str | None:
    k = node.inputs[1].const_value if not node.inputs[1].is_graph_input() else None
    if k is not None and not 1 <= int(np.atleast_1d(k.numpy())[0]) <= TOPK_MAX_K:
        return f"K={int(np.atleast_1d(k.numpy())[0])} is out of TensorRT's range 1..{TOPK_MAX_K}"
    return None


@converter("TopK", since=10, constraints=[tensor_types(), known_rank(),
                                          Constraint(f"constant K in 1..{TOPK_MAX_K}", _k_in_range)])
def lower_topk(ctx, node):
    """TopK -> ITopKLayer (MAX for largest, MIN for smallest; int64 indices). Its output is
    always sorted, which sorted=0 (order undefined) also allows. A run-time K becomes a shape
    tensor (its range given at build time; TensorRT takes K up to 3840)."""
    x = ctx.tensor(node.inputs[0])
    axis = ctx.axis(node.attributes.get_int("axis", -1), ctx.rank(x))
    k = ctx.const(node.inputs[1])
    k = int(np.atleast_1d(k)[0]) if k is not None else ctx.reshape(ctx.tensor(node.inputs[1]), [])
    op = ctx.trt.TopKOperation.MAX if node.attributes.get_int("largest", 1) else ctx.trt.TopKOperation.MIN
    return list(topk(ctx, x, op, k, axis))


# ---------------------------------------------------------------- CumSum


def axis_constant_or_input() -> Constraint:
    """A constant axis, or a graph input TensorRT can take as a shape tensor: its one value must then be
    pinned at build time (--shape-input NAME:V,V,V), as TensorRT's cumulative layer needs."""
    constant = constant_input(1, "the axis")

    def check(node: ir.Node) -> str | None:
        axis = node.inputs[1]
        return None if axis.is_graph_input() else constant.check(node)

    return Constraint("axis constant or a pinned shape-tensor input", check)


@converter("CumSum", since=11, constraints=[tensor_types(), known_rank(), axis_constant_or_input()])
def lower_cumsum(ctx, node):
    """CumSum -> ICumulativeLayer(SUM) with a 0-D axis (a constant, or a graph input pinned by its
    shape-input range); exclusive/reverse map directly."""
    x = ctx.tensor(node.inputs[0])
    data = ctx.const(node.inputs[1])
    axis = scalar_tensor(ctx, ctx.axis(int(np.atleast_1d(data)[0]), ctx.rank(x))) if data is not None \
        else ctx.reshape(ctx.tensor(node.inputs[1]), [])
    layer = ctx.check(ctx.network.add_cumulative(
        x, axis, ctx.trt.CumulativeOperation.SUM,
        bool(node.attributes.get_int("exclusive", 0)), bool(node.attributes.get_int("reverse", 0))))
    return [layer.get_output(0)]
