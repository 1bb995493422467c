"""dead-code: unused nodes and initializers go, in the main graph and in subgraphs; what a graph
output or a live subgraph reads stays; a 20,000-node chain needs no recursion. The corpus test
runs eliminate-noops, cse and dead-code together with per-pass numerical verification."""

from __future__ import annotations

import time

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.pipeline import optimize

from corpus import assert_close_to_reference, corpus_params
from passutil import check_pass, make_model, ops, run_model, run_pass, vi

X = np.arange(6, dtype=np.float32).reshape(2, 3) - 2


def node(op: str, inputs: list[str], output: str, **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


def test_unused_nodes_and_initializers_go():
    nodes = [node("Relu", ["x"], "y"), node("Exp", ["x"], "e"), node("Mul", ["e", "w"], "unused")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], {"w": np.ones(3, np.float32),
                                                                       "orphan": np.zeros(2, np.float32)})
    assert check_pass(model, "dead-code", {"x": X}) == {"nodes": 2, "initializers": 2}
    assert ops(model) == ["Relu"] and not model.graph.initializers


def test_live_graph_is_untouched():
    nodes = [node("Exp", ["x"], "e"), node("Mul", ["e", "w"], "y"), node("Neg", ["e"], "z")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3]), vi("z", [2, 3])], {"w": np.ones(3, np.float32)})
    assert check_pass(model, "dead-code", {"x": X}) == {"nodes": 0, "initializers": 0}
    assert ops(model) == ["Exp", "Mul", "Neg"] and list(model.graph.initializers) == ["w"]


def test_interface_initializers_stay():
    """An initializer that is a graph output, or a graph input with a default, is interface."""
    nodes = [node("Relu", ["x"], "y")]
    model = make_model(nodes, [vi("x", [2, 3]), vi("default", [3])], [vi("y", [2, 3]), vi("w", [3])],
                       {"w": np.ones(3, np.float32), "default": np.zeros(3, np.float32)})
    assert run_pass(model, "dead-code") == {"nodes": 0, "initializers": 0}
    assert sorted(model.graph.initializers) == ["default", "w"]


def if_model(*, used: bool) -> ir.Model:
    """An If whose then-branch reads outer `e` (computed only for it) and holds a dead Neg."""
    then_graph = helper.make_graph([node("Neg", ["e"], "dead_inner"), node("Mul", ["e", "w"], "then_out")], "then",
                                   [], [vi("then_out", [2, 3])])
    else_graph = helper.make_graph([node("Identity", ["x"], "else_out")], "else", [], [vi("else_out", [2, 3])])
    nodes = [node("Exp", ["x"], "e"), helper.make_node("If", ["c"], ["r"], then_branch=then_graph,
                                                        else_branch=else_graph)]
    nodes.append(node("Relu", ["r" if used else "x"], "y"))
    return make_model(nodes, [vi("x", [2, 3]), vi("c", [], TensorProto.BOOL)], [vi("y", [2, 3])],
                      {"w": np.full(3, 2, np.float32)})


def test_value_read_only_by_a_live_subgraph_is_live():
    model = if_model(used=True)
    assert check_pass(model, "dead-code", {"x": X, "c": np.array(True)}) == {"nodes": 1, "initializers": 0}
    assert ops(model) == ["Exp", "If", "Relu"]
    then_branch = model.graph.node(1).attributes["then_branch"].value
    assert [n.op_type for n in then_branch] == ["Mul"]
    np.testing.assert_allclose(run_model(model, {"x": X, "c": np.array(False)})["y"], np.maximum(X, 0))


def test_dead_subgraph_node_takes_outer_values_with_it():
    model = if_model(used=False)
    assert check_pass(model, "dead-code", {"x": X, "c": np.array(True)}) == {"nodes": 2, "initializers": 1}
    assert ops(model) == ["Relu"] and not model.graph.initializers


def chain_model(length: int, *, live: bool) -> ir.Model:
    """x -> Neg x length -> (graph output when live); y = Relu(x) always."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3]))
    value, nodes = x, []
    for _ in range(length):
        nodes.append(ir.node("Neg", [value]))
        value = nodes[-1].outputs[0]
    relu = ir.node("Relu", [x])
    outputs = [relu.outputs[0], value] if live else [relu.outputs[0]]
    graph = ir.Graph([x], outputs, nodes=[*nodes, relu], opset_imports={"": 18})
    return ir.Model(graph, ir_version=10)


@pytest.mark.parametrize("live", [False, True], ids=["dead-chain", "live-chain"])
def test_long_chain_without_recursion(live):
    model = chain_model(20_000, live=live)
    start = time.perf_counter()
    counts = run_pass(model, "dead-code")
    assert time.perf_counter() - start < 5
    assert counts == {"nodes": 0 if live else 20_000, "initializers": 0}
    assert len(model.graph) == (20_001 if live else 1)


CLEANUP = ["eliminate-noops", "cse", "dead-code"]


@pytest.mark.parametrize("corpus_model", corpus_params())
def test_cleanup_passes_keep_corpus_outputs(corpus_model):
    """Verification after every pass that changed the model raises on any drift."""
    inputs, expected = corpus_model.reference()
    model = parse_onnx(corpus_model.path).model
    report = optimize(model, passes=[PASSES[name] for name in CLEANUP], verify_feeds=inputs)
    assert report.verified and report.nodes_after <= report.nodes_before
    assert_close_to_reference(run_model(model, inputs), expected, corpus_model.name)
    again = optimize(model, passes=[PASSES[name] for name in CLEANUP])
    assert not any(run.rewrites for run in again.runs), "the clean-up passes are not at a fixed point"
