"""Spectral converters: window functions (Hann, Hamming, Blackman), STFT and DFT."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from trtc.lower.context import trt_dtype
from trtc.lower.ops._helpers import concat_last, pick_axis, rank_is
from trtc.lower.ops.attention import arange, given, scalar
from trtc.lower.registry import Constraint, converter, known_rank, tensor_types

# ------------------------------------------------------------------ windows

WINDOWS = {  # w[n] = sum(a_k cos(2 pi k n / D))
    "HannWindow": (0.5, -0.5), "HammingWindow": (25.0 / 46.0, -(1.0 - 25.0 / 46.0)),
    "BlackmanWindow": (0.42, -0.5, 0.08),
}


@converter(list(WINDOWS), since=17, constraints=[tensor_types()])
def lower_window(ctx, node):
    """Hann/Hamming/BlackmanWindow(size): sum_k a_k cos(2 pi k n / D), D = size (periodic) or size - 1.
    A static output length (from shape inference) keeps `size` out of shape computations."""
    E = ctx.trt.ElementWiseOperation
    out_type = trt_dtype(ctx.trt, node.outputs[0].dtype)
    periodic = node.attributes.get_int("periodic", 1)
    coefficients = WINDOWS[node.op_type]
    size = ctx.const(node.inputs[0])
    if size is not None:
        n = np.arange(int(size.reshape(())), dtype=np.float64)
        denominator = max(float(size.reshape(())) - (0 if periodic else 1), 1e-30)
        window = sum(a * np.cos(2 * math.pi * k * n / denominator) for k, a in enumerate(coefficients))
        return [ctx.constant_as(window.astype(np.float32), out_type)]
    size_t = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[0]), ctx.trt.float32), [1])
    length = node.outputs[0].shape[0] if node.outputs[0].shape is not None else None
    if isinstance(length, int):
        n = ctx.constant(np.arange(length, dtype=np.float32))
    else:
        n = ctx.cast(arange(ctx, ctx.cast(ctx.reshape(ctx.tensor(node.inputs[0]), [1]), ctx.trt.int64)),
                     ctx.trt.float32)
    denominator = size_t if periodic else ctx.elementwise(size_t, scalar(ctx, 1.0, ctx.trt.float32, 1), E.SUB)
    phase = ctx.elementwise(ctx.elementwise(n, scalar(ctx, 2 * math.pi, ctx.trt.float32, 1), E.PROD), denominator,
                            E.DIV)
    window = scalar(ctx, coefficients[0], ctx.trt.float32, 1)
    for k, a in enumerate(coefficients[1:], start=1):
        term = ctx.unary(ctx.elementwise(phase, scalar(ctx, float(k), ctx.trt.float32, 1), E.PROD),
                         ctx.trt.UnaryOperation.COS)
        window = ctx.elementwise(window, ctx.elementwise(term, scalar(ctx, a, ctx.trt.float32, 1), E.PROD), E.SUM)
    return [ctx.cast(window, out_type)]


# ------------------------------------------------------------------ STFT


def _stft_lengths(node: ir.Node) -> tuple[int | None, int | None]:
    """(frame length, frame count) when the IR fixes them: frame_length constant, else the window's
    static length, else the static signal length; frames from the output's static shape."""
    signal, out = node.inputs[0], node.outputs[0]
    length = None
    if given(node.inputs, 3) and node.inputs[3].const_value is not None and not node.inputs[3].is_graph_input():
        length = int(node.inputs[3].const_value.numpy().reshape(()))
    elif given(node.inputs, 2) and node.inputs[2].shape is not None and isinstance(node.inputs[2].shape[0], int):
        length = node.inputs[2].shape[0]
    elif not given(node.inputs, 3) and signal.shape is not None and isinstance(signal.shape[-2], int):
        length = signal.shape[-2]
    frames = out.shape[1] if out.shape is not None and isinstance(out.shape[1], int) else None
    return length, frames


def _check_stft(node: ir.Node) -> str | None:
    length, frames = _stft_lengths(node)
    if length is None:
        return "the frame length must be known while building (a constant frame_length or a static window length)"
    if frames is None:
        return "the number of frames must be static (a constant frame_step and a static signal length)"
    return None


@converter("STFT", since=17, constraints=[tensor_types(), rank_is(0, (3,), "the signal"),
                                          Constraint("static frame length and count", _check_stft)])
def lower_stft(ctx, node):
    """STFT: frames gathered at f * frame_step + k, windowed, and transformed by matmuls with the
    [L, bins] cos/sin DFT matrices (onesided keeps L // 2 + 1 bins); output [batch, frames, bins, 2]."""
    E, MO = ctx.trt.ElementWiseOperation, ctx.trt.MatrixOperation
    signal = ctx.tensor(node.inputs[0])
    length, frames = _stft_lengths(node)
    bins = length // 2 + 1 if node.attributes.get_int("onesided", 1) else length
    step = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[1]), ctx.trt.int64), [1, 1])
    starts = ctx.elementwise(ctx.constant(np.arange(frames, dtype=np.int64).reshape(-1, 1)), step, E.PROD)
    index = ctx.elementwise(starts, ctx.constant(np.arange(length, dtype=np.int64).reshape(1, -1)), E.SUM)
    framed = ctx.check(ctx.network.add_gather(signal, index, 1)).get_output(0)  # [B, F, L, C]
    if given(node.inputs, 2):
        framed = ctx.elementwise(framed, ctx.reshape(ctx.cast(ctx.tensor(node.inputs[2]), signal.dtype),
                                                     [1, 1, -1, 1]), E.PROD)
    angle = 2 * np.pi * np.outer(np.arange(length), np.arange(bins)) / length
    cos, sin = (ctx.constant_as(m.astype(np.float32)[None], signal.dtype)
                for m in (np.cos(angle), np.sin(angle)))

    def times(part, matrix):
        return ctx.check(ctx.network.add_matrix_multiply(part, MO.NONE, matrix, MO.NONE)).get_output(0)

    real = pick_axis(ctx, framed, 0, 3)
    re, im = times(real, cos), ctx.unary(times(real, sin), ctx.trt.UnaryOperation.NEG)
    if int(signal.shape[2]) == 2:  # (a + ib)(cos - i sin) = a cos + b sin + i (b cos - a sin)
        imag = pick_axis(ctx, framed, 1, 3)
        re = ctx.elementwise(re, times(imag, sin), E.SUM)
        im = ctx.elementwise(im, times(imag, cos), E.SUM)
    return [concat_last(ctx, [re, im])]


# ------------------------------------------------------------------ DFT


def _dft_axis(node: ir.Node) -> int | None:
    """The DFT axis (an attribute up to opset 19, a constant input from 20), non-negative."""
    rank = node.inputs[0].shape.rank()
    if "axis" in node.attributes:
        axis = node.attributes.get_int("axis")
    elif given(node.inputs, 2):
        value = node.inputs[2]
        if value.const_value is None or value.is_graph_input():
            return None
        axis = int(value.const_value.numpy().reshape(()))
    else:  # the default moved from 1 to -2 when the axis became an input (opset 20)
        imports = node.graph.opset_imports if node.graph is not None else {}
        opset = node.version or imports.get("", imports.get("ai.onnx", 20))
        axis = -2 if opset >= 20 else 1
    return axis % rank


def _dft_length(node: ir.Node) -> int | None:
    """dft_length: the constant input, else the axis length (2 * (n - 1) for an inverse one-sided DFT)."""
    if given(node.inputs, 1):
        value = node.inputs[1]
        if value.const_value is None or value.is_graph_input():
            return None
        return int(value.const_value.numpy().reshape(()))
    size = node.inputs[0].shape[_dft_axis(node)]
    if not isinstance(size, int):
        return None
    attrs = node.attributes
    return 2 * (size - 1) if attrs.get_int("inverse", 0) and attrs.get_int("onesided", 0) else size


def _check_dft(node: ir.Node) -> str | None:
    if _dft_axis(node) is None:
        return "the axis must be a constant"
    axis = _dft_axis(node)
    if axis == node.inputs[0].shape.rank() - 1:
        return "the last axis holds the real/imaginary parts, not a signal"
    if not isinstance(node.inputs[0].shape[axis], int) or _dft_length(node) is None:
        return "the transformed axis and dft_length must be static"
    return None


@converter("DFT", since=17, constraints=[tensor_types(), known_rank(0), Constraint("constant axis and length",
                                                                                 _check_dft)])
def lower_dft(ctx, node):
    """DFT as matmuls with cos/sin matrices along the axis: forward, inverse (1/L), one-sided forward
    (L // 2 + 1 bins) and one-sided inverse (a real signal from the Hermitian half); dft_length pads
    or truncates through the matrices' rows."""
    E, MO = ctx.trt.ElementWiseOperation, ctx.trt.MatrixOperation
    x = ctx.tensor(node.inputs[0])
    rank, axis, length = ctx.rank(x), _dft_axis(node), _dft_length(node)
    inverse, onesided = node.attributes.get_int("inverse", 0), node.attributes.get_int("onesided", 0)
    size = int(x.shape[axis])
    outputs = length if inverse or not onesided else length // 2 + 1
    rows = np.arange(size)
    angle = 2 * np.pi * np.outer(rows, np.arange(outputs)) / length
    weight = (rows < length).astype(np.float64)[:, None]
    if inverse and onesided:  # bins 1 .. ceil(L/2)-1 stand for their conjugate twins too
        twins = np.where((rows == 0) | (2 * rows == length), 1.0, 2.0) * (2 * rows <= length)
        weight = weight * twins[:, None]
    if inverse:
        weight = weight / length
    sign = -1.0 if inverse else 1.0
    perm = [d for d in range(rank - 1) if d != axis] + [axis]  # the axis last, complex parts dropped

    def matrix(values):
        data = (weight * values).astype(np.float32).reshape((1,) * (rank - 3) + values.shape)
        return ctx.constant_as(data, x.dtype)

    def times(part, values):
        moved = ctx.check(ctx.network.add_shuffle(part))
        moved.first_transpose = tuple(perm)
        return ctx.check(ctx.network.add_matrix_multiply(moved.get_output(0), MO.NONE, matrix(values),
                                                         MO.NONE)).get_output(0)

    real = pick_axis(ctx, x, 0, rank - 1)
    imag = pick_axis(ctx, x, 1, rank - 1) if int(x.shape[-1]) == 2 else None
    re = times(real, np.cos(angle))
    im = ctx.unary(times(real, sign * np.sin(angle)), ctx.trt.UnaryOperation.NEG)
    if imag is not None:
        re = ctx.elementwise(re, times(imag, sign * np.sin(angle)), E.SUM)
        im = ctx.elementwise(im, times(imag, np.cos(angle)), E.SUM)
    parts = [re] if inverse and onesided else [re, im]
    back = [perm.index(d) for d in range(rank - 1)]
    restored = []
    for part in parts:
        layer = ctx.check(ctx.network.add_shuffle(part))
        layer.first_transpose = tuple(back)
        restored.append(layer.get_output(0))
    return [concat_last(ctx, restored)]
