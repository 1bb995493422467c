"""MatMul, Gemm, Conv and ConvTranspose."""

from __future__ import annotations

import numpy as np

from trtc.lower.registry import Constraint, converter, known_rank, tensor_types


@converter("MatMul", constraints=[tensor_types(), known_rank(0), known_rank(1)])
def lower_matmul(ctx, node):
    """MatMul with numpy semantics: 1-D operands are vectors, batch dims broadcast."""
    MO = ctx.trt.MatrixOperation
    a, b = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    op_a = MO.VECTOR if ctx.rank(a) == 1 else MO.NONE
    op_b = MO.VECTOR if ctx.rank(b) == 1 else MO.NONE
    if op_a == MO.NONE and op_b == MO.NONE:
        a, b = ctx.broadcast(a, b)
    elif op_a == MO.NONE and ctx.rank(a) > 2:
        pass  # vector rhs broadcasts over a's batch dims
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
        out = ctx.elementwise(out, ctx.constant(np.array(alpha, dtype=dtype)), E.PROD)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = ctx.tensor(node.inputs[2])
        if beta != 1.0:
            c = ctx.elementwise(c, ctx.constant(np.array(beta, dtype=dtype)), E.PROD)
        out = ctx.elementwise(out, c, E.SUM)
    return [out]


def _conv_common(layer, node, spatial: int):
    attrs = node.attributes
    layer.stride_nd = tuple(attrs.get_ints("strides", [1] * spatial))
    layer.dilation_nd = tuple(attrs.get_ints("dilations", [1] * spatial))
    layer.num_groups = attrs.get_int("group", 1)
    pads = attrs.get_ints("pads", [0] * (2 * spatial))
    layer.pre_padding, layer.post_padding = tuple(pads[:spatial]), tuple(pads[spatial:])
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        P = layer.padding_mode.__class__
        layer.padding_mode = P.SAME_UPPER if auto_pad == "SAME_UPPER" else P.SAME_LOWER


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


@converter("Conv", constraints=[tensor_types(), known_rank(0), static_weight_shape()])
def lower_conv(ctx, node):
    """Conv (weights constant or computed; 1-D as TensorRT's N-D convolution)."""
    dims = _weight_dims(node)
    x = ctx.tensor(node.inputs[0])
    spatial = len(dims) - 2
    layer = ctx.check(ctx.network.add_convolution_nd(x, dims[0], dims[2:], ctx.trt.Weights(), ctx.trt.Weights()))
    layer.set_input(1, ctx.tensor(node.inputs[1]))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        layer.set_input(2, ctx.tensor(node.inputs[2]))
    _conv_common(layer, node, spatial)
    return [layer.get_output(0)]


@converter("ConvTranspose", constraints=[tensor_types(), known_rank(0), static_weight_shape()])
def lower_conv_transpose(ctx, node):
    """ConvTranspose -> deconvolution (output_padding folded into post-padding)."""
    dims = _weight_dims(node)
    spatial = len(dims) - 2
    group = node.attributes.get_int("group", 1)
    layer = ctx.check(ctx.network.add_deconvolution_nd(ctx.tensor(node.inputs[0]), dims[1] * group,
                                                       dims[2:], ctx.trt.Weights(), ctx.trt.Weights()))
    layer.set_input(1, ctx.tensor(node.inputs[1]))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        layer.set_input(2, ctx.tensor(node.inputs[2]))
    _conv_common(layer, node, spatial)
    out_pad = node.attributes.get_ints("output_padding", [0] * spatial)
    if any(out_pad):
        layer.post_padding = tuple(p - o for p, o in zip(layer.post_padding, out_pad))
    return [layer.get_output(0)]
