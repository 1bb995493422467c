"""Every tensor's data is checked against its dims and type when a model is read (issue 15, data
integrity): too few or too many bytes, typed values of the wrong count, no data at all (a
weight-stripped model), external data of the wrong length, a negative dim — each named, all at
once, exit 2, before anything reads them (never garbage outputs or a read past a buffer)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx

from corpus import run_trtc


def save(tmp_path, initializers, name="m.onnx"):
    """x[1, 4] @ w[4, 4] + b[4] with the given initializers (and any extra, unused)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], initializers)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def weights():
    return (numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
            numpy_helper.from_array(np.ones(4, np.float32), "b"))


def test_every_bad_tensor_is_named_at_once(tmp_path):
    w, b = weights()
    w.raw_data = w.raw_data[:20]
    stripped = TensorProto(name="b", data_type=TensorProto.FLOAT, dims=[4])
    extra = TensorProto(name="c", data_type=TensorProto.INT64, dims=[2], int64_data=[1, 2, 3])
    proc = run_trtc("parse", save(tmp_path, [w, stripped, extra]), "-o", tmp_path / "m.trtir")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "3 tensor(s) whose data does not match their dims" in proc.stderr
    assert "tensor 'w': float[4, 4] needs 64 bytes, raw_data holds 20" in proc.stderr
    assert "tensor 'b': float[4] holds no data (a weight-stripped model?" in proc.stderr
    assert "tensor 'c': int64[2] needs 2 int64_data entries, it holds 3" in proc.stderr
    assert not (tmp_path / "m.trtir").exists()
    # run and build read the model the same way
    assert run_trtc("run", tmp_path / "m.onnx").returncode == 2


def test_too_many_bytes_and_packed_types(tmp_path):
    w, b = weights()
    w.raw_data = w.raw_data + b"\0\0\0\0"
    packed = numpy_helper.from_array(np.zeros(5, dtype=onnx.helper.tensor_dtype_to_np_dtype(TensorProto.INT4)), "q")
    with pytest.raises(TrtcError, match=r"tensor 'w': float\[4, 4\] needs 64 bytes, raw_data holds 68") as info:
        parse_onnx(save(tmp_path, [w, b, packed]))
    assert "'q'" not in str(info.value)  # int4[5] in 3 packed bytes is right


def test_external_data_of_the_wrong_length(tmp_path):
    w, b = weights()
    (tmp_path / "w.bin").write_bytes(np.ones(16, np.float32).tobytes())
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    w.external_data.add(key="length", value="32")
    with pytest.raises(TrtcError, match=r"tensor 'w': float\[4, 4\] needs 64 bytes, its external data holds 32"):
        parse_onnx(save(tmp_path, [w, b]))
    del w.external_data[1]  # no length: the file's size from the offset counts
    w.external_data.add(key="offset", value="16")
    with pytest.raises(TrtcError, match="its external data holds 48"):
        parse_onnx(save(tmp_path, [w, b]))


def test_good_models_pass(tmp_path):
    w, b = weights()
    artifact = parse_onnx(save(tmp_path, [w, b]))
    assert artifact.model.graph.initializers["w"].const_value.numpy().shape == (4, 4)
