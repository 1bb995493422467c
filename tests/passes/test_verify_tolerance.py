"""`optimize --verify` judges each pass by a bound derived from the computation it rewrote
(trtc.reference.tolerance): correct rewrites whose rounding moves an output by more than the
former fixed 1e-4 x max(1, |ref|) pass, wrong ones (even small) fail naming the pass, and
quantized outputs may flip by one step only where fp32 noise crossed a rounding boundary."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from trtc.errors import CheckFailed
from trtc.passes import PASSES, PassContext
from trtc.passes.pipeline import Verifier, optimize
from trtc.passes.registry import PassInfo
from trtc.reference import tolerance

from corpus import MODELS, run_trtc
from passutil import copy_model, make_model, run_model

REAL = MODELS / "real"
FOLD = [PASSES["fold-batchnorm"]]


def _old_bound(reference: np.ndarray) -> float:
    """The former rule: 1e-4 x max(1, max |ref|)."""
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


def _fold_changes(model: ir.Model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Outputs 'y' before and after fold-batchnorm, without verification (on a copy)."""
    before = run_model(model, feeds)["y"]
    folded = copy_model(model)
    assert PASSES["fold-batchnorm"].fn(folded, PassContext())
    return before, run_model(folded, feeds)["y"]


def _then(mutate: Callable[[ir.Model], None]) -> PassInfo:
    """A deliberately wrong pass: fold-batchnorm, then `mutate` the model (once, when the fold applied)."""
    def wrong(model: ir.Model, ctx: PassContext) -> dict[str, int]:
        counts = PASSES["fold-batchnorm"].fn(model, ctx)
        if counts:
            mutate(model)
        return counts

    return PassInfo("wrong-fold", wrong, "wrong on purpose", 1, False)


def _replace_const(node: ir.Node, index: int, array: np.ndarray) -> None:
    value = ir.Value(name=f"{node.inputs[index].name}_wrong", const_value=ir.tensor(array),
                     type=node.inputs[index].type, shape=node.inputs[index].shape)
    node.graph.register_initializer(value)
    node.replace_input_with(index, value)


def _first(model: ir.Model, op: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == op)


# ------------------------------------------------------------ (a) a correct fold into a large softmax


def _conv_bn_softmax(classes: int = 6625, offset: float = 1000.0, seed: int = 0) -> ir.Model:
    """1x1 Conv -> BatchNormalization -> Softmax over `classes` channels, the conv's bias and the BN
    mean both near `offset` (they cancel: logits of tens out of values of thousands), as a
    recognition head with a large vocabulary."""
    rng = np.random.default_rng(seed)
    cin = 64
    inits = {"w": rng.standard_normal((classes, cin, 1, 1)).astype(np.float32),
             "b": np.full(classes, offset, np.float32),
             "g": rng.uniform(0.5, 1.5, classes).astype(np.float32),
             "be": rng.standard_normal(classes).astype(np.float32),
             "m": (offset + 0.1 * rng.standard_normal(classes)).astype(np.float32),
             "v": (rng.uniform(0.5, 2.0, classes) * cin / 40.0**2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
             helper.make_node("Softmax", ["n"], ["y"], axis=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 4, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_correct_fold_into_large_softmax_passes(offset):
    model = _conv_bn_softmax(offset=offset)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 64, 4, 4)).astype(np.float32)}
    before, after = _fold_changes(model, feeds)
    err = float(np.abs(after - before).max())
    assert err > _old_bound(before)  # the former fixed rule refused this correct fold
    report = optimize(model, passes=FOLD, verify_feeds=feeds)
    assert report.verified and "BatchNormalization" not in [n.op_type for n in model.graph]


# ------------------------------------------------------------ (b) wrong rewrites are still caught


def _conv_bn_relu_conv(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    c = 8
    inits = {"w1": 0.3 * rng.standard_normal((c, 4, 3, 3)).astype(np.float32),
             "b1": rng.standard_normal(c).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, c).astype(np.float32), "be": rng.standard_normal(c).astype(np.float32),
             "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2.0, c).astype(np.float32),
             "w2": 0.3 * rng.standard_normal((4, c, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def _scale_weight(model: ir.Model) -> None:
    conv = _first(model, "Conv")
    w = conv.inputs[1].const_value.numpy().copy()
    w[0, 0, 1, 1] *= 1 + 1e-3  # one weight of the folded conv, 1e-3 relative
    _replace_const(conv, 1, w)


def _scale_bias(model: ir.Model) -> None:
    conv = _first(model, "Conv")
    b = conv.inputs[2].const_value.numpy().copy()
    b[0] *= 1 + 1e-4
    _replace_const(conv, 2, b)


def _swap_channels(model: ir.Model) -> None:
    conv = _first(model, "Conv")
    for index in (1, 2):
        data = conv.inputs[index].const_value.numpy().copy()
        data[[0, 1]] = data[[1, 0]]
        _replace_const(conv, index, data)


@pytest.mark.parametrize("mutate", [_scale_weight, _scale_bias, _swap_channels])
def test_wrong_rewrite_is_caught_and_names_the_pass(mutate):
    model = _conv_bn_relu_conv()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)}
    with pytest.raises(CheckFailed) as caught:
        optimize(model, passes=[_then(mutate)], verify_feeds=feeds)
    text = str(caught.value)
    assert "pass 'wrong-fold' changed output 'y': max abs error" in text
    assert "under 8 x the rounding error of the 2 rewritten nodes (Conv, BatchNormalization)" in text
    err, bound = (float(v) for v in text.split("max abs error ")[1].split(" (")[0].split(" exceeds "))
    assert err > 3 * bound


def test_small_wrong_rewrites_the_fixed_rule_missed():
    """A single weight off by 1e-3 moves the output by less than 1e-4 x max |y|, which the former rule
    let through; rounding of this fold moves it by far less still."""
    model = _conv_bn_relu_conv()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)}
    before = run_model(model, feeds)["y"]
    wrong = copy_model(model)
    _then(_scale_weight).fn(wrong, PassContext())
    assert np.abs(run_model(wrong, feeds)["y"] - before).max() < _old_bound(before)
    with pytest.raises(CheckFailed, match="pass 'wrong-fold'"):
        optimize(model, passes=[_then(_scale_weight)], verify_feeds=feeds)
    optimize(_conv_bn_relu_conv(), passes=FOLD, verify_feeds=feeds)  # the correct fold passes


def test_cli_error_reports_the_bound(tmp_path):
    """The same wrong pass through the pipeline as the CLI runs it: one line naming pass, output, error and
    bound, exit code 1 (the existing 'perturb' test pass of test_optimize_cli checks the CLI wiring)."""
    model = _conv_bn_relu_conv()
    feeds = {"x": np.ones((1, 4, 8, 8), np.float32)}
    with pytest.raises(CheckFailed) as caught:
        optimize(model, passes=[_then(_swap_channels)], verify_feeds=feeds)
    assert caught.value.exit_code == 1 and "\n" not in caught.value.one_line()
    assert "exceeds" in caught.value.one_line() and "--disable wrong-fold" in caught.value.one_line()


# ------------------------------------------------------------ (c) quantized models


def _qdq_conv_bn(head: str = "dq", offset: float = 1000.0, seed: int = 0) -> ir.Model:
    """x -> Q -> DQ -> Conv -> BN -> Q -> DQ [-> head]: int8 activations around a float conv (weights
    and bias near `offset` cancelled by the BN mean), as a QDQ model keeps a conv before its BN is folded.
    head 'dq': the dequantized values are the output; 'conv': a float 1x1 conv reads them."""
    rng = np.random.default_rng(seed)
    c, cin = 32, 16
    inits = {"w": (0.2 * rng.standard_normal((c, cin, 3, 3))).astype(np.float32),
             "b": np.full(c, offset, np.float32),
             "g": rng.uniform(0.5, 1.5, c).astype(np.float32), "be": rng.standard_normal(c).astype(np.float32),
             "m": (offset + rng.standard_normal(c)).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32),
             "s_in": np.float32(0.02), "z_in": np.int8(0), "s_out": np.float32(0.05), "z_out": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
             helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
             helper.make_node("QuantizeLinear", ["n", "s_out", "z_out"], ["nq"]),
             helper.make_node("DequantizeLinear", ["nq", "s_out", "z_out"], ["y" if head == "dq" else "nd"])]
    if head == "conv":
        inits["w2"] = rng.standard_normal((4, c, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["nd", "w2"], ["y"]))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, "H", "W"])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


QDQ_FEEDS = {"x": np.random.default_rng(1).standard_normal((2, 16, 16, 16)).astype(np.float32)}
STEP = 0.05


def test_quantized_output_may_flip_one_step_where_the_fold_crossed_a_boundary():
    model = _qdq_conv_bn("dq")
    before, after = _fold_changes(model, QDQ_FEEDS)
    diff = np.abs(after - before)
    flipped = np.isclose(diff, STEP, rtol=1e-3)
    assert flipped.any() and np.all(flipped | (diff == 0))  # the fold moves some values by exactly one step
    assert diff.max() > _old_bound(before)
    optimize(model, passes=FOLD, verify_feeds=QDQ_FEEDS)


def _shift_bias_two_steps(model: ir.Model) -> None:
    conv = _first(model, "Conv")
    _replace_const(conv, 2, conv.inputs[2].const_value.numpy() + np.float32(2 * STEP))


def _zero_point_off_by_one(model: ir.Model) -> None:
    quant = [n for n in model.graph if n.op_type == "QuantizeLinear"][1]
    _replace_const(quant, 2, np.int8(1))


@pytest.mark.parametrize(("mutate", "says"), [
    (_shift_bias_two_steps, "in the value entering its quantizer"),
    (_zero_point_off_by_one, "where the value entering the quantizer crossed no rounding boundary"),
])
def test_quantized_output_steps_not_explained_by_rounding_fail(mutate, says):
    with pytest.raises(CheckFailed, match="pass 'wrong-fold' changed output 'y'") as caught:
        optimize(_qdq_conv_bn("dq"), passes=[_then(mutate)], verify_feeds=QDQ_FEEDS)
    assert says in str(caught.value)


def test_float_output_after_a_quantizer():
    """A float conv reads the dequantized values: a correct fold's one-step flips move it far beyond the
    fixed rule and pass (the sensitivity run flips every element within its noise of a boundary), a
    two-step error does not."""
    model = _qdq_conv_bn("conv")
    before, after = _fold_changes(model, QDQ_FEEDS)
    assert np.abs(after - before).max() > 10 * _old_bound(before)
    optimize(model, passes=FOLD, verify_feeds=QDQ_FEEDS)
    with pytest.raises(CheckFailed, match="pass 'wrong-fold' changed output 'y'"):
        optimize(_qdq_conv_bn("conv"), passes=[_then(_shift_bias_two_steps)], verify_feeds=QDQ_FEEDS)


def test_crossed_boundary():
    scale = np.array(0.5)
    before = np.array([0.2, 0.24, 0.26, 1.0, -0.74])
    after = np.array([0.3, 0.26, 0.27, 1.0, -0.76])  # boundaries at 0.25 + 0.5 k
    assert tolerance.crossed_boundary(before, after, scale, 1).tolist() == [True, True, False, False, True]


# ------------------------------------------------------------ the mechanism


def test_rewritten_nodes_leave_out_readers_of_renamed_values():
    model = _conv_bn_relu_conv()
    before = model.clone()
    PASSES["fold-batchnorm"].fn(model, PassContext())
    # The Relu now reads the folded conv's output under another name: same computation, not rewritten.
    assert [n.op_type for n in tolerance.rewritten_nodes(before, model)] == ["Conv", "BatchNormalization"]


def _if_model() -> ir.Model:
    """y = If(flag, then: (x * 3) * (1/3), else: x) - x: the branch's rounding is all that is left of y."""
    def branch(name: str, nodes: list, out: str):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    then = branch("then", [helper.make_node("Mul", ["x", "three"], ["t1"]),
                           helper.make_node("Mul", ["t1", "third"], ["t2"])], "t2")
    other = branch("else", [helper.make_node("Identity", ["x"], ["e1"])], "e1")
    nodes = [helper.make_node("If", ["flag"], ["b"], then_branch=then, else_branch=other),
             helper.make_node("Sub", ["b", "x"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64]),
                              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      {"three": np.float32(3.0), "third": np.float32(1 / 3)})


def _reassociate(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """(x * a) * b -> x * (a * b) in subgraphs: correct, rounds once instead of twice."""
    from trtc.ir.walk import all_graphs

    done = 0
    for graph in list(all_graphs(model.graph))[1:]:
        for node in list(graph):
            first = node.inputs[0].producer() if node.op_type == "Mul" else None
            if first is None or first.op_type != "Mul" or list(first.outputs[0].consumers()) != [node]:
                continue
            product = ir.tensor(first.inputs[1].const_value.numpy() * node.inputs[1].const_value.numpy())
            value = ir.Value(name=f"{node.name}_ab", const_value=product, type=ir.TensorType(ir.DataType.FLOAT),
                             shape=ir.Shape([]))
            model.graph.register_initializer(value)
            node.replace_input_with(0, first.inputs[0])
            node.replace_input_with(1, value)
            graph.remove(first, safe=True)
            done += 1
    return {"reassociated": done}


def test_a_rewrite_inside_a_subgraph_is_measured_there():
    model = _if_model()
    before = model.clone()
    _reassociate(model, PassContext())
    region = tolerance.rewritten_nodes(before, model)
    assert [(n.op_type, n.graph.name) for n in region] == [("Mul", "then"), ("Mul", "then")]
    feeds = {"x": np.random.default_rng(0).uniform(1, 100, 64).astype(np.float32), "flag": np.array(True)}
    before_y, after_y = run_model(_if_model(), feeds)["y"], run_model(model, feeds)["y"]
    assert np.abs(after_y - before_y).max() > tolerance.floor_bound(before_y)  # beyond the floor: measured
    optimize(_if_model(), passes=[PassInfo("reassociate", _reassociate, "", 1, False)], verify_feeds=feeds)


def _relu_minus_x() -> ir.Model:
    """y = Relu(x) - x: zero for positive x, so any rounding in front of the Relu is all of y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["r", "x"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def _insert_round_trip(factor: float) -> PassInfo:
    """Insert x / 3 * (3 * factor) in front of the Relu: a correct (if pointless) rewrite for factor 1."""
    def insert(model: ir.Model, ctx: PassContext) -> dict[str, int]:
        relu = _first(model, "Relu")
        if relu.inputs[0].producer() is not None:
            return {}
        consts = [ir.Value(name=n, const_value=ir.tensor(np.float32(v)), type=ir.TensorType(ir.DataType.FLOAT),
                           shape=ir.Shape([])) for n, v in (("three", 3.0), ("back", 3.0 * factor))]
        for value in consts:
            model.graph.register_initializer(value)
        div = ir.Node("", "Div", [relu.inputs[0], consts[0]])
        mul = ir.Node("", "Mul", [div.outputs[0], consts[1]])
        model.graph.insert_before(relu, [div, mul])
        relu.replace_input_with(0, mul.outputs[0])
        return {"inserted": 1}

    return PassInfo("insert", insert, "", 1, False)


def test_nodes_inserted_in_front_of_a_reader_are_measured_there():
    feeds = {"x": np.random.default_rng(0).uniform(1, 100, 256).astype(np.float32)}
    model = _relu_minus_x()
    before = model.clone()
    _insert_round_trip(1.0).fn(model, PassContext())
    assert tolerance.rewritten_nodes(before, model) == []
    assert [(n.op_type, i) for n, i in tolerance.rewritten_edges(before, model)] == [("Relu", 0)]
    changed = np.abs(run_model(model, feeds)["y"]).max()
    assert changed > 0  # y was exactly 0: anything beyond the floor needs the measured bound
    optimize(_relu_minus_x(), passes=[_insert_round_trip(1.0)], verify_feeds=feeds)
    with pytest.raises(CheckFailed, match="inputs? now fed by new nodes"):
        optimize(_relu_minus_x(), passes=[_insert_round_trip(1.0 + 1e-4)], verify_feeds=feeds)


def test_structural_passes_cost_no_sensitivity_run(monkeypatch):
    """cse and dead-code change nothing numerically: the floor passes them without the extra run."""
    model = _conv_bn_relu_conv()
    feeds = {"x": np.ones((1, 4, 8, 8), np.float32)}
    measured = []
    original = Verifier._sensitivity

    def spy(self: Verifier, after: ir.Model, name: str) -> tolerance.Sensitivity:
        measured.append(name)
        return original(self, after, name)

    monkeypatch.setattr(Verifier, "_sensitivity", spy)
    optimize(model, passes=[PASSES[p] for p in ("fold-batchnorm", "cse", "dead-code")], verify_feeds=feeds)
    assert set(measured) <= {"fold-batchnorm"}


def test_measurement_is_reproducible():
    model = _conv_bn_softmax(classes=512)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 64, 4, 4)).astype(np.float32)}
    verifier = Verifier(model, feeds)
    snapshot = model.clone()
    PASSES["fold-batchnorm"].fn(model, PassContext())
    first = tolerance.measure(snapshot.clone(), model, verifier.before, verifier._runner("x")).changes
    second = tolerance.measure(snapshot.clone(), model, verifier.before, verifier._runner("x")).changes
    assert first == second and first["y"] > 0


# ------------------------------------------------------------ (d) the real models


def _real_models() -> list:
    if not (REAL / "manifest.json").is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{REAL} is missing"))]
    return [entry["name"] for entry in json.loads((REAL / "manifest.json").read_text())]


@pytest.mark.parametrize("name", _real_models())
def test_real_models_verify_with_their_inputs(name, tmp_path):
    """`optimize --verify --input M.npz` on the real models (the npz holds their outputs too)."""
    proc = run_trtc("optimize", REAL / f"{name}.onnx", "-o", tmp_path / "m.trtir", "--verify",
                    "--input", REAL / f"{name}.npz")
    assert proc.returncode == 0 and "every pass verified" in proc.stdout, proc.stderr
