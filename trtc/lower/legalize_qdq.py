"""Quantized models as onnxruntime's quantizer writes them, legalized into what TensorRT runs.

`onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)` writes uint8 (or int8)
activations with a zero point chosen from the calibrated range, int8 or uint8 weights, and int32
biases, each through DequantizeLinear. TensorRT runs int8 Q/DQ whose zero point is 0 and nothing else:
an intermediate UINT8 tensor is refused ("not network-level IO"), and a zero point that is not all
zeros too ("`zero_point` whose coefficients aren't all zeros"), as building with TensorRT-RTX shows.
Three rewrites, each exact with respect to ONNX's quantized semantics:

1. **uint8 -> int8.** `QuantizeLinear(x, s, zp:u8) -> DequantizeLinear(., s', zp':u8)`, and a uint8
   constant read by DequantizeLinear, become int8 with every zero point shifted by 128 (a constant's
   data too): `saturate_u8(r + zp) - 128 = saturate_i8(r + (zp - 128))` and `(q - zp) = (q - 128) -
   (zp - 128)`, so every real value is the same. Where the shifted zero points are all 0 (symmetric
   activations, `ActivationSymmetric`), TensorRT runs the pair as its own int8 Q/DQ.
2. **Asymmetric int8 pairs -> their float arithmetic.** `DequantizeLinear(QuantizeLinear(x, s, zp),
   s', zp')` with a zero point that is not 0 becomes
       r = Round(x / s);  Mul(Max(Min(r, hi - zp), lo - zp) + 0, s)        (s' = s, zp' = zp)
       r = Round(x / s);  Mul(Max(Min(r + zp, hi), lo) - zp', s')          (otherwise)
   which is what onnxruntime computes (`nearbyint(x / s) + zp`, clamped, then `(q - zp') * s'`): r is
   an integer, so adding and subtracting the zero point is exact while |r| < 2**24, and beyond that
   both forms saturate to the same bound; `+ 0` turns the -0 of Round(-0.3) into the +0 that the
   integer round trip gives. TensorRT has no exact int8 form of these: their 256 levels are
   `(lo - zp .. hi - zp) * s`, not the `-128 .. 127` steps of a zero-point-free int8 Q/DQ, and no other
   scale reproduces every level. (Q(x - zp * s) instead would round x / s - zp, not x / s: not exact.)
   The convolution or matmul reading such a pair then runs in float on the quantized values.
3. **DequantizeLinear of a constant TensorRT cannot dequantize** (the int32 bias, whose scale is
   x_scale * w_scale; int8/uint8/16-bit weights with a non-zero zero point) -> the float constant
   `float32(q - zp) * scale`, the product onnxruntime computes at run time, so the same bits. Likewise
   a Q -> DQ pair of a float constant (the quantizer quantizes the constant operands of Add, Mul,
   HardSigmoid...) that is asymmetric, or a scalar (TensorRT's quantize layer needs rank >= 1), folds
   into the float constant onnxruntime would compute; a symmetric one of rank >= 1 stays, for
   TensorRT to quantize as int8 weights.

The result is standard ONNX, so the CPU reference checks it like any other graph (see
tests/lower/test_quantized_models.py). Pairs this cannot prove exact are left as they are (uint8 still
made int8 where the group allows, which the converters lower as arithmetic): a scale or zero point that
is not a constant, a blocked activation scale, data or scales that are not float32 (after `--fp16`, say);
a quantized value read by anything but DequantizeLinear is not touched at all.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_array, is_op, remove_if_dead
from trtc.lower.emulate import Emitter

D = ir.DataType

INT8_RANGE = (-128, 127)
SHIFT = 128  # uint8 q -> int8 q - 128, exactly
# Integer types whose constants fold exactly: every (q - zp) is an int64 and rounds once to float32.
FOLDABLE = frozenset({D.INT8, D.UINT8, D.INT16, D.UINT16, D.INT32})


class _Params:
    """A Q/DQ node's constant scale and zero point (zeros of the quantized type where omitted),
    with its axis and block size."""

    def __init__(self, node: ir.Node, scale: np.ndarray, zero: np.ndarray):
        self.node, self.scale, self.zero = node, scale, zero
        self.axis = node.attributes.get_int("axis", 1)
        self.block = node.attributes.get_int("block_size", 0)

    def spread(self, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray | None:
        """`array` (this node's scale or zero point) shaped to broadcast against data of `shape`:
        per tensor, per axis, or per block (repeated along the axis); None when that needs a
        shape that is not known."""
        if array.size == 1 and array.ndim <= 1:
            # per tensor; at the data's rank where known, so TensorRT needs no reshape to broadcast it
            return array.reshape(()) if shape is None else array.reshape((1,) * len(shape))
        if shape is None:
            return None
        axis = self.axis % len(shape)
        if self.block <= 0 and array.ndim == 1:
            return array.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        if self.block > 0 and array.ndim == len(shape) and isinstance(shape[axis], int) and shape[axis] >= 0:
            return np.take(np.repeat(array, self.block, axis=axis), np.arange(shape[axis]), axis=axis)
        return None


def _params(node: ir.Node, quantized: ir.DataType) -> _Params | None:
    """Constant scale and zero point of a Q/DQ node, or None when either is computed."""
    scale = const_array(node.inputs[1])
    zero_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero = np.zeros((), quantized.numpy()) if zero_value is None else const_array(zero_value)
    if scale is None or zero is None:
        return None
    return _Params(node, np.asarray(scale), np.asarray(zero))


class _Constants:
    """The expansions' float32 constants, one initializer per distinct value: the lowering makes one
    TensorRT constant layer per initializer, so shared scales and bounds cost one layer, not one per use."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.made: dict[tuple[tuple[int, ...], bytes], ir.Value] = {}

    def __call__(self, array: np.ndarray | float) -> ir.Value:
        data = np.array(array, np.float32)  # (ascontiguousarray would make a scalar 1-D)
        key = (data.shape, data.tobytes())  # bytes, so +0 and -0 stay apart
        if key not in self.made:
            self.made[key] = add_constant(self.graph, data, f"qdq_constant_{len(self.made)}")
        return self.made[key]


def _static_shape(value: ir.Value) -> tuple[int, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else -1 for d in value.shape.dims)


def legalize_quantized(model: ir.Model) -> dict[str, int]:
    """Rewrite uint8 Q/DQ to int8, asymmetric Q/DQ pairs to their float arithmetic and DequantizeLinear
    of constants TensorRT cannot dequantize to float constants (in place; see the module docstring).
    Returns how often each rewrite applied; a second call finds nothing to do."""
    graph = model.graph
    counts: Counter[str] = Counter()
    constants = _Constants(graph)
    for node in list(graph):
        if is_op(node, "QuantizeLinear") and node.graph is graph:
            _legalize_pair(graph, node, constants, counts)
    for node in list(graph):
        if is_op(node, "DequantizeLinear") and node.graph is graph and const_array(node.inputs[0]) is not None:
            _legalize_constant(graph, node, counts)
    return dict(counts)


# ------------------------------------------------------------------ Q -> DQ pairs


def _legalize_pair(graph: ir.Graph, q: ir.Node, constants: _Constants, counts: Counter[str]) -> None:
    """QuantizeLinear to uint8/int8 whose every reader is a DequantizeLinear (rewrites 1 and 2)."""
    y = q.outputs[0]
    dtype = y.dtype
    if dtype not in (D.UINT8, D.INT8) or y.is_graph_output():
        return
    uses = list(y.uses())
    # The quantized value itself must be invisible: only DequantizeLinear reads it, as its data.
    if not uses or not all(is_op(u.node, "DequantizeLinear") and u.idx == 0 for u in uses):
        return
    dqs = list(dict.fromkeys(u.node for u in uses))
    found = [_params(n, dtype) for n in (q, *dqs)]
    params = [p for p in found if p is not None]
    if len(params) != len(found):
        return
    old = [v for p in params for v in p.node.inputs]
    shift = SHIFT if dtype == D.UINT8 else 0
    symmetric = all(not (p.zero.astype(np.int64) - shift).any() for p in params)
    data = const_array(q.inputs[0])
    # A constant pair TensorRT cannot quantize itself (asymmetric, or a scalar: its quantize layer
    # wants rank >= 1) is a constant: fold it. Symmetric constant weights stay TensorRT's to quantize.
    if data is not None and (not symmetric or data.ndim == 0) and _fold_pair(graph, q, params, data, shift):
        counts["constant-qdq-folded"] += 1
    elif not symmetric and _expand(graph, q, params, constants):
        counts["asymmetric-qdq-to-float"] += 1
    elif shift:
        # Symmetric after the shift: TensorRT's int8 Q/DQ. Asymmetric but not expandable: int8 still
        # lowers (as arithmetic), where a uint8 intermediate tensor is refused.
        _retype_to_int8(graph, q, params)
        counts["uint8-qdq-to-int8"] += 1
    _drop_if_dead(graph, old)


def _retype_to_int8(graph: ir.Graph, q: ir.Node, params: list[_Params]) -> None:
    """Rewrite 1 on a Q -> DQ group: int8 output, zero points shifted by 128."""
    for p in params:
        shifted = (p.zero.astype(np.int16) - SHIFT).astype(np.int8)
        zero = add_constant(graph, shifted, f"{p.node.name or p.node.op_type}_zero_point_int8")
        if len(p.node.inputs) < 3:
            p.node.resize_inputs(3)
        p.node.replace_input_with(2, zero)
    q.outputs[0].type = ir.TensorType(D.INT8)
    if "output_dtype" in q.attributes:
        q.attributes["output_dtype"] = ir.AttrInt64("output_dtype", int(D.INT8))


def _float_group(params: list[_Params]) -> bool:
    """float32 data, scales, division and results: the arithmetic below is ONNX's only for these."""
    q = params[0].node
    precision = q.attributes.get_int("precision", 0)  # opset 23: the division's type, 0 = the scale's
    return (q.inputs[0].dtype == D.FLOAT and precision in (0, int(D.FLOAT))
            and all(p.node.inputs[1].dtype == D.FLOAT for p in params)
            and all(p.node.outputs[0].dtype == D.FLOAT for p in params[1:]))


def _spread_all(params: list[_Params], shape: tuple[int, ...] | None,
                shift: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each node's (scale, int8 zero point) shaped against the data, or None where one cannot be."""
    spread = []
    for p in params:
        scale, zero = p.spread(p.scale.astype(np.float32), shape), p.spread(p.zero.astype(np.int64) - shift, shape)
        if scale is None or zero is None:
            return None
        spread.append((scale, zero))
    return spread


def _fold_pair(graph: ir.Graph, q: ir.Node, params: list[_Params], data: np.ndarray, shift: int) -> bool:
    """Q -> DQ of a constant: each DQ's result as a float constant, computed as onnxruntime does
    (`nearbyint(x / s) + zp`, clamped, then `(q - zp') * s'`, all in float32; np.rint rounds half to
    even like nearbyint). False (nothing changed) for other than float32."""
    outputs = [p.node.outputs[0] for p in params[1:]]
    spread = _spread_all(params, data.shape, shift) if _float_group(params) else None
    if spread is None or any(v.is_graph_output() for v in outputs):  # an output stays a node's
        return False
    (q_scale, q_zero), (lo, hi) = spread[0], INT8_RANGE
    levels = np.clip(np.rint(data.astype(np.float32) / q_scale) + q_zero.astype(np.float32), lo, hi)
    for out, (scale, zero) in zip(outputs, spread[1:]):
        values = ((levels - zero.astype(np.float32)) * scale).astype(np.float32)
        name, out.name = out.name, None  # the constant takes over the value's name
        out.replace_all_uses_with(add_constant(graph, values, name or "qdq_folded"))
    remove_if_dead(graph, [p.node for p in params[1:]] + [q])
    return True


def _expand(graph: ir.Graph, q: ir.Node, params: list[_Params], const: _Constants) -> bool:
    """Rewrite 2: the Q -> DQ group as float arithmetic; False (nothing changed) where it cannot be
    proven exact here (non-float32 data or scales, layouts that need unknown shapes)."""
    x = q.inputs[0]
    shape = _static_shape(x)
    if not _float_group(params) or any(p.block > 0 for p in params):
        return False  # blocked activation scales: left to the converter's own arithmetic
    spread = _spread_all(params, shape, SHIFT if q.outputs[0].dtype == D.UINT8 else 0)
    if spread is None:
        return False
    (q_scale, q_zero), (lo, hi) = spread[0], INT8_RANGE
    rank = None if shape is None else len(shape)

    def bound(value: float) -> ir.Value:
        """A scalar at the data's rank (see _Params.spread)."""
        return const(np.full((1,) * rank, value, np.float32) if rank is not None else np.float32(value))

    same = [np.array_equal(scale, q_scale) and np.array_equal(zero, q_zero) for scale, zero in spread[1:]]
    # Shared by every DQ (inserted where Q was, so before all of them): r, and for the DQs with Q's own
    # scale and zero point, (clamp(r + zp) - zp) = clamp(r, lo - zp, hi - zp) with `+ 0` making -0 +0.
    em = Emitter(graph, q)
    rounded = em.like("Round", em.like("Div", x, const(q_scale)))
    if any(same):
        clamped = em.like("Max", em.like("Min", rounded, const(hi - q_zero)),
                          const(lo - q_zero))
        levels = em.like("Add", clamped, bound(0.0))
    graph.insert_before(q, em.nodes)
    for p, (scale, zero), shared in zip(params[1:], spread[1:], same):
        em = Emitter(graph, p.node)
        if shared:
            out = em.like("Mul", levels, const(scale))
        else:
            level = em.like("Add", rounded, const(q_zero))
            level = em.like("Max", em.like("Min", level, bound(hi)), bound(lo))
            out = em.like("Mul", em.like("Sub", level, const(zero)), const(scale))
        em.commit([out])
    remove_if_dead(graph, [q])
    return True


# ------------------------------------------------------------------ DequantizeLinear of a constant


def _legalize_constant(graph: ir.Graph, dq: ir.Node, counts: Counter[str]) -> None:
    """DequantizeLinear(constant): uint8 with zero point 128 -> int8 with 0 (rewrite 1); int8 with 0
    stays (TensorRT's int8 weights); any other integer data folds to a float constant (rewrite 3)."""
    data_value = dq.inputs[0]
    dtype = data_value.dtype
    if dtype not in FOLDABLE:
        return  # FP8/INT4 weights: TensorRT dequantizes them itself; other types: legalize_types' job
    params = _params(dq, dtype)
    if params is None:
        return
    zero = params.zero.astype(np.int64)
    if dtype == D.INT8 and not zero.any():
        return
    if dtype == D.UINT8 and not (zero - SHIFT).any():
        old = list(dq.inputs)
        data = (const_array(data_value).astype(np.int16) - SHIFT).astype(np.int8)
        if len(dq.inputs) < 3:
            dq.resize_inputs(3)
        dq.replace_input_with(0, add_constant(graph, data, f"{data_value.name or dq.name}_int8"))
        dq.replace_input_with(2, add_constant(graph, np.zeros(params.zero.shape, np.int8),
                                              f"{dq.name or 'dq'}_zero_point_int8"))
        _drop_if_dead(graph, old)
        counts["uint8-weight-to-int8"] += 1
        return
    out = dq.outputs[0]
    if out.dtype != D.FLOAT or dq.inputs[1].dtype != D.FLOAT or out.is_graph_output():
        return
    data = np.asarray(const_array(data_value))
    scale, zero = params.spread(params.scale.astype(np.float32), data.shape), params.spread(zero, data.shape)
    if scale is None or zero is None:
        return
    # onnxruntime: float(int32(q) - zp) * scale, in float32; the difference is exact in int64
    values = ((data.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)
    inputs = list(dq.inputs)
    name, out.name = out.name, None  # the constant takes over the value's name
    constant = add_constant(graph, values, name or f"{dq.name}_dequantized")
    out.replace_all_uses_with(constant)
    remove_if_dead(graph, [dq])
    _drop_if_dead(graph, inputs)
    counts["int32-bias-folded" if dtype == D.INT32 else "dequantized-constant-folded"] += 1


def _drop_if_dead(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    """Remove initializers among `values` that nothing reads any more."""
    for value in values:
        if (value is not None and value.is_initializer() and value.graph is graph and not value.uses()
                and not value.is_graph_output() and not value.is_graph_input() and value.name in graph.initializers):
            graph.initializers.pop(value.name)
