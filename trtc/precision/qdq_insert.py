"""Insert the Q/DQ a placement asks for, with the calibrated scales.

Before (placement: Conv quantized, x calibrated to amax a, weight W [Cout, ...]):
    y = Conv(x, W, b)
After (int8; fp8 alike with 448 for 127 and FLOAT8E4M3FN values):
    xq = QuantizeLinear(x, a/127, 0:int8)        one pair per tensor, shared by all its quantized readers
    xd = DequantizeLinear(xq, a/127, 0:int8)
    wd = DequantizeLinear(Wq:int8 [Cout, ...], s [Cout], axis=0)    Wq = round(W / s), s = max|W[c]| / 127
    y = Conv(xd, wd, b)
int4 weights: Wq:int4 = clip(round(W / s), -8, 7), s = max|W[c]| / 7 (weight-only: no activation pair).
Weights are quantized here, once (a DequantizeLinear of constant integers, as TensorRT takes them);
the bias stays float. A scale is never 0: an all-zero channel or tensor gets a tiny positive one.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_dtypes
import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, require_opset
from trtc.precision.calibrate import FP8_MAX, INT8_MAX
from trtc.precision.qdq_placement import Placement, QTensor

TINY = 1e-12
FORMATS = {  # format -> (ONNX type, largest magnitude, numpy type of its values, opset it needs)
    "int8": (ir.DataType.INT8, INT8_MAX, np.int8, 13),
    "fp8": (ir.DataType.FLOAT8E4M3FN, FP8_MAX, ml_dtypes.float8_e4m3fn, 19),
    "int4": (ir.DataType.INT4, 7.0, ml_dtypes.int4, 21),
}


def quantize_weight(data: np.ndarray, axis: int | None, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(quantized values, float32 scale [C] or scalar) of a float weight, symmetric."""
    _, top, np_type, _ = FORMATS[fmt]
    data = data.astype(np.float32)
    if axis is None:
        amax = np.array(np.abs(data).max(initial=0.0), np.float32)
        shaped = amax
    else:
        others = tuple(i for i in range(data.ndim) if i != axis)
        amax = np.abs(data).max(axis=others, initial=0.0).astype(np.float32)
        shaped = amax.reshape([-1 if i == axis else 1 for i in range(data.ndim)])
    if fmt == "int4":  # 16 levels: clipping the largest weights pays (the least squared error per channel)
        shaped = shaped * _int4_clip_ratio(data, axis)
        amax = shaped.reshape(amax.shape)
    scale = np.maximum(amax, TINY) / np.float32(top)
    shaped_scale = np.maximum(shaped, TINY) / np.float32(top)
    scaled = data / shaped_scale
    if fmt == "fp8":
        values = np.clip(scaled, -top, top).astype(np_type)
    else:
        values = np.clip(np.round(scaled), -top - (1 if fmt == "int4" else 0), top).astype(np_type)
    return values, scale.astype(np.float32)


def _int4_clip_ratio(data: np.ndarray, axis: int | None) -> np.ndarray:
    """Per channel (along `axis`; one for None), the fraction of max |w| among 0.5..1 whose int4
    grid gives the least squared error, shaped to broadcast against `data`."""
    rows = data.reshape(1, -1) if axis is None else np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)
    peak = np.maximum(np.abs(rows).max(axis=1, keepdims=True), TINY)
    ratios = np.linspace(0.5, 1.0, 26, dtype=np.float32)
    errors = []
    for r in ratios:
        step = peak * r / 7
        errors.append(((rows - np.clip(np.round(rows / step), -8, 7) * step) ** 2).sum(axis=1))
    best = ratios[np.argmin(np.stack(errors), axis=0)]
    return best.reshape(()) if axis is None else best.reshape([-1 if i == axis else 1 for i in range(data.ndim)])


def _dq_node(name: str, q: ir.Value, scale: ir.Value, zero: ir.Value | None, axis: int | None,
             like: ir.Value) -> ir.Node:
    attrs = {"axis": axis} if axis is not None else {}
    node = ir.node("DequantizeLinear", [q, scale] + ([zero] if zero is not None else []), attrs, name=name)
    node.outputs[0].name = name
    node.outputs[0].type, node.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), like.shape
    return node


def _insert_weight(graph: ir.Graph, t: QTensor, fmt: str) -> ir.Value:
    values, scale = quantize_weight(t.value.const_value.numpy(), t.axis, fmt)
    tag = fmt if t.axis is None else f"{fmt}_axis{t.axis}"
    q = add_constant(graph, ir.tensor(values), f"{t.value.name}__{tag}")
    s = add_constant(graph, scale, f"{t.value.name}__{tag}_scale")
    node = _dq_node(f"{t.value.name}__{tag}_dq", q, s, None, t.axis, t.value)
    graph.insert_before(next(iter(graph)), node)
    return node.outputs[0]


def _insert_activation(graph: ir.Graph, t: QTensor, amax: float, fmt: str) -> ir.Value:
    onnx_type, top, np_type, _ = FORMATS[fmt]
    x = t.value
    scale = add_constant(graph, np.array(max(amax, TINY) / top, np.float32), f"{x.name}__{fmt}_scale")
    zero = add_constant(graph, ir.tensor(np.zeros((), np_type)), f"{x.name}__{fmt}_zero")
    quant = ir.node("QuantizeLinear", [x, scale, zero], name=f"{x.name}__{fmt}_q")
    quant.outputs[0].name = f"{x.name}__{fmt}_q"
    quant.outputs[0].type, quant.outputs[0].shape = ir.TensorType(onnx_type), x.shape
    dq = _dq_node(f"{x.name}__{fmt}_dq", quant.outputs[0], scale, zero, None, x)
    producer = x.producer()
    if producer is not None:
        graph.insert_after(producer, [quant, dq])
    else:
        graph.insert_before(next(iter(graph)), [quant, dq])
    return dq.outputs[0]


def insert_qdq(model: ir.Model, placement: Placement, amax: Mapping[str, float], fmt: str) -> dict[str, int]:
    """Rewrite `model` in place: every tensor of `placement` read through its Q/DQ in `fmt` ('int8',
    'fp8', or 'int4' for weights only), activations at `amax[name]`. Returns counts."""
    require_opset(model, FORMATS[fmt][3])
    graph = model.graph
    counts = {"activations": 0, "weights": 0}
    for t in placement.tensors.values():
        if t.is_weight:
            new = _insert_weight(graph, t, fmt)
            counts["weights"] += 1
        else:
            new = _insert_activation(graph, t, amax[t.value.name], fmt)
            counts["activations"] += 1
        for node, index in t.readers:
            node.replace_input_with(index, new)
    return counts
