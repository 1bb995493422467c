import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """A folder with mlp.onnx: x[batch, 16] -> Gemm -> Relu -> MatMul -> Tanh -> y[batch, 4] (the fuzzer's seed)."""
    from fuzzing.seeds import mlp as mlp_seed

    folder = tmp_path_factory.mktemp("mlp")
    (folder / "mlp.onnx").write_bytes(mlp_seed().model)
    return folder


@pytest.fixture()
def two_inputs(tmp_path) -> Path:
    """A folder with two.onnx: ids int64[batch, 4] (indexes a 10-row table) + bias float32[batch, 4, 8]
    -> y; and ids.npy, bias.npy for a batch of 2."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("Add", ["e", "bias"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])],
        [numpy_helper.from_array(np.arange(80, dtype=np.float32).reshape(10, 8), "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64))
    np.save(tmp_path / "bias.npy", np.zeros((2, 4, 8), np.float32))
    return tmp_path


@pytest.fixture(scope="session")
def gpu_backend():
    """The backend `trtc build --backend auto` picks, if it runs on this GPU (for `gpu` tests)."""
    from trtc.errors import TrtcError
    from trtc.lower.backend import RTX_TARGETS, load_backend
    from trtc.runtime.engine import current_sm

    try:
        chosen = load_backend("auto")
    except TrtcError as exc:
        pytest.skip(exc.message)
    if chosen.is_rtx and current_sm() not in RTX_TARGETS:
        pytest.skip(f"TensorRT-RTX does not run on {current_sm()} and full TensorRT is not installed")
    return chosen
