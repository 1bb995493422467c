"""fold-shapes: Shape chains over static dims become constants; Reshape targets built from the reshaped
tensor's own dims become 0 (copy) / -1; symbolic dims never become numbers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from trtc.frontend import parse_onnx
from trtc.ir.rewrite import const_array
from trtc.passes import PASSES
from trtc.passes.pipeline import optimize

from corpus import corpus_params
from passutil import check_pass, make_model, ops, run_pass, vi

INT64_MAX = np.iinfo(np.int64).max


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def dim(x: str, axis: int, out: str) -> list:
    """out = Unsqueeze(Gather(Shape(x), axis), [0]): one dim of x as a 1-element vector."""
    return [helper.make_node("Shape", [x], [f"{out}_shape"]),
            helper.make_node("Gather", [f"{out}_shape", f"{out}_axis"], [f"{out}_dim"], axis=0),
            helper.make_node("Unsqueeze", [f"{out}_dim", "zero"], [out])]


def dim_inits(*outs_axes: tuple[str, int]) -> dict:
    return {"zero": i64(0), **{f"{out}_axis": np.array(axis, np.int64) for out, axis in outs_axes}}


def reshape_model(data: str, parts: list[str], nodes: list, inits: dict, x_shape: list, *, allowzero: int = 0,
                  before: list = ()) -> ir.Model:
    """y = Reshape(data, Concat(parts)) with x: x_shape, `before` nodes computing `data` from x."""
    tail = [helper.make_node("Concat", parts, ["target"], axis=0),
            helper.make_node("Reshape", [data, "target"], ["y"], allowzero=allowzero)]
    return make_model([*before, *nodes, *tail], [vi("x", x_shape)], [vi("y", None)], inits)


def reshape_target(model: ir.Model) -> list[int] | None:
    reshape = next(n for n in model.graph if n.op_type == "Reshape" and n.outputs[0].name == "y")
    target = const_array(reshape.inputs[1])
    return None if target is None else target.tolist()


X = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)


def fold(model: ir.Model, x: np.ndarray = X) -> dict[str, int]:
    return check_pass(model, "fold-shapes", {"x": x})


# --- must fire ----------------------------------------------------------------------------------------------


def test_static_dim_of_a_symbolic_shape_folds():
    """Gather(Shape(x), 2) with x: [batch, seq, 8] -> 8; the whole chain goes."""
    model = reshape_model("x", ["minus_one", "d2"], dim("x", 2, "d2"), {**dim_inits(("d2", 2)), "minus_one": i64(-1)},
                          ["batch", "seq", 8])
    assert fold(model) == {"static-shape": 1}
    assert ops(model) == ["Reshape"] and reshape_target(model) == [-1, 8]


def test_reshape_to_own_dims_copies_them():
    """Reshape(x, [dim0(x), dim1(x), 2, 4]) -> Reshape(x, [0, 0, 2, 4])."""
    nodes = dim("x", 0, "d0") + dim("x", 1, "d1")
    inits = {**dim_inits(("d0", 0), ("d1", 1)), "two": i64(2), "four": i64(4)}
    model = reshape_model("x", ["d0", "d1", "two", "four"], nodes, inits, ["batch", "seq", 8])
    assert fold(model) == {"reshape-target": 1}
    assert ops(model) == ["Reshape"] and reshape_target(model) == [0, 0, 2, 4]


def test_dims_of_another_value_with_the_same_symbols_are_copied():
    """Relu keeps x's dims (batch, seq): Reshape(relu, [dim0(x), dim1(x), 2, 4]) copies them."""
    nodes = dim("x", 0, "d0") + dim("x", 1, "d1")
    inits = {**dim_inits(("d0", 0), ("d1", 1)), "two": i64(2), "four": i64(4)}
    model = reshape_model("r", ["d0", "d1", "two", "four"], nodes, inits, ["batch", "seq", 8],
                          before=[helper.make_node("Relu", ["x"], ["r"])])
    assert fold(model) == {"reshape-target": 1}
    assert reshape_target(model) == [0, 0, 2, 4]


def test_invented_dim_names_are_not_taken_as_equal():
    """`unk__1` is a name an inference run made up (another run may reuse it): only `seq` is copied."""
    nodes = dim("x", 0, "d0") + dim("x", 1, "d1")
    inits = {**dim_inits(("d0", 0), ("d1", 1)), "two": i64(2), "four": i64(4)}
    model = reshape_model("r", ["d0", "d1", "two", "four"], nodes, inits, ["unk__1", "seq", 8],
                          before=[helper.make_node("Relu", ["x"], ["r"])])
    assert fold(model) == {"reshape-target": 1}
    assert reshape_target(model) == [-1, 0, 2, 4]


def test_the_one_unknown_dim_becomes_minus_one():
    """Reshape(Transpose(x), [dim0(x), 3, 8]) with x: [batch, 3, 8]: dim 0 is not the data's own."""
    transpose = helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2])
    model = reshape_model("t", ["d0", "three", "eight"], dim("x", 0, "d0"),
                          {**dim_inits(("d0", 0)), "three": i64(3), "eight": i64(8)}, ["batch", 3, 8],
                          before=[transpose])
    assert fold(model) == {"reshape-target": 1}
    assert reshape_target(model) == [-1, 3, 8]


def test_allowzero_reshape_without_a_literal_zero_copies_dims():
    """allowzero=1 only changes what a 0 means: a target with none gets copies (0) and allowzero=0."""
    model = reshape_model("x", ["d0", "three", "eight"], dim("x", 0, "d0"),
                          {**dim_inits(("d0", 0)), "three": i64(3), "eight": i64(8)}, ["batch", 3, 8], allowzero=1)
    assert fold(model) == {"reshape-target": 1}
    assert reshape_target(model) == [0, 3, 8]
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert reshape.attributes.get_int("allowzero") == 0


def test_minus_one_becomes_the_size_the_ir_infers():
    """Reshape(x [batch, seq, 64], [d0, d1, -1, 16]) -> [0, 0, 4, 16]: the head count static for TensorRT
    (IAttention needs it while building)."""
    x = np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 64)
    model = reshape_model("x", ["d0", "d1", "minus_one", "sixteen"], dim("x", 0, "d0") + dim("x", 1, "d1"),
                          {**dim_inits(("d0", 0), ("d1", 1)), "minus_one": i64(-1), "sixteen": i64(16)},
                          ["batch", "seq", 64], allowzero=1)
    assert fold(model, x) == {"reshape-target": 1}
    assert reshape_target(model) == [0, 0, 4, 16]


def test_target_from_dim_arithmetic_is_read_off_the_ir():
    """A target the trace cannot follow (Add of two dims) is read off the IR's output dims."""
    nodes = [*dim("x", 0, "d0"), *dim("x", 1, "d1"), *dim("x", 2, "d2"),
             helper.make_node("Mul", ["d1", "d2"], ["merged"])]
    model = reshape_model("x", ["d0", "merged"], nodes, dim_inits(("d0", 0), ("d1", 1), ("d2", 2)),
                          ["batch", "seq", 8])
    model.graph.outputs[0].shape = ir.Shape(["batch", "seq*8"])
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    assert fold(model, x)["reshape-target"] == 1
    assert reshape_target(model) == [0, -1]


def test_partial_shape_slice_and_squeeze_fold():
    """Squeeze(Slice(Shape(x, start=1), -1:)) with x: [batch, seq, 8] -> 8."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1),
             helper.make_node("Slice", ["s", "start", "end"], ["last"]),
             helper.make_node("Squeeze", ["last", "zero"], ["d"]),
             helper.make_node("Cast", ["d"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "f"], ["y"])]
    model = make_model(nodes, [vi("x", ["batch", "seq", 8])], [vi("y", None)],
                       {"start": i64(-1), "end": i64(INT64_MAX), "zero": i64(0)})
    assert fold(model) == {"static-shape": 1}
    assert ops(model) == ["Cast", "Mul"]
    assert const_array(next(iter(model.graph)).inputs[0]).tolist() == 8


def test_static_size_folds():
    nodes = [helper.make_node("Size", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "f"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3, 8])], [vi("y", None)])
    assert fold(model) == {"static-shape": 1}
    assert ops(model) == ["Cast", "Div"]


def mask_model(compare_to: np.ndarray) -> ir.Model:
    """torch's Expand target: Where(Equal(Shape(x), c), ones, Shape(x)), expanding a [1, 8] row."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Equal", ["s", "c"], ["e"]),
             helper.make_node("Where", ["e", "ones", "s"], ["w"]), helper.make_node("Expand", ["row", "w"], ["y"])]
    inits = {"c": compare_to, "ones": i64(1, 1), "row": np.arange(8, dtype=np.float32).reshape(1, 8)}
    return make_model(nodes, [vi("x", ["batch", 8])], [vi("y", None)], inits)


def test_equal_of_dims_and_minus_one_is_decided():
    model = mask_model(i64(-1, -1))
    assert fold(model, X[0]) == {"equal-decided": 1}
    assert "Equal" not in ops(model)


# --- must not fire ------------------------------------------------------------------------------------------


def assert_untouched(model: ir.Model) -> None:
    before = ops(model)
    assert run_pass(model, "fold-shapes") == {}
    assert ops(model) == before


def test_symbolic_dim_never_becomes_a_number():
    """Gather(Shape(x), 0) with x: [batch, 8] is batch: it stays computed."""
    nodes = dim("x", 0, "d0") + [helper.make_node("Cast", ["d0"], ["f"], to=TensorProto.FLOAT),
                                 helper.make_node("Mul", ["x", "f"], ["y"])]
    model = make_model(nodes, [vi("x", ["batch", 8])], [vi("y", None)], dim_inits(("d0", 0)))
    assert_untouched(model)


def test_equal_of_a_dim_and_a_possible_size_is_not_decided():
    assert_untouched(mask_model(i64(3, 8)))  # batch may be 3


def test_two_unknown_dims_of_another_value_stay():
    """Reshape(Reshape(x, [-1, 8]), [dim0(x), dim1(x), 8]): batch*seq is split again, no shortcut."""
    flat = helper.make_node("Reshape", ["x", "flat_shape"], ["f"])
    nodes = dim("x", 0, "d0") + dim("x", 1, "d1")
    inits = {**dim_inits(("d0", 0), ("d1", 1)), "eight": i64(8), "flat_shape": i64(-1, 8)}
    model = reshape_model("f", ["d0", "d1", "eight"], nodes, inits, ["batch", "seq", 8], before=[flat])
    assert_untouched(model)


def test_allowzero_reshape_with_a_literal_zero_never_copies_two_dims():
    """With allowzero=1 and a literal 0 in the target, a 0 cannot stand for a copy."""
    nodes = dim("x", 0, "d0") + dim("x", 1, "d1")
    inits = {**dim_inits(("d0", 0), ("d1", 1)), "nothing": i64(0), "four": i64(4)}
    model = reshape_model("x", ["d0", "d1", "nothing", "four"], nodes, inits, ["batch", "seq", 0], allowzero=1)
    assert_untouched(model)


def test_shape_of_unknown_rank_is_left():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"], axis=0)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [vi("d", None)],
                       {"one": np.array(1, np.int64)})
    assert_untouched(model)


# --- corpus -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", corpus_params())
def test_corpus_verified(entry):
    model = parse_onnx(entry.path).model
    feeds, _ = entry.reference()
    report = optimize(model, passes=[PASSES["fold-shapes"], PASSES["fold-constants"]], verify_feeds=feeds)
    print(entry.name, report.nodes_before, "->", report.nodes_after,
          {k: v["rewrites"] for k, v in report.totals().items()})
    assert run_pass(model, "fold-shapes") == {}, "fold-shapes did not reach its fixed point"
