"""What `trtc parse` costs on real models, asserted on behaviour rather than time:

- Symbolic shape inference over dynamic image dims never calls `sympy.simplify` (whose cost grew
  with every Resize: 19 s of PP-OCRv4's detector), and the dims it derives are right.
- Weights embedded in the .onnx are read-only views of one memory map of the file, never copies,
  and the proto-level steps (checker, shape inference) see a skeleton without their bytes.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import onnx
import onnx.shape_inference
import pytest
import sympy
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.frontend.shapes import _inference_proto, canonical_dim
from trtc.ir import load_artifact, save_artifact
from trtc.ir.onnx_load import LIFT_BYTES, FileViewTensor, read_model_skeleton
from trtc.ir.walk import all_initializers
from trtc.reference.runner import ReferenceRunner

RNG = np.random.default_rng(0)


def _ort(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


# --- symbolic inference over many Resize -------------------------------------------------------


def _pyramid(path, depth: int = 5, channels: int = 4) -> None:
    """An FPN-style model over x[N, 3, height, width]: `depth` stride-2 convolutions, then a top-down
    path of nearest Resize x2 + Add back to the first level, and a Resize x4 of the top level (the
    nested floor(...) dims of PP-OCR's detector, one more nesting per level)."""
    nodes, inits = [], []
    feature, levels = "x", []
    for i in range(depth):
        inits.append(numpy_helper.from_array(
            RNG.standard_normal((channels, 3 if i == 0 else channels, 3, 3)).astype(np.float32), f"k{i}"))
        nodes.append(helper.make_node("Conv", [feature, f"k{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]))
        feature = f"c{i}"
        levels.append(feature)
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2"),
              numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "x4")]
    top = levels[-1]
    for i in range(depth - 2, -1, -1):
        nodes.append(helper.make_node("Resize", [top, "", "x2"], [f"up{i}"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        nodes.append(helper.make_node("Add", [f"up{i}", levels[i]], [f"p{i}"]))
        top = f"p{i}"
    nodes.append(helper.make_node("Resize", [levels[-1], "", "x4"], ["wide"], mode="nearest"))
    graph = helper.make_graph(
        nodes, "pyramid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "height", "width"])],
        [helper.make_tensor_value_info(top, TensorProto.FLOAT, None),
         helper.make_tensor_value_info("wide", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _evaluate(dim, sizes: dict[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    symbols = {name: sympy.Symbol(name, integer=True, nonnegative=True) for name in sizes}
    return int(sympy.sympify(dim.value, locals=symbols).subs({symbols[k]: v for k, v in sizes.items()}))


def test_many_resize_over_dynamic_dims_derive_right_dims_without_simplify(tmp_path, monkeypatch):
    calls = []
    real = sympy.simplify
    monkeypatch.setattr(sympy, "simplify", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = tmp_path / "pyramid.onnx"
    _pyramid(path)
    artifact = parse_onnx(path)

    # onnxruntime's symbolic pass ran (ONNX's own inference leaves these dims unknown) and asked
    # sympy for no simplification: its cost no longer grows with the Resize nodes.
    assert calls == []
    assert artifact.meta["parse"]["unknown_shapes"] == []
    outputs = artifact.model.graph.outputs
    for value in (v for n in artifact.model.graph for v in n.outputs):
        assert all(isinstance(d, int) or (d.value and "unk__" not in d.value) for d in value.shape.dims), value
    # The derived dims are the sizes onnxruntime computes, for every size the model runs at.
    for height, width in ((64, 96), (128, 32), (160, 224)):
        x = RNG.standard_normal((2, 3, height, width)).astype(np.float32)
        want = [o.shape for o in _ort(path, {"x": x})]
        got = [tuple(_evaluate(d, {"N": 2, "height": height, "width": width}) for d in o.shape.dims)
               for o in outputs]
        assert got == want


def test_canonical_dim_makes_short_floats_exact_and_keeps_the_rest():
    h = sympy.Symbol("h", integer=True, nonnegative=True)
    level = sympy.floor(h / 2 - sympy.Rational(1, 2)) + 1
    # The Resize x2 of a strided level: floor of an integer expression is the expression itself.
    assert canonical_dim(sympy.floor(2.0 * level)) == 2 * level
    assert canonical_dim(sympy.floor(0.5 * h)) == sympy.floor(h / 2)
    third = canonical_dim(sympy.floor(h / 3.0))  # not a short binary fraction: stays a float
    assert third.atoms(sympy.Float)
    assert canonical_dim(96) == 96


# --- embedded weights --------------------------------------------------------------------------


def _map_of(array: np.ndarray) -> object:
    """The object that owns an array's memory: the end of its base chain (through the memoryview
    numpy's frombuffer keeps)."""
    base = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return base


def _embedded(path, *, opset: int = 18, inputs_too: bool = False) -> dict[str, np.ndarray]:
    """x[N, 256] -> MatMul(w: 256x256 fp32, 256 KiB) + b; + MatMul with a Constant node's fp16 weight
    and a bfloat16 initializer (128 KiB each), each cast to float; Reshape by an int64 shape. All
    embedded in the .onnx. Returns the weights by name as ONNX reads them."""
    w = RNG.standard_normal((256, 256)).astype(np.float32)
    b = RNG.standard_normal(256).astype(np.float32)
    c = RNG.standard_normal((256, 256)).astype(np.float16)
    bf = RNG.standard_normal((256, 256)).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bfloat16
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             helper.make_tensor("bf", TensorProto.BFLOAT16, bf.shape, bf_bits.tobytes(), raw=True),
             numpy_helper.from_array(np.array([0, 2, 128], np.int64), "shape")]
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c_value")),
             helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["y0"]),
             helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "cf"], ["y1"]),
             helper.make_node("Cast", ["bf"], ["bff"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "bff"], ["y2"]),
             helper.make_node("Sum", ["y0", "y1", "y2"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])]
    if inputs_too:  # IR < 4 style: every weight is listed as an input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "embedded", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 128])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path)
    loaded = onnx.load(path)
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    weights["c"] = numpy_helper.to_array(loaded.graph.node[0].attribute[0].t)
    return weights


def test_embedded_weights_are_views_of_the_file(tmp_path):
    path = tmp_path / "embedded.onnx"
    weights = _embedded(path)
    artifact = parse_onnx(path)
    tensors = {v.name: v.const_value for v in all_initializers(artifact.model.graph)}

    lifted = {name: tensors[name] for name in ("w", "c", "bf")}  # the Constant node's too
    maps = set()
    for name, tensor in lifted.items():
        assert isinstance(tensor, FileViewTensor), name
        array = tensor.numpy()
        assert not array.flags.owndata and not array.flags.writeable
        owner = _map_of(array)
        assert isinstance(owner, mmap.mmap), name
        maps.add(id(owner))
        assert tensor.path == os.path.realpath(path)
        np.testing.assert_array_equal(array.view(np.uint8), weights[name].view(np.uint8))
        with open(path, "rb") as f:  # the view's offset is where its bytes are in the file
            f.seek(tensor.offset)
            assert f.read(tensor.nbytes) == weights[name].tobytes()
    assert len(maps) == 1  # one map of the file for every weight
    # Small weights (shape operands, biases) stay inline, as ONNX tools read their values.
    assert tensors["b"].nbytes < LIFT_BYTES and not isinstance(tensors["b"], FileViewTensor)
    np.testing.assert_array_equal(tensors["shape"].numpy(), [0, 2, 128])
    assert [d if isinstance(d, int) else d.value for d in artifact.model.graph.outputs[0].shape.dims] == ["N", 2, 128]

    # The artifact owns copies of them (it does not depend on the .onnx), and computes the same.
    out = tmp_path / "embedded.trtir"
    save_artifact(artifact.model, out, artifact.meta)
    assert load_artifact(out).meta["references"] == []
    x = RNG.standard_normal((3, 256)).astype(np.float32)
    want = _ort(path, {"x": x})[0]
    for model in (artifact.model, load_artifact(out).model):
        np.testing.assert_allclose(ReferenceRunner(model).run({"x": x})["y"], want, rtol=1e-5, atol=1e-4)


def test_an_artifact_saved_after_the_model_was_replaced_keeps_the_parsed_weights(tmp_path):
    """Saving reads the weights from the file only while it is the file that was mapped; a model
    replaced since (a new export renamed over it) leaves the parsed weights as they were."""
    path = tmp_path / "m.onnx"
    weights = _embedded(path)
    artifact = parse_onnx(path)
    _embedded(tmp_path / "other.onnx")  # other random weights, same layout
    os.replace(tmp_path / "other.onnx", path)
    out = tmp_path / "m.trtir"
    save_artifact(artifact.model, out, artifact.meta)
    saved = {v.name: v.const_value.numpy() for v in all_initializers(load_artifact(out).model.graph)}
    for name in ("w", "c", "bf"):
        np.testing.assert_array_equal(saved[name].view(np.uint8), weights[name].view(np.uint8))


def test_proto_steps_see_a_skeleton_without_the_weights(tmp_path, monkeypatch):
    path = tmp_path / "embedded.onnx"
    _embedded(path)
    weight_bytes = 256 * 256 * (4 + 2 + 2)
    skeleton, embedded = read_model_skeleton(path)
    assert skeleton.ByteSize() < 8 * 1024 < weight_bytes < path.stat().st_size
    assert len(embedded) == 3 and embedded.nbytes == weight_bytes

    seen = []
    checker, inference = onnx.checker.check_model, onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: seen.append(("checker", m.ByteSize())) or checker(m, *a, **k))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda m, *a, **k: seen.append(("inference", m.ByteSize())) or inference(m, *a, **k))
    artifact = parse_onnx(path)
    assert {step for step, _ in seen} == {"checker", "inference"}
    assert all(size < 16 * 1024 for _, size in seen), seen
    # Shape inference's proto points at the large weights' bytes in the file instead of copying them
    # (weights up to 64 KiB go inline: shape inference reads the values of shape operands).
    proto = _inference_proto(artifact.model)
    w = next(t for t in proto.graph.initializer if t.name == "w")
    info = {e.key: e.value for e in w.external_data}
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data
    assert info["location"] == os.path.realpath(path) and int(info["length"]) == 256 * 256 * 4


def test_old_opset_with_weights_listed_as_inputs(tmp_path):
    """The version converter and the IR < 4 clean-up run on the skeleton; the weights come back."""
    path = tmp_path / "old.onnx"
    weights = _embedded(path, opset=13, inputs_too=True)
    artifact = parse_onnx(path)
    assert artifact.meta["parse"]["source_opset"] == 13 and artifact.meta["parse"]["opset"] >= 18
    assert [v.name for v in artifact.model.graph.inputs] == ["x"]
    w = artifact.model.graph.initializers["w"].const_value
    assert isinstance(w, FileViewTensor)
    np.testing.assert_array_equal(w.numpy(), weights["w"])
    x = RNG.standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(ReferenceRunner(artifact.model).run({"x": x})["y"], _ort(path, {"x": x})[0],
                               rtol=1e-5, atol=1e-4)


def test_model_reached_through_a_symlink(tmp_path):
    """The skeleton's references point into the model file itself, wherever that file really is."""
    (tmp_path / "store").mkdir()
    (tmp_path / "view").mkdir()
    real = tmp_path / "store" / "m.onnx"
    weights = _embedded(real)
    link = tmp_path / "view" / "m.onnx"
    link.symlink_to(real)
    artifact = parse_onnx(link)
    np.testing.assert_array_equal(artifact.model.graph.initializers["w"].const_value.numpy(), weights["w"])


def test_an_embedded_tensor_shorter_than_its_shape_is_still_refused(tmp_path):
    """A malformed tensor is not lifted; trtc's size check names it (before ONNX's checker would)."""
    bad = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    bad.raw_data = bad.raw_data[: LIFT_BYTES * 2]  # 8 KiB for a 16 KiB shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [bad])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(TrtcError, match=r"tensor 'w': float\[64, 64\] needs 16384 bytes, raw_data holds 8192"):
        parse_onnx(path)
