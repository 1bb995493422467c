"""Post-training quantization (trtc/precision/quantize.py): Q/DQ placed where TensorRT fuses them,
every other node's reason, the range methods, the attention split, the CPU prediction, the
refusals, and the graph running on onnxruntime as ONNX defines Q/DQ."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.precision.calibrate import BINS, Method, TensorStats, entropy_amax, mse_amax
from trtc.precision.qdq_insert import quantize_weight
from trtc.precision.quantize import apply_quantization, check_targets
from trtc.precision.rules import PrecisionOptions
from trtc.precision.split_attention import split_attentions, why_not_split
from trtc.reference.metrics import error_metrics
from trtc.reference.runner import ReferenceRunner

RNG = np.random.default_rng(0)
INT8 = PrecisionOptions(quantize="int8", target="fp32")
TYPES = {np.float32: TensorProto.FLOAT, np.bool_: TensorProto.BOOL}


def vi(name: str, dtype, shape):
    return helper.make_tensor_value_info(name, TYPES[dtype], shape)


def onnx_model(nodes, inputs, outputs, inits=None, opset: int = 18):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _parse(proto, tmp_path, name="m.onnx") -> ir.Model:
    import onnx

    path = tmp_path / name
    onnx.save(proto, str(path))
    return parse_onnx(path).model


def cnn(tmp_path) -> ir.Model:
    """Conv-Relu, Conv + residual Add, Relu, Flatten, Gemm (N=16), MatMul (N=8: too small)."""
    inits = {"w1": _w(16, 3, 3, 3), "b1": _w(16), "w2": _w(16, 16, 3, 3), "b2": _w(16),
             "wg": _w(16 * 6 * 6, 16, scale=0.05), "bg": _w(16), "wm": _w(16, 8)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="residual"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="fc"),
             helper.make_node("MatMul", ["g", "wm"], ["y"], name="head")]
    proto = onnx_model(nodes, [vi("x", np.float32, ["N", 3, 6, 6])], [vi("y", np.float32, ["N", 8])], inits)
    return _parse(proto, tmp_path)


def samples(count: int = 3) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)} for _ in range(count)]


def qdq(model: ir.Model) -> dict[str, list[ir.Node]]:
    return {op: [n for n in model.graph if n.op_type == op] for op in ("QuantizeLinear", "DequantizeLinear")}


def dq_source(value: ir.Value) -> str:
    """What a DequantizeLinear output stands for: the quantized activation, or the weight."""
    dq = value.producer()
    assert dq is not None and dq.op_type == "DequantizeLinear", value.name
    q = dq.inputs[0].producer()
    return q.inputs[0].name if q is not None else dq.inputs[0].name


def test_cnn_qdq_where_tensorrt_fuses_them(tmp_path):
    model = cnn(tmp_path)
    feeds = samples()
    want = [ReferenceRunner(model).run(f)["y"] for f in feeds]
    report = apply_quantization(model, feeds, INT8)
    nodes = {n.name: n for n in model.graph}
    # Data and weight inputs of the weighted layers, through DequantizeLinear.
    assert dq_source(nodes["conv1"].inputs[0]) == "x" and dq_source(nodes["conv2"].inputs[0]) == "r1"
    assert dq_source(nodes["fc"].inputs[0]) == "f"
    conv_w, fc_w = nodes["conv2"].inputs[1].producer(), nodes["fc"].inputs[1].producer()
    assert conv_w.inputs[0].dtype == ir.DataType.INT8 and conv_w.attributes.get_int("axis") == 0
    assert conv_w.inputs[1].const_value.shape == (16,)  # per output channel
    assert fc_w.attributes.get_int("axis") == 1 and fc_w.inputs[1].const_value.shape == (16,)  # Gemm B [K, N]
    assert nodes["conv1"].inputs[2].name == "b1"  # biases stay float
    # The residual Add's skip input is quantized, with the pair conv2 reads (one Q/DQ per tensor).
    assert nodes["residual"].inputs[1] is nodes["conv2"].inputs[0]
    assert nodes["residual"].inputs[0].name == "c2"  # the fused side is not
    # Activations symmetric per tensor: a scalar scale and an int8 zero point of 0.
    for q in qdq(model)["QuantizeLinear"]:
        assert q.inputs[1].const_value.shape == () and q.inputs[2].dtype == ir.DataType.INT8
        assert not q.inputs[2].const_value.numpy().any()
    assert len(qdq(model)["QuantizeLinear"]) == 3  # x, r1, f
    # The MatMul with N = 8 is left in float, with its reason; as are other nodes worth a line.
    assert "N=8 < 16" in report.quantization["kept"]["head"]["reason"]
    assert set(report.quantization["nodes"]) == {"conv1", "conv2", "fc"}
    assert report.target == "int8" and report.low_nodes == 3
    assert 0.99 < report.flop_share < 1.0  # the head's FLOPs are not quantized
    # The exported graph runs on onnxruntime (Q/DQ as ONNX defines them) and the prediction is that run.
    runner = ReferenceRunner(model)
    got = [runner.run(f)["y"] for f in feeds]
    assert runner.backend == "onnxruntime"
    cosine = min(error_metrics(w, g)["cosine"] for w, g in zip(want, got))
    assert cosine > 0.999
    assert report.predicted["y"]["cosine"] == pytest.approx(cosine, abs=1e-9)
    assert report.contributions and {c["node"] for c in report.contributions} <= {"conv1", "conv2", "fc"}


def test_quantized_graph_is_not_quantized_again(tmp_path):
    model = cnn(tmp_path)
    feeds = samples()
    apply_quantization(model, feeds, INT8)
    count = len(list(model.graph))
    report = apply_quantization(model, feeds, INT8)
    assert len(list(model.graph)) == count and not report.quantization["nodes"]
    assert "quantized already" in report.quantization["kept"]["conv1"]["reason"]


def test_keep_fp32_glob_leaves_a_layer_in_float(tmp_path):
    model = cnn(tmp_path)
    report = apply_quantization(model, samples(), PrecisionOptions(quantize="int8", target="fp32",
                                                                    keep_fp32=("conv2",)))
    assert report.quantization["kept"]["conv2"]["reason"] == "user rule --keep-fp32 'conv2'"
    assert "conv2" not in report.quantization["nodes"]
    assert not any(n.op_type == "DequantizeLinear" for n in (v.producer() for v in
                   next(n for n in model.graph if n.name == "conv2").inputs[:2]) if n is not None)


def test_int8_with_fp16_types_the_rest(tmp_path):
    model = cnn(tmp_path)
    feeds = samples()
    report = apply_quantization(model, feeds, PrecisionOptions(quantize="int8", target="fp16"))
    assert report.target == "int8+fp16"
    nodes = {n.name: n for n in model.graph}
    assert nodes["relu1"].outputs[0].dtype == ir.DataType.FLOAT16
    assert nodes["conv2"].inputs[0].dtype == ir.DataType.FLOAT16  # the DequantizeLinear writes fp16
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT  # I/O types kept
    assert report.predicted["y"]["cosine"] > 0.999
    assert ReferenceRunner(model).backend == "onnxruntime"


def test_weights_quantize_symmetric_per_channel():
    w = _w(4, 3, 2, 2)
    w[2] = 0.0  # an all-zero channel gets a tiny scale, never 0
    for fmt, top in (("int8", 127), ("fp8", 448)):
        values, scale = quantize_weight(w, 0, fmt)
        assert scale.shape == (4,) and (scale > 0).all()
        back = values.astype(np.float32) * scale.reshape(4, 1, 1, 1)
        assert np.abs(values.astype(np.float32)).max() <= top
        step = scale.reshape(4, 1, 1, 1)
        tolerance = step / 2 if fmt == "int8" else np.abs(w) / 16 + step  # e4m3: 3 mantissa bits
        assert (np.abs(back - w) <= tolerance + 1e-7).all(), fmt
    # int4 clips each channel where that lowers its squared error below the max-scaled grid's.
    w = _w(8, 256)
    values, scale = quantize_weight(w, 0, "int4")
    assert values.dtype.name == "int4" and values.astype(np.int8).min() >= -8 and values.astype(np.int8).max() <= 7
    peak = np.abs(w).max(axis=1, keepdims=True) / 7
    plain = ((np.clip(np.round(w / peak), -8, 7) * peak - w) ** 2).sum(axis=1)
    clipped = ((values.astype(np.float32) * scale[:, None] - w) ** 2).sum(axis=1)
    assert (clipped <= plain + 1e-9).all() and clipped.sum() < 0.9 * plain.sum()


# ------------------------------------------------------------------ range methods


def test_range_methods_order_and_masks_are_left_out():
    stats = TensorStats()
    data = RNG.standard_normal(100_000).astype(np.float32)
    data[:5] = 40.0  # rare outliers
    stats.add(data)
    # A causal mask's -3.4e38 and inf are counted, not ranged (ModelOpt's entropy fails on them).
    stats.add(np.array([-3.4028235e38, np.inf, -np.inf, np.nan, 1.0], np.float32))
    assert stats.left_out == 4 and stats.amax == 40.0
    ranges = {m: stats.range(Method.parse(m)) for m in ("max", "percentile", "percentile:99", "entropy", "mse")}
    assert ranges["max"] == 40.0
    assert 2.5 < ranges["percentile:99"] < 2.7 < 3.5 < ranges["percentile"] < 40.0  # |N(0, 1)|
    assert 2.0 < ranges["entropy"] < 40.0 and 2.0 < ranges["mse"] < 40.0


def test_histogram_grows_with_the_values():
    stats = TensorStats()
    stats.add(np.linspace(0, 1, 1000, dtype=np.float32))
    stats.add(np.linspace(0, 10, 1000, dtype=np.float32))
    assert stats.top == 10.0 and stats.hist.sum() == 2000
    assert stats.hist[: BINS // 10 + 1].sum() >= 1000  # the first batch moved into the low tenth


def test_entropy_and_mse_of_a_uniform_range_keep_all_of_it():
    hist = np.ones(BINS)
    edges = np.linspace(0, 1, BINS + 1)
    assert entropy_amax(hist, edges) > 0.9 and mse_amax(hist, edges) > 0.9


@pytest.mark.parametrize("text", ["minmax", "percentile:0", "percentile:x", "entropy:3"])
def test_bad_method_is_one_line(text):
    with pytest.raises(TrtcError) as err:
        Method.parse(text)
    assert "\n" not in str(err.value.message)


def test_method_per_family_and_glob(tmp_path):
    model = cnn(tmp_path)
    options = PrecisionOptions(quantize="int8", target="fp32", calib_methods=("percentile:99", "conv=mse", "f=entropy"))
    tensors = apply_quantization(model, samples(), options).quantization["tensors"]
    assert tensors["x"]["method"] == "mse" and tensors["r1"]["method"] == "mse"
    assert tensors["f"]["method"] == "entropy"
    assert tensors["x"]["amax"] <= tensors["x"]["max"]


# ------------------------------------------------------------------ attention


def attention_model(tmp_path, seq: int, causal: bool, mask: str | None, four_d: bool = False) -> ir.Model:
    heads, size = 2, 16
    hidden = heads * size
    shape = ["B", heads, seq, size] if four_d else ["B", seq, hidden]
    inputs = [vi(n, np.float32, shape) for n in ("q", "k", "v")]
    names = ["q", "k", "v"]
    if mask == "float":
        inputs.append(vi("m", np.float32, ["B", 1, seq, seq]))
        names.append("m")
    elif mask == "bool":
        inputs.append(vi("m", np.bool_, ["B", 1, seq, seq]))
        names.append("m")
    attrs = {"is_causal": int(causal)}
    if not four_d:
        attrs.update(q_num_heads=heads, kv_num_heads=heads)
    nodes = [helper.make_node("Attention", names, ["y"], name="attn", **attrs)]
    proto = onnx_model(nodes, inputs, [vi("y", np.float32, shape)], opset=23)
    return _parse(proto, tmp_path, f"attn{seq}{causal}{mask}{four_d}.onnx")


def attention_feeds(model: ir.Model, batch: int = 2) -> dict[str, np.ndarray]:
    feeds = {}
    for v in model.graph.inputs:
        shape = [batch if not isinstance(d, int) else d for d in v.shape.dims]
        if v.dtype == ir.DataType.BOOL:
            feeds[v.name] = RNG.random(shape) > 0.3
            feeds[v.name][..., 0] = True  # every row attends somewhere
        else:
            feeds[v.name] = RNG.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize(("causal", "mask", "four_d"), [(False, None, False), (True, None, False),
                                                         (False, "float", False), (False, "bool", False),
                                                         (True, "float", True)])
def test_split_attention_computes_onnx_attention(tmp_path, causal, mask, four_d):
    model = attention_model(tmp_path, 20, causal, mask, four_d)
    feeds = attention_feeds(model)
    want = ReferenceRunner(model).run(feeds)["y"]
    shapes = {k: v.shape for k, v in feeds.items()}
    assert split_attentions(model, shapes) == ["attn"]
    assert not any(n.op_type == "Attention" for n in model.graph)
    runner = ReferenceRunner(model)
    np.testing.assert_allclose(runner.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    assert runner.backend == "onnxruntime"


def test_short_attention_stays_fused_with_its_reason(tmp_path):
    model = attention_model(tmp_path, 11, True, None)
    node = next(iter(model.graph))
    shapes = {k: v.shape for k, v in attention_feeds(model).items()}
    assert why_not_split(node, shapes) == "11 keys < 16 at the calibration shapes: its matmuls are too small for " \
                                          "int8 kernels"
    assert split_attentions(model, shapes) == []


def test_split_attention_quantizes_both_matmuls(tmp_path):
    model = attention_model(tmp_path, 20, True, None)
    feeds = [attention_feeds(model) for _ in range(2)]
    report = apply_quantization(model, feeds, INT8)
    assert report.quantization["split_attention"] == ["attn"]
    families = sorted(t["family"] for t in report.quantization["tensors"].values())
    assert families == ["attention", "attention", "attention", "probabilities"]
    assert report.flop_share == 1.0 and report.predicted["y"]["cosine"] > 0.99


# ------------------------------------------------------------------ fp8, int4, refusals


def test_fp8_and_int4_formats(tmp_path):
    model = cnn(tmp_path)
    report = apply_quantization(model, samples(), PrecisionOptions(quantize="fp8", target="fp32"))
    assert report.target == "fp8" and model.opset_imports[""] >= 19
    assert {q.outputs[0].dtype for q in qdq(model)["QuantizeLinear"]} == {ir.DataType.FLOAT8E4M3FN}
    assert report.predicted["y"]["cosine"] > 0.99
    model = cnn(tmp_path)
    report = apply_quantization(model, samples(), PrecisionOptions(int4_weights=True, target="fp32"))
    assert report.target == "int4-weights" and model.opset_imports[""] >= 21
    assert not qdq(model)["QuantizeLinear"]  # weight-only
    assert [d.inputs[0].dtype for d in qdq(model)["DequantizeLinear"]] == [ir.DataType.INT4]  # fc's weight
    assert "MatMul/Gemm weights only" in report.quantization["kept"]["conv1"]["reason"]
    assert report.quantization["note"].startswith("block-wise int4 (AWQ/GPTQ groups) needs a newer TensorRT")
    assert ReferenceRunner(model).backend == "onnxruntime"


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(TrtcError, match="does not combine with --int8"):
        apply_quantization(cnn(tmp_path), samples(), PrecisionOptions(quantize="int8", int4_weights=True))
    with pytest.raises(TrtcError) as err:
        check_targets(PrecisionOptions(quantize="fp8"), None, ("sm75", "sm86", "sm89"))
    assert err.value.message == ("FP8 needs sm89 or newer: target(s) sm75, sm86 have no FP8 (TensorRT-RTX refuses "
                                 "its Q/DQ there)")
    check_targets(PrecisionOptions(quantize="fp8"), None, ("sm89", "sm120"))
    check_targets(PrecisionOptions(quantize="int8"), None, ("sm75",))
    with pytest.raises(TrtcError, match="sm80"):  # an artifact typed for fp8 earlier
        check_targets(None, {"target": "fp8+fp16"}, ("sm80",))


# ------------------------------------------------------------------ outliers: SmoothQuant migration


def outlier_block(tmp_path, post_ln: bool = False) -> ir.Model:
    """Pre-LN MLP block x + fc2(Gelu(fc1(LN(x)))) whose LayerNorm scale has 3 outlier channels
    (x60, as real transformers' residual streams have; their weights in fc1 small); post_ln: the LN
    output is the residual too."""
    hidden = 64
    gamma = (1 + 0.1 * RNG.standard_normal(hidden)).astype(np.float32)
    gamma[[3, 17, 40]] *= 60
    w1 = _w(hidden, 256, scale=0.1)
    w1[[3, 17, 40]] /= 60  # the outliers' weights are small: fc1's output lives in the ordinary channels
    inits = {"g": gamma, "b": _w(hidden, scale=0.1), "w1": w1, "w2": _w(256, hidden, scale=0.05)}
    residual = "n" if post_ln else "x"
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
             helper.make_node("Gelu", ["h"], ["a"], name="gelu"),
             helper.make_node("MatMul", ["a", "w2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", residual], ["y"], name="residual")]
    out = [vi(n, np.float32, ["B", 16, hidden]) for n in ("y", "m")]
    proto = onnx_model(nodes, [vi("x", np.float32, ["B", 16, hidden])], out, inits, opset=20)
    return _parse(proto, tmp_path, f"outliers{post_ln}.onnx")


def block_feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((2, 16, 64)).astype(np.float32)} for _ in range(count)]


def test_outlier_channels_move_into_the_weights(tmp_path, monkeypatch):
    from trtc.precision import smooth as smooth_mod

    feeds = block_feeds()
    report = apply_quantization(outlier_block(tmp_path), feeds, INT8)
    [entry] = report.quantization["smoothed"]
    assert entry["node"] == "ln" and entry["readers"] == ["fc1"] and entry["outlier_ratio"] > 16
    smoothed = report.predicted["m"]["cosine"]  # the MLP branch, without the residual's x
    monkeypatch.setattr(smooth_mod, "OUTLIER_RATIO", float("inf"))
    plain = apply_quantization(outlier_block(tmp_path), feeds, INT8).predicted["m"]["cosine"]
    assert plain < 0.999 < smoothed  # per-tensor int8 of the LN output loses the ordinary channels


def test_migration_is_exact_in_fp32(tmp_path):
    from trtc.precision.smooth import channel_peaks, migrate

    model = outlier_block(tmp_path)
    feeds = block_feeds(1)[0]
    want = ReferenceRunner(model).run(feeds)["y"]
    norm = next(n for n in model.graph if n.name == "ln")
    migrate(model, norm, channel_peaks(model, [feeds], [norm.outputs[0]])["n"])
    np.testing.assert_allclose(ReferenceRunner(model).run(feeds)["y"], want, rtol=1e-4, atol=1e-4)


def test_post_ln_residual_keeps_its_outliers_with_the_reason(tmp_path):
    report = apply_quantization(outlier_block(tmp_path, post_ln=True), block_feeds(), INT8)
    [entry] = report.quantization["smoothed"]
    assert entry["not_smoothed"] == "its output is also read by Add (not only linear layers)"


def test_quantized_model_keeps_no_float_copy_of_its_weights(tmp_path):
    model = cnn(tmp_path)
    apply_quantization(model, samples(), INT8)
    used = {v.name for n in model.graph for v in n.inputs if v is not None}
    assert set(model.graph.initializers) <= used
    assert not {"w1", "w2", "wg"} & set(model.graph.initializers)  # only their int8 copies
