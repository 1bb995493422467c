"""Quantization, control flow, recurrent and the remaining converters (GridSample, RoiAlign,
DeformConv, NMS, windows, random, STFT): built with TensorRT-RTX (the dtype/shape agreement check
runs inside; numerics need a GPU), the layers they choose, and the constraints that refuse the rest."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from trtc.lower.backend import load_backend  # noqa: E402
from trtc.lower.network import lower  # noqa: E402
from trtc.lower.registry import support_issue  # noqa: E402

from lowerutil import build, parse  # noqa: E402

F32, F16, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL
I64, I32, I8, U8 = TensorProto.INT64, TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8
FP8, I4 = TensorProto.FLOAT8E4M3FN, TensorProto.INT4


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def graph_model(nodes, inputs, outputs, inits=(), opset=18):
    for index, node in enumerate(nodes):
        node.name = node.name or f"{node.op_type.lower()}_{index}"
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)])


def one_node(op, inputs, outputs, value_inputs, value_outputs, inits=(), opset=18, **attrs):
    return graph_model([helper.make_node(op, inputs, outputs, **attrs)], value_inputs, value_outputs, inits, opset)




def layer_types(proto, tmp_path: Path) -> list[str]:
    network = lower(parse(proto, tmp_path).model, load_backend("tensorrt-rtx")).network
    return [network.get_layer(i).type.name for i in range(network.num_layers)]


def issue(proto, tmp_path: Path) -> str | None:
    model = parse(proto, tmp_path).model
    opset = model.opset_imports.get("", 18)
    return next((r for r in (support_issue(n, opset) for n in model.graph) if r), None)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


# ------------------------------------------------------------------ QuantizeLinear / DequantizeLinear


def test_int8_qdq_per_channel_uses_native_layers(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    inits = [const("s", np.full(3, 0.1, np.float32)), const("z", np.zeros(3, np.int8))]
    proto = graph_model(nodes, [vi("x", F32, ["n", 3, 4, 4])], [vi("y", F32, ["n", 3, 4, 4])], inits)
    types = layer_types(proto, tmp_path)
    assert "QUANTIZE" in types and "DEQUANTIZE" in types
    build(proto, tmp_path, {"x": ((1, 3, 4, 4), (2, 3, 4, 4), (8, 3, 4, 4))})


def test_uint8_with_zero_point_is_exact_arithmetic(tmp_path):
    """TensorRT has no asymmetric or UINT8 quantization: round, shift, clip and cast instead. (A UINT8
    tensor may only be network I/O in TensorRT, so the Q and DQ here meet the network's edges.)"""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q_in", "s", "z"], ["y"])]
    inits = [const("s", np.float32(0.05)), const("z", np.uint8(128))]
    proto = graph_model(nodes, [vi("x", F32, [2, 8]), vi("q_in", U8, [2, 8])],
                        [vi("q", U8, [2, 8]), vi("y", F32, [2, 8])], inits)
    types = layer_types(proto, tmp_path)
    assert "QUANTIZE" not in types and "DEQUANTIZE" not in types and "UNARY" in types  # the rounding
    build(proto, tmp_path)


def test_int4_blocked_weight_dequantize(tmp_path):
    """A weight-only int4 pattern: packed int4 constant, blocked fp16 scales, then MatMul."""
    weights = numpy_helper.from_array(np.arange(-8, 8).repeat(4).reshape(16, 4).astype(ml_dtypes.int4), "w")
    scales = const("s", np.full((4, 4), 0.5, np.float16))
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0, block_size=4),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    proto = graph_model(nodes, [vi("x", F16, [2, 16])], [vi("y", F16, [2, 4])], [weights, scales], opset=21)
    build(proto, tmp_path)


def test_fp8_quantize_then_dequantize(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    zero = numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z")
    proto = graph_model(nodes, [vi("x", F32, [4, 8])], [vi("y", F32, [4, 8])], [const("s", np.float32(2.0)), zero],
                        opset=21)
    assert "QUANTIZE" in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def test_blocks_that_do_not_divide_the_axis_decompose(tmp_path):
    proto = one_node("DequantizeLinear", ["x", "s"], ["y"], [vi("x", I8, [2, 5])], [vi("y", F32, [2, 5])],
                     [const("s", np.full((2, 3), 0.5, np.float32))], opset=21, axis=1, block_size=2)
    assert "DEQUANTIZE" not in layer_types(proto, tmp_path)
    build(proto, tmp_path)


@pytest.mark.parametrize(("proto", "reason"), [
    (one_node("DequantizeLinear", ["x", "s"], ["y"], [vi("x", I4, [5])], [vi("y", F32, [5])],
              [const("s", np.float32(1.0))], opset=21), "odd number of elements"),
    (one_node("QuantizeLinear", ["x", "s", "z"], ["y"], [vi("x", F32, [4])], [vi("y", FP8, [4])],
              [const("s", np.float32(1.0)), numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z")],
              opset=21, saturate=0), "saturate=0 not supported"),
    (one_node("DequantizeLinear", ["x", "s"], ["y"], [vi("x", TensorProto.INT16, [4])], [vi("y", F32, [4])],
              [const("s", np.float32(1.0))], opset=21), "INT16, which TensorRT does not support"),
])
def test_quantize_constraints(proto, reason, tmp_path):
    assert reason in (issue(proto, tmp_path) or "")


# ------------------------------------------------------------------ If / Loop / Scan


def branch(name, value_node, out_shape):
    return helper.make_graph([value_node], name, [], [vi(f"{name}_out", F32, out_shape)])


def test_if_with_runtime_condition_builds_a_conditional(tmp_path):
    then = branch("then", helper.make_node("Add", ["x", "x"], ["then_out"]), [3])
    other = branch("else", helper.make_node("Constant", [], ["else_out"],
                                            value=numpy_helper.from_array(np.ones(3, np.float32))), [3])
    proto = one_node("If", ["c"], ["y"], [vi("c", BOOL, []), vi("x", F32, [3])], [vi("y", F32, [3])],
                     then_branch=then, else_branch=other)
    assert "CONDITION" in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def test_if_with_constant_condition_inlines_the_branch(tmp_path):
    then = branch("then", helper.make_node("Neg", ["x"], ["then_out"]), [3])
    other = branch("else", helper.make_node("Constant", [], ["else_out"],
                                            value=numpy_helper.from_array(np.ones(4, np.float32))), [4])
    proto = one_node("If", ["c"], ["y"], [vi("x", F32, [3])], [vi("y", F32, None)], [const("c", np.array(True))],
                     then_branch=then, else_branch=other)
    assert "CONDITION" not in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def test_if_branches_of_different_shapes_need_a_constant_condition(tmp_path):
    then = branch("then", helper.make_node("Neg", ["x"], ["then_out"]), [3])
    other = branch("else", helper.make_node("Constant", [], ["else_out"],
                                            value=numpy_helper.from_array(np.ones(4, np.float32))), [4])
    proto = one_node("If", ["c"], ["y"], [vi("c", BOOL, []), vi("x", F32, [3])], [vi("y", F32, None)],
                     then_branch=then, else_branch=other)
    assert "same shape" in issue(proto, tmp_path)


def test_if_reports_an_unsupported_branch_node(tmp_path):
    then = branch("then", helper.make_node("Neg", ["x"], ["then_out"]), [3])
    other = branch("else", helper.make_node("Det", ["m"], ["else_out"]), [3])
    proto = one_node("If", ["c"], ["y"], [vi("c", BOOL, []), vi("x", F32, [3]), vi("m", F32, [3, 2, 2])],
                     [vi("y", F32, [3])], then_branch=then, else_branch=other)
    assert "else_branch node" in issue(proto, tmp_path) and "Det" in issue(proto, tmp_path)


# At opset 18 the frontend leaves a loop body's intermediate values untyped (it types them when it
# converts an older opset), which the converters' type check refuses: build these at opset 17.
LOOP_OPSET = 17


def loop_body(cond_node):
    """(i, cond, acc) -> (cond', acc * 2 + 1, scan: acc)."""
    nodes = [cond_node, helper.make_node("Add", ["acc", "acc"], ["twice"]),
             helper.make_node("Add", ["twice", "one"], ["acc_out"]), helper.make_node("Identity", ["acc"], ["scan"])]
    return helper.make_graph(nodes, "body", [vi("i", I64, []), vi("cond_in", BOOL, []), vi("acc", F32, [])],
                             [vi("cond_out", BOOL, []), vi("acc_out", F32, []), vi("scan", F32, [])],
                             [const("one", np.float32(1.0))])


def test_counted_loop_with_scan_output(tmp_path):
    body = loop_body(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    proto = one_node("Loop", ["m", "", "a0"], ["acc", "all"], [vi("a0", F32, [])],
                     [vi("acc", F32, []), vi("all", F32, [5])], [const("m", np.int64(5))], opset=LOOP_OPSET, body=body)
    assert "LOOP_OUTPUT" in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def test_while_loop_with_changing_condition(tmp_path):
    nodes = [helper.make_node("Add", ["acc", "one"], ["acc_out"]), helper.make_node("Less", ["acc_out", "limit"],
                                                                                 ["cond_out"])]
    body = helper.make_graph(nodes, "body", [vi("i", I64, []), vi("cond_in", BOOL, []), vi("acc", F32, [])],
                             [vi("cond_out", BOOL, []), vi("acc_out", F32, [])], [const("one", np.float32(1.0))])
    proto = one_node("Loop", ["", "c0", "a0"], ["acc"], [vi("a0", F32, []), vi("limit", F32, [])],
                     [vi("acc", F32, [])], [const("c0", np.array(True))], opset=LOOP_OPSET, body=body)
    build(proto, tmp_path)


def test_scan_outputs_need_a_fixed_trip_count(tmp_path):
    body = loop_body(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    proto = one_node("Loop", ["m", "c", "a0"], ["acc", "all"], [vi("c", BOOL, []), vi("a0", F32, [])],
                     [vi("acc", F32, []), vi("all", F32, [5])], [const("m", np.int64(5))], opset=LOOP_OPSET,
                     body=body)
    assert "scan outputs need a trip count" in issue(proto, tmp_path)


def test_scan_reverse_along_axis_1(tmp_path):
    nodes = [helper.make_node("Add", ["s", "x_t"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])]
    body = helper.make_graph(nodes, "body", [vi("s", F32, [2]), vi("x_t", F32, [2])],
                             [vi("s_out", F32, [2]), vi("y_t", F32, [2])])
    proto = one_node("Scan", ["s0", "x"], ["s", "ys"], [vi("s0", F32, [2]), vi("x", F32, [2, 5])],
                     [vi("s", F32, [2]), vi("ys", F32, [2, 5])], body=body, num_scan_inputs=1,
                     scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1])
    build(proto, tmp_path)


# ------------------------------------------------------------------ RNN / GRU / LSTM


def recurrent(op, gates, hidden=8, inputs=4, directions=1, batch="b", extra=(), **attrs):
    names = ["x", "w", "r", "bias", *extra]
    values = [vi("x", F32, [5, batch, inputs])]
    inits = [const("w", np.random.default_rng(0).standard_normal((directions, gates * hidden, inputs), np.float32)),
             const("r", np.random.default_rng(1).standard_normal((directions, gates * hidden, hidden), np.float32)),
             const("bias", np.zeros((directions, 2 * gates * hidden), np.float32))]
    if "lens" in extra:
        values.append(vi("lens", I32, [batch]))
    outputs = [vi("y", F32, [5, directions, batch, hidden]), vi("y_h", F32, [directions, batch, hidden])]
    return one_node(op, names, ["y", "y_h"], values, outputs, inits, hidden_size=hidden, **attrs)


def test_bidirectional_lstm_with_sequence_lengths(tmp_path):
    proto = recurrent("LSTM", 4, directions=2, extra=("lens",), direction="bidirectional")
    assert layer_types(proto, tmp_path).count("TRIP_LIMIT") == 2
    build(proto, tmp_path, {"x": ((5, 1, 4), (5, 2, 4), (5, 8, 4)), "lens": ((1,), (2,), (8,))})


def test_gru_linear_before_reset_reverse(tmp_path):
    build(recurrent("GRU", 3, batch=2, direction="reverse", linear_before_reset=1), tmp_path)


def test_rnn_with_clip_and_activation_parameters(tmp_path):
    build(recurrent("RNN", 1, batch=2, activations=["LeakyRelu"], activation_alpha=[0.2], clip=3.0), tmp_path)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"activations": ["Gelu"]}, "activation 'Gelu' is not supported"),
    ({"input_forget": 1}, "input_forget=1 not supported"),
])
def test_recurrent_constraints(attrs, reason, tmp_path):
    assert reason in issue(recurrent("LSTM", 4, batch=2, **attrs), tmp_path)


# ------------------------------------------------------------------ sampling and the rest


def test_grid_sample_2d_uses_the_layer(tmp_path):
    proto = one_node("GridSample", ["x", "g"], ["y"], [vi("x", F32, [1, 3, 8, 8]), vi("g", F32, [1, 4, 4, 2])],
                     [vi("y", F32, [1, 3, 4, 4])], opset=20, mode="cubic", padding_mode="reflection")
    assert "GRID_SAMPLE" in layer_types(proto, tmp_path)
    build(proto, tmp_path)


def volume_sample(**attrs):
    return one_node("GridSample", ["x", "g"], ["y"], [vi("x", F32, ["n", 3, 4, 4, 4]), vi("g", F32, ["n", 2, 2, 2, 3])],
                    [vi("y", F32, ["n", 3, 2, 2, 2])], opset=20, **attrs)


def test_grid_sample_3d_by_gathers(tmp_path):
    proto = volume_sample(mode="linear", padding_mode="border", align_corners=1)
    assert "GRID_SAMPLE" not in layer_types(proto, tmp_path)
    build(proto, tmp_path, {"x": ((1, 3, 4, 4, 4), (2, 3, 4, 4, 4), (4, 3, 4, 4, 4)),
                            "g": ((1, 2, 2, 2, 3), (2, 2, 2, 2, 3), (4, 2, 2, 2, 3))})


def test_grid_sample_3d_cubic_is_refused(tmp_path):
    assert "not cubic/zeros" in issue(volume_sample(mode="cubic"), tmp_path)


def test_roi_align_max_with_dynamic_roi_count(tmp_path):
    proto = one_node("RoiAlign", ["x", "rois", "idx"], ["y"],
                     [vi("x", F32, [2, 3, 16, 16]), vi("rois", F32, ["r", 4]), vi("idx", I64, ["r"])],
                     [vi("y", F32, ["r", 3, 4, 4])], mode="max", output_height=4, output_width=4, sampling_ratio=2,
                     spatial_scale=0.5)
    build(proto, tmp_path, {"rois": ((1, 4), (5, 4), (20, 4)), "idx": ((1,), (5,), (20,))})


def test_roi_align_needs_a_fixed_sampling_ratio(tmp_path):
    proto = one_node("RoiAlign", ["x", "rois", "idx"], ["y"],
                     [vi("x", F32, [1, 3, 16, 16]), vi("rois", F32, [2, 4]), vi("idx", I64, [2])],
                     [vi("y", F32, [2, 3, 4, 4])], output_height=4, output_width=4)
    assert "sampling_ratio must be positive" in issue(proto, tmp_path)


def test_deform_conv_with_groups_mask_and_bias(tmp_path):
    inits = [const("w", np.ones((4, 2, 3, 3), np.float32)), const("b", np.ones(4, np.float32))]
    proto = one_node("DeformConv", ["x", "w", "off", "b", "mask"], ["y"],
                     [vi("x", F32, ["n", 4, 8, 8]), vi("off", F32, ["n", 2 * 2 * 9, 8, 8]),
                      vi("mask", F32, ["n", 2 * 9, 8, 8])], [vi("y", F32, ["n", 4, 8, 8])], inits, opset=19,
                     group=2, offset_group=2, pads=[1, 1, 1, 1])
    build(proto, tmp_path, {"x": ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 8, 8)),
                            "off": ((1, 36, 8, 8), (2, 36, 8, 8), (4, 36, 8, 8)),
                            "mask": ((1, 18, 8, 8), (2, 18, 8, 8), (4, 18, 8, 8))})


def test_nms_is_refused_on_tensorrt_rtx(tmp_path):
    proto = one_node("NonMaxSuppression", ["boxes", "scores", "limit"], ["sel"],
                     [vi("boxes", F32, [1, 6, 4]), vi("scores", F32, [1, 1, 6])], [vi("sel", I64, [None, 3])],
                     [const("limit", np.array([3], np.int64))], opset=11)
    assert "TensorRT-RTX has no NonMaxSuppression kernel" in issue(proto, tmp_path)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
def test_windows_constant_and_runtime_size(op, tmp_path):
    constant = one_node(op, ["n"], ["y"], [], [vi("y", F32, [10])], [const("n", np.int32(10))], opset=17, periodic=0)
    assert layer_types(constant, tmp_path) == ["CONSTANT"]
    runtime = one_node(op, ["n"], ["y"], [vi("n", I32, [])], [vi("y", F32, [10])], opset=17)
    build(runtime, tmp_path)


def test_random_generators(tmp_path):
    nodes = [helper.make_node("RandomNormal", [], ["a"], shape=[2, 3], mean=1.0, scale=0.5, seed=3.0),
             helper.make_node("RandomUniformLike", ["x"], ["b"], low=-1.0, high=1.0, dtype=F16)]
    proto = graph_model(nodes, [vi("x", F32, ["n", 3])], [vi("a", F32, [2, 3]), vi("b", F16, ["n", 3])])
    build(proto, tmp_path, {"x": ((1, 3), (2, 3), (4, 3))})


def test_stft_with_window_and_constant_step(tmp_path):
    inits = [const("step", np.int64(8)), const("window", np.hanning(16).astype(np.float32))]
    proto = one_node("STFT", ["x", "step", "window"], ["y"], [vi("x", F32, [2, 128, 1])],
                     [vi("y", F32, [2, 15, 9, 2])], inits, opset=17)
    build(proto, tmp_path)


def test_stft_needs_a_known_frame_length(tmp_path):
    proto = one_node("STFT", ["x", "step", "", "length"], ["y"],
                     [vi("x", F32, [1, 128, 1]), vi("length", I64, [])], [vi("y", F32, None)],
                     [const("step", np.int64(8))], opset=17)
    assert "frame length must be known" in issue(proto, tmp_path)


def test_legacy_image_scaler_and_parametric_softplus(tmp_path):
    """Not in current ONNX (the frontend refuses them), so lowered from IR built by hand."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 3, 4, 4]))
    scaler = ir.Node("", "ImageScaler", [x], attributes=[ir.AttrFloat32("scale", 2.0),
                                                         ir.AttrFloat32s("bias", [1.0, 2.0, 3.0])], name="scaler")
    softplus = ir.Node("", "ParametricSoftplus", scaler.outputs, attributes=[ir.AttrFloat32("alpha", 2.0)],
                       name="softplus")
    for value in (*scaler.outputs, *softplus.outputs):
        value.type, value.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([1, 3, 4, 4])
    softplus.outputs[0].name = "y"
    graph = ir.Graph([x], softplus.outputs, nodes=[scaler, softplus], opset_imports={"": 18})
    network = lower(ir.Model(graph, ir_version=10), load_backend("tensorrt-rtx")).network
    assert network.num_outputs == 1


def test_dft_real_one_sided_and_inverse(tmp_path):
    nodes = [helper.make_node("DFT", ["x"], ["spectrum"], axis=1, onesided=1),
             helper.make_node("DFT", ["spectrum"], ["back"], axis=1, inverse=1, onesided=1)]
    proto = graph_model(nodes, [vi("x", F32, ["b", 16, 3, 1])],
                        [vi("spectrum", F32, ["b", 9, 3, 2]), vi("back", F32, ["b", 16, 3, 1])], opset=19)
    build(proto, tmp_path, {"x": ((1, 16, 3, 1), (2, 16, 3, 1), (4, 16, 3, 1))})


def test_dft_needs_a_constant_axis(tmp_path):
    proto = one_node("DFT", ["x", "", "axis"], ["y"], [vi("x", F32, [1, 8, 1]), vi("axis", I64, [])],
                     [vi("y", F32, [1, 8, 2])], opset=20)
    assert "axis must be a constant" in issue(proto, tmp_path)
