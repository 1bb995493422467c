import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """A folder with mlp.onnx: x[batch, 16] -> Gemm -> Relu -> MatMul -> Tanh -> y[batch, 4]."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("mlp")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
         helper.make_node("Tanh", ["m"], ["y"], name="tanh")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
         numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "mlp.onnx")
    return folder
