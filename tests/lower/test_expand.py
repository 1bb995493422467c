"""Scatter reductions TensorRT's scatter layer lacks, expanded into masked reductions in the IR
(trtc/lower/expand.py): the expanded graph reproduces the node tests' expected outputs on the
CPU reference, and TensorRT-RTX builds it."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import helper

from trtc.lower.expand import MAX_ELEMENTS, expand_ops
from trtc.lower.registry import unsupported_nodes
from trtc.reference.runner import ReferenceRunner

from corpus import NODE_TESTS, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from lowerutil import build, parse
from node_suite import case_data  # noqa: E402

REDUCTION_CASES = [
    "test_scatter_elements_with_duplicate_indices", "test_scatter_elements_with_reduction_max",
    "test_scatter_elements_with_reduction_min", "test_scatter_elements_with_reduction_mul", "test_scatternd_add",
    "test_scatternd_max", "test_scatternd_max_with_element_indices", "test_scatternd_min",
    "test_scatternd_min_with_element_indices", "test_scatternd_multiply",
]


@pytest.mark.parametrize("case", REDUCTION_CASES)
def test_scatter_reduction_matches_the_node_test(case, tmp_path):
    path = NODE_TESTS / case
    if not path.is_dir():
        pytest.skip(f"ONNX node test suite missing at {NODE_TESTS}")
    proto = onnx.load(str(path / "model.onnx"))
    feeds, expected = case_data(path, proto)
    model = parse(proto, tmp_path).model
    assert expand_ops(model) == 1
    assert not any(n.op_type.startswith("Scatter") for n in model.graph)
    outputs = ReferenceRunner(model, threads=1).run(feeds)
    for name, want in expected.items():
        np.testing.assert_allclose(outputs[name], want, rtol=1e-6, atol=1e-6)
    assert unsupported_nodes(model) == []


def _scatter_nd(reduction: str, data_shape, index_shape, update_shape, dtype=onnx.TensorProto.FLOAT):
    node = helper.make_node("ScatterND", ["data", "indices", "updates"], ["y"], reduction=reduction, name="scatter")
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("data", dtype, data_shape),
        helper.make_tensor_value_info("indices", onnx.TensorProto.INT64, index_shape),
        helper.make_tensor_value_info("updates", dtype, update_shape)],
        [helper.make_tensor_value_info("y", dtype, data_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_integer_scatter_add_with_negative_indices_builds_and_matches(tmp_path):
    proto = _scatter_nd("add", [5, 3], [4, 1], [4, 3], onnx.TensorProto.INT32)
    data = np.arange(15, dtype=np.int32).reshape(5, 3)
    indices = np.array([[0], [-1], [0], [2]], np.int64)
    updates = np.arange(12, dtype=np.int32).reshape(4, 3) * 10
    model = parse(proto, tmp_path).model
    expand_ops(model)
    got = ReferenceRunner(model).run({"data": data, "indices": indices, "updates": updates})["y"]
    want = data.copy()
    np.add.at(want, indices[:, 0] % 5, updates)
    np.testing.assert_array_equal(got, want)
    build(proto, tmp_path)


def test_too_large_a_scatter_keeps_its_reason(tmp_path):
    rows = int(MAX_ELEMENTS ** 0.5) * 2
    proto = _scatter_nd("add", [rows, 8], [rows, 1], [rows, 8])
    model = parse(proto, tmp_path).model
    assert expand_ops(model) == 0
    assert "reduction='add' not supported" in unsupported_nodes(model)[0]["reason"]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements_max_on_any_axis_matches_onnx_reference(axis, tmp_path):
    rng = np.random.default_rng(axis + 5)
    data = rng.standard_normal((4, 3, 2)).astype(np.float32)
    index_shape = [4, 3, 2]
    index_shape[axis] = 3
    indices = rng.integers(-data.shape[axis], data.shape[axis], size=index_shape).astype(np.int64)
    updates = rng.standard_normal(index_shape).astype(np.float32) * 3
    node = helper.make_node("ScatterElements", ["data", "indices", "updates"], ["y"], axis=axis, reduction="max",
                            name="scatter")
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [4, 3, 2]),
        helper.make_tensor_value_info("indices", onnx.TensorProto.INT64, index_shape),
        helper.make_tensor_value_info("updates", onnx.TensorProto.FLOAT, index_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"data": data, "indices": indices, "updates": updates}
    want = onnx.reference.ReferenceEvaluator(proto).run(None, feeds)[0]
    model = parse(proto, tmp_path).model
    assert expand_ops(model) == 1
    np.testing.assert_array_equal(ReferenceRunner(model).run(feeds)["y"], want)
    build(proto, tmp_path)


RESIZE_CASES = ["test_resize_tf_crop_and_resize", "test_resize_tf_crop_and_resize_axes_2_3",
                "test_resize_tf_crop_and_resize_axes_3_2", "test_resize_tf_crop_and_resize_extrapolation_value",
                "test_resize_downsample_scales_linear_half_pixel_symmetric",
                "test_resize_upsample_scales_linear_half_pixel_symmetric",
                "test_resize_downsample_scales_cubic_antialias", "test_resize_downsample_scales_linear_antialias",
                "test_resize_downsample_sizes_cubic_antialias", "test_resize_downsample_sizes_linear_antialias"]


@pytest.mark.parametrize("case", RESIZE_CASES)
def test_resize_forms_tensorrt_lacks_are_expanded(case, tmp_path):
    """Resize(linear) in tf_crop_and_resize, or half_pixel_symmetric with a fractional dim x scale ->
    GridSample (+ Where for the extrapolation value); Resize(antialias=1) -> two matmuls. Its
    roi/scales/sizes frozen, the node test's expected output on the CPU, and a TensorRT-RTX build."""
    from trtc.frontend.freeze import freeze_inputs
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine

    path = NODE_TESTS / case
    if not path.is_dir():
        pytest.skip(f"ONNX node test suite missing at {NODE_TESTS}")
    proto = onnx.load(str(path / "model.onnx"))
    feeds, expected = case_data(path, proto)
    artifact = parse(proto, tmp_path)
    freeze_inputs(artifact.model, {name: feeds.pop(name) for name in list(feeds) if name != "X"})
    assert expand_ops(artifact.model) == 1
    assert "Resize" not in [n.op_type for n in artifact.model.graph]
    outputs = ReferenceRunner(artifact.model, threads=1).run(feeds)
    for name, want in expected.items():
        np.testing.assert_allclose(outputs[name], want, rtol=1e-5, atol=1e-5)
    build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions())
