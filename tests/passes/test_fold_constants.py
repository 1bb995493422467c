"""fold-constants: nodes computable from constants become initializers; ConstantOfShape and Expand of one
element become lazy splats; random ops, overridable inputs, subgraphs and oversized results stay."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.frontend import parse_onnx
from trtc.ir import load_artifact, save_artifact
from trtc.ir.onnx_export import to_model_proto
from trtc.ir.rewrite import const_array
from trtc.ir.splat import SplatTensor
from trtc.passes import PASSES, PassContext
from trtc.passes._evaluate import is_constant
from trtc.passes.pipeline import optimize
from trtc.reference.runner import ReferenceRunner

from corpus import corpus_params
from passutil import check_pass, make_model, ops, run_model, run_pass, vi

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def fold(model: ir.Model, feeds: dict | None = None) -> dict[str, int]:
    return check_pass(model, "fold-constants", feeds or {"x": X})


def x_plus(nodes: list, operand: str, inits: dict, *, inputs: tuple = ()) -> ir.Model:
    """x[3,4] + `operand` -> y, where `nodes` compute `operand`."""
    add = helper.make_node("Add", ["x", operand], ["y"])
    return make_model([*nodes, add], [vi("x", [3, 4]), *inputs], [vi("y", None)], inits)


def splat_of(model: ir.Model, name: str) -> SplatTensor:
    tensor = model.graph.initializers[name].const_value
    assert isinstance(tensor, SplatTensor), f"{name} is a {type(tensor).__name__}, not a splat"
    return tensor


# --- must fire ----------------------------------------------------------------------------------------------


def test_constant_chain_folds_in_one_session():
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Transpose", ["ab"], ["t"], perm=[1, 0]),
             helper.make_node("Sqrt", ["t"], ["s"])]
    inits = {"a": np.full((4, 3), 2, np.float32), "b": np.arange(12, dtype=np.float32).reshape(4, 3)}
    model = x_plus(nodes, "s", inits)
    assert fold(model) == {"folded": 3}
    assert ops(model) == ["Add"]
    assert set(model.graph.initializers) == {"s"}, "the inputs of folded nodes are dropped"
    np.testing.assert_allclose(const_array(model.graph.initializers["s"]), np.sqrt((inits["a"] * inits["b"]).T))


def test_constant_graph_output_keeps_its_name():
    nodes = [helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])]
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", None), vi("n", None)], {"a": np.ones((3, 4), np.float32)})
    assert fold(model) == {"folded": 1}
    assert [v.name for v in model.graph.outputs] == ["y", "n"]
    assert model.graph.outputs[1].is_initializer()


def test_constant_of_shape_becomes_a_splat():
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])
    model = x_plus([helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value)], "c",
                   {"shape": np.array([3, 4], np.int64)})
    assert fold(model) == {"splat": 1}
    splat = splat_of(model, "c")
    assert splat.value == 1.5 and splat.numpy().shape == (3, 4) and splat.numpy().strides == (0, 0)


def test_expand_of_one_element_becomes_a_splat_and_shape_ops_keep_it_one():
    nodes = [helper.make_node("Expand", ["one", "shape"], ["e"]),
             helper.make_node("Unsqueeze", ["e", "axes"], ["u"]),
             helper.make_node("Reshape", ["u", "shape"], ["r"]), helper.make_node("Cast", ["r"], ["c"], to=1)]
    inits = {"one": np.array([[7]], np.int32), "shape": np.array([3, 4], np.int64), "axes": np.array([0], np.int64)}
    model = x_plus(nodes, "c", inits)
    assert fold(model) == {"splat": 4}
    assert splat_of(model, "c").value == 7.0 and splat_of(model, "c").dtype == ir.DataType.FLOAT


def test_expand_of_a_splat_stays_a_splat():
    nodes = [helper.make_node("ConstantOfShape", ["col_shape"], ["col"]),
             helper.make_node("Expand", ["col", "shape"], ["e"])]
    model = x_plus(nodes, "e", {"col_shape": np.array([3, 1], np.int64), "shape": np.array([1, 4], np.int64)})
    assert fold(model) == {"splat": 2}
    assert splat_of(model, "e").shape.numpy() == (3, 4)


def test_cast_of_a_nan_splat_to_int_is_left_to_the_executors():
    """ONNX leaves float -> int of NaN undefined; numpy's answer is not taken for it."""
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [np.nan])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
             helper.make_node("Cast", ["c"], ["i"], to=TensorProto.INT32),
             helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT)]
    model = x_plus(nodes, "f", {"shape": np.array([3, 4], np.int64)})
    assert fold(model) == {"splat": 1, "folded": 2}
    assert not isinstance(model.graph.initializers["f"].const_value, SplatTensor)


def test_expand_of_a_vector_is_folded_dense():
    model = x_plus([helper.make_node("Expand", ["row", "shape"], ["e"])], "e",
                   {"row": np.arange(4, dtype=np.float32), "shape": np.array([3, 1], np.int64)})
    assert fold(model) == {"folded": 1}
    assert not isinstance(model.graph.initializers["e"].const_value, SplatTensor)


def test_constant_of_shape_of_a_folded_shape_becomes_a_splat():
    """The shape is computed (Concat) first; the ConstantOfShape waits for it, then becomes a splat."""
    nodes = [helper.make_node("Concat", ["d0", "d1"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["c"])]
    model = x_plus(nodes, "c", {"d0": np.array([3], np.int64), "d1": np.array([4], np.int64)})
    assert fold(model) == {"folded": 1, "splat": 1}
    assert splat_of(model, "c").value == 0.0


def test_bfloat16_results_fall_back_to_the_onnx_reference():
    nodes = [helper.make_node("Cast", ["a"], ["h"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT)]
    model = x_plus(nodes, "f", {"a": np.full((3, 4), 1.0 + 2**-10, np.float32)})
    assert fold(model) == {"folded": 2}
    np.testing.assert_array_equal(const_array(model.graph.initializers["f"]), np.ones((3, 4), np.float32))


# --- must not fire ------------------------------------------------------------------------------------------


def assert_untouched(model: ir.Model, ctx: PassContext | None = None) -> None:
    before = ops(model)
    assert run_pass(model, "fold-constants", ctx) == {}
    assert ops(model) == before


def test_random_op_is_not_folded():
    model = x_plus([helper.make_node("RandomNormal", [], ["r"], shape=[3, 4], seed=1.0)], "r", {})
    assert_untouched(model)


def test_random_like_op_is_not_folded():
    model = x_plus([helper.make_node("RandomUniformLike", ["a"], ["r"], seed=1.0)], "r",
                   {"a": np.zeros((3, 4), np.float32)})
    assert_untouched(model)


def test_overridable_initializer_is_not_a_constant():
    """An initializer that is also a graph input can be fed at run time."""
    model = x_plus([helper.make_node("Neg", ["a"], ["n"])], "n", {"a": np.ones((3, 4), np.float32)},
                   inputs=(vi("a", [3, 4]),))
    assert_untouched(model)


def test_op_with_a_subgraph_is_not_folded():
    branch = helper.make_graph([helper.make_node("Identity", ["a"], ["o"])], "b", [], [vi("o", [3, 4])])
    node = helper.make_node("If", ["cond"], ["i"], then_branch=branch, else_branch=branch)
    model = x_plus([node], "i", {"cond": np.array(True), "a": np.ones((3, 4), np.float32)})
    assert_untouched(model)


def test_result_over_the_size_cap_is_not_folded():
    model = x_plus([helper.make_node("Tile", ["a", "reps"], ["t"])], "t",
                   {"a": np.ones((3, 1), np.float32), "reps": np.array([1, 4], np.int64)})
    assert_untouched(model, PassContext(fold_max_bytes=47))  # 48 bytes
    assert run_pass(model, "fold-constants", PassContext(fold_max_bytes=48)) == {"folded": 1}


def test_refusals_are_reported_beside_folds():
    nodes = [helper.make_node("Tile", ["a", "reps"], ["t"]), helper.make_node("Neg", ["t"], ["n"]),
             helper.make_node("Abs", ["a"], ["b"]), helper.make_node("Add", ["n", "b"], ["s"])]
    model = x_plus(nodes, "s", {"a": np.ones((3, 1), np.float32), "reps": np.array([1, 4], np.int64)})
    assert run_pass(model, "fold-constants", PassContext(fold_max_bytes=47)) == {"folded": 1, "skipped-size-cap": 1}
    assert ops(model) == ["Tile", "Neg", "Add", "Add"]


def test_folding_never_multiplies_the_weights():
    """Expand(weight) to much larger tensors: each result is under the per-tensor cap, but together
    they would take the weights past 2 x the model's + the cap."""
    rows = 1000
    nodes = [helper.make_node("Expand", ["w", "shape"], [f"e{i}"]) for i in range(3)]
    nodes += [helper.make_node("Add", ["x", "e0"], ["s0"]), helper.make_node("Add", ["s0", "e1"], ["s1"]),
              helper.make_node("Add", ["s1", "e2"], ["y"])]
    inits = {"w": np.arange(16, dtype=np.float32), "shape": np.array([rows, 16], np.int64)}
    model = make_model(nodes, [vi("x", [rows, 16])], [vi("y", None)], inits)
    feeds = {"x": np.ones((rows, 16), np.float32)}
    before = run_model(model, feeds)
    ctx = PassContext(fold_max_bytes=rows * 16 * 4, model_weight_bytes=16 * 4)  # room for one result
    assert run_pass(model, "fold-constants", ctx) == {"folded": 1, "skipped-weight-budget": 2}
    assert ops(model) == ["Expand", "Expand", "Add", "Add", "Add"]
    np.testing.assert_allclose(run_model(model, feeds)["y"], before["y"])


def test_splat_over_its_cap_is_not_made():
    model = x_plus([helper.make_node("ConstantOfShape", ["shape"], ["c"])], "c", {"shape": np.array([3, 4], np.int64)})
    assert_untouched(model, PassContext(fold_max_bytes=2))  # 48 bytes > 16 x 2


# --- the lazy splat -----------------------------------------------------------------------------------------


def big_constant_of_shape(rows: int = 4096, cols: int = 4096) -> ir.Model:
    """x[1, cols] @ ConstantOfShape([cols, rows], 0.25): 64 MiB of weights made by one node."""
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"], value=value),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    return make_model(nodes, [vi("x", [1, cols])], [vi("y", None)], {"shape": np.array([cols, rows], np.int64)})


def test_splat_is_not_materialized_by_folding():
    model = big_constant_of_shape()
    tracemalloc.start()
    try:
        assert run_pass(model, "fold-constants") == {"splat": 1}
        weight = const_array(model.graph.initializers["w"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert weight.shape == (4096, 4096) and weight.strides == (0, 0)
    assert peak < 4 << 20, f"folding a 64 MiB splat allocated {peak / 2**20:.1f} MiB"
    assert model.graph.initializers["w"].const_value.nbytes == 64 << 20


def test_splat_round_trips_through_the_artifact_and_the_reference(tmp_path):
    model = big_constant_of_shape(rows=8, cols=16)
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    assert run_pass(model, "fold-constants") == {"splat": 1}
    splat = splat_of(model, "w")
    proto = to_model_proto(model)
    assert len(next(t for t in proto.graph.initializer if t.name == "w").raw_data) == 16 * 8 * 4
    expected = np.full((1, 8), x.sum() * 0.25, np.float32)
    np.testing.assert_allclose(ReferenceRunner(model).run({"x": x})["y"], expected)
    save_artifact(model, tmp_path / "m.trtir", {"stage": "optimize"})
    loaded = load_artifact(tmp_path / "m.trtir").model
    np.testing.assert_array_equal(const_array(loaded.graph.initializers["w"]), splat.numpy())
    np.testing.assert_allclose(ReferenceRunner(loaded).run({"x": x})["y"], expected)


def test_splat_writes_in_chunks(tmp_path, monkeypatch):
    from trtc.ir import splat as splat_module

    monkeypatch.setattr(splat_module, "CHUNK_ELEMENTS", 5)
    splat = SplatTensor(3, (3, 4), ir.DataType.INT16)
    with open(tmp_path / "s.bin", "wb") as f:
        splat.tofile(f)
    assert (tmp_path / "s.bin").read_bytes() == splat.tobytes() == np.full((3, 4), 3, np.int16).tobytes()


# --- corpus -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", corpus_params())
def test_corpus_verified(entry):
    model = parse_onnx(entry.path).model
    feeds, _ = entry.reference()
    report = optimize(model, passes=[PASSES["fold-constants"]], verify_feeds=feeds)
    counts = report.totals()["fold-constants"]["rewrites"]
    print(entry.name, report.nodes_before, "->", report.nodes_after, counts)
    left = [n.op_type for n in model.graph if all(is_constant(v) for v in n.inputs)]
    assert not left, f"nodes of constants left: {left}"


def test_int8_weights_stay_quantized():
    """DequantizeLinear of an int8 weight with no zero point is TensorRT's int8 weight: not folded
    to floats. One with a non-zero zero point is folded (TensorRT runs no such weight)."""
    from passutil import make_model, run_pass, vi

    w = numpy_helper.from_array(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "w")
    model = make_model(
        [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
         helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wz"]),
         helper.make_node("Add", ["wf", "wz"], ["ww"]),
         helper.make_node("MatMul", ["x", "ww"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 4])],
        {"w": numpy_helper.to_array(w), "s": np.float32(0.5), "zp": np.int8(1)})
    run_pass(model, "fold-constants")
    assert [n.op_type for n in model.graph].count("DequantizeLinear") == 1
