"""MatMul, ConvTranspose, elementwise and TensorScatter converters: each variant builds with TensorRT-RTX (the
lowering checks every output's dtype and shape against the IR); ConvTranspose's crop/extend plan
is checked against the ONNX reference evaluator in numpy (numerics of the engine need a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from trtc.errors import TrtcError  # noqa: E402
from trtc.lower.ops.linear import deconv_crops  # noqa: E402

from lowerutil import build, issues, one_node, parse  # noqa: E402

F = np.float32

# ------------------------------------------------------------------ MatMul


@pytest.mark.parametrize(("a", "b", "y"), [([4], [2, 4, 3], [2, 3]), ([2, 3, 4, 5], [5], [2, 3, 4]),
                                           ([4], [4], []), ([3, 4], [4], [3]), ([4], [4, 3], [3])])
def test_matmul_with_a_vector_builds(tmp_path, a, b, y):
    """A 1-D operand is a vector that broadcasts over the other operand's batch dims."""
    build(one_node("MatMul", [("a", F, a), ("b", F, b)], [("y", F, y)]), tmp_path)


# ------------------------------------------------------------------ ConvTranspose

CONV_TRANSPOSE = {
    "output_padding": {"strides": [3, 2], "output_padding": [1, 1]},
    "output_shape": {"strides": [3, 2], "output_shape": [10, 8]},
    "output_shape_and_padding": {"strides": [3, 2], "output_shape": [10, 8], "output_padding": [1, 1],
                                 "kernel_shape": [3, 3]},
    "pads_and_output_padding": {"strides": [2, 2], "pads": [1, 0, 1, 2], "output_padding": [1, 1]},
    "same_upper": {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    "same_lower": {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
    "same_lower_dilated": {"auto_pad": "SAME_LOWER", "dilations": [1, 2]},
    "dilations": {"dilations": [2, 2], "pads": [1, 1, 0, 0]},
}


def _conv_transpose(attrs: dict, spatial: int = 2):
    shape = [1, 1, 3, 3][:2 + spatial]
    y = [1, 2] + [None] * spatial
    return one_node("ConvTranspose", [("x", F, shape), ("w", F, [1, 2, 3, 3][:2 + spatial]), ("b", F, [2])],
                    [("y", F, y)], attrs)


def _emulate(attrs: dict, node, x, w, b):
    """What the converter builds: the full transposed convolution, cropped where deconv_crops is
    positive and extended with zeros where it is negative, then the bias."""
    plain = {k: v for k, v in attrs.items() if k in ("strides", "dilations")}
    full = ReferenceEvaluator(helper.make_model(helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], **plain)], "g",
        [helper.make_tensor_value_info(n, 1, None) for n in "xw"], [helper.make_tensor_value_info("y", 1, None)]),
        opset_imports=[helper.make_opsetid("", 18)])).run(None, {"x": x, "w": w})[0]
    begin, end = deconv_crops(node, x.shape[2:])
    out = np.pad(full, [(0, 0), (0, 0)] + [(max(-s, 0), max(-e, 0)) for s, e in zip(begin, end)])
    out = out[(slice(None), slice(None), *(slice(max(s, 0), out.shape[2 + i] - max(e, 0))
                                         for i, (s, e) in enumerate(zip(begin, end))))]
    return out + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE))
def test_conv_transpose_crops_match_the_reference(tmp_path, case):
    attrs = CONV_TRANSPOSE[case]
    proto = _conv_transpose(attrs)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((1, 1, 3, 3), F), rng.standard_normal((1, 2, 3, 3), F), rng.standard_normal(2, F)
    want = ReferenceEvaluator(proto).run(None, {"x": x, "w": w, "b": b})[0]
    node = next(iter(parse(proto, tmp_path).model.graph))
    np.testing.assert_allclose(_emulate(attrs, node, x, w, b), want, rtol=1e-5, atol=1e-5)
    build(proto, tmp_path)


def test_conv_transpose_extension_with_run_time_batch(tmp_path):
    proto = one_node("ConvTranspose", [("x", F, ["n", 1, 3, 3]), ("w", F, [1, 2, 3, 3]), ("b", F, [2])],
                     [("y", F, ["n", 2, 10, 8])], {"strides": [3, 2], "output_padding": [1, 1]})
    build(proto, tmp_path, {"x": ((1, 1, 3, 3), (2, 1, 3, 3), (4, 1, 3, 3))})


def test_conv_transpose_strided_and_dilated_is_refused_on_rtx(tmp_path):
    with pytest.raises(TrtcError, match="TensorRT-RTX cannot build a deconvolution that is both strided and dilated"):
        build(_conv_transpose({"strides": [2, 1], "dilations": [1, 2]}), tmp_path)


def test_conv_transpose_1d_builds_as_2d(tmp_path):
    build(_conv_transpose({"strides": [2], "output_padding": [1]}, spatial=1), tmp_path)
    build(_conv_transpose({}, spatial=1), tmp_path)


# ------------------------------------------------------------------ elementwise on UINT8 constants


@pytest.mark.parametrize("op", ["Max", "Min", "Mod", "Add"])
def test_uint8_constant_operands_build(tmp_path, op):
    """A UINT8 constant is made in int32 directly: TensorRT refuses UINT8 tensors inside the network."""
    inits = {"a": np.array([3, 2, 1], np.uint8), "b": np.array([1, 4, 4], np.uint8)}
    build(one_node(op, [("a", np.uint8, [3]), ("b", np.uint8, [3])], [("y", np.uint8, [3])], inits=inits),
          tmp_path)


# ------------------------------------------------------------------ TensorScatter


def _tensor_scatter(past, update, mode="linear", indices=True, axis=-2):
    inputs = [("past", F, past), ("update", F, update)] + ([("w", np.int64, [past[0]])] if indices else [])
    return one_node("TensorScatter", inputs, [("y", F, past)], {"mode": mode, "axis": axis}, opset=24)


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter_builds(tmp_path, mode):
    build(_tensor_scatter([2, 1, 4, 5], [2, 1, 2, 5], mode), tmp_path)
    build(_tensor_scatter([3, 4, 5], [3, 2, 5], mode, indices=False, axis=1), tmp_path)


def test_tensor_scatter_with_run_time_dims(tmp_path):
    """Batch and sequence length known only at run time: the positions come from a fill layer."""
    profile = {"past": ((1, 2, 8, 4), (2, 2, 8, 4), (4, 2, 8, 4)), "update": ((1, 2, 1, 4), (2, 2, 3, 4), (4, 2, 8, 4)),
               "w": ((1,), (2,), (4,))}
    build(_tensor_scatter(["b", 2, 8, 4], ["b", 2, "s", 4], "circular"), tmp_path, profile)


def test_tensor_scatter_on_the_batch_axis_is_refused(tmp_path):
    """ONNX's inference refuses it at parse (the converter's constraint is for IR built otherwise)."""
    with pytest.raises(TrtcError, match=r"\(TensorScatter\): \[ShapeInferenceError\] axis 0 is out of range"):
        issues(_tensor_scatter([2, 4], [2, 4], axis=0), tmp_path)
