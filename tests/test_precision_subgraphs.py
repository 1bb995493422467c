"""The precision pass inside If/Loop/Scan bodies: body nodes are typed by the same rules (fp16, or
fp32 with a reason), from values observed inside the bodies; the bodies' interfaces keep the types
their If/Loop/Scan declares; the typed model is valid ONNX (strict types), runs in onnxruntime,
is predicted accurate, and builds with TensorRT-RTX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.ir.onnx_export import to_model_proto
from trtc.ir.walk import all_graphs
from trtc.precision import PrecisionOptions, apply_precision
from trtc.precision.observe import observe
from trtc.precision.subgraphs import complete_body_types, ensure_unique_names
from trtc.reference.runner import ReferenceRunner

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
HIDDEN = 32
REAL = Path(__file__).resolve().parents[2] / "shared" / "models" / "real"


def _weights(seed: int, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _model(nodes, inputs, outputs, inits, opset: int = 18) -> ir.Model:
    """A hand-built model, parsed as the CLI parses it (shapes inferred)."""
    from trtc.frontend.shapes import infer_shapes

    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    return model


def if_model() -> ir.Model:
    """y = If(mode == 1) {then: Softmax(MatMul(Relu(MatMul(x, w1)), w2) * 0.5)
                          else: Relu(MatMul(x, w3)) + bias (bias: an initializer of the branch)}.
    The branches read x and the weights from the outer scope; both write `h` (ONNX allows it)."""
    then_branch = helper.make_graph([
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="then_fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="then_relu"),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="then_fc2"),
        helper.make_node("Mul", ["logits", "half"], ["scaled"], name="then_scale"),
        helper.make_node("Softmax", ["scaled"], ["y_then"], name="then_softmax", axis=-1),
    ], "then", [], [helper.make_tensor_value_info("y_then", F32, None)])
    else_branch = helper.make_graph([
        helper.make_node("MatMul", ["x", "w3"], ["h"], name="else_fc"),
        helper.make_node("Relu", ["h"], ["r_else"], name="else_relu"),
        helper.make_node("Add", ["r_else", "bias"], ["y_else"], name="else_bias"),
    ], "else", [], [helper.make_tensor_value_info("y_else", F32, None)],
        [_init("bias", _weights(4, (HIDDEN,), 0.1))])
    nodes = [
        helper.make_node("Equal", ["mode", "one"], ["cond"], name="is_one"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    inits = [_init("w1", _weights(1, (HIDDEN, HIDDEN), 0.2)), _init("w2", _weights(2, (HIDDEN, HIDDEN), 0.2)),
             _init("w3", _weights(3, (HIDDEN, HIDDEN), 0.2)), _init("half", np.array(0.5, np.float32)),
             _init("one", np.array(1, np.int64))]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 8, HIDDEN]),
                          helper.make_tensor_value_info("mode", I64, [])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 8, HIDDEN])], inits)


def if_samples(modes=(1, 0, 1)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(10)
    return [{"x": rng.standard_normal((2, 8, HIDDEN)).astype(np.float32), "mode": np.array(m, np.int64)}
            for m in modes]


def loop_model() -> ir.Model:
    """h_T = Loop(trip count T) {h' = Tanh(MatMul(h, w) + Mul(x, 0.5)); scan output h'}: MatMul+Add on
    the carried state h, one type across iterations; 0.5 is a Constant node of the body."""
    body = helper.make_graph([
        helper.make_node("MatMul", ["h_in", "w"], ["hw"], name="body_fc"),
        helper.make_node("Constant", [], ["half"], name="body_half",
                         value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["x", "half"], ["xs"], name="body_input_scale"),
        helper.make_node("Add", ["hw", "xs"], ["pre"], name="body_add"),
        helper.make_node("Tanh", ["pre"], ["h_out"], name="body_tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        helper.make_node("Identity", ["h_out"], ["h_scan"], name="body_scan"),
    ], "body", [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
                helper.make_tensor_value_info("h_in", F32, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("h_out", F32, None),
         helper.make_tensor_value_info("h_scan", F32, None)])
    nodes = [helper.make_node("Loop", ["trips", "true", "h0"], ["h_final", "h_all"], name="loop", body=body)]
    inits = [_init("w", _weights(5, (HIDDEN, HIDDEN), 0.15)), _init("trips", np.array(5, np.int64)),
             _init("true", np.array(True))]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", HIDDEN]),
                          helper.make_tensor_value_info("h0", F32, ["batch", HIDDEN])],
                  [helper.make_tensor_value_info("h_final", F32, ["batch", HIDDEN]),
                   helper.make_tensor_value_info("h_all", F32, [5, "batch", HIDDEN])], inits)


def loop_samples(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [{"x": rng.standard_normal((2, HIDDEN)).astype(np.float32),
             "h0": rng.standard_normal((2, HIDDEN)).astype(np.float32)} for _ in range(n)]


def scan_model() -> ir.Model:
    """Scan over time: s' = Relu(MatMul(s, w) + x_t); y_t = s'."""
    body = helper.make_graph([
        helper.make_node("MatMul", ["s_in", "w"], ["sw"], name="scan_fc"),
        helper.make_node("Add", ["sw", "x_t"], ["pre"], name="scan_add"),
        helper.make_node("Relu", ["pre"], ["s_out"], name="scan_relu"),
        helper.make_node("Identity", ["s_out"], ["y_t"], name="scan_out"),
    ], "body", [helper.make_tensor_value_info("s_in", F32, [2, HIDDEN]),
                helper.make_tensor_value_info("x_t", F32, [2, HIDDEN])],
        [helper.make_tensor_value_info("s_out", F32, [2, HIDDEN]),
         helper.make_tensor_value_info("y_t", F32, [2, HIDDEN])])
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], name="scan", body=body, num_scan_inputs=1)]
    return _model(nodes, [helper.make_tensor_value_info("s0", F32, [2, HIDDEN]),
                          helper.make_tensor_value_info("xs", F32, [6, 2, HIDDEN])],
                  [helper.make_tensor_value_info("s_final", F32, [2, HIDDEN]),
                   helper.make_tensor_value_info("ys", F32, [6, 2, HIDDEN])],
                  [_init("w", _weights(6, (HIDDEN, HIDDEN), 0.15))])


def scan_samples(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(12)
    return [{"s0": rng.standard_normal((2, HIDDEN)).astype(np.float32),
             "xs": rng.standard_normal((6, 2, HIDDEN)).astype(np.float32)} for _ in range(n)]


def nested_model() -> ir.Model:
    """A Loop whose body holds an If on the iteration number's parity: odd iterations multiply by
    w_odd, even ones by w_even, so each branch runs on some iterations only."""
    def branch(tag: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph([
            helper.make_node("MatMul", ["h_in", weight], [f"m_{tag}"], name=f"{tag}_fc"),
            helper.make_node("Relu", [f"m_{tag}"], [f"h_{tag}"], name=f"{tag}_relu"),
        ], tag, [], [helper.make_tensor_value_info(f"h_{tag}", F32, None)])

    body = helper.make_graph([
        helper.make_node("Mod", ["i", "two"], ["parity"], name="parity"),
        helper.make_node("Equal", ["parity", "zero"], ["even"], name="is_even"),
        helper.make_node("If", ["even"], ["h_next"], name="step", then_branch=branch("even", "w_even"),
                         else_branch=branch("odd", "w_odd")),
        helper.make_node("Add", ["h_next", "h_in"], ["h_out"], name="residual"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
    ], "body", [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
                helper.make_tensor_value_info("h_in", F32, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("h_out", F32, None)])
    nodes = [helper.make_node("Loop", ["trips", "", "h0"], ["h_final"], name="outer", body=body)]
    inits = [_init("w_even", _weights(7, (HIDDEN, HIDDEN), 0.1)), _init("w_odd", _weights(8, (HIDDEN, HIDDEN), 0.1)),
             _init("two", np.array(2, np.int64)), _init("zero", np.array(0, np.int64)),
             _init("trips", np.array(3, np.int64))]
    return _model(nodes, [helper.make_tensor_value_info("h0", F32, ["batch", HIDDEN])],
                  [helper.make_tensor_value_info("h_final", F32, ["batch", HIDDEN])], inits)


def nested_samples(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(13)
    return [{"h0": rng.standard_normal((2, HIDDEN)).astype(np.float32)} for _ in range(n)]


# ------------------------------------------------------------------ helpers


def prepared(model: ir.Model) -> ir.Model:
    """Names unique over all graphs and body values typed, as apply_precision does first."""
    ensure_unique_names(model)
    complete_body_types(model)
    return model


def body_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for graph in list(all_graphs(model.graph))[1:] for node in graph]


def assert_valid_and_runs(model: ir.Model, samples, reference_outputs=None) -> None:
    """Strict ONNX types (full_check), and onnxruntime runs it itself (no onnx.reference fallback)."""
    proto = to_model_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    runner = ReferenceRunner(model)
    try:
        for feeds in samples:
            results = runner.run(feeds)
            assert all(np.isfinite(v).all() for v in results.values() if isinstance(v, np.ndarray))
        assert runner.fallback_reason is None, runner.fallback_reason
    finally:
        runner.close()


def assert_accurate(report) -> None:
    assert report.predicted
    for name, m in report.predicted.items():
        assert m["nonfinite"] == 0 and m["cosine"] >= 0.999 and m["max_rel_error"] <= 1e-2, (name, m)


def lowered_types(model: ir.Model) -> dict[str, ir.DataType]:
    return {v.name: v.dtype for graph in all_graphs(model.graph) for node in graph for v in node.outputs}


# ------------------------------------------------------------------ observation


def test_observation_sees_values_inside_bodies():
    """Each branch's values are observed on the samples that took it; the Loop's per iteration
    (computed `trips` times per sample); both branches of the If nested in a Loop."""
    model = prepared(if_model())
    samples = if_samples((1, 0, 1))
    obs = observe(model, samples)
    assert obs.body_error is None
    assert obs.runs["logits"] == 2 and obs.runs["r_else"] == 1
    x = samples[0]["x"]
    weights = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}
    expected = max(np.abs(np.maximum(s["x"] @ weights["w1"], 0) @ weights["w2"]).max()
                   for s in (samples[0], samples[2]))
    assert obs.max_abs["logits"] == pytest.approx(float(expected), rel=1e-5)
    assert obs.shapes["logits"] == x.shape

    loop = prepared(loop_model())
    obs = observe(loop, loop_samples(2))
    assert obs.runs["hw"] == 2 * 5 and obs.shapes["hw"] == (2, HIDDEN) and 0 < obs.max_abs["h_out"] <= 1

    nested = prepared(nested_model())
    obs = observe(nested, nested_samples(2))
    assert obs.runs["m_even"] == 2 * 2 and obs.runs["m_odd"] == 2 * 1 and obs.runs["h_out"] == 2 * 3


def test_observation_follows_a_state_that_grows():
    """A Loop-carried value that grows every iteration (a Concat: scan outputs of it would have
    another shape each iteration, which onnxruntime refuses): its statistics carry the last shape
    and the peak over all iterations."""
    body = helper.make_graph([
        helper.make_node("Mul", ["seq_in", "two"], ["doubled"], name="double"),
        helper.make_node("Concat", ["doubled", "seed"], ["seq_out"], name="grow", axis=0),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
    ], "body", [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
                helper.make_tensor_value_info("seq_in", F32, [None, 4])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("seq_out", F32, [None, 4])])
    model = prepared(_model([helper.make_node("Loop", ["trips", "", "seed"], ["seq"], name="grower", body=body)],
                            [helper.make_tensor_value_info("seed", F32, [1, 4])],
                            [helper.make_tensor_value_info("seq", F32, [None, 4])],
                            [_init("trips", np.array(4, np.int64)), _init("two", np.array(2.0, np.float32))]))
    seed = np.full((1, 4), 3.0, np.float32)
    obs = observe(model, [{"seed": seed}])
    assert obs.body_error is None and obs.runs["seq_out"] == 4
    assert obs.shapes["seq_out"] == (5, 4) and obs.shapes["doubled"] == (4, 4)
    assert obs.max_abs["doubled"] == 3.0 * 2**4 and obs.outputs[0]["seq"].shape == (5, 4)


def test_observation_copy_leaves_the_outputs_alone():
    """The statistics nodes only read: the fp32 reference outputs equal the plain model's."""
    model = prepared(nested_model())
    samples = nested_samples(1)
    obs = observe(model, samples)
    runner = ReferenceRunner(model)
    try:
        plain = runner.run(samples[0])
    finally:
        runner.close()
    np.testing.assert_array_equal(obs.outputs[0]["h_final"], plain["h_final"])


# ------------------------------------------------------------------ typing


FP16 = PrecisionOptions(target="fp16")
# case -> (model, samples, nodes that must compute in fp16, TensorRT profile of the dynamic inputs)
CASES = {
    "if": (if_model, if_samples, {"then_fc1", "then_relu", "then_fc2", "else_fc", "else_relu", "else_bias"},
           {"x": ((1, 8, HIDDEN), (2, 8, HIDDEN), (4, 8, HIDDEN))}),
    "loop": (loop_model, loop_samples, {"body_fc", "body_add", "body_tanh"},
             {"x": ((1, HIDDEN), (2, HIDDEN), (4, HIDDEN)), "h0": ((1, HIDDEN), (2, HIDDEN), (4, HIDDEN))}),
    "scan": (scan_model, scan_samples, {"scan_fc", "scan_add", "scan_relu"}, None),
    "nested": (nested_model, nested_samples, {"even_fc", "even_relu", "odd_fc", "odd_relu"},
               {"h0": ((1, HIDDEN), (2, HIDDEN), (4, HIDDEN))}),
}
LOW = ir.DataType.FLOAT16


def typed(case: str):
    make, samples, _, _ = CASES[case]
    model, data = make(), samples()
    return model, data, apply_precision(model, data, FP16)


def assert_interfaces_declared(model: ir.Model) -> None:
    """Every If/Loop/Scan and every body keeps its fp32 interface: inputs, outputs, loop-carried."""
    for graph in all_graphs(model.graph):
        for node in graph:
            if node.op_type in ("If", "Loop", "Scan"):
                assert all(v.dtype != LOW for v in node.outputs), node.name
                assert all(v is None or v.dtype != LOW for v in node.inputs), node.name
        if graph is not model.graph:
            assert all(v.dtype != LOW for v in [*graph.inputs, *graph.outputs]), graph.name


@pytest.mark.parametrize("case", list(CASES))
def test_body_nodes_are_typed_and_the_model_stays_valid(case):
    model, data, report = typed(case)
    low = CASES[case][2]
    types = lowered_types(model)
    nodes = {n.name: n for n in body_nodes(model)}
    assert low <= set(nodes)
    if case == "loop":  # the body's Constant is a weight: converted beside it for its fp16 reader
        assert any(n.op_type == "Constant" and n.outputs[0].dtype == LOW for n in nodes.values())
    for name in low:
        assert all(v.dtype == LOW for v in nodes[name].outputs), (name, report.fp32_nodes.get(name))
    # Every other float node in a body is fp16 too, or fp32 with its reason in the report.
    for name, node in nodes.items():
        if node.op_type in ("Cast", "Constant", "If", "Loop", "Scan") or name.endswith("__element") \
                or name in report.fp32_nodes:
            continue
        assert all(types[v.name] != ir.DataType.FLOAT for v in node.outputs), name
    assert all(e["reason"] for e in report.fp32_nodes.values())
    assert report.low_nodes >= len(low) and report.flop_share > 0.9
    assert report.subgraphs and all(b["reason"] is None and b["low_nodes"] for b in report.subgraphs)
    assert_interfaces_declared(model)
    assert_valid_and_runs(model, data)
    assert_accurate(report)


def test_softmax_in_a_branch_keeps_its_rule():
    _, _, report = typed("if")
    assert "exponentiates" in report.fp32_nodes["then_softmax"]["reason"]
    assert {b["body"]: b["low_nodes"] for b in report.subgraphs} == {"then_branch": 4, "else_branch": 3}


def test_branch_not_taken_stays_fp32_with_reason():
    """Calibration that never takes the else branch: no range is known there, so it stays fp32,
    said per node and per body; the typed model still runs the else branch correctly."""
    model = if_model()
    report = apply_precision(model, if_samples((1, 1)), FP16)
    for name in ("else_fc", "else_relu", "else_bias"):
        assert "did not run on the calibration data" in report.fp32_nodes[name]["reason"], report.fp32_nodes
    bodies = {b["body"]: b for b in report.subgraphs}
    assert bodies["else_branch"]["low_nodes"] == 0 and "did not run" in bodies["else_branch"]["reason"]
    assert bodies["then_branch"]["low_nodes"] == 4
    assert_valid_and_runs(model, if_samples((0, 1)))
    assert_accurate(report)


def test_keep_fp32_on_the_if_keeps_its_bodies():
    model = if_model()
    report = apply_precision(model, if_samples(), PrecisionOptions(target="fp16", keep_fp32=["branch"]))
    assert report.low_nodes == 0 and report.flop_share == 0.0
    assert "--keep-fp32 'branch'" in report.fp32_nodes["then_fc1"]["reason"]
    assert_valid_and_runs(model, if_samples())


def test_a_branch_returning_an_outer_fp16_value_casts_it_inside():
    """The else branch passes on a value of the main graph that is stored in fp16: the branch casts
    it to the If's declared fp32 itself; the then branch computes on it in fp16."""
    then_branch = helper.make_graph([helper.make_node("Relu", ["h"], ["y_then"], name="then_relu")], "then", [],
                                    [helper.make_tensor_value_info("y_then", F32, ["batch", 8, HIDDEN])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["h"], ["y_else"], name="else_pass")], "else", [],
                                    [helper.make_tensor_value_info("y_else", F32, ["batch", 8, HIDDEN])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc"),
             helper.make_node("Equal", ["mode", "one"], ["cond"], name="is_one"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 8, HIDDEN]),
                           helper.make_tensor_value_info("mode", I64, [])],
                   [helper.make_tensor_value_info("y", F32, ["batch", 8, HIDDEN])],
                   [_init("w1", _weights(1, (HIDDEN, HIDDEN), 0.2)), _init("one", np.array(1, np.int64))])
    data = if_samples((1, 0))
    report = apply_precision(model, data, FP16)
    types = lowered_types(model)
    assert types["h"] == LOW and types["y_then"] == LOW
    assert_interfaces_declared(model)
    assert_valid_and_runs(model, data)
    assert_accurate(report)


def test_names_are_unique_over_all_graphs():
    """Both branches define `h`: after the pass every node and value name is unique, so the
    observations and decisions keyed by name cannot mix the branches."""
    model, _, _ = typed("if")
    values = [v.name for g in all_graphs(model.graph) for n in g for v in n.outputs if v.name]
    nodes = [n.name for g in all_graphs(model.graph) for n in g]
    assert len(values) == len(set(values)) and len(nodes) == len(set(nodes))


def test_a_rescaled_value_read_inside_a_body_is_restored():
    """A MatMul whose outputs (~1e3) are rescaled by a power of two is read only inside an If: the
    body must read its true values (restored before the If), or every prediction is off by 2^e."""
    then_branch = helper.make_graph([
        helper.make_node("Relu", ["big"], ["r"], name="then_relu"),
        helper.make_node("MatMul", ["r", "w_out"], ["y_then"], name="then_fc"),
    ], "then", [], [helper.make_tensor_value_info("y_then", F32, None)])
    else_branch = helper.make_graph([
        helper.make_node("Neg", ["big"], ["n"], name="else_neg"),
        helper.make_node("MatMul", ["n", "w_out"], ["y_else"], name="else_fc"),
    ], "else", [], [helper.make_tensor_value_info("y_else", F32, None)])
    nodes = [helper.make_node("MatMul", ["x", "w_big"], ["big"], name="fc_big"),
             helper.make_node("Equal", ["mode", "one"], ["cond"], name="is_one"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch,
                              else_branch=else_branch)]
    inits = [_init("w_big", _weights(20, (HIDDEN, HIDDEN), 300.0)), _init("w_out", _weights(21, (HIDDEN, 4), 0.01)),
             _init("one", np.array(1, np.int64))]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 8, HIDDEN]),
                           helper.make_tensor_value_info("mode", I64, [])],
                   [helper.make_tensor_value_info("y", F32, ["batch", 8, 4])], inits)
    data = if_samples((1, 0))
    report = apply_precision(model, data, FP16)
    assert report.counts["weights-rescaled"] >= 1
    assert_valid_and_runs(model, data)
    assert_accurate(report)


# ------------------------------------------------------------------ TensorRT-RTX


@pytest.mark.parametrize("case", list(CASES))
def test_typed_bodies_build_with_tensorrt_rtx(case):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine

    model, _, _ = typed(case)
    profile = CASES[case][3]
    result = build_engine(model, {}, load_backend("tensorrt-rtx"), BuildOptions(profiles=[profile] if profile else []))
    assert result.sidecar["network_layers"] > 0


@pytest.mark.skipif(not (REAL / "silero_vad_ifless.onnx").exists(), reason=f"{REAL} is not present")
def test_silero_vad_if_branch_is_typed_end_to_end(tmp_path):
    """The real model whose whole network sits in an If on the sample rate: before, `--fp16` typed
    0 nodes (0.0% of FLOPs); now the branch its calibration takes is fp16, the other stays fp32
    with its reason, and the engine builds with TensorRT-RTX."""
    from corpus import run_trtc

    manifest = {m["name"]: m for m in json.loads((REAL / "manifest.json").read_text())}["silero_vad_ifless"]
    shapes = [arg for spec in manifest["build_shapes"] for arg in ("--shapes", spec)]
    opt = tmp_path / "silero.opt.trtir"
    proc = run_trtc("optimize", REAL / "silero_vad_ifless.onnx", "-o", opt, "--fp16",
                    "--calib", REAL / "silero_vad_ifless.npz", "--tolerance", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert "then_branch of If" in proc.stdout and "did not run on the calibration data" in proc.stdout
    report = json.loads(run_trtc("inspect", opt, "--precision", "--json").stdout)
    assert report["flop_share"] > 0.99 and report["low_nodes"] >= 40
    bodies = {b["body"]: b for b in report["subgraphs"]}
    assert bodies["then_branch"]["low_nodes"] == bodies["then_branch"]["nodes"] - bodies["then_branch"]["fp32_nodes"]
    assert bodies["then_branch"]["low_nodes"] >= 40 and bodies["else_branch"]["low_nodes"] == 0
    for m in report["predicted"].values():
        assert m["cosine"] >= 0.999 and m["max_rel_error"] <= 1e-2
    plan = tmp_path / "silero.plan"
    proc = run_trtc("build", REAL / "silero_vad_ifless.onnx", "--fp16", "--calib", REAL / "silero_vad_ifless.npz",
                    *shapes, "-o", plan)
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads(plan.with_suffix(".plan.json").read_text())
    assert sidecar["precision"]["flop_share"] > 0.99
