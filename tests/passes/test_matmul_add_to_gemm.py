"""matmul-add-to-gemm: a 2-D MatMul by a constant weight plus a constant bias becomes one Gemm."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.pipeline import optimize

from corpus import corpus_params
from passutil import check_pass, make_model, ops, run_pass, vi

RNG = np.random.default_rng(0)
M, K, N = 3, 5, 4


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def linear_model(bias_shape: tuple | None = (N,), *, a_shape: tuple = (M, K), bias_first: bool = False,
                 inits: dict | None = None, inputs: tuple = (), extra: tuple = (), extra_outputs: tuple = ()):
    """a -> MatMul(a, w) -> Add(bias) -> out."""
    add_inputs = ["bias", "y"] if bias_first else ["y", "bias"]
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y"]), helper.make_node("Add", add_inputs, ["out"]), *extra]
    default = {"w": rand(K, N), **({"bias": rand(*bias_shape)} if bias_shape is not None else {})}
    outputs = [vi("out", None), *(vi(name, None) for name in extra_outputs)]
    constants = {name: data for name, data in {**default, **(inits or {})}.items() if data is not None}
    return make_model(nodes, [vi("a", list(a_shape)), *inputs], outputs, constants)


def feeds(a_shape: tuple = (M, K)) -> dict[str, np.ndarray]:
    return {"a": rand(*a_shape)}


@pytest.mark.parametrize("bias_shape", [(N,), (1, N), (M, N), (M, 1), (), (1,)])
def test_matmul_add_becomes_gemm(bias_shape):
    model = linear_model(bias_shape)
    assert check_pass(model, "matmul-add-to-gemm", feeds()) == {"matmul-add": 1}
    assert ops(model) == ["Gemm"]
    assert model.graph.outputs[0].name == "out"


def test_bias_first_operand_order():
    model = linear_model(bias_first=True)
    assert check_pass(model, "matmul-add-to-gemm", feeds()) == {"matmul-add": 1}
    assert ops(model) == ["Gemm"]


def test_symbolic_batch_with_row_vector_bias():
    model = linear_model((1, N), a_shape=("batch", K))
    assert check_pass(model, "matmul-add-to-gemm", feeds((7, K))) == {"matmul-add": 1}


def assert_untouched(model: ir.Model) -> None:
    before = ops(model)
    assert run_pass(model, "matmul-add-to-gemm") == {}
    assert ops(model) == before


def test_3d_activation_is_left():
    assert_untouched(linear_model(a_shape=(2, M, K)))


def test_non_constant_weight_is_left():
    model = linear_model(inits={"w": None}, inputs=(vi("w", [K, N]),))
    assert_untouched(model)


def test_non_constant_bias_is_left():
    assert_untouched(linear_model(None, inputs=(vi("bias", [N]),)))


def test_matmul_with_second_user_is_left():
    model = linear_model(extra=(helper.make_node("Relu", ["y"], ["r"]),), extra_outputs=("r",))
    assert_untouched(model)


@pytest.mark.parametrize("bias_shape", [(1, 1, N), (2, 1, N)], ids=["rank-3", "broadcasts-up"])
def test_bias_that_broadcasts_the_output_is_left(bias_shape):
    assert_untouched(linear_model(bias_shape))


def test_bias_rows_against_symbolic_batch_are_left():
    # [M, N] bias with a symbolic batch: Gemm's C must broadcast to [batch, N], unknowable here.
    assert_untouched(linear_model((M, N), a_shape=("batch", K)))


@pytest.mark.parametrize("entry", corpus_params())
def test_corpus_verified(entry):
    model = parse_onnx(entry.path).model
    feeds_, _ = entry.reference()
    report = optimize(model, passes=[PASSES["matmul-add-to-gemm"]], verify_feeds=feeds_)
    counts = report.totals()["matmul-add-to-gemm"]["rewrites"]
    print(entry.name, counts)
    # Every MatMul + Add left over has a reason: not 2-D, a non-constant operand, or a second user.
    for matmul in model.graph:
        adds = [u for u in matmul.outputs[0].consumers() if u.op_type == "Add"] if matmul.op_type == "MatMul" else []
        for add in adds:
            bias = next(v for v in add.inputs if v is not matmul.outputs[0])
            rank = len(matmul.inputs[0].shape) if matmul.inputs[0].shape is not None else None
            constant = matmul.inputs[1].const_value is not None and bias.const_value is not None
            assert rank != 2 or not constant or len(matmul.outputs[0].uses()) > 1, f"{add.name} left as MatMul + Add"
