"""Gather/scatter and slicing converters: each builds with TensorRT-RTX (the lowering checks
every output's dtype and shape against the IR), static shapes fold to ONNX's exact output
shapes, dynamic dims build with a profile, and unsupported variants report their reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).parent))
from lowerutil import build, issues, model, one_node, output_shapes, vi  # noqa: E402

F, I64 = np.float32, np.int64
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
BATCH = {"x": ((1, 3, 4), (2, 3, 4), (4, 3, 4))}


# ------------------------------------------------------------------ Gather family


@pytest.mark.parametrize("indices", [np.array(-1, I64), np.array([[0, -2], [2, -3]], I64), np.array([1, 0], np.int32)])
def test_gather_constant_indices_wrap(tmp_path, indices):
    out_shape = [2, *indices.shape, 4]
    proto = one_node("Gather", [("x", F, [2, 3, 4]), ("i", indices.dtype, list(indices.shape))],
                     [("y", F, out_shape)], {"axis": 1}, inits={"i": indices})
    assert output_shapes(proto, tmp_path) == [tuple(out_shape)]
    build(proto, tmp_path)


def test_gather_runtime_indices_dynamic_axis(tmp_path):
    """Indices known only at run time are wrapped by a run-time dim (axis 0 is the batch)."""
    proto = one_node("Gather", [("x", F, ["b", 3, 4]), ("i", I64, [5])], [("y", F, [5, 3, 4])])
    build(proto, tmp_path, {**BATCH, "i": ((5,), (5,), (5,))})


def test_gather_elements_and_nd(tmp_path):
    elements = one_node("GatherElements", [("x", F, ["b", 3, 4]), ("i", I64, ["b", 3, 2])],
                        [("y", F, ["b", 3, 2])], {"axis": -1})
    build(elements, tmp_path, {**BATCH, "i": ((1, 3, 2), (2, 3, 2), (4, 3, 2))})
    nd = one_node("GatherND", [("x", F, [2, 3, 4]), ("i", I64, [2, 5, 1])], [("y", F, [2, 5, 4])],
                  {"batch_dims": 1})
    assert output_shapes(nd, tmp_path) == [(2, 5, 4)]
    build(nd, tmp_path)


def test_scatter_elements_and_nd(tmp_path):
    elements = one_node("ScatterElements", [("x", F, [3, 4]), ("i", I64, [2, 4]), ("u", F, [2, 4])],
                        [("y", F, [3, 4])], {"axis": 0})
    build(elements, tmp_path)
    nd = one_node("ScatterND", [("x", F, [4, 5]), ("i", I64, [2, 1]), ("u", F, [2, 5])], [("y", F, [4, 5])],
                  inits={"i": np.array([[-1], [0]], I64)})
    build(nd, tmp_path)


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
def test_scatter_reduction_is_refused(tmp_path, op):
    proto = one_node(op, [("x", F, [3, 4]), ("i", I64, [2, 1]), ("u", F, [2, 4])], [("y", F, [3, 4])],
                     {"reduction": "add"})
    assert issues(proto, tmp_path) == ["attribute reduction='add' not supported (supported: none)"]


@pytest.mark.parametrize("condition", [[True, False, True], [False, False, False]])
def test_compress_constant_condition(tmp_path, condition):
    kept = sum(condition)
    proto = one_node("Compress", [("x", F, [3, 4]), ("c", np.bool_, [3])], [("y", F, [kept, 4])], {"axis": 0},
                     inits={"c": np.array(condition)})
    assert output_shapes(proto, tmp_path) == [(kept, 4)]
    build(proto, tmp_path)


def test_non_zero_explains_rtx(tmp_path):
    from trtc.errors import TrtcError

    proto = one_node("NonZero", [("x", F, [3, 4])], [("y", I64, [2, "n"])])
    with pytest.raises(TrtcError, match="TensorRT-RTX has no NonZero"):
        build(proto, tmp_path)


# ------------------------------------------------------------------ Slice


SLICES = [  # (starts, ends, axes, steps) on a [5, 6, 7] input
    ([1, 0], [INT64_MAX, -1], [0, 2], [1, 2]),
    ([-1], [INT64_MIN], [1], [-1]),
    ([10], [-10], [2], [-3]),
    ([-100, 2], [100, 2], [0, 1], [1, 1]),
    ([4, 5, 6], [-6, -7, -8], None, [-2, -1, -4]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_clamps_like_numpy(tmp_path, starts, ends, axes, steps):
    data = np.zeros((5, 6, 7), F)
    index = [slice(None)] * 3
    for s, e, a, st in zip(starts, ends, axes or range(len(starts)), steps):
        index[a] = slice(s, e, st)  # python slicing clamps the way ONNX Slice does
    expected = data[tuple(index)].shape
    inits = {"s": np.array(starts, I64), "e": np.array(ends, I64), "t": np.array(steps, I64)}
    names = ["x", "s", "e", "a", "t"]
    if axes is not None:
        inits["a"] = np.array(axes, I64)
    else:
        names[3] = ""
    node = helper.make_node("Slice", names, ["y"], name="slice")
    proto = model([node], [vi("x", F, [5, 6, 7])], [vi("y", F, list(expected))], inits)
    assert output_shapes(proto, tmp_path) == [expected]
    build(proto, tmp_path)


def test_slice_dynamic_dims_and_runtime_ends(tmp_path):
    """Ends from the input's own shape (a shape tensor) and a dynamic batch dim being clamped."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "one", "two"], ["end"], name="pick"),
             helper.make_node("Slice", ["x", "zero", "end", "axis1"], ["y"], name="slice"),
             helper.make_node("Slice", ["x", "minus_two", "big", "axis0", "minus_one"], ["z"], name="back")]
    inits = {"one": np.array([1], I64), "two": np.array([2], I64), "zero": np.array([0], I64),
             "axis1": np.array([1], I64), "axis0": np.array([0], I64), "minus_two": np.array([-2], I64),
             "big": np.array([INT64_MIN], I64), "minus_one": np.array([-1], I64)}
    proto = model(nodes, [vi("x", F, ["b", 3, 4])], [vi("y", F, ["b", 3, 4]), vi("z", F, ["c", 3, 4])], inits)
    build(proto, tmp_path, BATCH)


def test_slice_runtime_axes_need_static_length(tmp_path):
    proto = one_node("Slice", [("x", F, [5, 6]), ("s", I64, [1]), ("e", I64, [1]), ("a", I64, ["k"])],
                     [("y", F, [None, None])])
    assert issues(proto, tmp_path) == ["axes ('a') must have a static length"]


# ------------------------------------------------------------------ Split, Pad, Tile


@pytest.mark.parametrize("sizes,attrs,expected", [
    (None, {"num_outputs": 3}, [3, 3, 1]),
    (np.array([2, 0, 5], I64), {}, [2, 0, 5]),
])
def test_split(tmp_path, sizes, attrs, expected):
    outputs = [(f"y{i}", F, [2, n]) for i, n in enumerate(expected)]
    inputs = [("x", F, [2, 7])] + ([("split", I64, [3])] if sizes is not None else [])
    proto = one_node("Split", inputs, outputs, {"axis": 1, **attrs},
                     inits={"split": sizes} if sizes is not None else None)
    assert output_shapes(proto, tmp_path) == [(2, n) for n in expected]
    build(proto, tmp_path)


def test_split_dynamic_axis(tmp_path):
    proto = one_node("Split", [("x", F, ["b", 3, 4])], [("y0", F, [None, 3, 4]), ("y1", F, [None, 3, 4])],
                     {"axis": 0, "num_outputs": 2})
    build(proto, tmp_path, BATCH)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(tmp_path, mode):
    pads = np.array([0, 1, -1, 0, 2, 2], I64)
    inputs = [("x", F, [2, 3, 4]), ("p", I64, [6])] + ([("v", F, [])] if mode == "constant" else [])
    inits = {"p": pads, **({"v": np.array(1.5, F)} if mode == "constant" else {})}
    proto = one_node("Pad", inputs, [("y", F, [2, 6, 5])], {"mode": mode}, inits)
    assert output_shapes(proto, tmp_path) == [(2, 6, 5)]
    build(proto, tmp_path)


def test_pad_axes_dynamic_batch(tmp_path):
    proto = one_node("Pad", [("x", F, ["b", 3, 4]), ("p", I64, [4]), ("", F, []), ("a", I64, [2])],
                     [("y", F, ["b", 3, 7])], {"mode": "edge"},
                     inits={"p": np.array([0, 1, 0, 2], I64), "a": np.array([0, -1], I64)})
    build(proto, tmp_path, BATCH)


def test_tile(tmp_path):
    proto = one_node("Tile", [("x", F, ["b", 3, 4]), ("r", I64, [3])], [("y", F, [None, 6, 4])],
                     inits={"r": np.array([2, 2, 1], I64)})
    build(proto, tmp_path, BATCH)
    static = one_node("Tile", [("x", F, [2, 3]), ("r", I64, [2])], [("y", F, [6, 6])],
                      inits={"r": np.array([3, 2], I64)})
    assert output_shapes(static, tmp_path) == [(6, 6)]
