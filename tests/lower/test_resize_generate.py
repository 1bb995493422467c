"""Resize, generator ops (ConstantOfShape, Range, EyeLike, Trilu, OneHot, Size), rearrangements,
integer arithmetic, Einsum and the small pointwise ops: each builds with TensorRT-RTX (dtype/shape
agreement with the IR checked inside), static cases fold to ONNX's shapes, dynamic ones build
with a profile, and unsupported variants report their reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).parent))
from lowerutil import build, issues, model, one_node, output_shapes, vi  # noqa: E402

F, H, I32, I64, U8, B = np.float32, np.float16, np.int32, np.int64, np.uint8, np.bool_
IMAGE = {"x": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}


# ------------------------------------------------------------------ Resize


@pytest.mark.parametrize("attrs", [
    {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"},
    {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
])
def test_resize_constant_scales(tmp_path, attrs):
    proto = one_node("Resize", [("x", F, ["n", 3, 8, 8]), ("", F, []), ("s", F, [4])], [("y", F, ["n", 3, 16, 12])],
                     attrs, inits={"s": np.array([1, 1, 2, 1.5], F)})
    build(proto, tmp_path, IMAGE)


def test_resize_sizes_with_axes_and_policy(tmp_path):
    proto = one_node("Resize", [("x", F, [1, 3, 4, 8]), ("", F, []), ("", F, []), ("sz", I64, [2])],
                     [("y", F, [1, 3, 3, 6])], {"axes": [3, 2], "keep_aspect_ratio_policy": "not_larger"},
                     inits={"sz": np.array([6, 5], I64)})
    assert output_shapes(proto, tmp_path) == [(1, 3, 3, 6)]  # scale min(6/8, 5/4) = 0.75
    build(proto, tmp_path)


def test_resize_sizes_from_shape_arithmetic(tmp_path):
    """Upsample to twice the run-time size: sizes is a shape tensor."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Mul", ["shape", "factor"], ["sizes"], name="double"),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="resize", mode="nearest")]
    proto = model(nodes, [vi("x", F, ["n", 3, 8, 8])], [vi("y", F, None)],
                  {"factor": np.array([1, 1, 2, 2], I64)})
    build(proto, tmp_path, IMAGE)


@pytest.mark.parametrize("attrs,inputs,reason", [
    ({"antialias": 1}, {}, "antialias=1 is not supported"),
    ({"coordinate_transformation_mode": "tf_crop_and_resize"}, {}, "coordinate_transformation_mode"),
    ({"mode": "cubic"}, {"s": np.array([1, 2, 2, 2], F)}, "TensorRT resizes only the innermost 2 dims"),
    ({}, {"s": None}, "scales comes from the FLOAT graph input 's'"),
    ({"coordinate_transformation_mode": "half_pixel_symmetric"}, {"s": np.array([1, 1, 0.6, 0.6], F)},
     "half_pixel_symmetric is supported only"),
])
def test_resize_refusals(tmp_path, attrs, inputs, reason):
    scales = inputs.get("s", np.array([1, 1, 2, 2], F))
    proto = one_node("Resize", [("x", F, [1, 3, 8, 8]), ("", F, []), ("s", F, [4])], [("y", F, None)], attrs,
                     inits={"s": scales} if scales is not None else None)
    (issue,) = issues(proto, tmp_path)
    assert issue is not None and reason in issue


# ------------------------------------------------------------------ generators


def test_constant_of_shape_static_and_runtime(tmp_path):
    value = helper.make_tensor("value", 7, [1], [3])  # INT64
    static = one_node("ConstantOfShape", [("s", I64, [2])], [("y", I64, [2, 5])], {"value": value},
                      inits={"s": np.array([2, 5], I64)})
    assert output_shapes(static, tmp_path) == [(2, 5)]
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("ConstantOfShape", ["shape"], ["y"], name="fill")]
    build(model(nodes, [vi("x", F, ["n", 3, 8, 8])], [vi("y", F, ["n", 3, 8, 8])]), tmp_path, IMAGE)


@pytest.mark.parametrize("dtype", [I64, I32, F])
def test_range_from_runtime_length(tmp_path, dtype):
    """Range(0, seq_len, 1) with seq_len from the input shape (cast for the float case)."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape", start=0, end=1),
             helper.make_node("Squeeze", ["shape"], ["length64"], name="squeeze"),
             helper.make_node("Cast", ["length64"], ["length"], name="cast", to=helper.np_dtype_to_tensor_dtype(
                 np.dtype(dtype))),
             helper.make_node("Range", ["start", "length", "delta"], ["y"], name="range")]
    proto = model(nodes, [vi("x", F, ["n", 3, 8, 8])], [vi("y", dtype, ["n"])],
                  {"start": np.array(0, dtype), "delta": np.array(1, dtype)})
    build(proto, tmp_path, IMAGE)


def test_range_constant_and_float_graph_input(tmp_path):
    const = one_node("Range", [("a", F, []), ("b", F, []), ("d", F, [])], [("y", F, [4])],
                     inits={"a": np.array(1, F), "b": np.array(3, F), "d": np.array(0.5, F)})
    assert output_shapes(const, tmp_path) == [(4,)]
    dynamic = one_node("Range", [("a", F, []), ("b", F, []), ("d", F, [])], [("y", F, ["n"])])
    (issue,) = issues(dynamic, tmp_path)
    assert "FLOAT graph input 'a'" in issue


@pytest.mark.parametrize("upper,k", [(1, 0), (0, -1), (1, 2)])
def test_trilu(tmp_path, upper, k):
    proto = one_node("Trilu", [("x", F, ["n", 4, 5]), ("k", I64, [])], [("y", F, ["n", 4, 5])], {"upper": upper},
                     inits={"k": np.array(k, I64)})
    build(proto, tmp_path, {"x": ((1, 4, 5), (2, 4, 5), (3, 4, 5))})


def test_trilu_dynamic_matrix_and_eye_like(tmp_path):
    trilu = one_node("Trilu", [("x", F, ["r", "c"])], [("y", F, ["r", "c"])])
    build(trilu, tmp_path, {"x": ((1, 1), (4, 5), (8, 8))})
    eye = one_node("EyeLike", [("x", F, ["r", "c"])], [("y", I32, ["r", "c"])], {"k": 1, "dtype": 6})
    build(eye, tmp_path, {"x": ((1, 1), (4, 5), (8, 8))})


def test_one_hot(tmp_path):
    proto = one_node("OneHot", [("i", F, ["n", 3]), ("d", I64, []), ("v", F, [2])], [("y", F, ["n", 10, 3])],
                     {"axis": 1}, inits={"d": np.array(10, I64), "v": np.array([0, 1], F)})
    build(proto, tmp_path, {"i": ((1, 3), (2, 3), (4, 3))})
    float_depth = one_node("OneHot", [("i", I64, [3]), ("d", F, []), ("v", F, [2])], [("y", F, [3, "d"])],
                           inits={"v": np.array([0, 1], F)})
    assert "depth comes from the FLOAT graph input 'd'" in issues(float_depth, tmp_path)[0]


def test_size_is_a_scalar(tmp_path):
    static = one_node("Size", [("x", F, [2, 3])], [("y", I64, [])])
    assert output_shapes(static, tmp_path) == [()]
    build(one_node("Size", [("x", F, ["n", 3, 8, 8])], [("y", I64, [])]), tmp_path, IMAGE)


# ------------------------------------------------------------------ rearrangements


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_dynamic(tmp_path, mode):
    proto = one_node("DepthToSpace", [("x", F, ["n", 8, "h", 3])], [("y", F, ["n", 2, None, 6])],
                     {"blocksize": 2, "mode": mode})
    build(proto, tmp_path, {"x": ((1, 8, 2, 3), (2, 8, 4, 3), (4, 8, 8, 3))})


def test_space_to_depth_and_reverse_sequence(tmp_path):
    s2d = one_node("SpaceToDepth", [("x", F, [2, 3, 4, 6])], [("y", F, [2, 12, 2, 3])], {"blocksize": 2})
    assert output_shapes(s2d, tmp_path) == [(2, 12, 2, 3)]
    build(s2d, tmp_path)
    rev = one_node("ReverseSequence", [("x", F, [4, 3, 5]), ("l", I64, [3])], [("y", F, [4, 3, 5])],
                   {"batch_axis": 1, "time_axis": 0}, inits={"l": np.array([4, 1, 2], I64)})
    build(rev, tmp_path)


# ------------------------------------------------------------------ integer ops, einsum, pointwise


@pytest.mark.parametrize("dtype,fmod", [(I32, 0), (I64, 1), (F, 1), (U8, 0), (np.int8, 1)])
def test_mod(tmp_path, dtype, fmod):
    proto = one_node("Mod", [("a", dtype, [2, 3]), ("b", dtype, [3])], [("y", dtype, [2, 3])], {"fmod": fmod})
    build(proto, tmp_path)


@pytest.mark.parametrize("op,dtype", [("BitwiseAnd", I32), ("BitwiseOr", I64), ("BitwiseXor", U8),
                                      ("BitwiseAnd", np.int8), ("BitShift", U8), ("BitShift", I32)])
def test_bit_ops(tmp_path, op, dtype):
    attrs = {"direction": "LEFT"} if op == "BitShift" else {}
    proto = one_node(op, [("a", dtype, [2, 3]), ("b", dtype, [3])], [("y", dtype, [2, 3])], attrs)
    build(proto, tmp_path)


def test_bitwise_not_and_shift_refusal(tmp_path):
    build(one_node("BitwiseNot", [("a", U8, [4])], [("y", U8, [4])]), tmp_path)
    shift = one_node("BitShift", [("a", I64, [4]), ("b", I64, [4])], [("y", I64, [4])], {"direction": "RIGHT"})
    assert "INT64" in issues(shift, tmp_path)[0]


def test_einsum(tmp_path):
    proto = one_node("Einsum", [("a", F, ["b", 3, 4]), ("c", F, ["b", 4, 5])], [("y", F, ["b", 5, 3])],
                     {"equation": "BIJ, BJK -> BKI"})
    build(proto, tmp_path, {"a": ((1, 3, 4), (2, 3, 4), (4, 3, 4)), "c": ((1, 4, 5), (2, 4, 5), (4, 4, 5))})
    ints = one_node("Einsum", [("a", I32, [3, 4])], [("y", I32, [4])], {"equation": "ij->j"})
    assert "floating types only" in issues(ints, tmp_path)[0]


def test_where_shrink_isnan_mish_swish(tmp_path):
    nodes = [helper.make_node("IsNaN", ["x"], ["nan"], name="isnan"),
             helper.make_node("Shrink", ["x"], ["shrunk"], name="shrink", lambd=0.3, bias=0.1),
             helper.make_node("Mish", ["x"], ["mish"], name="mish"),
             helper.make_node("Where", ["nan", "zero", "mish"], ["y"], name="where")]
    proto = model(nodes, [vi("x", F, ["n", 3, 8, 8])], [vi("y", F, ["n", 3, 8, 8]), vi("shrunk", F, ["n", 3, 8, 8])],
                  {"zero": np.array(0, F)}, opset=22)
    build(proto, tmp_path, IMAGE)
    swish = one_node("Swish", [("x", H, [2, 3])], [("y", H, [2, 3])], {"alpha": 0.5}, opset=24)
    build(swish, tmp_path)


def test_dropout_and_cast_like(tmp_path):
    dropout = one_node("Dropout", [("x", F, ["n", 3, 8, 8]), ("r", F, []), ("t", B, [])],
                       [("y", F, ["n", 3, 8, 8]), ("mask", B, ["n", 3, 8, 8])],
                       inits={"r": np.array(0.0, F), "t": np.array(True)})
    build(dropout, tmp_path, IMAGE)
    training = one_node("Dropout", [("x", F, [2]), ("r", F, []), ("t", B, [])], [("y", F, [2])],
                        inits={"r": np.array(0.5, F), "t": np.array(True)})
    assert "training-mode Dropout" in issues(training, tmp_path)[0]
    cast = one_node("CastLike", [("x", F, [2, 3]), ("like", H, [1])], [("y", H, [2, 3])])
    build(cast, tmp_path)
