"""The lowering on what real exporters write: 1-D convolution and pooling (audio front ends), TensorRT's
first error reported in the node's words, constants of every numpy type through the one constant
helper, and a support report that refuses exactly what the build refuses, for the same reason."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from trtc.errors import TrtcError  # noqa: E402
from trtc.lower import registry  # noqa: E402
from trtc.lower.api import support_report  # noqa: E402
from trtc.lower.backend import load_backend  # noqa: E402
from trtc.lower.build import BuildOptions, build_engine  # noqa: E402
from trtc.lower.context import LowerCtx, RecordingLogger, first_error, held_array  # noqa: E402
from trtc.lower.network import build_failure, lower  # noqa: E402
from trtc.passes.pipeline import optimize  # noqa: E402

from lowerutil import build, model, one_node, output_shapes, parse, vi  # noqa: E402

F = np.float32
F32_MAX = float(np.finfo(F).max)  # float64 constants beyond float32's range are clamped to it
RTX = load_backend("tensorrt-rtx")


def reference_shapes(proto, feeds: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    """The output shapes onnxruntime computes for `feeds`."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [tuple(out.shape) for out in session.run(None, feeds)]


# ------------------------------------------------------------------ 1-D convolution and pooling

CONV_1D = [
    {},
    {"strides": [2], "pads": [1, 2]},
    {"dilations": [3], "pads": [2, 2]},
    {"group": 2},
    {"auto_pad": "SAME_UPPER", "strides": [3]},
    {"auto_pad": "SAME_LOWER", "strides": [2]},
    {"auto_pad": "VALID", "strides": [2]},
]


@pytest.mark.parametrize("attrs", CONV_1D, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "plain")
def test_conv_1d_output_shape_is_onnxruntimes(tmp_path, attrs):
    """[N, C, L] convolved as [N, C, L, 1]: TensorRT's shape equals onnxruntime's, with a bias."""
    group = attrs.get("group", 1)
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((6, 4 // group, 5)).astype(F), "b": rng.standard_normal(6).astype(F)}
    proto = one_node("Conv", [("x", F, [2, 4, 37]), ("w", F, [6, 4 // group, 5]), ("b", F, [6])],
                     [("y", F, None)], attrs, inits)
    want = reference_shapes(proto, {"x": np.zeros((2, 4, 37), F)})
    assert output_shapes(proto, tmp_path) == want
    build(proto, tmp_path)


def test_conv_1d_with_run_time_length_and_computed_weights_builds(tmp_path):
    """A dynamic length (an audio stream) and weights that are a graph input still build."""
    proto = one_node("Conv", [("x", F, ["n", 3, "t"]), ("w", F, [8, 3, 4])], [("y", F, ["n", 8, None])],
                     {"strides": [2], "pads": [1, 1]})
    assert output_shapes(proto, tmp_path) == [(-1, 8, -1)]
    build(proto, tmp_path, {"x": ((1, 3, 16), (2, 3, 400), (4, 3, 1600))})


@pytest.mark.parametrize("op, attrs", [
    ("ConvTranspose", {"strides": [2], "output_padding": [1]}),
    ("ConvTranspose", {"pads": [1, 2]}),
    ("MaxPool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ("MaxPool", {"kernel_shape": [4], "ceil_mode": 1, "strides": [3]}),
    ("AveragePool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [2], "auto_pad": "SAME_UPPER", "strides": [2]}),
    ("LpPool", {"kernel_shape": [3], "p": 2}),
])
def test_1d_deconvolution_and_pooling_output_shape_is_onnxruntimes(tmp_path, op, attrs):
    """ConvTranspose and the pools share the unit-dim way of running 1-D as 2-D."""
    inputs = [("x", F, [2, 4, 23])]
    inits = {}
    if op == "ConvTranspose":
        inits = {"w": np.ones((4, 3, 5), F)}
        inputs.append(("w", F, [4, 3, 5]))
    proto = one_node(op, inputs, [("y", F, None)], attrs, inits)
    want = reference_shapes(proto, {"x": np.zeros((2, 4, 23), F)})
    assert output_shapes(proto, tmp_path) == want
    build(proto, tmp_path)


def test_conv_over_four_spatial_dims_is_refused_by_the_support_check(tmp_path):
    proto = one_node("Conv", [("x", F, [1, 2, 3, 3, 3, 3]), ("w", F, [2, 2, 1, 1, 1, 1])], [("y", F, None)],
                     inits={"w": np.ones((2, 2, 1, 1, 1, 1), F)})
    assert support_report(parse(proto, tmp_path))["unsupported"] == [
        {"node": "conv", "op": "Conv", "reason": "Conv over 4 spatial dims (TensorRT convolves 1 to 3)"}]


# ------------------------------------------------------------------ TensorRT's errors


def _network():
    logger = RecordingLogger(RTX.trt)
    builder = RTX.trt.Builder(logger)
    return builder, LowerCtx(RTX, builder.create_network(RTX.network_flags()), logger)


def test_a_refused_layer_reports_tensorrts_first_error_not_its_cuda_follow_up():
    """TensorRT-RTX logs a CUDA error ('driver version is insufficient') after each refused call: the
    first message is the cause."""
    _, ctx = _network()
    x = ctx.network.add_input("x", RTX.trt.float32, (1, 2, 8))
    ctx.begin(ir.Node("", "Conv", [], name="conv"))
    with pytest.raises(TrtcError) as caught:
        ctx.check(ctx.network.add_convolution_nd(x, 4, (3,), RTX.trt.Weights(), RTX.trt.Weights()))
    assert len(ctx.logger.errors) >= 2 and "cudaError" in ctx.logger.errors[-1]
    assert caught.value.message == (
        "TensorRT refused a layer: INetworkDefinition::addConvolutionNd: API Usage Error (Parameter check "
        "failed, condition: (kernelSize).nbDims == 2 || (kernelSize).nbDims == 3)")


def test_an_earlier_nodes_error_is_not_blamed_on_the_next():
    _, ctx = _network()
    ctx.logger.errors.append("an error while lowering an earlier node")
    ctx.begin(ir.Node("", "Relu", [], name="relu"))
    assert ctx.tensorrt_error() is None
    with pytest.raises(TrtcError, match="TensorRT refused a layer: no reason logged"):
        ctx.check(None)


def test_a_refused_layer_names_the_node_and_op(tmp_path, monkeypatch):
    """Whatever a converter does wrong, the user reads the node, its op and TensorRT's first error."""

    def refused(ctx, node):
        x = ctx.tensor(node.inputs[0])
        ctx.check(ctx.network.add_convolution_nd(x, 4, (3,), ctx.trt.Weights(), ctx.trt.Weights()))

    relu = registry.find_converter(ir.Node("", "Relu", []), 18)
    monkeypatch.setitem(registry.CONVERTERS, ("", "Relu"), [dataclasses.replace(relu, fn=refused)])
    proto = one_node("Relu", [("x", F, [1, 2, 8])], [("y", F, [1, 2, 8])])
    with pytest.raises(TrtcError) as caught:
        lower(parse(proto, tmp_path).model, RTX)
    assert caught.value.message.startswith("node 'relu' (Relu): TensorRT refused a layer: "
                                           "INetworkDefinition::addConvolutionNd: API Usage Error")
    assert "cudaError" not in caught.value.message and "\n" not in caught.value.message


def test_a_failed_build_names_the_node_of_the_layer_tensorrt_names(tmp_path):
    """Two run-time dims that cannot broadcast at the profile's shapes: the build fails on 'add'."""
    proto = one_node("Add", [("x", F, ["a", 4]), ("y", F, ["b", 4])], [("z", F, ["c", 4])])
    with pytest.raises(TrtcError) as caught:
        build(proto, tmp_path, {"x": ((2, 4), (2, 4), (2, 4)), "y": ((3, 4), (3, 4), (3, 4))})
    assert caught.value.message == (
        "TensorRT could not build the engine: node 'add' (Add): IBuilder::buildSerializedNetwork: API Usage "
        "Error (IElementWiseLayer add: broadcast dimensions must be conformable)")


def test_a_build_error_names_the_first_layer_it_mentions(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"), helper.make_node("Relu", ["r"], ["y"], name="act_2")]
    lowered = lower(parse(model(nodes, [vi("x", F, [2])], [vi("y", F, [2])]), tmp_path).model, RTX)
    failure = build_failure(lowered, ["Error Code 2: Internal Error ([act_2] failed, then act)", "later"], "m.onnx")
    assert failure.message == "TensorRT could not build the engine: node 'act_2' (Relu): Internal Error ([act_2] " \
                              "failed, then act)"
    assert build_failure(lowered, [], "m.onnx").message == "TensorRT could not build the engine: no reason logged"


def test_first_error_drops_source_locations():
    message = ("IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error (bad In op at /_src/a/b.cpp:1 In "
               "analyzeShapes at /_src/c.cpp:2)")
    assert first_error([message, "second"]) == "IBuilder::buildSerializedNetwork: API Usage Error (bad)"
    assert first_error([]) is None


# ------------------------------------------------------------------ constants of every type


@pytest.mark.parametrize("array, trt_type, values", [
    (np.array([1, -2], np.longlong), "int64", [1, -2]),  # onnxruntime's int64 results are numpy's longlong
    (np.array([2 ** 64 - 1], np.ulonglong), "int64", [-1]),  # uint64 wraps into int64, as legalize's carrier does
    (np.array([3, 4], ">i8"), "int64", [3, 4]),  # big-endian: the values, not the bytes
    (np.array([7], np.uint32), "int64", [7]),
    (np.array([-3, 300], np.int16), "int32", [-3, 300]),
    (np.array([65535], np.uint16), "int32", [65535]),
    (np.array([1.5, 1e300, -1e300, np.inf], np.float64), "float32", [1.5, F32_MAX, -F32_MAX, np.inf]),
    (np.array([0.25], np.longdouble), "float32", [0.25]),
    (np.array([1.0], ">f2"), "float16", [1.0]),
    (np.array([True, False]), "bool", [True, False]),
    (np.array([1.5], ml_dtypes.bfloat16), "bfloat16", [1.5]),
    (np.array([0.5], ml_dtypes.float8_e5m2), "float16", [0.5]),
    (np.array([3], ml_dtypes.uint4), "int8", [3]),
    (np.int64(5), "int64", 5),
])
def test_every_numpy_type_is_held_in_a_tensorrt_type(array, trt_type, values):
    held = held_array(np.asarray(array))
    assert held.shape == np.shape(array) and held.dtype is np.dtype(held.dtype.type)  # the canonical object
    np.testing.assert_array_equal(held.astype(np.float64), np.asarray(values, np.float64))
    _, ctx = _network()
    assert ctx.constant(array).dtype == getattr(RTX.trt, trt_type)


@pytest.mark.parametrize("array", [
    np.zeros((0,), np.int64), np.zeros((2, 0), F), np.zeros((0, 3), np.uint8), np.arange(-3, 2).astype(ml_dtypes.int4),
    np.arange(3).astype(ml_dtypes.float8_e4m3fn), np.arange(6, dtype=np.int64).reshape(2, 3).T, np.array(2.0, F)])
def test_empty_packed_strided_and_scalar_constants_are_made(array):
    _, ctx = _network()
    assert tuple(ctx.constant(array).shape) == array.shape


def test_a_constant_without_a_tensorrt_type_is_one_clear_error():
    _, ctx = _network()
    with pytest.raises(TrtcError, match="a constant of type <U1 has no TensorRT type"):
        ctx.constant(np.array(["a"]))


@pytest.mark.parametrize("op", ["Div", "Add", "Mul"])
@pytest.mark.parametrize("dtype, onnx_type", [(np.int64, TensorProto.INT64), (np.float64, TensorProto.DOUBLE)])
@pytest.mark.parametrize("as_node", [False, True], ids=["initializer", "Constant"])
def test_int64_and_float64_constants_with_tensors_build(tmp_path, op, dtype, onnx_type, as_node):
    """Shifted-window attention divides int64 shapes by constants; old exporters write float64."""
    c = numpy_helper.from_array(np.array([1, 2, 4], dtype), "c")
    nodes = [helper.make_node(op, ["x", "c"], ["y"])]
    if as_node:
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value=c))
    x, y = helper.make_tensor_value_info("x", onnx_type, ["n", 3]), helper.make_tensor_value_info("y", onnx_type,
                                                                                                  ["n", 3])
    proto = model(nodes, [x], [y], None if as_node else {"c": np.array([1, 2, 4], dtype)})
    build(proto, tmp_path, {"x": ((1, 3), (2, 3), (4, 3))})


def test_where_with_a_bool_constant_and_narrow_integer_constants_builds(tmp_path):
    inits = {"keep": np.array([True, False, True]), "small": np.array([1, -2, 3], np.int16),
             "byte": np.array([1, 2, 250], np.uint8)}
    nodes = [helper.make_node("Where", ["keep", "x", "zero"], ["w"]),
             helper.make_node("Cast", ["small"], ["s32"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["byte"], ["b32"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["w", "s32"], ["a"]), helper.make_node("Add", ["a", "b32"], ["y"])]
    inputs = [vi("x", F, ["n", 3]), vi("zero", F, [1])]
    proto = model(nodes, inputs, [vi("y", F, ["n", 3])], inits)
    build(proto, tmp_path, {"x": ((1, 3), (2, 3), (4, 3)), "zero": ((1,), (1,), (1,))})


def test_an_onnxruntime_folded_int64_constant_builds(tmp_path):
    """Folding by onnxruntime leaves numpy `longlong` arrays in the IR, which TensorRT's bindings refused
    ('Could not implicitly convert NumPy data type: i64'): the window count of a shifted-window attention."""
    nodes = [helper.make_node("Div", ["size", "window"], ["count"], name="div_const"),
             helper.make_node("Div", ["x", "count"], ["y"], name="div_windows")]
    inits = {"size": np.array([8, 16, 32], np.int64), "window": np.array([2, 4, 8], np.int64)}
    artifact = parse(model(nodes, [vi("x", np.int64, ["n", 3])], [vi("y", np.int64, ["n", 3])], inits), tmp_path)
    optimize(artifact.model)
    build_engine(artifact.model, artifact.meta, RTX, BuildOptions(profiles=[{"x": ((1, 3), (2, 3), (4, 3))}]))
    proto = one_node("Div", [("x", np.int64, ["n", 3]), ("c", np.int64, [3])], [("y", np.int64, ["n", 3])],
                     inits={"c": np.array([1, 2, 4], np.int64)})
    artifact = parse(proto, tmp_path)  # the same without depending on which folder the pipeline uses
    divisor = next(iter(artifact.model.graph)).inputs[1]
    divisor.const_value = ir.tensor(np.array([1, 2, 4], np.longlong), name=divisor.name)
    build_engine(artifact.model, artifact.meta, RTX, BuildOptions(profiles=[{"x": ((1, 3), (2, 3), (4, 3))}]))


# ------------------------------------------------------------------ the support report refuses what the build refuses


def _if_around(node, inputs, out):
    """node (int64 out, rank 2) inside the then-branch of an If on a run-time condition (else: the input
    itself as int64 [1, n]: both branches of one type, as ONNX's If requires)."""
    then = helper.make_graph([node], "then", [], [out])
    orelse = helper.make_graph(
        [helper.make_node("Cast", [inputs[0].name], [out.name + "_i"], name="same", to=TensorProto.INT64),
         helper.make_node("Unsqueeze", [out.name + "_i", "zero"], [out.name + "_e"], name="row")],
        "else", [], [helper.make_tensor_value_info(out.name + "_e", TensorProto.INT64, None)],
        [numpy_helper.from_array(np.array([0], np.int64), "zero")])
    cond = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=orelse)
    return model([cond], [*inputs, vi("c", np.bool_, [])], [vi("y", np.int64, None)])


REFUSALS = {
    "reduce with run-time axes": one_node(
        "ReduceSum", [("x", F, [2, 3]), ("axes", np.int64, [1])], [("y", F, None)]),
    "NonZero on TensorRT-RTX": one_node("NonZero", [("x", F, [2, 3])], [("y", np.int64, [2, None])]),
    "Compress with a run-time condition": one_node(
        "Compress", [("x", F, [4]), ("keep", np.bool_, [4])], [("y", F, [None])], {"axis": 0}),
    "strided and dilated deconvolution": one_node(
        "ConvTranspose", [("x", F, [1, 1, 5, 5]), ("w", F, [1, 1, 3, 3])], [("y", F, None)],
        {"strides": [2, 2], "dilations": [2, 2]}, {"w": np.ones((1, 1, 3, 3), F)}),
    "a sequence type": model([helper.make_node("SequenceEmpty", [], ["s"], name="seq"),
                              helper.make_node("SequenceLength", ["s"], ["y"], name="len")],
                             [], [vi("y", np.int64, [])]),
    "a 4-D convolution": one_node("Conv", [("x", F, [1, 1, 2, 2, 2, 2]), ("w", F, [1, 1, 1, 1, 1, 1])],
                                  [("y", F, None)], inits={"w": np.ones((1, 1, 1, 1, 1, 1), F)}),
    "a refused node inside an If": _if_around(helper.make_node("NonZero", ["x"], ["nz"], name="inner"),
                                              [vi("x", F, [3])], vi("nz", np.int64, None)),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_support_report_lists_what_the_build_refuses_with_its_reason(tmp_path, case):
    report = support_report(parse(REFUSALS[case], tmp_path))
    assert not report["supported"] and report["unsupported"]
    with pytest.raises(TrtcError) as caught:
        build(REFUSALS[case], tmp_path)
    for problem in report["unsupported"]:
        assert f"{problem['node']} ({problem['op']}): {problem['reason']}" in caught.value.message


def test_backend_specific_refusals_follow_the_backend(tmp_path):
    """NonZero is refused for TensorRT-RTX, not for full TensorRT."""
    proto = REFUSALS["NonZero on TensorRT-RTX"]
    assert support_report(parse(proto, tmp_path), backend="tensorrt")["supported"]
    assert "TensorRT-RTX has no NonZero" in support_report(parse(proto, tmp_path),
                                                           backend="tensorrt-rtx")["unsupported"][0]["reason"]


def test_what_the_support_report_accepts_lowers(tmp_path):
    """The 1-D Conv the report called supported while the build failed now lowers."""
    proto = one_node("Conv", [("x", F, [1, 2, 16]), ("w", F, [4, 2, 3])], [("y", F, None)],
                     inits={"w": np.ones((4, 2, 3), F)})
    assert support_report(parse(proto, tmp_path))["supported"]
    assert output_shapes(proto, tmp_path) == [(1, 4, 14)]


def test_support_checks_run_before_any_layer_is_added(tmp_path, monkeypatch):
    """The lowering refuses through the same checks: a converter never runs for a refused node."""
    called = []
    non_zero = registry.find_converter(ir.Node("", "NonZero", []), 18)
    monkeypatch.setitem(registry.CONVERTERS, ("", "NonZero"),
                        [dataclasses.replace(non_zero, fn=lambda ctx, node: called.append(node))])
    with pytest.raises(TrtcError, match="TensorRT-RTX has no NonZero"):
        lower(parse(REFUSALS["NonZero on TensorRT-RTX"], tmp_path).model, RTX)
    assert not called
