"""fuse-attention: every scaled-dot-product form fuses into Attention (4-D, or 3-D when the head
split/merge is absorbed), each near miss does not (and says why); on the corpus, the default pipeline
leaves no Softmax outside Attention and one Attention per layer in every transformer model."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.frontend import parse_onnx
from trtc.passes import PASSES
from trtc.passes.fuse_attention import why_not
from trtc.passes.pipeline import optimize

from corpus import MODELS, CorpusModel, corpus_params
from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(0)
B, H, S, D = 2, 4, 5, 8
HIDDEN = H * D
FLOAT_MIN = float(np.finfo(np.float32).min)
TOL = {"rtol": 1e-4, "atol": 1e-4}


def scores_nodes(q: str, kt: str, *, scale: str, mask: str | None, sq: int, skv: int, axis: int) -> tuple[list, dict]:
    """MatMul(q, kt) -> scale -> mask -> Softmax(axis) -> "probs"; returns (nodes, initializers)."""
    inits = {name: np.array(value, np.float32) for name, value in [
        ("scale", 1 / math.sqrt(D)), ("sqrt_d", math.sqrt(D)), ("quarter", D ** -0.25), ("zero", 0.0),
        ("neg_inf", -np.inf), ("float_min", FLOAT_MIN), ("negative", -0.5)]}
    nodes = [helper.make_node("MatMul", [q, kt], ["qk"], name="qk")]
    last = "qk"
    if scale in ("mul", "div", "input", "negative"):  # "qk": d^-0.25 on Q and K instead; "none": none (T5)
        factor = {"mul": "scale", "div": "sqrt_d", "input": "c", "negative": "negative"}[scale]
        nodes.append(helper.make_node("Div" if scale == "div" else "Mul", ["qk", factor], ["scaled"], name="scale"))
        last = "scaled"
    if mask in ("add", "twice"):  # "twice": Add(scores, scores) reads the scores twice
        nodes.append(helper.make_node("Add", [last, "mask" if mask == "add" else last], ["masked"], name="mask"))
        last = "masked"
    elif mask == "add-before-scale":
        nodes[-1:] = [helper.make_node("Add", ["qk", "mask"], ["qk_masked"], name="mask"),
                      helper.make_node("Mul", ["qk_masked", "scale"], ["masked"], name="scale")]
        last = "masked"
    elif mask in ("bool", "bool-min"):
        nodes.append(helper.make_node("Where", ["mask", last, "neg_inf" if mask == "bool" else "float_min"],
                                      ["masked"], name="mask"))
        last = "masked"
    elif mask in ("trilu", "trilu-k2"):  # make_big_model's causal mask: dtype-min above the diagonal
        inits["mask_shape"] = np.array([sq, skv], np.int64)
        inits["trilu_k"] = np.array(1 if mask == "trilu" else 2, np.int64)
        nodes += [helper.make_node("ConstantOfShape", ["mask_shape"], ["full"],
                                   value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [FLOAT_MIN])),
                  helper.make_node("Trilu", ["full", "trilu_k"], ["causal"], upper=1),
                  helper.make_node("Add", [last, "causal"], ["masked"], name="mask")]
        last = "masked"
    elif mask in ("less-equal", "where-causal"):  # transformers' causal mask: key index <= query index
        inits.update({"start": np.array(0, np.int64), "limit": np.array(sq, np.int64), "one": np.array(1, np.int64),
                      "axes_key": np.array([0, 1, 2], np.int64), "axes_query": np.array([0, 1, 3], np.int64)})
        nodes += [helper.make_node("Range", ["start", "limit", "one"], ["arange"]),
                  helper.make_node("Unsqueeze", ["arange", "axes_key"], ["key_index"]),
                  helper.make_node("Unsqueeze", ["arange", "axes_query"], ["query_index"]),
                  helper.make_node("LessOrEqual", ["key_index", "query_index"], ["allowed"])]
        if mask == "less-equal":
            nodes += [helper.make_node("Where", ["allowed", "zero", "float_min"], ["bias"]),
                      helper.make_node("Add", [last, "bias"], ["masked"], name="mask")]
        else:
            nodes.append(helper.make_node("Where", ["allowed", last, "neg_inf"], ["masked"], name="mask"))
        last = "masked"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], name="softmax", axis=axis))
    return nodes, inits


def repeat_kv(name: str, kv_heads: int) -> tuple[list, dict]:
    """transformers' repeat_kv: [B, kv, S, D] -> Unsqueeze(2) -> Expand(rep) -> Reshape [B, H, S, D]."""
    return [helper.make_node("Unsqueeze", [name, "axis_2"], [f"{name}_5d"]),
            helper.make_node("Expand", [f"{name}_5d", "rep_shape"], [f"{name}_rep"]),
            helper.make_node("Reshape", [f"{name}_rep", "heads_shape"], [f"{name}_all"])], {
        "axis_2": np.array([2], np.int64), "rep_shape": np.array([1, 1, H // kv_heads, 1, 1], np.int64),
        "heads_shape": np.array([0, H, -1, D], np.int64)}


def sdpa_model(*, scale: str = "mul", mask: str | None = None, mask_shape=(B, 1, S, S), axis: int = -1,
               kv_heads: int = H, sq: int = S, skv: int = S, extra_output: str | None = None,
               flat_kt: bool = False, guard: str | None = None) -> ir.Model:
    """Q [B, H, Sq, D], K, V [B, kv_heads, Skv, D] graph inputs -> explicit attention -> y [B, H, Sq, D].
    flat_kt: K^T through a 3-D view (torch's SDPA decomposition); guard: Where(IsNaN(P), guard, P) after
    the Softmax ("zero", or "one" for a near miss)."""
    nodes, k, v = [], "k", "v"
    inits = {}
    if kv_heads != H:
        for name in ("k", "v"):
            rep_nodes, rep_inits = repeat_kv(name, kv_heads)
            nodes += rep_nodes
            inits.update(rep_inits)
        k, v = "k_all", "v_all"
    q = "q"
    if scale == "qk":
        nodes += [helper.make_node("Mul", ["q", "quarter"], ["q_scaled"]),
                  helper.make_node("Mul", [k, "quarter"], ["k_scaled"])]
        q, k = "q_scaled", "k_scaled"
    if flat_kt:
        inits.update({"flat_shape": np.array([-1, skv, D], np.int64), "kt_shape": np.array([B, H, D, skv], np.int64)})
        nodes += [helper.make_node("Reshape", [k, "flat_shape"], ["k_flat"]),
                  helper.make_node("Transpose", ["k_flat"], ["kt_flat"], perm=[0, 2, 1]),
                  helper.make_node("Reshape", ["kt_flat", "kt_shape"], ["kt"])]
    else:
        nodes.append(helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]))
    core, core_inits = scores_nodes(q, "kt", scale=scale, mask=mask, sq=sq, skv=skv, axis=axis)
    probs = "probs"
    if guard:
        inits["guard_fill"] = np.array(0.0 if guard == "zero" else 1.0, np.float32)
        core += [helper.make_node("IsNaN", ["probs"], ["nan"]),
                 helper.make_node("Where", ["nan", "guard_fill", "probs"], ["guarded"])]
        probs = "guarded"
    nodes += core + [helper.make_node("MatMul", [probs, v], ["y"], name="pv")]
    inputs = [vi("q", [B, H, sq, D]), vi("k", [B, kv_heads, skv, D]), vi("v", [B, kv_heads, skv, D])]
    if mask and mask.startswith(("add", "bool")):
        dtype = onnx.TensorProto.BOOL if mask.startswith("bool") else onnx.TensorProto.FLOAT
        inputs.append(vi("mask", list(mask_shape), dtype))
    if scale == "input":
        inputs.append(vi("c", []))
    outputs = [vi("y", None)] + ([vi(extra_output, None)] if extra_output else [])
    return make_model(nodes, inputs, outputs, {**core_inits, **inits})


def feeds_for(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else {"batch": B, "seq": S}[d.value] for d in value.shape]
        if value.dtype == ir.DataType.BOOL:
            mask = RNG.random(shape) > 0.3
            mask[..., 0] = True  # no fully masked row: Attention zeroes those rows, Softmax gives NaN
            out[value.name] = mask
        elif value.name == "c":
            out[value.name] = np.array(0.3, np.float32)
        else:
            out[value.name] = RNG.standard_normal(shape).astype(np.float32)
    return out


def attention(model: ir.Model) -> ir.Node:
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    return node


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def attrs(node: ir.Node) -> dict:
    return {k: a.value for k, a in node.attributes.items()}


@pytest.mark.parametrize("scale, factor", [("mul", D ** -0.5), ("div", D ** -0.5), ("qk", D ** -0.5),
                                           ("none", 1.0)])
def test_4d_scales_fold_into_the_scale_attribute(scale, factor):
    model = sdpa_model(scale=scale)
    assert why_not(node_named(model, "softmax")) is None
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1}
    assert ops(model) == ["Attention"]
    node = attention(model)
    assert [v.name for v in node.inputs] == ["q", "k", "v"]
    assert attrs(node) == {"scale": pytest.approx(factor, rel=1e-6)}
    assert model.opset_imports[""] == 23


@pytest.mark.parametrize("mask_shape", [(B, 1, S, S), (S, S), (1, H, S, S), (B, H, S, S), (H, S, S)])
def test_additive_mask_becomes_attn_mask(mask_shape):
    model = sdpa_model(mask="add", mask_shape=mask_shape)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1}
    assert ops(model) == ["Attention"]
    assert [v.name for v in attention(model).inputs] == ["q", "k", "v", "mask"]


def test_boolean_mask_of_where_minus_inf_becomes_attn_mask():
    model = sdpa_model(mask="bool")
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1}
    node = attention(model)
    assert node.inputs[3].name == "mask" and node.inputs[3].dtype == ir.DataType.BOOL
    assert "is_causal" not in attrs(node)


@pytest.mark.parametrize("mask", ["trilu", "less-equal", "where-causal"])
def test_proven_causal_mask_becomes_is_causal(mask):
    model = sdpa_model(mask=mask)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1, "causal": 1}
    node = attention(model)
    assert len(node.inputs) == 3 and attrs(node)["is_causal"] == 1
    assert ops(model) == ["Attention"]  # the mask subgraph is gone


@pytest.mark.parametrize("knobs", [{"mask": "trilu-k2"}, {"mask": "trilu", "sq": S, "skv": S + 2}])
def test_unproven_causal_mask_stays_an_attn_mask(knobs):
    # A triangle off the diagonal, or one over unequal q/kv lengths, is no is_causal.
    model = sdpa_model(**knobs)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1}
    node = attention(model)
    assert len(node.inputs) == 4 and "is_causal" not in attrs(node)


def test_grouped_query_repeat_is_absorbed():
    model = sdpa_model(kv_heads=2, mask="add")
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1, "grouped-query": 1}
    assert ops(model) == ["Attention"]
    assert [v.name for v in attention(model).inputs] == ["q", "k", "v", "mask"]  # k, v: 2 heads each


def test_torch_sdpa_decomposition_fuses():
    """torch's opset-18 SDPA export: K^T through a 3-D view, and Where(IsNaN(P), 0, P) after the Softmax
    (rows with no key to attend to give zeros, as Attention's own rows do)."""
    model = sdpa_model(kv_heads=2, mask="less-equal", flat_kt=True, guard="zero")
    assert why_not(node_named(model, "softmax")) is None
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1, "causal": 1,
                                                                           "grouped-query": 1}
    assert ops(model) == ["Attention"]
    assert [v.name for v in attention(model).inputs] == ["q", "k", "v"]


# Near misses: the graph stays as it is and why_not says why.
@pytest.mark.parametrize("knobs, reason", [
    ({"axis": 2}, "Softmax is not over the last axis of rank-4 scores"),
    ({"scale": "input"}, "Mul scale scales the scores by a non-constant"),
    ({"extra_output": "qk"}, "score qk has other users"),
    ({"extra_output": "scaled", "mask": "add"}, "score scaled has other users"),
    ({"mask": "add", "mask_shape": (B, 1, S, 1)}, "an additive mask is not of the scores' type or does not cover"),
    ({"mask": "add-before-scale"}, "Add mask masks the scores before they are scaled"),
    ({"mask": "bool-min"}, "Where does not mask with -inf"),
    ({"mask": "twice"}, "score scaled has other users"),
    ({"scale": "negative"}, "the combined scale -0.5 is not positive"),  # Attention takes sqrt(scale)
    ({"guard": "one"}, "the probabilities are not used only by MatMul(P, V)"),  # a guard that does not zero
])
def test_near_misses_do_not_fire(knobs, reason):
    model = sdpa_model(**knobs)
    assert reason in why_not(node_named(model, "softmax"))
    before = ops(model)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {}
    assert ops(model) == before


def test_query_broadcast_padding_mask_is_expanded():
    """BERT's exported padding mask [B, 1, 1, S] on square scores: fused, expanded over the queries."""
    model = sdpa_model(mask="add", mask_shape=(B, 1, 1, S))
    counts = check_pass(model, "fuse-attention", feeds_for(model), **TOL)
    assert counts and "Softmax" not in ops(model)
    assert "Attention" in ops(model) and "Expand" in ops(model)


def mha_model(*, kv_heads: int = H, merge_rank: int = 3, key_layout: str = "0231", merge_from_shape: bool = False,
              fused: bool = False) -> ir.Model:
    """x [batch, seq, HIDDEN] -> Q/K/V projections, split into heads, attention, heads merged -> y.

    key_layout "0231": K^T = Transpose(k_heads, [0, 2, 3, 1]) as torch exports it; else K, then K^T.
    merge_rank 3: y [B, S, H*D]; 2: [B*S, H*D]; 0: no merge, y is [B, H, S, D]. merge_from_shape: the
    TorchScript way, Reshape(t, Concat(Shape(t)[0], Shape(t)[1], [H*D])). fused: an Attention node already.
    """
    inits = {"wq": RNG.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 4,
             "wk": RNG.standard_normal((HIDDEN, kv_heads * D)).astype(np.float32) / 4,
             "wv": RNG.standard_normal((HIDDEN, kv_heads * D)).astype(np.float32) / 4,
             "q_split": np.array([0, 0, H, D], np.int64), "kv_split": np.array([0, 0, kv_heads, D], np.int64),
             "merged": np.array([0, 0, HIDDEN] if merge_rank == 3 else [-1, HIDDEN], np.int64)}
    nodes = []
    for name, split in (("q", "q_split"), ("k", "kv_split"), ("v", "kv_split")):
        perm = [0, 2, 3, 1] if name == "k" and key_layout == "0231" else [0, 2, 1, 3]
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}3"]),
                  helper.make_node("Reshape", [f"{name}3", split], [f"{name}_heads"]),
                  helper.make_node("Transpose", [f"{name}_heads"], [f"{name}4"], perm=perm)]
    y4 = "y4" if merge_rank else "y"
    if fused:
        nodes.append(helper.make_node("Attention", ["q4", "k4", "v4", "mask"], [y4]))
    else:
        k, v, kt = "k4", "v4", "k4"
        if kv_heads != H:
            for name in ("k4", "v4"):
                rep_nodes, rep_inits = repeat_kv(name, kv_heads)
                nodes += rep_nodes
                inits.update(rep_inits)
            k, v = "k4_all", "v4_all"
        if key_layout != "0231":
            nodes.append(helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]))
            kt = "kt"
        core, core_inits = scores_nodes("q4", kt, scale="div", mask="add", sq=S, skv=S, axis=-1)
        nodes += core + [helper.make_node("MatMul", ["probs", v], [y4])]
        inits.update(core_inits)
    merged = "merged"
    if merge_rank:
        nodes.append(helper.make_node("Transpose", ["y4"], ["y_heads"], perm=[0, 2, 1, 3]))
    if merge_from_shape:
        inits.update({"i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "axes_0": np.array([0], np.int64),
                      "hidden": np.array([HIDDEN], np.int64)})
        for i in ("0", "1"):
            nodes += [helper.make_node("Shape", ["y_heads"], [f"shape{i}"]),
                      helper.make_node("Gather", [f"shape{i}", f"i{i}"], [f"dim{i}"], axis=0),
                      helper.make_node("Unsqueeze", [f"dim{i}", "axes_0"], [f"dim{i}_1d"])]
        nodes.append(helper.make_node("Concat", ["dim0_1d", "dim1_1d", "hidden"], ["merged_shape"], axis=0))
        merged = "merged_shape"
    if merge_rank:
        nodes.append(helper.make_node("Reshape", ["y_heads", merged], ["y"]))
    inputs = [vi("x", ["batch", "seq", HIDDEN]), vi("mask", ["batch", 1, "seq", "seq"])]
    return make_model(nodes, inputs, [vi("y", None)], inits, opset=23 if fused else 18)


@pytest.mark.parametrize("key_layout", ["0231", "0213+0132"])
def test_head_split_and_merge_are_absorbed_into_the_3d_form(key_layout):
    model = mha_model(key_layout=key_layout)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1, "heads-absorbed": 1}
    assert ops(model) == ["MatMul", "MatMul", "MatMul", "Attention"]
    node = attention(model)
    assert [v.name for v in node.inputs] == ["q3", "k3", "v3", "mask"]
    assert attrs(node) == {"scale": pytest.approx(D ** -0.5), "q_num_heads": H, "kv_num_heads": H}
    assert node.outputs[0].name == "y"


def test_merge_target_computed_from_shape_is_served_by_the_3d_output():
    model = mha_model(merge_from_shape=True)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1, "heads-absorbed": 1}
    assert "Transpose" not in ops(model) and "Reshape" not in ops(model)
    assert ops(model).count("Shape") == 0  # the Shape readers fed only the merge target, now unused


def test_an_existing_4d_attention_takes_the_3d_form():
    model = mha_model(fused=True, key_layout="0213+0132")
    assert ops(model)[-3:] == ["Attention", "Transpose", "Reshape"]
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"heads-absorbed": 1}
    assert ops(model) == ["MatMul", "MatMul", "MatMul", "Attention"]
    assert attrs(attention(model)) == {"q_num_heads": H, "kv_num_heads": H}


def test_grouped_query_3d_form_and_2d_merge():
    model = mha_model(kv_heads=2, merge_rank=2, key_layout="0213+0132")
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {
        "attention": 1, "grouped-query": 1, "heads-absorbed": 1}
    assert ops(model) == ["MatMul", "MatMul", "MatMul", "Attention", "Reshape"]  # [B, S, H*D] -> [B*S, H*D]
    node = attention(model)
    assert attrs(node)["q_num_heads"] == H and attrs(node)["kv_num_heads"] == 2


def test_heads_stay_split_when_the_output_is_not_merged():
    model = mha_model(merge_rank=0)
    assert check_pass(model, "fuse-attention", feeds_for(model), **TOL) == {"attention": 1}
    node = attention(model)
    assert attrs(node) == {"scale": pytest.approx(D ** -0.5)}  # the 4-D form
    assert [node.inputs[0].name, node.inputs[2].name, node.inputs[3].name] == ["q4", "v4", "mask"]
    assert node.inputs[1].producer().op_type == "Transpose"  # K [B, H, S, D] made from K^T's layout
    assert node.outputs[0].name == "y"


# Corpus: every transformer model's attention is transformers' eager one; each has 3 layers
# (../shared/models/MANIFEST.md), so 3 Attention nodes. GPT-2's TorchScript export builds the causal
# mask from Range/LessOrEqual (is_causal); its dynamo export ANDs it with a packed-sequence check
# (CumSum/Equal), which is not provably causal, so it stays an attn_mask. T5 has no scaling.
LAYERS = {"bert": 3, "distilbert": 3, "gpt2": 3, "t5_encoder": 3, "vit": 3}
CAUSAL = {"gpt2-ts-op17": 3}
# No attn_mask: GPT-2 TorchScript's mask is is_causal; ViT's is Where(all-True, 0, min) (dynamo) or absent.
UNMASKED = ("gpt2-ts-op17", "vit-dynamo-op18", "vit-ts-op17")
SCALE = {"t5_encoder": 1.0}
TRANSFORMERS = sorted(p.stem for p in MODELS.glob("*.onnx") if p.stem.split("-")[0] in LAYERS) \
    if MODELS.is_dir() else []


@pytest.mark.parametrize("corpus_model", corpus_params())
def test_the_pass_alone_on_the_corpus(corpus_model):
    family = corpus_model.name.split("-")[0]
    model = parse_onnx(corpus_model.path).model
    feeds, _ = corpus_model.reference()
    report = optimize(model, passes=[PASSES["fuse-attention"]], verify_feeds=feeds)  # CheckFailed on drift
    rewrites = report.totals()["fuse-attention"]["rewrites"]
    if family in LAYERS:  # the head split/merge is absorbed without fold-shapes' help too
        assert rewrites["attention"] == rewrites["heads-absorbed"] == LAYERS[family]
        assert "Softmax" not in ops(model)
    else:  # CNN classifiers end in a Softmax over classes: no attention there
        assert rewrites == {}


@pytest.mark.skipif(not TRANSFORMERS, reason=f"../shared/models is missing (looked in {MODELS})")
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_default_pipeline_fuses_every_attention_on_the_corpus(name):
    corpus_model = CorpusModel(name, MODELS / f"{name}.onnx")
    family = name.split("-")[0]
    model = parse_onnx(corpus_model.path).model
    feeds, _ = corpus_model.reference()
    report = optimize(model, verify_feeds=feeds)  # raises CheckFailed on drift
    nodes = [n.op_type for n in model.graph]
    assert "Softmax" not in nodes
    assert_topologically_sorted(model)
    fused = [n for n in model.graph if n.op_type == "Attention"]
    assert len(fused) == LAYERS[family]
    assert report.totals()["fuse-attention"]["rewrites"]["attention"] == LAYERS[family]
    assert sum(attrs(n).get("is_causal", 0) for n in fused) == CAUSAL.get(name, 0)
    assert sum(len(n.inputs) == 4 for n in fused) == (0 if name in UNMASKED else LAYERS[family])
    for node in fused:
        assert attrs(node)["scale"] == pytest.approx(SCALE.get(family, 32 ** -0.5))
        assert attrs(node)["q_num_heads"] == 4  # the 3-D form: head split and merge absorbed


def assert_topologically_sorted(model: ir.Model) -> None:
    """Every node reads only graph inputs, initializers and outputs of nodes before it (ONNX's rule)."""
    defined = {*model.graph.inputs, *model.graph.initializers.values()}
    for node in model.graph:
        missing = [v.name for v in node.inputs if v is not None and v not in defined]
        assert not missing, f"{node.op_type} {node.name} reads {missing} before they are made"
        defined.update(node.outputs)


def test_llama_gqa_causal_attention(llama_path):
    model = parse_onnx(llama_path).model
    feeds = {"input_ids": RNG.integers(0, 500, (2, 9)).astype(np.int64)}
    report = optimize(model, passes=[PASSES["fuse-attention"]], verify_feeds=feeds)
    assert report.totals()["fuse-attention"]["rewrites"] == {"attention": 2, "causal": 2, "grouped-query": 2}
    fused = [n for n in model.graph if n.op_type == "Attention"]
    assert [attrs(n) for n in fused] == [{"scale": 0.25, "is_causal": 1}] * 2
    assert all(n.inputs[1].shape[1] == 2 and n.inputs[2].shape[1] == 2 for n in fused)  # 2 kv heads, no repeat
    assert "Softmax" not in ops(model) and "Trilu" not in ops(model)  # the causal mask is gone
    assert_topologically_sorted(model)
