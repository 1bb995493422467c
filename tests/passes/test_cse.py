"""cse: equal nodes and equal constant initializers merge (cascading in one run); nodes that
differ in an input, an attribute or a tensor byte, random ops and subgraph nodes do not; two
graph outputs never collapse into one."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(4)
X = RNG.standard_normal((2, 3)).astype(np.float32)


def node(op: str, inputs: list[str], output: str, **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


def add_model(first, second, inits=None, extra_inputs=()):
    """a = first; b = second; y = Add(a, b)."""
    nodes = [first, second, node("Add", ["a", "b"], "y")]
    return make_model(nodes, [vi("x", [2, 3]), *extra_inputs], [vi("y", [2, 3])], inits or {})


def test_equal_nodes_merge():
    model = add_model(node("Relu", ["x"], "a"), node("Relu", ["x"], "b"))
    assert check_pass(model, "cse", {"x": X}) == {"nodes": 1, "initializers": 0}
    assert ops(model) == ["Relu", "Add"]
    add = model.graph.node(1)
    assert add.inputs[0] is add.inputs[1]


def test_different_inputs_do_not_merge():
    model = add_model(node("Relu", ["x"], "a"), node("Relu", ["z"], "b"), extra_inputs=[vi("z", [2, 3])])
    assert check_pass(model, "cse", {"x": X, "z": -X}) == {"nodes": 0, "initializers": 0}
    assert ops(model) == ["Relu", "Relu", "Add"]


def test_attributes_compared_exactly():
    same = add_model(node("LeakyRelu", ["x"], "a", alpha=0.1), node("LeakyRelu", ["x"], "b", alpha=0.1))
    assert check_pass(same, "cse", {"x": X})["nodes"] == 1
    other = add_model(node("LeakyRelu", ["x"], "a", alpha=0.1), node("LeakyRelu", ["x"], "b", alpha=0.2))
    assert check_pass(other, "cse", {"x": X})["nodes"] == 0


def test_tensor_attributes_compared_byte_for_byte():
    def model(value_a, value_b):
        nodes = [node("ConstantOfShape", ["s"], "a", value=value_a), node("ConstantOfShape", ["s"], "b", value=value_b),
                 node("Add", ["a", "b"], "c"), node("Add", ["x", "c"], "y")]
        return make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], {"s": np.array([2, 3], np.int64)})

    def tensor(v):
        return helper.make_tensor("v", TensorProto.FLOAT, [1], [v])

    assert check_pass(model(tensor(1.0), tensor(1.0)), "cse", {"x": X})["nodes"] == 1
    assert check_pass(model(tensor(1.0), tensor(2.0)), "cse", {"x": X})["nodes"] == 0
    assert check_pass(model(tensor(0.0), tensor(-0.0)), "cse", {"x": X})["nodes"] == 0


def test_merges_cascade_in_one_run():
    nodes = [node("Relu", ["x"], "r1"), node("Exp", ["r1"], "a"), node("Relu", ["x"], "r2"), node("Exp", ["r2"], "b"),
             node("Add", ["a", "b"], "y")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    assert check_pass(model, "cse", {"x": X}) == {"nodes": 2, "initializers": 0}
    assert ops(model) == ["Relu", "Exp", "Add"]


def test_equal_initializers_merge_and_their_users_too():
    w = RNG.standard_normal(3).astype(np.float32)
    model = add_model(node("Mul", ["x", "w1"], "a"), node("Mul", ["x", "w2"], "b"), {"w1": w, "w2": w.copy()})
    assert check_pass(model, "cse", {"x": X}) == {"nodes": 1, "initializers": 1}
    assert ops(model) == ["Mul", "Add"] and list(model.graph.initializers) == ["w1"]


def test_initializers_differing_in_dtype_shape_or_sign_of_zero_stay():
    pairs = [(np.zeros(6, np.float32), np.zeros(6, np.int32)), (np.ones(6, np.float32), np.ones((2, 3), np.float32)),
             (np.zeros(6, np.float32), np.full(6, -0.0, np.float32))]
    for w1, w2 in pairs:
        nodes = [node("Cast", ["w1"], "c1", to=TensorProto.FLOAT), node("Cast", ["w2"], "c2", to=TensorProto.FLOAT),
                 node("Reshape", ["c1", "s"], "r1"), node("Reshape", ["c2", "s"], "r2"), node("Div", ["r1", "r2"], "q"),
                 node("Add", ["x", "q"], "y")]
        inits = {"w1": w1, "w2": w2, "s": np.array([2, 3], np.int64)}
        model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], inits)
        assert check_pass(model, "cse", {"x": X}) == {"nodes": 0, "initializers": 0}, (w1.dtype, w2.shape)


def test_large_initializers_compared_whole():
    """Equal ends (the cheap fingerprint) but one different element in the middle: not merged."""
    w = RNG.standard_normal(10_000).astype(np.float32)
    changed = w.copy()
    changed[5_000] += 1
    for other, merged in ((w.copy(), 1), (changed, 0)):
        nodes = [node("Add", ["x", "w1"], "a"), node("Add", ["x", "w2"], "b"), node("Sub", ["a", "b"], "y")]
        model = make_model(nodes, [vi("x", [10_000])], [vi("y", [10_000])], {"w1": w, "w2": other})
        feeds = {"x": RNG.standard_normal(10_000).astype(np.float32)}
        assert check_pass(model, "cse", feeds) == {"nodes": merged, "initializers": merged}


def test_graph_input_initializers_are_not_merged():
    """An initializer that is also a graph input is a default the caller may override."""
    w = np.ones(3, np.float32)
    model = add_model(node("Mul", ["x", "w1"], "a"), node("Mul", ["x", "w2"], "b"), {"w1": w, "w2": w.copy()},
                      extra_inputs=[vi("w2", [3])])
    assert run_pass(model, "cse") == {"nodes": 0, "initializers": 0}
    assert ops(model) == ["Mul", "Mul", "Add"]


def test_random_ops_are_never_merged():
    model = add_model(node("RandomUniformLike", ["x"], "a", seed=1.0), node("RandomUniformLike", ["x"], "b", seed=1.0))
    assert run_pass(model, "cse") == {"nodes": 0, "initializers": 0}
    assert ops(model) == ["RandomUniformLike", "RandomUniformLike", "Add"]


def test_nodes_with_subgraphs_are_not_merged():
    def branch(name):
        return helper.make_graph([node("Neg", ["x"], f"{name}_out")], name, [], [vi(f"{name}_out", [2, 3])])

    nodes = [helper.make_node("If", ["c"], [out], then_branch=branch(f"t{out}"), else_branch=branch(f"e{out}"))
             for out in ("a", "b")]
    model = add_model(*nodes, extra_inputs=[vi("c", [], TensorProto.BOOL)])
    assert check_pass(model, "cse", {"x": X, "c": np.array(True)}) == {"nodes": 0, "initializers": 0}


def test_two_graph_outputs_are_both_kept():
    nodes = [node("Relu", ["x"], "y1"), node("Relu", ["x"], "y2")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y1", [2, 3]), vi("y2", [2, 3])])
    assert check_pass(model, "cse", {"x": X}) == {"nodes": 0, "initializers": 0}
    assert ops(model) == ["Relu", "Relu"]


def test_graph_output_name_survives_a_merge():
    """The kept node computes an inner value; the dropped one a graph output, whose name moves."""
    nodes = [node("Relu", ["x"], "a"), node("Neg", ["a"], "z"), node("Relu", ["x"], "y")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("z", [2, 3]), vi("y", [2, 3])])
    assert check_pass(model, "cse", {"x": X}) == {"nodes": 1, "initializers": 0}
    assert ops(model) == ["Relu", "Neg"]
    assert [v.name for v in model.graph.outputs] == ["z", "y"]
    assert model.graph.node(1).inputs[0] is model.graph.outputs[1]


def test_subgraph_nodes_merge_and_read_merged_outer_values():
    inner = [node("Relu", ["b"], "i1"), node("Relu", ["b"], "i2"), node("Add", ["i1", "i2"], "then_out")]
    then_graph = helper.make_graph(inner, "then", [], [vi("then_out", [2, 3])])
    else_graph = helper.make_graph([node("Neg", ["a"], "else_out")], "else", [], [vi("else_out", [2, 3])])
    nodes = [node("Exp", ["x"], "a"), node("Exp", ["x"], "b"),
             helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [vi("x", [2, 3]), vi("c", [], TensorProto.BOOL)], [vi("y", [2, 3])])
    assert check_pass(model, "cse", {"x": X, "c": np.array(True)}) == {"nodes": 2, "initializers": 0}
    branch = model.graph.node(1).attributes["then_branch"].value
    assert [n.op_type for n in branch] == ["Relu", "Add"]
    assert branch.node(0).inputs[0] is model.graph.node(0).outputs[0]
