"""fuse-rotary: the rotate_half rotary embedding fuses into RotaryEmbedding (4-D, or 3-D when x is a
head split), each near miss does not (and says why); make_big_model's LLaMA-style model ends up as
RotaryEmbedding + Attention after the default pipeline."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.fuse_rotary import why_not
from trtc.passes.pipeline import optimize

from corpus import corpus_params
from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(0)
B, H, S, D, POSITIONS = 2, 3, 5, 8, 16
TOL = {"rtol": 1e-5, "atol": 1e-5}


def rope_tables(layout: str = "half") -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [POSITIONS, D]: "half" repeats the frequencies per half (rotate_half models),
    "interleaved" per adjacent pair (rotate_every_two models)."""
    inv_freq = 1.0 / (10000 ** (np.arange(0, D, 2) / D))
    angles = np.outer(np.arange(POSITIONS), inv_freq)
    angles = np.concatenate([angles, angles], 1) if layout == "half" else np.repeat(angles, 2, 1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_model(*, halves: str = "split", positions: str = "range", tables: str = "half", swap: bool = False,
               rotate: str = "neg-second", extra_output: str | None = None, heads_of: bool = False) -> ir.Model:
    """x [B, H, S, D] -> x*cos + rotate_half(x)*sin -> y, with one knob per form or defect."""
    cos_table, sin_table = rope_tables(tables)
    inits = {"cos_table": cos_table, "sin_table": sin_table, "split": np.array([D // 2, D // 2], np.int64),
             "zero": np.array(0, np.int64), "limit": np.array(S, np.int64), "one": np.array(1, np.int64),
             "axes_1": np.array([1], np.int64), "axes_2": np.array([2], np.int64), "starts_0": np.array([0], np.int64),
             "half": np.array([D // 2], np.int64), "end": np.array([np.iinfo(np.int64).max], np.int64),
             "last": np.array([-1], np.int64), "step_2": np.array([2], np.int64),
             "heads_shape": np.array([0, 0, H, D], np.int64)}
    # "batch-axis2": x in the [B, S, H, D] layout, cos/sin [B, S, 1, D] (rotated before the head transpose)
    inputs, nodes = [vi("x", [B, S, H, D] if positions == "batch-axis2" else [B, H, S, D])], []
    if heads_of:  # x = Transpose(Reshape(x3 [B, S, H*D], [B, S, H, D]), [0, 2, 1, 3])
        inputs = [vi("x3", [B, S, H * D])]
        nodes += [helper.make_node("Reshape", ["x3", "heads_shape"], ["x_heads"]),
                  helper.make_node("Transpose", ["x_heads"], ["x"], perm=[0, 2, 1, 3])]
    if positions == "range":  # [S]: shared by the batch
        nodes.append(helper.make_node("Range", ["zero", "limit", "one"], ["pos"]))
    else:  # a graph input: [B, S] or [1, S], int64 or int32
        shape = [B, S] if positions.startswith("batch") else [1, S]
        dtype = onnx.TensorProto.INT32 if positions.endswith("int32") else onnx.TensorProto.INT64
        inputs.append(vi("pos", shape, dtype))
    unsqueeze = "axes_2" if positions == "batch-axis2" else "axes_1"  # [B, S, D] -> [B, 1, S, D]
    if positions == "batch-computed":  # torch dynamo: f = positions x inverse frequencies, cos = Cos(f|f)
        inits["inv_freq"] = (1.0 / (10000 ** (np.arange(0, D, 2) / D))).astype(np.float32)
        nodes += [helper.make_node("Unsqueeze", ["pos", "axes_2"], ["pos_3d"]),
                  helper.make_node("Cast", ["pos_3d"], ["pos_float"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Mul", ["pos_float", "inv_freq"], ["angles"]),
                  helper.make_node("Concat", ["angles", "angles"], ["both"], axis=-1)]
    for name in ("cos", "sin"):
        if positions == "batch-computed":
            nodes += [helper.make_node(name.title(), ["both"], [f"{name}_rows"]),
                      helper.make_node("Unsqueeze", [f"{name}_rows", unsqueeze], [name])]
            continue
        nodes.append(helper.make_node("Gather", [f"{name}_table", "pos"], [name if positions == "range" else
                                                                          f"{name}_rows"]))
        if positions != "range":
            nodes.append(helper.make_node("Unsqueeze", [f"{name}_rows", unsqueeze], [name]))
    if halves == "split":
        nodes.append(helper.make_node("Split", ["x", "split"], ["x1", "x2"], axis=-1))
    elif halves == "split-num-outputs":
        nodes.append(helper.make_node("Split", ["x"], ["x1", "x2"], axis=3, num_outputs=2))
    elif halves == "slice":
        nodes += [helper.make_node("Slice", ["x", "starts_0", "half", "last"], ["x1"]),
                  helper.make_node("Slice", ["x", "half", "end", "last"], ["x2"])]
    else:  # "every-two": the interleaved layout's even and odd elements
        nodes += [helper.make_node("Slice", ["x", "starts_0", "end", "last", "step_2"], ["x1"]),
                  helper.make_node("Slice", ["x", "one_1", "end", "last", "step_2"], ["x2"])]
        inits["one_1"] = np.array([1], np.int64)
    rotated = ["x2_neg", "x1"] if rotate == "neg-second" else ["x1", "x2_neg"]
    nodes += [helper.make_node("Neg", ["x2"], ["x2_neg"]),
              helper.make_node("Concat", rotated, ["rot"], axis=-1),
              helper.make_node("Mul", ["cos", "x"] if swap else ["x", "cos"], ["x_cos"]),
              helper.make_node("Mul", ["rot", "sin"], ["rot_sin"]),
              helper.make_node("Add", ["rot_sin", "x_cos"] if swap else ["x_cos", "rot_sin"], ["y"], name="rope")]
    outputs = [vi("y", None)] + ([vi(extra_output, None)] if extra_output else [])
    return make_model(nodes, inputs, outputs, inits, opset=18)


def feeds_for(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else {"batch": B, "seq": S}[d.value] for d in value.shape]
        if value.name == "pos":
            out["pos"] = RNG.integers(0, POSITIONS, shape).astype(value.dtype.numpy())
        else:
            out[value.name] = RNG.standard_normal(shape).astype(np.float32)
    return out


def rotary(model: ir.Model) -> ir.Node:
    (node,) = [n for n in model.graph if n.op_type == "RotaryEmbedding"]
    return node


def rope_node(model: ir.Model) -> ir.Node:
    return next(n for n in model.graph if n.name == "rope")


@pytest.mark.parametrize("halves", ["split", "split-num-outputs", "slice"])
@pytest.mark.parametrize("swap", [False, True])
def test_rotate_half_fuses_in_each_spelling(halves, swap):
    model = rope_model(halves=halves, swap=swap)
    assert why_not(rope_node(model)) is None
    assert check_pass(model, "fuse-rotary", feeds_for(model), **TOL) == {"rotary": 1}
    node = rotary(model)
    assert node.inputs[0].name == "x" and {k: a.value for k, a in node.attributes.items()} == {"interleaved": 0}
    cos_table, sin_table = rope_tables()
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), cos_table[:, :D // 2])
    np.testing.assert_array_equal(node.inputs[2].const_value.numpy(), sin_table[:, :D // 2])
    assert model.opset_imports[""] == 23
    # Positions [S] shared by the batch: broadcast to the [B, S] RotaryEmbedding takes.
    assert ops(model) == ["Range", "Shape", "Shape", "Concat", "Expand", "RotaryEmbedding"]


@pytest.mark.parametrize("positions, expected", [
    ("batch", ["RotaryEmbedding"]),  # [B, S] ids are RotaryEmbedding's position_ids as they are
    ("one", ["Shape", "Shape", "Concat", "Expand", "RotaryEmbedding"]),
    ("batch-int32", ["Cast", "Shape", "Shape", "Concat", "Expand", "RotaryEmbedding"]),
])
def test_position_ids_from_the_inputs(positions, expected):
    model = rope_model(positions=positions)
    assert check_pass(model, "fuse-rotary", feeds_for(model), **TOL) == {"rotary": 1}
    assert ops(model) == expected
    assert rotary(model).inputs[3].dtype == ir.DataType.INT64


def test_angles_computed_per_position_become_its_caches():
    """cos = Unsqueeze(Cos(Concat(f, f)), [1]), f [B, S, D/2] (torch's dynamo exports): RotaryEmbedding takes
    Cos(f) and Sin(f) as [B, S, D/2] caches, without position ids (as the opset-23 exports do)."""
    model = rope_model(positions="batch-computed")
    assert why_not(rope_node(model)) is None
    assert check_pass(model, "fuse-rotary", feeds_for(model), **TOL) == {"rotary": 1}
    node = rotary(model)
    assert len(node.inputs) == 3 and [v.producer().op_type for v in node.inputs[1:]] == ["Cos", "Sin"]
    assert ops(model) == ["Unsqueeze", "Cast", "Mul", "Cos", "Sin", "RotaryEmbedding"]


def test_heads_of_a_3d_input_rotate_in_the_3d_form():
    model = rope_model(heads_of=True)
    assert check_pass(model, "fuse-rotary", feeds_for(model), **TOL) == {"rotary-3d": 1}
    node = rotary(model)
    assert node.inputs[0].name == "x3" and node.attributes["num_heads"].value == H
    assert ops(model)[-3:] == ["RotaryEmbedding", "Reshape", "Transpose"]  # split as x was


# Near misses: the graph stays as it is and why_not says why.
@pytest.mark.parametrize("knobs, reason", [
    ({"tables": "interleaved"}, "the halves of table cos_table differ (not the rotate_half layout)"),
    ({"halves": "every-two", "tables": "interleaved"}, "not Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin))"),
    ({"rotate": "neg-first"}, "not Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin))"),
    ({"extra_output": "rot"}, "not Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin))"),
    ({"extra_output": "x_cos"}, "not Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin))"),
    ({"positions": "batch-axis2"}, "cos or sin is not Gather(table, positions) lined up with x's sequence axis"),
])
def test_near_misses_do_not_fire(knobs, reason):
    model = rope_model(**knobs)
    assert reason in why_not(rope_node(model))
    before = ops(model)
    assert check_pass(model, "fuse-rotary", feeds_for(model), **TOL) == {}
    assert ops(model) == before


@pytest.mark.parametrize("corpus_model", corpus_params())
def test_no_rotary_in_the_corpus(corpus_model):
    # None of the corpus models has rotary embeddings: the pass must leave every one alone.
    model = parse_onnx(corpus_model.path).model
    feeds, _ = corpus_model.reference()
    report = optimize(model, passes=[PASSES["fuse-rotary"]], verify_feeds=feeds)
    assert report.totals()["fuse-rotary"]["rewrites"] == {}


def test_llama_default_pipeline_rotary_and_attention(llama_path):
    model = parse_onnx(llama_path).model
    feeds = {"input_ids": RNG.integers(0, 500, (2, 9)).astype(np.int64)}
    report = optimize(model, verify_feeds=feeds)  # raises CheckFailed on drift
    totals = report.totals()
    assert totals["fuse-rotary"]["rewrites"] == {"rotary-3d": 4}  # Q and K of 2 layers
    assert totals["fuse-attention"]["rewrites"] == {"attention": 2, "causal": 2, "grouped-query": 2,
                                                    "heads-absorbed": 2}
    names = ops(model)
    for op in ("Softmax", "Neg", "Split", "Trilu", "Transpose", "Reshape"):
        assert op not in names
    assert names.count("Expand") == 1  # the position ids, broadcast once for all four rotations
    rotations = [n for n in model.graph if n.op_type == "RotaryEmbedding"]
    assert [n.attributes["num_heads"].value for n in rotations] == [4, 2, 4, 2]
    assert len({n.inputs[1] for n in rotations}) == 1  # one half table shared by all
