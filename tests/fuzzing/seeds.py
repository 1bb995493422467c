"""The valid models the fuzzer mutates: small, quick to parse, run and build, and between them
holding what the readers must survive: dynamic dims, embedded weights big enough to be memory-mapped
(>= 4 KiB), external data, Constant nodes, shape arithmetic, and subgraphs (If, Loop with an
outer-scope reference). Optionally the corpus models of ../shared/models too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


@dataclasses.dataclass(frozen=True)
class Seed:
    """A valid model: the ONNX file's bytes and the files beside it (external data), by name."""

    name: str
    model: bytes
    files: tuple[tuple[str, bytes], ...] = ()

    def proto(self) -> onnx.ModelProto:
        return onnx.ModelProto.FromString(self.model)


def _weights(rng: np.random.Generator, **shapes: tuple[int, ...]) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
            for name, shape in shapes.items()]


def _model(graph: onnx.GraphProto) -> bytes:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


def mlp() -> Seed:
    """x[batch, 16] -> Gemm -> Relu -> MatMul -> Tanh -> y[batch, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
         helper.make_node("Tanh", ["m"], ["y"], name="tanh")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        _weights(np.random.default_rng(0), w1=(32, 16), b1=(32,), w2=(32, 4)))
    return Seed("mlp", _model(graph))


def convnet() -> Seed:
    """x[N, 3, 16, 16] -> Conv, BatchNorm, Relu, MaxPool, Conv (a 4.5 KiB weight: memory-mapped),
    Relu, GlobalAveragePool, Flatten, Gemm, Softmax -> y[N, 10]."""
    rng = np.random.default_rng(1)
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
          (("scale", rng.uniform(0.5, 1.5, 8)), ("shift", rng.standard_normal(8)),
           ("mean", rng.standard_normal(8)), ("var", rng.uniform(0.5, 1.5, 8)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["bn"], name="bn"),
         helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
         helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Conv", ["p", "c2w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
         helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "fcw", "fcb"], ["logits"], name="fc", transB=1),
         helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)], "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        _weights(rng, c1w=(8, 3, 3, 3), c1b=(8,), c2w=(16, 8, 3, 3), fcw=(10, 16), fcb=(10,)) + bn)
    return Seed("convnet", _model(graph))


def control_flow() -> Seed:
    """x[2, 3] -> If(sum(x) > 0: x * 2, else x - 1) -> Loop 3 times (acc += x, an outer-scope value;
    each step's acc as a scan output) -> y[2, 3], steps[3, 2, 3]."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t_out"], name="then_mul")], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e_out"], name="else_sub")], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])])
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Identity", ["acc_out"], ["step"], name="body_scan")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("step", TensorProto.FLOAT, [2, 3])])
    scalars = [numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in
               (("two", 2.0, np.float32), ("one", 1.0, np.float32), ("zero", 0.0, np.float32),
                ("trips", 3, np.int64), ("go", True, np.bool_))]
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["positive"], name="positive"),
         helper.make_node("If", ["positive"], ["t"], name="branch", then_branch=then, else_branch=other),
         helper.make_node("Loop", ["trips", "go", "t"], ["y", "steps"], name="loop", body=body)], "control",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("steps", TensorProto.FLOAT, [3, 2, 3])], scalars)
    return Seed("control", _model(graph))


def external_data() -> Seed:
    """x[batch, 64] -> MatMul w[64, 32] -> Add b[32] -> Relu -> Reshape [-1, 4, 8] -> y, with w and b
    in weights.bin beside the model (the Reshape target stays inline)."""
    rng = np.random.default_rng(2)
    w, b = _weights(rng, w=(64, 32), b=(32,))
    blob = b""
    for tensor in (w, b):
        data = tensor.raw_data
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(len(blob))), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        blob += data + b"\0" * (-len(data) % 64)
    target = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "target")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
         helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
         helper.make_node("Relu", ["a"], ["r"], name="relu"),
         helper.make_node("Reshape", ["r", "target"], ["y"], name="reshape")], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])], [w, b, target])
    return Seed("external", _model(graph), (("weights.bin", blob),))


def shape_math() -> Seed:
    """x[batch, 4, 6]: Shape -> Gather -> Unsqueeze -> Concat(Constant [-1]) -> Reshape -> r[batch, 24];
    Transpose -> Slice -> ReduceMean -> Greater -> Where -> Cast -> c float16[batch, 4, 4]."""
    ints = {n: numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
            (("i0", 0), ("ax0", [0]), ("starts", [1]), ("ends", [5]), ("ax1", [1]))}
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("Gather", ["s", "i0"], ["b"], name="batch", axis=0),
         helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsqueeze"),
         helper.make_node("Constant", [], ["minus1"], name="minus1",
                          value=numpy_helper.from_array(np.array([-1], np.int64))),
         helper.make_node("Concat", ["b1", "minus1"], ["target"], name="concat", axis=0),
         helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
         helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1]),
         helper.make_node("Slice", ["t", "starts", "ends", "ax1"], ["sl"], name="slice"),
         helper.make_node("ReduceMean", ["sl"], ["mean"], name="mean", axes=[2], keepdims=1),
         helper.make_node("Greater", ["sl", "mean"], ["above"], name="above"),
         helper.make_node("Where", ["above", "sl", "zero"], ["w"], name="where"),
         helper.make_node("Cast", ["w"], ["c"], name="cast", to=TensorProto.FLOAT16)], "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["batch", 24]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT16, ["batch", 4, 4])],
        [*ints.values(), numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return Seed("shapes", _model(graph))


BUILDERS: list[Callable[[], Seed]] = [mlp, convnet, control_flow, external_data, shape_math]


def builtin_seeds() -> list[Seed]:
    return [build() for build in BUILDERS]


def corpus_seeds(max_bytes: int = 1 << 20) -> list[Seed]:
    """The corpus models of ../shared/models up to `max_bytes` (weights embedded), if present."""
    if not SHARED_MODELS.is_dir():
        return []
    return [Seed(p.stem, p.read_bytes()) for p in sorted(SHARED_MODELS.glob("*.onnx"))
            if p.stat().st_size <= max_bytes]
