"""MatMul, Gemm, Conv and ConvTranspose."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trtc.lower.ops._helpers import drop_last, unit_last
from trtc.lower.ops._shape_math import ShapeMath
from trtc.lower.ops.slice import slice_axes
from trtc.lower.registry import Constraint, converter, known_rank, tensor_types


@converter("MatMul", constraints=[tensor_types(), known_rank(0), known_rank(1)])
def lower_matmul(ctx, node):
    """MatMul with numpy semantics: a 1-D operand is a vector (TensorRT's VECTOR operation, given
    the other operand's batch dims as leading unit dims), batch dims broadcast."""
    MO = ctx.trt.MatrixOperation
    rank_a, rank_b = (node.inputs[i].shape.rank() for i in (0, 1))
    op_a = MO.VECTOR if rank_a == 1 else MO.NONE
    op_b = MO.VECTOR if rank_b == 1 else MO.NONE
    # A constant operand (a weight) is made at the rank it is multiplied at: no unsqueeze layer after it.
    if op_a == MO.NONE and op_b == MO.NONE:
        a, b = ctx.operands(node.inputs[:2])
    elif op_a == MO.VECTOR and op_b == MO.NONE:
        a, b = ctx.operand(node.inputs[0], rank_b - 1), ctx.tensor(node.inputs[1])
    elif op_b == MO.VECTOR and op_a == MO.NONE:
        a, b = ctx.tensor(node.inputs[0]), ctx.operand(node.inputs[1], rank_a - 1)
    else:
        a, b = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    return [ctx.check(ctx.network.add_matrix_multiply(a, op_a, b, op_b)).get_output(0)]


@converter("Gemm", constraints=[tensor_types(), known_rank(0), known_rank(1)])
def lower_gemm(ctx, node):
    """alpha * op(A) @ op(B) + beta * C."""
    MO, E = ctx.trt.MatrixOperation, ctx.trt.ElementWiseOperation
    a, b = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    op_a = MO.TRANSPOSE if node.attributes.get_int("transA", 0) else MO.NONE
    op_b = MO.TRANSPOSE if node.attributes.get_int("transB", 0) else MO.NONE
    out = ctx.check(ctx.network.add_matrix_multiply(a, op_a, b, op_b)).get_output(0)
    dtype = node.outputs[0].dtype.numpy()
    alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
    if alpha != 1.0:
        out = ctx.elementwise(out, ctx.constant(np.array(alpha, dtype=dtype).reshape(1, 1)), E.PROD)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = ctx.const(node.inputs[2])
        if bias is not None and beta != 1.0:
            # beta * C folded into the bias constant (in C's type, as the product would be computed).
            c = ctx.constant(np.asarray(bias * np.array(beta, bias.dtype), bias.dtype).reshape((1,) * (2 - bias.ndim)
                                                                                               + bias.shape))
        else:
            c = ctx.operand(node.inputs[2], 2)  # a bias constant is made [1, N]: no unsqueeze layer
            if beta != 1.0:
                c = ctx.elementwise(c, ctx.constant(np.array(beta, dtype=dtype).reshape(1, 1)), E.PROD)
        out = ctx.elementwise(out, c, E.SUM)
    return [out]


def _window(layer, node, spatial: int, unit: int = 0):
    """Strides, dilations and groups of a (de)convolution layer, with `unit` unit dims appended."""
    attrs = node.attributes
    layer.stride_nd = (*attrs.get_ints("strides", [1] * spatial), *[1] * unit)
    layer.dilation_nd = (*attrs.get_ints("dilations", [1] * spatial), *[1] * unit)
    layer.num_groups = attrs.get_int("group", 1)


def _conv_common(layer, node, spatial: int, unit: int):
    _window(layer, node, spatial, unit)
    attrs = node.attributes
    pads = attrs.get_ints("pads", [0] * (2 * spatial))
    layer.pre_padding = (*pads[:spatial], *[0] * unit)
    layer.post_padding = (*pads[spatial:], *[0] * unit)
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        P = layer.padding_mode.__class__
        layer.padding_mode = P.SAME_UPPER if auto_pad == "SAME_UPPER" else P.SAME_LOWER


def _spatial_rank(node) -> str | None:
    """TensorRT convolves 1 (as 2, see `unit_last`), 2 or 3 spatial dims."""
    w = node.inputs[1]
    if w.shape is not None and not 3 <= w.shape.rank() <= 5:
        return f"{node.op_type} over {w.shape.rank() - 2} spatial dims (TensorRT convolves 1 to 3)"
    return None


def static_weight_shape() -> Constraint:
    """The weight's shape must be static (its values may come at run time)."""

    def check(node) -> str | None:
        w = node.inputs[1]
        if w.shape is None or not all(isinstance(d, int) for d in w.shape.dims):
            return f"the weight {w.name!r} needs a static shape (kernel size and channels)"
        return None

    return Constraint("static weight shape", check)


def _weight_dims(node) -> tuple[int, ...]:
    return tuple(node.inputs[1].shape.dims)


CONV_CONSTRAINTS = [tensor_types(), known_rank(0), static_weight_shape(),
                    Constraint("1 to 3 spatial dims", _spatial_rank)]


@converter("Conv", constraints=CONV_CONSTRAINTS)
def lower_conv(ctx, node):
    """Conv (weights constant or computed); 1-D as 2-D over a unit last dim (`unit_last`)."""
    dims = _weight_dims(node)
    x = ctx.tensor(node.inputs[0])
    spatial, kernel = len(dims) - 2, list(dims[2:])
    if spatial == 1:
        x, kernel = unit_last(ctx, x), [*kernel, 1]
    kernel_weights, w = _kernel(ctx, node.inputs[1], spatial == 1)
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    bias_weights = ctx.weights(bias) if bias is not None and ctx.const(bias) is not None else ctx.trt.Weights()
    layer = ctx.check(ctx.network.add_convolution_nd(x, dims[0], kernel, kernel_weights, bias_weights))
    if w is not None:
        layer.set_input(1, w)
    if bias is not None and ctx.const(bias) is None:
        layer.set_input(2, ctx.tensor(bias))
    _conv_common(layer, node, spatial, len(kernel) - spatial)
    y = layer.get_output(0)
    return [drop_last(ctx, y) if spatial == 1 else y]


def _kernel(ctx, value, unit: bool):
    """(trt.Weights, None) for a constant kernel, which the layer holds itself as TensorRT's ONNX parser
    gives it (no constant layer); (empty Weights, the kernel tensor) for one computed at run time. `unit`:
    with a unit last dim appended (1-D as 2-D, `unit_last`)."""
    data = ctx.const(value)
    if data is not None:
        return ctx.weights(value, data[..., None] if unit else data), None
    w = ctx.tensor(value)
    return ctx.trt.Weights(), unit_last(ctx, w) if unit else w


def deconv_crops(node, input_dims: Sequence[int | None]) -> tuple[list[int], list[int]]:
    """How much ConvTranspose removes at the begin and end of each spatial dim of the full
    transposed convolution (size s*(in-1) + (k-1)*d + 1); negative = extended there. ONNX's pads,
    less output_padding at the end; with output_shape or auto_pad SAME the pads come from the
    total padding (s*(in-1) + output_padding + (k-1)*d + 1 - output_shape, output_shape = in*s for
    SAME, whose total does not depend on `in`), the odd one at the end for SAME_UPPER."""
    attrs = node.attributes
    kernel = _weight_dims(node)[2:]
    spatial = len(kernel)
    strides = attrs.get_ints("strides", [1] * spatial)
    dilations = attrs.get_ints("dilations", [1] * spatial)
    out_pad = attrs.get_ints("output_padding", [0] * spatial)
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    output_shape = attrs.get_ints("output_shape", None)
    if output_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        pads = attrs.get_ints("pads", [0] * (2 * spatial))
        return list(pads[:spatial]), [p - o for p, o in zip(pads[spatial:], out_pad)]
    begin, end = [], []
    for i in range(spatial):
        full = out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
        total = full - strides[i] if output_shape is None else \
            strides[i] * (input_dims[i] - 1) + full - output_shape[-spatial + i]
        small, large = total // 2, total - total // 2
        first, last = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begin.append(first)
        end.append(last - out_pad[i])
    return begin, end


def _static_size_for_output_shape(node) -> str | None:
    if "output_shape" not in node.attributes:
        return None
    x = node.inputs[0]
    if x.shape is None or not all(isinstance(d, int) for d in x.shape.dims[2:]):
        return f"output_shape needs static spatial dims of {x.name!r} (the padding depends on them)"
    return None


def _deconv_builds(node, backend: str) -> str | None:
    attrs = node.attributes
    strided, dilated = max(attrs.get_ints("strides", [1])) > 1, max(attrs.get_ints("dilations", [1])) > 1
    if backend == "tensorrt-rtx" and strided and dilated:
        return "TensorRT-RTX cannot build a deconvolution that is both strided and dilated"
    return None


@converter("ConvTranspose", constraints=[
    *CONV_CONSTRAINTS, Constraint("output_shape with static spatial dims", _static_size_for_output_shape),
    Constraint("strided or dilated on TensorRT-RTX", _deconv_builds, on_backend=True)])
def lower_conv_transpose(ctx, node):
    """ConvTranspose -> deconvolution cropping the positive parts of `deconv_crops`; where they are
    negative (output_padding, a larger output_shape) the result is extended with zeros by a FILL
    slice and the bias added after, as ONNX gives those cells the bias only. 1-D is built as 2-D
    over a unit last dim (`unit_last`)."""
    dims = _weight_dims(node)
    spatial = len(dims) - 2
    attrs = node.attributes
    x = ctx.tensor(node.inputs[0])
    begin, end = deconv_crops(node, [d if isinstance(d, int) else None for d in node.inputs[0].shape.dims[2:]])
    kernel = list(dims[2:])
    if spatial == 1:
        x, kernel, begin, end = unit_last(ctx, x), [*kernel, 1], [*begin, 0], [*end, 0]
    kernel_weights, w = _kernel(ctx, node.inputs[1], spatial == 1)
    before, after = [max(-b, 0) for b in begin], [max(-e, 0) for e in end]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    fused_bias = bias is not None and not any(before + after)  # extended cells get the bias after
    bias_weights = ctx.weights(bias) if fused_bias and ctx.const(bias) is not None else ctx.trt.Weights()
    layer = ctx.check(ctx.network.add_deconvolution_nd(x, dims[1] * attrs.get_int("group", 1), kernel,
                                                       kernel_weights, bias_weights))
    if w is not None:
        layer.set_input(1, w)
    _window(layer, node, spatial, len(kernel) - spatial)
    layer.pre_padding = tuple(max(b, 0) for b in begin)
    layer.post_padding = tuple(max(e, 0) for e in end)
    if fused_bias and ctx.const(bias) is None:
        layer.set_input(2, ctx.tensor(bias))
    y = layer.get_output(0)
    if any(before + after):
        y = _extend(ctx, y, before, after, bias)
    return [drop_last(ctx, y) if spatial == 1 else y]


def _extend(ctx, y, before: list[int], after: list[int], bias):
    """`y` [N, C, *spatial] with zeros added before/after each spatial dim, then the bias per channel."""
    math = ShapeMath(ctx)
    axes = np.arange(2, 2 + len(before), dtype=np.int64)
    size = math.add(math.dims(y, axes), np.array(before, np.int64) + np.array(after, np.int64))
    y = slice_axes(ctx, y, axes, -np.array(before, np.int64), size, np.ones(len(before), np.int64),
                   mode=ctx.trt.SampleMode.FILL)
    if bias is None:
        return y
    data = ctx.const(bias)
    shape = [1, -1] + [1] * len(before)
    per_channel = ctx.constant(data.reshape(shape)) if data is not None else ctx.reshape(ctx.tensor(bias), shape)
    return ctx.elementwise(y, per_channel, ctx.trt.ElementWiseOperation.SUM)
