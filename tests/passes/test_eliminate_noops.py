"""eliminate-noops: every pattern fires on its no-op and leaves its near miss alone; graph
outputs keep their names and never alias a graph input; subgraphs are cleaned too."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from passutil import check_pass, make_model, ops, run_model, run_pass, vi

RNG = np.random.default_rng(3)
F, D, H, I8, I32 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT32
NP_TYPES = {F: np.float32, H: np.float16, I8: np.int8, I32: np.int32}
INT64_MAX = np.iinfo(np.int64).max
BIG_INT32 = np.array([16777217, -16777217, 2049, 7], np.int32)  # not exact in float32 / float16


def node(op: str, inputs: list[str], output: str = "t", **attrs) -> helper.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def chain(nodes, shape, inits=None, dtype=F, out_dtype=None, feed=None):
    """x -> nodes -> t -> Neg -> y, and feeds for x (symbolic dims are fed as 5)."""
    model = make_model([*nodes, node("Neg", ["t"], "y")], [vi("x", shape, dtype)],
                       [vi("y", None, out_dtype or dtype)], inits or {})
    concrete = [5 if isinstance(d, str) else d for d in shape]
    if feed is None:
        feed = RNG.standard_normal(concrete) * 10
    return model, {"x": np.asarray(feed).astype(NP_TYPES[dtype])}


def cast(inputs: list[str], to: int, output: str = "t") -> helper.NodeProto:
    return node("Cast", inputs, output, to=to)


ONES3, ZEROS13 = np.ones(3, np.float32), np.zeros((1, 3), np.float32)

# (id, nodes, x shape, initializers, extra chain options, rewrites, ops left)
FIRES = [
    ("identity", [node("Identity", ["x"])], [2, 3], {}, {}, {"identity": 1}, ["Neg"]),
    ("dropout", [node("Dropout", ["x"])], [2, 3], {}, {}, {"dropout": 1}, ["Neg"]),
    ("dropout-unused-mask", [helper.make_node("Dropout", ["x", "r", "train"], ["t", "mask"])], [2, 3],
     {"r": np.array(0.5, np.float32), "train": np.array(False)}, {}, {"dropout": 1}, ["Neg"]),
    ("cast-same-type", [cast(["x"], F)], [2, 3], {}, {}, {"cast-same-type": 1}, ["Neg"]),
    ("castlike-same-type", [node("CastLike", ["x", "like"])], [2, 3], {"like": ONES3}, {},
     {"cast-same-type": 1}, ["Neg"]),
    ("cast-f32-f64-f32", [cast(["x"], D, "w"), cast(["w"], F)], [2, 3], {}, {}, {"cast-merge": 1}, ["Neg"]),
    ("cast-f16-f32-f16", [cast(["x"], F, "w"), cast(["w"], H)], [2, 3], {}, {"dtype": H},
     {"cast-merge": 1}, ["Neg"]),
    ("cast-i8-i32-f32", [cast(["x"], I32, "w"), cast(["w"], F)], [2, 3], {}, {"dtype": I8, "out_dtype": F},
     {"cast-merge": 1}, ["Cast", "Neg"]),
    ("cast-i32-f64-i32", [cast(["x"], D, "w"), cast(["w"], I32)], [4], {}, {"dtype": I32, "feed": BIG_INT32},
     {"cast-merge": 1}, ["Neg"]),
    ("reshape-same-static", [node("Reshape", ["x", "s"])], [2, 3, 4], {"s": i64(2, 3, 4)}, {},
     {"reshape-same-shape": 1}, ["Neg"]),
    ("reshape-same-symbolic", [node("Reshape", ["x", "s"])], ["N", 3, 4], {"s": i64(0, 3, -1)}, {},
     {"reshape-same-shape": 1}, ["Neg"]),
    ("reshape-merge", [node("Reshape", ["x", "a"], "w"), node("Reshape", ["w", "b"])], [2, 3, 4],
     {"a": i64(6, 4), "b": i64(4, 6)}, {}, {"reshape-merge": 1}, ["Reshape", "Neg"]),
    ("reshape-merge-back", [node("Reshape", ["x", "a"], "w"), node("Reshape", ["w", "b"])], [2, 3, 4],
     {"a": i64(6, 4), "b": i64(2, 3, 4)}, {}, {"reshape-merge": 1, "reshape-same-shape": 1}, ["Neg"]),
    ("reshape-merge-zero-static", [node("Reshape", ["x", "a"], "w"), node("Reshape", ["w", "b"])], [2, 3, 4],
     {"a": i64(6, 4), "b": i64(0, 2, 2)}, {}, {"reshape-merge": 1}, ["Reshape", "Neg"]),
    ("reshape-merge-zero-same-dim", [node("Reshape", ["x", "a"], "w"), node("Reshape", ["w", "b"])],
     ["N", 12], {"a": i64(0, 3, 4), "b": i64(0, 2, 6)}, {}, {"reshape-merge": 1}, ["Reshape", "Neg"]),
    ("expand-ones", [node("Expand", ["x", "s"])], [2, 3], {"s": i64(1, 1)}, {}, {"expand-same-shape": 1}, ["Neg"]),
    ("expand-same", [node("Expand", ["x", "s"])], ["N", 3], {"s": i64(3)}, {}, {"expand-same-shape": 1}, ["Neg"]),
    ("transpose-identity", [node("Transpose", ["x"], perm=[0, 1, 2])], [2, 3, 4], {}, {},
     {"transpose-identity": 1}, ["Neg"]),
    ("transpose-cancel", [node("Transpose", ["x"], "w", perm=[0, 2, 1]), node("Transpose", ["w"], perm=[0, 2, 1])],
     [2, 3, 4], {}, {}, {"transpose-merge": 1}, ["Neg"]),
    ("transpose-default-perms", [node("Transpose", ["x"], "w"), node("Transpose", ["w"])], [2, 3, 4], {}, {},
     {"transpose-merge": 1}, ["Neg"]),
    ("transpose-compose", [node("Transpose", ["x"], "w", perm=[1, 2, 0]), node("Transpose", ["w"], perm=[1, 2, 0])],
     [2, 3, 4], {}, {}, {"transpose-merge": 1}, ["Transpose", "Neg"]),
    ("pad-zero", [node("Pad", ["x", "p"])], [2, 3], {"p": i64(0, 0, 0, 0)}, {}, {"pad-zero": 1}, ["Neg"]),
    ("slice-int64-max", [node("Slice", ["x", "s", "e", "a"])], ["N", 3], {"s": i64(0), "e": i64(INT64_MAX),
     "a": i64(0)}, {}, {"slice-full": 1}, ["Neg"]),
    ("slice-static-ends", [node("Slice", ["x", "s", "e", "a", "st"])], [2, 3], {"s": i64(-7, 0), "e": i64(9, 3),
     "a": i64(-1, 0), "st": i64(1, 1)}, {}, {"slice-full": 1}, ["Neg"]),
    ("slice-merge-focus", [node("Slice", ["x", "s", "e", "a", "st"], "w"), node("Slice", ["w", "s", "e", "b", "st"])],
     [1, 3, 8, 8], {"s": i64(1), "e": i64(INT64_MAX), "a": i64(2), "b": i64(-1), "st": i64(2)}, {},
     {"slice-merge": 1}, ["Slice", "Neg"]),
    ("slice-merge-defaults", [node("Slice", ["x", "s", "e"], "w"), node("Slice", ["w", "s", "e", "b"])],
     [6, 8], {"s": i64(1), "e": i64(4), "b": i64(1)}, {}, {"slice-merge": 1}, ["Slice", "Neg"]),
    ("flatten-rank2", [node("Flatten", ["x"], axis=1)], ["N", 3], {}, {}, {"flatten-rank2": 1}, ["Neg"]),
    ("unsqueeze-squeeze", [node("Unsqueeze", ["x", "a"], "w"), node("Squeeze", ["w", "b"])], [2, 3],
     {"a": i64(-1), "b": i64(2)}, {}, {"squeeze-unsqueeze": 1}, ["Neg"]),
    ("squeeze-unsqueeze", [node("Squeeze", ["x", "a"], "w"), node("Unsqueeze", ["w", "a"])], [2, 1, 3],
     {"a": i64(1)}, {}, {"squeeze-unsqueeze": 1}, ["Neg"]),
    ("squeeze-all-unsqueeze", [node("Squeeze", ["x"], "w"), node("Unsqueeze", ["w", "a"])], [2, 1, 3, 1],
     {"a": i64(1, 3)}, {}, {"squeeze-unsqueeze": 1}, ["Neg"]),
    ("mul-one", [node("Mul", ["x", "c"])], [2, 3], {"c": ONES3}, {}, {"mul-one": 1}, ["Neg"]),
    ("mul-one-first", [node("Mul", ["c", "x"])], [2, 3], {"c": np.float32(1)}, {}, {"mul-one": 1}, ["Neg"]),
    ("add-zero-first", [node("Add", ["c", "x"])], [2, 3], {"c": ZEROS13}, {}, {"add-zero": 1}, ["Neg"]),
    ("sub-zero", [node("Sub", ["x", "c"])], [2, 3], {"c": ZEROS13}, {}, {"sub-zero": 1}, ["Neg"]),
    ("div-one", [node("Div", ["x", "c"])], ["N", 3], {"c": ONES3}, {}, {"div-one": 1}, ["Neg"]),
    ("where-true", [node("Where", ["c", "x", "z"])], [2, 3], {"c": np.ones(3, bool), "z": ZEROS13}, {},
     {"where-const": 1}, ["Neg"]),
    ("where-false", [node("Where", ["c", "z", "x"])], [2, 3], {"c": np.zeros((2, 1), bool), "z": ONES3}, {},
     {"where-const": 1}, ["Neg"]),
]

NEAR_MISSES = [
    ("cast-other-type", [cast(["x"], H)], [2, 3], {}, {"out_dtype": H}),
    ("cast-i32-f32-i32", [cast(["x"], F, "w"), cast(["w"], I32)], [4], {}, {"dtype": I32, "feed": BIG_INT32}),
    ("cast-i32-f16-i32", [cast(["x"], H, "w"), cast(["w"], I32)], [4], {}, {"dtype": I32, "feed": BIG_INT32}),
    ("cast-f32-f16-f32", [cast(["x"], H, "w"), cast(["w"], F)], [2, 3], {}, {}),
    ("reshape-permuted-dims", [node("Reshape", ["x", "s"])], [2, 3, 4], {"s": i64(3, 2, 4)}, {}),
    ("reshape-other-rank", [node("Reshape", ["x", "s"])], [2, 3, 4], {"s": i64(2, 12)}, {}),
    ("reshape-symbolic-other", [node("Reshape", ["x", "s"])], ["N", 3, 4], {"s": i64(-1, 4, 3)}, {}),
    ("reshape-merge-zero-unknown", [node("Reshape", ["x", "a"], "w"), node("Reshape", ["w", "b"])], ["B", "S", 4],
     {"a": i64(-1, 4), "b": i64(0, 2, 2)}, {}),
    ("expand-grows-rank", [node("Expand", ["x", "s"])], [2, 3], {"s": i64(2, 2, 3)}, {}),
    ("expand-grows-dim", [node("Expand", ["x", "s"])], [1, 3], {"s": i64(2, 3)}, {}),
    ("expand-symbolic", [node("Expand", ["x", "s"])], ["N", 3], {"s": i64(5, 3)}, {}),
    ("transpose-swap", [node("Transpose", ["x"], perm=[0, 2, 1])], [2, 3, 4], {}, {}),
    ("transposes-apart", [node("Transpose", ["x"], "w", perm=[0, 2, 1]), node("Relu", ["w"], "r"),
                          node("Transpose", ["r"], perm=[0, 2, 1])], [2, 3, 4], {}, {}),
    ("pad-nonzero", [node("Pad", ["x", "p"])], [2, 3], {"p": i64(0, 1, 0, 0)}, {}),
    ("slice-step-2", [node("Slice", ["x", "s", "e", "a", "st"])], [4, 3], {"s": i64(0), "e": i64(INT64_MAX),
     "a": i64(0), "st": i64(2)}, {}),
    ("slice-start-1", [node("Slice", ["x", "s", "e"])], [4, 3], {"s": i64(1), "e": i64(INT64_MAX)}, {}),
    ("slice-symbolic-end", [node("Slice", ["x", "s", "e"])], ["N", 3], {"s": i64(0), "e": i64(1000)}, {}),
    ("slice-merge-same-axis", [node("Slice", ["x", "s", "e", "a"], "w"), node("Slice", ["w", "s", "e", "a"])],
     [8, 3], {"s": i64(1), "e": i64(6), "a": i64(0)}, {}),
    ("flatten-rank3", [node("Flatten", ["x"], axis=1)], [2, 3, 4], {}, {}),
    ("unsqueeze-squeeze-all", [node("Unsqueeze", ["x", "a"], "w"), node("Squeeze", ["w"])], [2, 1, 3],
     {"a": i64(0)}, {}),
    ("squeeze-unsqueeze-elsewhere", [node("Squeeze", ["x", "a"], "w"), node("Unsqueeze", ["w", "b"])], [2, 1, 3],
     {"a": i64(1), "b": i64(0)}, {}),
    ("mul-one-broadcasts", [node("Mul", ["x", "c"])], [3], {"c": np.ones((2, 3), np.float32)}, {}),
    ("mul-one-symbolic-broadcast", [node("Mul", ["x", "c"])], ["N", 1], {"c": ONES3}, {}),
    ("mul-two", [node("Mul", ["x", "c"])], [2, 3], {"c": np.full(3, 2, np.float32)}, {}),
    ("zero-minus-x", [node("Sub", ["c", "x"])], [2, 3], {"c": ZEROS13}, {}),
    ("one-over-x", [node("Div", ["c", "x"])], [2, 3], {"c": ONES3}, {}),
    ("where-mixed", [node("Where", ["c", "x", "z"])], [2, 3], {"c": np.array([True, False, True]), "z": ZEROS13}, {}),
    ("where-other-broadcasts", [node("Where", ["c", "x", "z"])], [3], {"c": np.ones(3, bool),
     "z": np.zeros((2, 3), np.float32)}, {}),
]


@pytest.mark.parametrize("nodes, shape, inits, options, rewrites, left", [p[1:] for p in FIRES],
                         ids=[p[0] for p in FIRES])
def test_fires(nodes, shape, inits, options, rewrites, left):
    model, feeds = chain(nodes, shape, inits, **options)
    assert check_pass(model, "eliminate-noops", feeds) == rewrites
    assert ops(model) == left
    assert [v.name for v in model.graph.outputs] == ["y"]


@pytest.mark.parametrize("nodes, shape, inits, options", [p[1:] for p in NEAR_MISSES],
                         ids=[p[0] for p in NEAR_MISSES])
def test_near_miss_does_not_fire(nodes, shape, inits, options):
    model, feeds = chain(nodes, shape, inits, **options)
    before = ops(model)
    assert check_pass(model, "eliminate-noops", feeds) == {}
    assert ops(model) == before


def test_transpose_compose_perm():
    model, feeds = chain([node("Transpose", ["x"], "w", perm=[1, 2, 0]), node("Transpose", ["w"], perm=[1, 2, 0])],
                         [2, 3, 4])
    check_pass(model, "eliminate-noops", feeds)
    transpose = next(n for n in model.graph if n.op_type == "Transpose")
    assert list(transpose.attributes["perm"].value) == [2, 0, 1]
    assert transpose.inputs[0].name == "x"


def test_dropout_with_used_mask_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["t", "mask"]), node("Neg", ["t"], "y")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3]), vi("mask", [2, 3], TensorProto.BOOL)])
    assert run_pass(model, "eliminate-noops") == {}
    assert ops(model) == ["Dropout", "Neg"]


def test_graph_output_never_aliases_an_input_or_initializer():
    nodes = [node("Identity", ["x"], "y"), node("Identity", ["w"], "z")]
    model = make_model(nodes, [vi("x", [3])], [vi("y", [3]), vi("z", [3])], {"w": ONES3})
    assert check_pass(model, "eliminate-noops", {"x": ONES3}) == {}
    assert ops(model) == ["Identity", "Identity"]


def test_graph_output_keeps_its_name():
    nodes = [node("Neg", ["x"], "a"), node("Identity", ["a"], "y1"), node("Identity", ["a"], "y2")]
    model = make_model(nodes, [vi("x", [3])], [vi("y1", [3]), vi("y2", [3])])
    # The first Identity goes (Neg now writes y1); the second would make y2 alias y1, so stays.
    assert check_pass(model, "eliminate-noops", {"x": ONES3}) == {"identity": 1}
    assert ops(model) == ["Neg", "Identity"]
    assert [v.name for v in model.graph.outputs] == ["y1", "y2"]
    assert model.graph.outputs[0].producer().op_type == "Neg"


def test_noops_inside_subgraphs():
    def branch(name: str, op: str) -> helper.GraphProto:
        return helper.make_graph([node(op, ["x"], f"{name}_a"), node("Identity", [f"{name}_a"], f"{name}_out")],
                                 name, [], [vi(f"{name}_out", [3])])

    # then: Neg -> Identity (the Identity goes); else: Identity of the outer x (must stay).
    then_graph = branch("then", "Neg")
    else_graph = helper.make_graph([node("Identity", ["x"], "else_out")], "else", [], [vi("else_out", [3])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [vi("x", [3]), vi("c", [], TensorProto.BOOL)], [vi("y", [3])])
    x = np.array([1, -2, 3], np.float32)
    assert check_pass(model, "eliminate-noops", {"x": x, "c": np.array(True)}) == {"identity": 1}
    np.testing.assert_array_equal(run_model(model, {"x": x, "c": np.array(False)})["y"], x)
    then_ops = [n.op_type for n in model.graph.node(0).attributes["then_branch"].value]
    else_ops = [n.op_type for n in model.graph.node(0).attributes["else_branch"].value]
    assert (then_ops, else_ops) == (["Neg"], ["Identity"])


def test_subgraph_node_merges_with_an_outer_producer():
    """A Transpose in a branch reading an outer Transpose composes with it; the outer one dies."""
    then_graph = helper.make_graph([node("Transpose", ["w"], "then_out", perm=[1, 2, 0])], "then", [],
                                   [vi("then_out", [4, 2, 3])])
    else_graph = helper.make_graph([node("Neg", ["x"], "else_out")], "else", [], [vi("else_out", [2, 3, 4])])
    nodes = [node("Transpose", ["x"], "w", perm=[1, 2, 0]),
             helper.make_node("If", ["c"], ["t"], then_branch=then_graph, else_branch=else_graph),
             node("Neg", ["t"], "y")]
    model = make_model(nodes, [vi("x", [2, 3, 4]), vi("c", [], TensorProto.BOOL)], [vi("y", None)])
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    assert check_pass(model, "eliminate-noops", {"x": x, "c": np.array(True)}) == {"transpose-merge": 1}
    assert ops(model) == ["If", "Neg"]
    transpose = model.graph.node(0).attributes["then_branch"].value.node(0)
    assert transpose.inputs[0].name == "x" and list(transpose.attributes["perm"].value) == [2, 0, 1]
