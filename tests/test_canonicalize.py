"""Canonical forms: one form per op after parsing, each rewrite checked numerically."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.frontend import parse_onnx
from trtc.reference.runner import ReferenceRunner


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=11, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                              + [helper.make_opsetid(f.domain, 1) for f in functions],
                              functions=list(functions))
    model.ir_version = 8 if opset >= 13 else 6
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _ops(model):
    return [n.op_type for n in model.graph]


def _check_numerics(path, model, feeds):
    """The canonical IR computes what onnxruntime computes on the original file."""
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ReferenceRunner(model).run(feeds)
    for w, g in zip(want, got.values()):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


X = np.random.default_rng(0).standard_normal((2, 1, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("op, attrs, input_count", [
    ("Squeeze", {"axes": [1]}, 2),
    ("Unsqueeze", {"axes": [0]}, 2),
    ("ReduceMean", {"axes": [2], "keepdims": 1}, 2),
    ("ReduceSum", {"axes": [3], "keepdims": 0}, 2),
])
def test_attribute_axes_become_inputs(tmp_path, op, attrs, input_count):
    path = _save(tmp_path, [helper.make_node(op, ["x"], ["y"], name="n", **attrs)], [_vi("x", [2, 1, 3, 4])],
                 [_vi("y", None)], opset=11)
    model = parse_onnx(path).model
    node = next(iter(model.graph))
    assert node.op_type == op and "axes" not in node.attributes and len(node.inputs) == input_count
    assert model.opset_imports[""] >= 18
    _check_numerics(path, model, {"x": X})


def test_clip_pad_slice_split_attribute_forms(tmp_path):
    nodes = [
        helper.make_node("Clip", ["x"], ["c"], min=-0.5, max=0.5),
        helper.make_node("Pad", ["c"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant"),
        helper.make_node("Split", ["p"], ["s0", "s1"], axis=3, split=[2, 4]),
    ]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("s0", None), _vi("s1", None)], opset=10)
    model = parse_onnx(path).model
    for node in model.graph:
        assert not set(node.attributes) & {"min", "max", "pads", "split"}, node
    _check_numerics(path, model, {"x": X})


def test_slice_opset9_attributes(tmp_path):
    nodes = [helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[2])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], opset=9)
    model = parse_onnx(path).model
    node = next(iter(model.graph))
    assert node.op_type == "Slice" and len(node.inputs) >= 3 and not node.attributes
    _check_numerics(path, model, {"x": X})


def test_upsample_becomes_resize(tmp_path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], [scales], opset=9)
    model = parse_onnx(path).model
    assert "Upsample" not in _ops(model) and "Resize" in _ops(model)
    _check_numerics(path, model, {"x": X})


def test_constants_become_initializers(tmp_path):
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0, 4.0]),
             helper.make_node("Add", ["x", "c"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], opset=18)
    model = parse_onnx(path).model
    assert _ops(model) == ["Add"]
    np.testing.assert_array_equal(model.graph.initializers["c"].const_value.numpy(), [1, 2, 3, 4])
    _check_numerics(path, model, {"x": X})


def test_dropout_removed_in_inference_but_not_in_training(tmp_path):
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    train = numpy_helper.from_array(np.array(False), "train")
    nodes = [helper.make_node("Dropout", ["x", "ratio", "train"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], [ratio, train], opset=13)
    model = parse_onnx(path).model
    assert _ops(model) == ["Relu"]
    _check_numerics(path, model, {"x": X})
    # training_mode given as a graph input: not known to be inference, must stay
    nodes = [helper.make_node("Dropout", ["x", "ratio", "t"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4]), _vi("t", [], TensorProto.BOOL)], [_vi("y", None)],
                 [ratio], opset=13)
    assert _ops(parse_onnx(path).model) == ["Dropout"]


def test_dropout_feeding_a_graph_output_keeps_the_output_name(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], opset=13)
    model = parse_onnx(path).model
    assert _ops(model) == ["Relu"] and [v.name for v in model.graph.outputs] == ["y"]
    _check_numerics(path, model, {"x": X})


def test_local_functions_are_inlined(tmp_path):
    fn = helper.make_function("local", "Swish", ["a"], ["b"],
                              [helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
                              [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Swish", ["x"], ["y"], domain="local")]
    path = _save(tmp_path, nodes, [_vi("x", [2, 1, 3, 4])], [_vi("y", None)], opset=18, functions=[fn])
    model = parse_onnx(path).model
    assert sorted(_ops(model)) == ["Mul", "Sigmoid"]
    _check_numerics(path, model, {"x": X})


def test_symbolic_dims_stay_symbolic(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]), helper.make_node("Relu", ["t"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", ["batch", "seq", 8])], [_vi("y", None)], opset=18)
    artifact = parse_onnx(path)
    shape = artifact.model.graph.outputs[0].shape
    assert [d if isinstance(d, int) else d.value for d in shape.dims] == ["seq", "batch", 8]
    assert artifact.meta["parse"]["unknown_shapes"] == []


def test_negative_fixed_dims_become_distinct_symbolic_dims(tmp_path):
    """Paddle2ONNX writes an unknown batch as dim_value -1: onnxruntime reads it as unknown, so do we,
    and two -1 dims are two dims (a 6x3 input and a 2-row output are fine)."""
    x = _vi("x", [3, 3])
    x.type.tensor_type.shape.dim[0].dim_value = -1
    y = _vi("y", [4, 3])
    y.type.tensor_type.shape.dim[0].dim_value = -1
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y])
    artifact = parse_onnx(path)
    dims = [artifact.model.graph.inputs[0].shape.dims[0], artifact.model.graph.outputs[0].shape.dims[0]]
    assert all(isinstance(d, ir.SymbolicDim) for d in dims) and dims[0].value != dims[1].value
    assert artifact.meta["parse"]["canonicalized"]["unknown_negative_dims"] == 2
    _check_numerics(path, artifact.model, {"x": np.ones((6, 3), np.float32)})
