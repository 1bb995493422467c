"""fuse-attention with an additive bias that differs per head or per window: T5's relative position
bias ([1, H, S, S] or [H, S, S], gathered from a bucket table), Swin's relative position bias table
gathered into [H, N, N] and its shifted-window mask (added to the scores viewed as [B, nW, H, N, N]
and viewed back), each fused into one Attention whose attn_mask broadcasts to [B*nW, H, N, N]. Biases
Attention cannot express stay decomposed, with the reason in `why_not` and in the pass's report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.passes import attention_masks
from trtc.passes.fuse_attention import left_decomposed, why_not
from trtc.passes.pipeline import optimize

from passutil import check_pass, make_model, ops, vi

RNG = np.random.default_rng(0)
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
TOL = {"rtol": 1e-4, "atol": 1e-4}

# T5-like self-attention: B images, H heads, S tokens, head size D; relative positions in BUCKETS buckets.
B, H, S, D, BUCKETS = 2, 4, 6, 8, 5
# Swin-like windows: WIN x WIN tokens per window (N), a 2 x 2 grid of windows per image (NW), C channels.
WIN, NW, SH, SD = 3, 4, 2, 8
N, C = WIN * WIN, SH * SD


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def attention(model: ir.Model) -> ir.Node:
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    return node


def feeds_for(model: ir.Model, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random normal feeds; symbolic dims take their size from `sizes`."""
    out = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else (sizes or {})[d.value] for d in value.shape]
        out[value.name] = RNG.standard_normal(shape).astype(value.dtype.numpy())
    return out


# ---- T5: a per-head relative position bias ----------------------------------------------------------

def t5_bias(prefix: str, dtype: int) -> tuple[list, dict]:
    """T5's position bias: Gather(table [buckets, H], bucket [S, S]) -> Transpose(2, 0, 1) -> Unsqueeze(0),
    [1, H, S, S] (the bucket of each query/key pair is a constant for a static S)."""
    positions = np.arange(S)
    buckets = np.clip(positions[None, :] - positions[:, None] + BUCKETS // 2, 0, BUCKETS - 1).astype(np.int64)
    inits = {f"{prefix}table": RNG.standard_normal((BUCKETS, H)).astype(helper.tensor_dtype_to_np_dtype(dtype)),
             f"{prefix}buckets": buckets, f"{prefix}axis0": np.array([0], np.int64)}
    nodes = [helper.make_node("Gather", [f"{prefix}table", f"{prefix}buckets"], [f"{prefix}bias_ssh"], axis=0),
             helper.make_node("Transpose", [f"{prefix}bias_ssh"], [f"{prefix}bias_hss"], perm=[2, 0, 1]),
             helper.make_node("Unsqueeze", [f"{prefix}bias_hss", f"{prefix}axis0"], [f"{prefix}bias"])]
    return nodes, inits


def t5_layer(prefix: str, q: str, bias: str, dtype: int = FLOAT) -> tuple[list, dict, list]:
    """One T5 attention over 4-D q and the graph inputs k, v: scores = q.k^T (no scaling) + bias,
    softmax, times v -> f"{prefix}y". `bias`: "gather" (T5's [1, H, S, S]), "gather+padding" (HF's
    position_bias + mask [B, 1, 1, S] added once), "gather,padding" (the corpus export: two Adds),
    or a graph input of shape "1hss", "hss", "bhss" or "1hs1" (a near miss: constant over the keys)."""
    nodes = [helper.make_node("Transpose", ["k"], [f"{prefix}kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", [q, f"{prefix}kt"], [f"{prefix}qk"], name=f"{prefix}qk")]
    inits, inputs, scores = {}, [], f"{prefix}qk"
    shapes = {"1hss": [1, H, S, S], "hss": [H, S, S], "bhss": ["batch", H, S, S], "1hs1": [1, H, S, 1]}
    if bias in shapes:
        inputs.append(vi(f"{prefix}bias", shapes[bias], dtype))
        masks = [f"{prefix}bias"]
    else:
        bias_nodes, inits = t5_bias(prefix, dtype)
        nodes += bias_nodes
        masks = [f"{prefix}bias"]
        if bias != "gather":
            inputs.append(vi("padding", ["batch", 1, 1, S], dtype))
            if bias == "gather+padding":
                nodes.append(helper.make_node("Add", [f"{prefix}bias", "padding"], [f"{prefix}bias_masked"]))
                masks = [f"{prefix}bias_masked"]
            else:
                masks.append("padding")
    for i, mask in enumerate(masks):
        nodes.append(helper.make_node("Add", [scores, mask], [f"{prefix}masked{i}"], name=f"{prefix}mask{i}"))
        scores = f"{prefix}masked{i}"
    nodes += [helper.make_node("Softmax", [scores], [f"{prefix}probs"], name=f"{prefix}softmax", axis=-1),
              helper.make_node("MatMul", [f"{prefix}probs", "v"], [f"{prefix}y"], name=f"{prefix}pv")]
    return nodes, inits, inputs


def t5_model(bias: str, dtype: int = FLOAT, layers: tuple[str, ...] = ()) -> ir.Model:
    """q, k, v [batch, H, S, D] -> a T5 attention with `bias`, then one more per entry of `layers`
    (each reads the previous output as its q) -> y."""
    nodes, inits, inputs = t5_layer("", "q", bias, dtype)
    last = "y"
    for i, layer_bias in enumerate(layers):
        more_nodes, more_inits, more_inputs = t5_layer(f"l{i}_", last, layer_bias, dtype)
        nodes, last = nodes + more_nodes, f"l{i}_y"
        inits.update(more_inits)
        inputs += [v for v in more_inputs if v.name not in {i.name for i in inputs}]
    graph_inputs = [vi(n, ["batch", H, S, D], dtype) for n in "qkv"] + inputs
    return make_model(nodes, graph_inputs, [vi(last, None, dtype)], inits)


@pytest.mark.parametrize("bias", ["gather", "1hss", "hss", "bhss", "gather+padding", "gather,padding"])
def test_t5_position_bias_becomes_attn_mask(bias):
    model = t5_model(bias)
    assert why_not(node_named(model, "softmax")) is None
    assert check_pass(model, "fuse-attention", feeds_for(model, {"batch": B}), **TOL) == {"attention": 1}
    node = attention(model)
    assert {k: a.value for k, a in node.attributes.items()} == {"scale": 1.0}  # T5 does not scale
    mask = node.inputs[3]
    assert mask.dtype == ir.DataType.FLOAT and mask.shape[-2:] == (S, S)
    assert "Softmax" not in ops(model) and "MatMul" not in ops(model)


def test_per_head_bias_constant_over_the_keys_stays_decomposed():
    """[1, H, S, 1] differs per head and query but not per key: Attention pads a short key axis of
    attn_mask with -inf instead of broadcasting it, so no attn_mask expresses it."""
    model = t5_model("1hs1")
    reason = why_not(node_named(model, "softmax"))
    assert "does not cover [q, kv] exactly" in reason
    before = ops(model)
    assert check_pass(model, "fuse-attention", feeds_for(model, {"batch": B}), **TOL) == {}
    assert ops(model) == before
    assert left_decomposed(model) == {f"attention left decomposed: {reason}": 1}


def test_the_report_counts_attention_left_decomposed_by_reason():
    """Two layers fuse, two keep a bias Attention cannot express: the run that fuses reports both."""
    model = t5_model("gather", layers=("1hs1", "hss", "1hs1"))
    counts = check_pass(model, "fuse-attention", feeds_for(model, {"batch": B}), **TOL)
    assert counts == {"attention": 2, "attention left decomposed: an additive mask is not of the scores' type or "
                                      "does not cover [q, kv] exactly": 2}
    assert ops(model).count("Attention") == 2 and ops(model).count("Softmax") == 2


# ---- Swin: relative position bias table and shifted-window mask --------------------------------------

def swin_window_mask() -> np.ndarray:
    """Swin's shifted-window mask [nW, N, N]: 0 between tokens of the same region, -100 elsewhere."""
    side = int(math.sqrt(NW)) * WIN
    shift = WIN // 2
    regions = np.zeros((side, side), np.int64)
    for i, rows in enumerate((slice(0, -WIN), slice(-WIN, -shift), slice(-shift, None))):
        for j, cols in enumerate((slice(0, -WIN), slice(-WIN, -shift), slice(-shift, None))):
            regions[rows, cols] = 3 * i + j
    windows = regions.reshape(side // WIN, WIN, side // WIN, WIN).transpose(0, 2, 1, 3).reshape(NW, N)
    return np.where(windows[:, None, :] == windows[:, :, None], 0.0, -100.0).astype(np.float32)


def swin_relative_index() -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(WIN), np.arange(WIN), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + WIN - 1
    return (relative[..., 0] * (2 * WIN - 1) + relative[..., 1]).reshape(-1).astype(np.int64)


def swin_model(form: str = "hf", *, windows: str = "shifted", batch: int | str = "bw",
               mask_shape: tuple | None = None, scale_shape: tuple | None = None) -> ir.Model:
    """Swin window attention over x [B*nW, N, C] -> y [B*nW, N, C].

    form "hf" (transformers' SwinSelfAttention): q, k, v projections split into heads, scores / sqrt(D),
    + the bias table gathered into [1, H, N, N], the 5-D view's target computed as Concat(Shape(x)[0] / nW,
    nW, H, N, N), the mask Unsqueeze(Unsqueeze([nW, N, N], 1), 0). form "timm": one qkv projection
    unbound by Gather, q scaled, the view's target constant [-1, nW, H, N, N], the mask a [1, nW, 1, N, N]
    constant. windows "shifted" adds the mask, "plain" does not (Swin's even blocks); "dynamic" takes
    the mask as an input [nw, N, N] whose count is symbolic. `mask_shape`: the 5-D mask's shape (near misses).
    `scale_shape`: the scores are multiplied by a positive constant of this shape instead of divided by
    sqrt(D) (Swin V2's per-head logit scale is [H, 1, 1]).
    """
    inits = {"table": RNG.standard_normal(((2 * WIN - 1) ** 2, SH)).astype(np.float32),
             "index": swin_relative_index(), "bias_shape": np.array([N, N, SH], np.int64),
             "axis0": np.array([0], np.int64), "axis1": np.array([1], np.int64)}
    nodes, inputs = [], [vi("x", [batch, N, C])]
    if form == "hf":
        inits["heads"] = np.array([0, 0, SH, SD], np.int64)
        inits["sqrt_d"] = np.array(math.sqrt(SD), np.float32)
        for name in "qkv":
            inits[f"w{name}"] = RNG.standard_normal((C, C)).astype(np.float32) / 4
            nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}3"]),
                      helper.make_node("Reshape", [f"{name}3", "heads"], [f"{name}_split"]),
                      helper.make_node("Transpose", [f"{name}_split"], [f"{name}4"], perm=[0, 2, 1, 3])]
        nodes += [helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["q4", "kt"], ["qk"], name="qk"),
                  helper.make_node("Div", ["qk", "sqrt_d"], ["scaled"], name="scale")]
        if scale_shape is not None:
            inits["logit_scale"] = RNG.uniform(0.5, 3.0, scale_shape).astype(np.float32)
            nodes[-1] = helper.make_node("Mul", ["qk", "logit_scale"], ["scaled"], name="scale")
    else:
        inits["wqkv"] = RNG.standard_normal((C, 3 * C)).astype(np.float32) / 4
        inits["qkv_shape"] = np.array([0, 0, 3, SH, SD], np.int64)
        inits["scale"] = np.array(SD ** -0.5, np.float32)
        nodes += [helper.make_node("MatMul", ["x", "wqkv"], ["qkv3"]),
                  helper.make_node("Reshape", ["qkv3", "qkv_shape"], ["qkv_split"]),
                  helper.make_node("Transpose", ["qkv_split"], ["qkv"], perm=[2, 0, 3, 1, 4])]
        for i, name in enumerate("qkv"):
            inits[f"i{i}"] = np.array(i, np.int64)
            nodes.append(helper.make_node("Gather", ["qkv", f"i{i}"], [f"{name}4"], axis=0))
        nodes += [helper.make_node("Mul", ["q4", "scale"], ["q_scaled"]),
                  helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["q_scaled", "kt"], ["scaled"], name="qk")]
    nodes += [helper.make_node("Gather", ["table", "index"], ["bias_flat"], axis=0),
              helper.make_node("Reshape", ["bias_flat", "bias_shape"], ["bias_nnh"]),
              helper.make_node("Transpose", ["bias_nnh"], ["bias_hnn"], perm=[2, 0, 1]),
              helper.make_node("Unsqueeze", ["bias_hnn", "axis0"], ["bias"]),
              helper.make_node("Add", ["scaled", "bias"], ["biased"], name="bias_add")]
    scores = "biased"
    if windows != "plain":
        inits["back"] = np.array([-1, SH, N, N], np.int64)
        if windows == "dynamic":
            inputs.append(vi("window_mask", ["nw", N, N]))
            nodes += [helper.make_node("Shape", ["window_mask"], ["mask_dims"], end=1)]
            count = "mask_dims"
        else:
            inits["window_mask"] = swin_window_mask()
            count = "count"
            inits["count"] = np.array([NW], np.int64)
        if mask_shape is not None:  # the 5-D mask in another shape: its first row along each unit dim
            full = swin_window_mask().reshape(1, NW, 1, N, N)
            rows = full[tuple(slice(0, 1) if d == 1 else slice(None) for d in (1, *mask_shape[1:]))]
            inits["window_mask"] = np.broadcast_to(rows, mask_shape).copy()
            mask5 = "window_mask"
        elif form == "timm" and windows != "dynamic":
            inits["window_mask"] = inits["window_mask"].reshape(1, NW, 1, N, N)
            mask5 = "window_mask"
        else:
            nodes += [helper.make_node("Unsqueeze", ["window_mask", "axis1"], ["mask4"]),
                      helper.make_node("Unsqueeze", ["mask4", "axis0"], ["mask5"])]
            mask5 = "mask5"
        if form == "hf":
            inits.update({"i0": np.array(0, np.int64), "view_rest": np.array([SH, N, N], np.int64)})
            nodes += [helper.make_node("Shape", ["x"], ["x_shape"]),
                      helper.make_node("Gather", ["x_shape", "i0"], ["windows_total"], axis=0),
                      helper.make_node("Unsqueeze", ["windows_total", "axis0"], ["windows_total1"]),
                      helper.make_node("Div", ["windows_total1", count], ["images"]),
                      helper.make_node("Concat", ["images", count, "view_rest"], ["view"], axis=0)]
        else:
            inits["view"] = np.array([-1, NW, SH, N, N], np.int64)
        nodes += [helper.make_node("Reshape", ["biased", "view"], ["scores5"]),
                  helper.make_node("Add", ["scores5", mask5], ["masked5"], name="window_add"),
                  helper.make_node("Reshape", ["masked5", "back"], ["masked"], name="window_back")]
        scores = "masked"
    inits["merged"] = np.array([0, 0, C], np.int64)
    nodes += [helper.make_node("Softmax", [scores], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", "v4"], ["y4"], name="pv"),
              helper.make_node("Transpose", ["y4"], ["y_heads"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["y_heads", "merged"], ["y"])]
    return make_model(nodes, inputs, [vi("y", None)], inits)


SWIN_SIZES = {"bw": B * NW, "nw": NW}


@pytest.mark.parametrize("form", ["hf", "timm"])
@pytest.mark.parametrize("batch", ["bw", B * NW])
def test_swin_shifted_window_attention_fuses(form, batch):
    model = swin_model(form, batch=batch)
    assert why_not(node_named(model, "softmax")) is None
    counts = check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL)
    assert counts == {"attention": 1, **({"heads-absorbed": 1} if form == "hf" else {})}
    node = attention(model)
    assert {k: a.value for k, a in node.attributes.items()}["scale"] == pytest.approx(SD ** -0.5)
    # attn_mask: the bias [1, H, N, N] (or [H, N, N]) plus the window mask tiled to [B*nW, 1, N, N]
    assert tuple(node.inputs[3].shape)[1:] == (SH, N, N)
    assert "Softmax" not in ops(model) and "Tile" in ops(model)
    # No 5-D view is left, nor the Shape/Div that computed its target; with heads absorbed, the tiling
    # reads the batch off x [B*nW, N, C] (so no head split stays for it).
    values = {v.name for n in model.graph for v in n.outputs}
    assert not values & {"scores5", "masked5", "mask4", "mask5", "x_shape", "images", "view"}
    # the bias table's; timm also splits qkv and merges the heads of the 4-D output
    assert ops(model).count("Transpose") == (1 if form == "hf" else 3)
    if form == "hf":
        assert [v.name for v in node.inputs[:3]] == ["q3", "k3", "v3"]


def test_default_pipeline_folds_bias_and_window_mask_into_one_constant():
    """With a static batch, fold-constants turns bias + tiled window mask into one [B*nW, H, N, N] constant
    (within its own size caps), so the shifted-window block is three projections and one Attention."""
    model = swin_model("hf", batch=B * NW)
    report = optimize(model, verify_feeds=feeds_for(model, SWIN_SIZES))  # raises CheckFailed on drift
    assert report.totals()["fuse-attention"]["rewrites"] == {"attention": 1, "heads-absorbed": 1}
    assert ops(model) == ["MatMul", "MatMul", "MatMul", "Attention"]
    mask = attention(model).inputs[3]
    assert mask.const_value is not None and tuple(mask.shape) == (B * NW, SH, N, N)


def test_swin_window_attention_without_shift_fuses_with_the_bias_alone():
    model = swin_model("hf", windows="plain")
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {
        "attention": 1, "heads-absorbed": 1}
    assert attention(model).inputs[3].name == "bias"


@pytest.mark.parametrize("scale_shape", [(SH, 1, 1), (1, SH, N, 1)])
def test_per_head_logit_scale_moves_onto_the_queries(scale_shape):
    """Swin V2 multiplies the scores by a per-head logit scale [H, 1, 1]: constant along the keys, it
    scales Q instead (scores[.., i, j] * c[.., i] = (Q[.., i, :] * c[.., i]) . K[.., j, :])."""
    model = swin_model("hf", scale_shape=scale_shape)
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {"attention": 1}
    node = attention(model)
    assert node.inputs[0].producer().op_type == "Mul" and node.inputs[0].producer().inputs[1].name == "logit_scale"
    assert {k: a.value for k, a in node.attributes.items()} == {"scale": 1.0}


def test_scale_varying_along_the_keys_stays_decomposed():
    model = swin_model("hf", scale_shape=(SH, 1, N))
    assert "Mul scale scales the scores by a non-constant (or by a constant that varies along the keys)" in \
        why_not(node_named(model, "softmax"))
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {}


def test_window_mask_the_same_for_every_window_needs_no_tiling():
    model = swin_model("timm", mask_shape=(1, 1, 1, N, N))
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {"attention": 1}
    assert "Tile" not in ops(model)


@pytest.mark.parametrize("knobs, reason", [
    # Attention pads a short key axis instead of broadcasting it: a mask constant over the keys is no attn_mask.
    ({"mask_shape": (1, NW, 1, N, 1)}, "a window mask does not broadcast over [windows, heads] or does not cover"),
    # One mask per image and window: no tiling of a static mask makes it.
    ({"mask_shape": (B, NW, 1, N, N), "batch": B * NW}, "a window mask varies per image as well as per window"),
    # transformers' export with a window count only known at run time: nothing static to tile.
    ({"windows": "dynamic"}, "the number of windows of a window mask is not static"),
])
def test_window_masks_attention_cannot_take_stay_decomposed(knobs, reason):
    model = swin_model("timm" if "mask_shape" in knobs else "hf", **knobs)
    assert reason in why_not(node_named(model, "softmax"))
    before = ops(model)
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {}
    assert ops(model) == before
    assert list(left_decomposed(model)) == [f"attention left decomposed: {why_not(node_named(model, 'softmax'))}"]


def test_window_mask_over_the_size_limit_stays_decomposed(monkeypatch):
    monkeypatch.setattr(attention_masks, "WINDOW_MASK_MAX_ELEMENTS", NW * SH * N * N - 1)
    model = swin_model("hf")
    assert "exceeds" in why_not(node_named(model, "softmax"))
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL) == {}
    (key,) = left_decomposed(model)
    assert key.startswith("attention left decomposed: a window mask tiled to [nW=4, H=2, 9, 9] per image exceeds")


# ---- TensorRT-RTX builds the fused per-head bias with IAttention -------------------------------------

def build_with_tensorrt_rtx(model: ir.Model, tmp_path: Path, profile: dict) -> set[str]:
    """Save `model`, parse it as a user's .onnx and build an engine with TensorRT-RTX (no GPU needed:
    the builder runs on the CPU); returns the network's layer types."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine
    from trtc.lower.network import lower

    proto = ir.serde.serialize_model(model)
    for index, node in enumerate(proto.graph.node):  # TensorRT-RTX's Myelin rejects unnamed layers
        node.name = node.name or f"{node.op_type.lower()}_{index}"
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    backend = load_backend("tensorrt-rtx")
    network = lower(artifact.model, backend).network
    build_engine(artifact.model, artifact.meta, backend, BuildOptions(profiles=[profile]))
    return {network.get_layer(i).type.name for i in range(network.num_layers)}


@pytest.mark.parametrize("dtype", [FLOAT, FLOAT16], ids=["fp32", "fp16"])
def test_fused_per_head_bias_builds_with_iattention(dtype, tmp_path: Path):
    """T5's bias + padding mask as one [B, H, S, S] attn_mask: IAttention takes it (no decomposition)."""
    model = t5_model("gather+padding", dtype)
    tolerance = TOL if dtype == FLOAT else {"rtol": 1e-2, "atol": 1e-2}
    assert check_pass(model, "fuse-attention", feeds_for(model, {"batch": B}), **tolerance) == {"attention": 1}
    profile = {name: ((1, H, S, D), (2, H, S, D), (4, H, S, D)) for name in "qkv"}
    profile["padding"] = ((1, 1, 1, S), (2, 1, 1, S), (4, 1, 1, S))
    assert "ATTENTION_INPUT" in build_with_tensorrt_rtx(model, tmp_path, profile)


def test_fused_swin_window_attention_builds_with_iattention(tmp_path: Path):
    """The window mask tiled over a dynamic batch (Shape/Div/Concat/Tile) plus the bias, in the 3-D form."""
    model = swin_model("hf")
    assert check_pass(model, "fuse-attention", feeds_for(model, SWIN_SIZES), **TOL)
    profile = {"x": ((NW, N, C), (B * NW, N, C), (4 * NW, N, C))}
    assert "ATTENTION_INPUT" in build_with_tensorrt_rtx(model, tmp_path, profile)
