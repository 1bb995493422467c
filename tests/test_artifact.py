"""The .trtir artifact: lossless round trip, metadata, referenced weights, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc import __version__
from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.ir import artifact as artifact_mod
from trtc.ir import load_artifact, save_artifact
from trtc.ir.artifact import read_header
from trtc.ir.onnx_export import to_model_proto
from trtc.reference.runner import ReferenceRunner


def _model_with_external_data(folder, *, big_shape=(64, 32)) -> str:
    """x[?,32] @ W (external file) + b (inline) -> y; also an empty and an int64 weight."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(big_shape).astype(np.float32)
    (folder / "w.bin").write_bytes(b"\0" * 16 + w.T.copy().tobytes())
    wt = numpy_helper.from_array(np.zeros((1,), np.float32), "W")
    wt.ClearField("raw_data")
    wt.dims[:] = [big_shape[1], big_shape[0]]
    wt.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "16"), ("length", str(w.nbytes))):
        wt.external_data.add(key=key, value=value)
    b = numpy_helper.from_array(rng.standard_normal(big_shape[0]).astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, big_shape[0]], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Add", ["h", "b"], ["s"], name="add"),
         helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", big_shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", big_shape[0]])], [wt, b, shape])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return str(path)


def test_round_trip_is_lossless(tmp_path):
    path = _model_with_external_data(tmp_path)
    parsed = parse_onnx(path)
    header = save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    loaded = load_artifact(tmp_path / "a.trtir")
    assert to_model_proto(loaded.model) == to_model_proto(parsed.model)
    # Saving the loaded artifact again gives the same content hash.
    again = save_artifact(loaded.model, tmp_path / "b.trtir", loaded.meta)
    assert again["content_hash"] == header["content_hash"]


def test_metadata(tmp_path):
    path = _model_with_external_data(tmp_path)
    parsed = parse_onnx(path)
    save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    header = read_header(tmp_path / "a.trtir")
    assert header["format"] == "trtir" and header["format_version"] == artifact_mod.FORMAT_VERSION
    assert header["trtc_version"] == __version__
    assert header["stage"] == "parse"
    import hashlib

    assert header["source"]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert len(header["content_hash"]) == 64
    assert header["parse"]["source_opset"] == 17 and header["parse"]["opset"] == 18


def test_external_weights_are_referenced_not_copied(tmp_path):
    path = _model_with_external_data(tmp_path, big_shape=(512, 256))
    parsed = parse_onnx(path)
    save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    header = read_header(tmp_path / "a.trtir")
    assert [r["path"] for r in header["references"]] == [os.path.realpath(tmp_path / "w.bin")]
    assert (tmp_path / "a.trtir").stat().st_size < 512 * 256 * 4 // 4
    loaded = load_artifact(tmp_path / "a.trtir")
    w = loaded.model.graph.initializers["W"].const_value
    assert isinstance(w, ir.ExternalTensor)  # memory-mapped, read only when used
    x = np.ones((2, 256), np.float32)
    expected = x @ np.frombuffer((tmp_path / "w.bin").read_bytes()[16:], np.float32).reshape(256, 512)
    expected += loaded.model.graph.initializers["b"].const_value.numpy()
    got = ReferenceRunner(loaded.model).run({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_changed_reference_is_refused(tmp_path):
    path = _model_with_external_data(tmp_path)
    parsed = parse_onnx(path)
    save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    (tmp_path / "w.bin").write_bytes(b"\1" * 32)
    with pytest.raises(TrtcError, match="changed since the artifact was written"):
        load_artifact(tmp_path / "a.trtir")
    os.unlink(tmp_path / "w.bin")
    with pytest.raises(TrtcError, match="is missing"):
        load_artifact(tmp_path / "a.trtir")


def test_weights_owned_by_the_file_being_replaced_are_copied(tmp_path):
    """Re-saving over the artifact the weights are mapped from must not lose them."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    parsed = parse_onnx(tmp_path / "m.onnx")
    save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    loaded = load_artifact(tmp_path / "a.trtir")
    save_artifact(loaded.model, tmp_path / "a.trtir", loaded.meta)
    again = load_artifact(tmp_path / "a.trtir")
    np.testing.assert_array_equal(again.model.graph.initializers["c"].const_value.numpy(), np.arange(4))


def test_crash_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = _model_with_external_data(tmp_path)
    parsed = parse_onnx(path)
    target = tmp_path / "a.trtir"
    save_artifact(parsed.model, target, parsed.meta)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a crash mid-write

    monkeypatch.setattr(artifact_mod, "_serialize", boom)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(parsed.model, target, parsed.meta)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.trtir", "m.onnx", "w.bin"]


@pytest.mark.parametrize("damage", ["magic", "trailer", "proto", "version"])
def test_damaged_artifacts_are_refused(tmp_path, damage):
    path = _model_with_external_data(tmp_path)
    parsed = parse_onnx(path)
    header = save_artifact(parsed.model, tmp_path / "a.trtir", parsed.meta)
    data = bytearray((tmp_path / "a.trtir").read_bytes())
    if damage == "magic":
        data[0] ^= 0xFF
    elif damage == "trailer":
        data = data[:-3]
    elif damage == "proto":
        data[header["proto"]["offset"] + 5] ^= 0xFF
    else:
        data = data.replace(b'"format_version": 1', b'"format_version": 9')
    (tmp_path / "a.trtir").write_bytes(bytes(data))
    with pytest.raises(TrtcError, match="a.trtir"):
        load_artifact(tmp_path / "a.trtir")


def _external_mlp(folder) -> tuple[ir.Model, np.ndarray, np.ndarray]:
    """MatMul + Add whose weights (512 KiB and 2 KiB) are external data in `folder`/w.bin."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((256, 512)).astype(np.float32), rng.standard_normal(512).astype(np.float32)
    (folder / "w.bin").write_bytes(w.tobytes() + b.tobytes())
    tensors = []
    for name, array, offset in (("W", w, 0), ("b", b, w.nbytes)):
        tensor = numpy_helper.from_array(np.zeros((1,), np.float32), name)
        tensor.ClearField("raw_data")
        tensor.dims[:] = array.shape
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        tensors.append(tensor)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])], tensors)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "m.onnx")
    model = parse_onnx(folder / "m.onnx").model
    return model, w, b


def test_the_cpu_reference_takes_file_weights_as_they_are(tmp_path):
    """Large weights reach onnxruntime as arrays over the memory-mapped file, small ones in the proto, also
    where the small ones come from the file too (an external-data export): never the whole model copied
    into a proto (`ort_model`'s slow way)."""
    from trtc.reference.runner import ort_model

    rng = np.random.default_rng(0)
    model, w, b = _external_mlp(tmp_path)
    loaded = ort_model(model)
    proto, weights = loaded.proto, loaded.weights
    assert list(weights) == ["W"]
    small = next(t for t in proto.graph.initializer if t.name == "b")
    assert small.data_location == TensorProto.DEFAULT and numpy_helper.to_array(small).tobytes() == b.tobytes()
    x = rng.standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(ReferenceRunner(model).run({"x": x})["y"], x @ w + b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stored", ["onnx", "trtir", "embedded"])
def test_big_file_weights_are_mapped_by_onnxruntime(tmp_path, monkeypatch, stored):
    """From `MAP_FILE_BYTES` of weights in files (a big model), onnxruntime maps the files that hold them
    (.onnx external data, a .trtir's data, an .onnx's own raw_data) instead of taking a copy: the proto names
    the file relative to the folder the session is given; the results are the same to the last ulps."""
    from trtc.reference import runner as runner_mod

    model, _, _ = _external_mlp(tmp_path)
    if stored == "trtir":
        save_artifact(model, tmp_path / "m.trtir", meta={})
        model = load_artifact(tmp_path / "m.trtir").model
    elif stored == "embedded":
        proto = onnx.load(tmp_path / "m.onnx")
        onnx.save(proto, tmp_path / "embedded.onnx")  # the weights inside the protobuf
        model = parse_onnx(tmp_path / "embedded.onnx").model
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    copied = ReferenceRunner(model).run({"x": x})["y"]
    monkeypatch.setattr(runner_mod, "MAP_FILE_BYTES", 1)
    loaded = runner_mod.ort_model(model)
    assert loaded.weights == {} and loaded.folder == str(tmp_path.resolve())
    w = next(t for t in loaded.proto.graph.initializer if t.name == "W")
    assert w.data_location == TensorProto.EXTERNAL and "/" not in w.external_data[0].value
    # Unpacked MatMul weights sum in another order than prepacked ones: the last ulp differs.
    np.testing.assert_allclose(ReferenceRunner(model).run({"x": x})["y"], copied, rtol=1e-5, atol=1e-5)
