"""The precision pass: typed graphs that are valid, explained, and predicted accurate; naive
all-fp16 shown to fail where trtc's plan passes (outliers, LayerNorm over large values,
Softmax over large logits)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.precision import PrecisionOptions, apply_precision
from trtc.precision.assign import TARGETS

from corpus import run_trtc

RNG = np.random.default_rng(0)


def _model(nodes, inits, inputs, outputs, opset=18) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    from trtc.frontend.shapes import infer_shapes

    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    return model


def outlier_transformer_block(hidden=64, outlier_scale=30000.0, temperature=4.0) -> ir.Model:
    """x -> MatMul(W1, a few channels scaled: activations ~1e4..1e5) -> LayerNorm -> MatMul -> Softmax."""
    w1 = RNG.standard_normal((hidden, hidden)).astype(np.float32) * 0.1
    w1[:, :3] *= outlier_scale  # residual-stream outlier channels
    w2 = RNG.standard_normal((hidden, hidden)).astype(np.float32) * 0.2
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="blocks.0.mlp.fc1"),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="blocks.0.ln", axis=-1),
        helper.make_node("MatMul", ["n", "w2"], ["logits"], name="blocks.0.attn.qk"),
        helper.make_node("Mul", ["logits", "temp"], ["scaled"], name="blocks.0.attn.scale"),
        helper.make_node("Softmax", ["scaled"], ["y"], name="blocks.0.attn.softmax", axis=-1),
    ]
    inits = {"w1": w1, "w2": w2, "g": np.ones(hidden), "b": np.zeros(hidden), "temp": np.array(temperature)}
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, hidden])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, hidden])])


def _samples(n=2):
    return [{"x": (RNG.standard_normal((2, 16, 64)) * 4).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("target, temperature", [("fp16", 4.0), ("bf16", 40.0)])
def test_naive_low_precision_fails_where_trtc_passes(target, temperature):
    """fp16: outlier activations (~1e5) overflow. bf16 keeps fp32's range but has 8 bits of
    mantissa: large logits (temperature 40) lose the softmax."""
    samples = _samples()
    block = lambda: outlier_transformer_block(temperature=temperature)  # noqa: E731
    naive = apply_precision(block(), samples, PrecisionOptions(target=target, force_fp16=["*"]))
    assert naive.flop_share == 1.0 and not naive.fp32_nodes
    ours = apply_precision(block(), samples, PrecisionOptions(target=target))
    m_naive, m_ours = naive.predicted["y"], ours.predicted["y"]
    assert m_naive["nonfinite"] > 0 or m_naive["max_rel_error"] > 1e-2, m_naive
    if target == "fp16":
        assert m_naive["nonfinite"] > 0
    assert m_ours["nonfinite"] == 0 and m_ours["cosine"] >= 0.999 and m_ours["max_rel_error"] <= 1e-2, m_ours
    reasons = {name: e["reason"] for name, e in ours.fp32_nodes.items()}
    assert "normalisation" in reasons["blocks.0.ln"]
    assert "exponentiates" in reasons["blocks.0.attn.softmax"]
    if target == "fp16":  # the outlier MatMul is rescaled by powers of two into fp16's range
        assert ours.counts["weights-rescaled"] >= 1 and "blocks.0.mlp.fc1" not in reasons
    else:  # bf16 has the range; its 8-bit mantissa is the problem: the outlier MatMul stays fp32
        assert "data_max" in reasons["blocks.0.mlp.fc1"]
        assert "feeds Softmax" in reasons["blocks.0.attn.qk"]


def test_typed_graph_is_valid_onnx_and_keeps_io_types():
    model = outlier_transformer_block()
    report = apply_precision(model, _samples(), PrecisionOptions())
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)  # strict type inference: every edge typed consistently
    assert [v.dtype for v in model.graph.inputs] == [ir.DataType.FLOAT]
    assert [v.dtype for v in model.graph.outputs] == [ir.DataType.FLOAT]
    assert [v.name for v in model.graph.outputs] == ["y"]
    for node in model.graph:  # no cast pair back to back
        if node.op_type == "Cast":
            producer = node.inputs[0].producer()
            assert producer is None or producer.op_type != "Cast", node.name
    assert report.counts["casts"] >= 2
    unread = [v.name for v in model.graph.initializers.values() if not v.uses()]
    assert not unread, f"fp32 originals of converted weights left in the typed graph: {unread}"
    low = {n.name for n in model.graph if any(v.dtype == TARGETS["fp16"] for v in n.outputs)}
    assert "blocks.0.attn.qk" in low and "blocks.0.ln" not in low


def test_cast_io_changes_the_interface():
    model = outlier_transformer_block()
    apply_precision(model, _samples(), PrecisionOptions(cast_io=True, force_fp16=["*"]))
    assert model.graph.inputs[0].dtype == model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_user_overrides():
    samples = _samples()
    report = apply_precision(outlier_transformer_block(), samples, PrecisionOptions(
        keep_fp32=["blocks.*.attn.scale"], keep_fp32_ops=["Mat*"], force_fp16=["blocks.0.ln"]))
    reasons = {n: e["reason"] for n, e in report.fp32_nodes.items()}
    assert reasons["blocks.0.attn.scale"] == "user rule --keep-fp32 'blocks.*.attn.scale'"
    assert reasons["blocks.0.attn.qk"] == "user rule --keep-fp32-op 'Mat*'"
    assert "blocks.0.ln" not in reasons  # forced beats the normalisation rule


def test_cheap_island_takes_its_neighbours_type():
    """A lone Add between two fp32 nodes is not left in fp16 between two casts."""
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["a"], name="ln1"),
             helper.make_node("Add", ["a", "bias"], ["c"], name="add"),
             helper.make_node("LayerNormalization", ["c", "g", "b"], ["y"], name="ln2")]
    model = _model(nodes, {"g": np.ones(8), "b": np.zeros(8), "bias": np.ones(8)},
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    report = apply_precision(model, [{"x": np.ones((2, 8), np.float32)}], PrecisionOptions())
    assert report.fp32_nodes["add"]["reason"] == "neighbours are fp32"
    assert report.counts["casts"] == 0


def test_cli_precision_flow(tmp_path):
    from trtc.ir.onnx_export import export_onnx_file

    model = outlier_transformer_block()
    export_onnx_file(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **_samples(1)[0])
    out = tmp_path / "m16.trtir"
    proc = run_trtc("optimize", tmp_path / "m.onnx", "-o", out, "--fp16", "--calib", tmp_path / "calib.npz",
                    "--tolerance", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert "fp16:" in proc.stdout and "predicted y" in proc.stdout
    table = run_trtc("inspect", out, "--precision").stdout
    assert "blocks.0.ln" in table and "normalisation" in table
    meta = json.loads(run_trtc("inspect", out, "--precision", "--json").stdout)
    assert meta["target"] == "fp16" and meta["calibration"] == {"samples": 1, "source": "files"}
    # All-fp16 by force cannot meet the tolerance: exit 1, naming the output and the nodes.
    proc = run_trtc("optimize", tmp_path / "m.onnx", "-o", tmp_path / "bad.trtir", "--fp16", "--calib",
                    tmp_path / "calib.npz", "--force-fp16", "*", "--tolerance", "0.01")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exceeds --tolerance 0.01 for y" in proc.stderr and "largest contributions" in proc.stderr
    assert not (tmp_path / "bad.trtir").exists()
    # An already typed artifact is refused.
    proc = run_trtc("optimize", out, "-o", tmp_path / "again.trtir", "--fp16")
    assert proc.returncode == 2 and "already typed for fp16" in proc.stderr


def test_rescaling_keeps_fp32_results_and_brings_huge_activations_into_range():
    """Conv-free chain: MatMul (weights x1000) -> Relu -> MatMul (x1000) -> Add residual -> output.
    Activations reach ~1e7: naive fp16 overflows; rescaled, the chain runs in fp16. The rescaled
    graph's observation, derived from the original's, is the one observing it gives."""
    from trtc.precision.observe import observe, scaled_observation
    from trtc.precision.rescale import rescale_activations
    from trtc.reference.runner import ReferenceRunner

    rng = np.random.default_rng(3)
    w1 = np.abs(rng.standard_normal((16, 16))).astype(np.float32) * 1000
    w2 = np.abs(rng.standard_normal((16, 16))).astype(np.float32) * 1000
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "r"], ["y"], name="residual")]

    def build():
        return _model(nodes, {"w1": w1, "w2": w2}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])])

    x = {"x": np.abs(rng.standard_normal((4, 16))).astype(np.float32)}
    model = build()
    want = ReferenceRunner(model).run(x)["y"]
    obs = observe(model, [x])
    rescaling = rescale_activations(model, obs, 128)
    assert rescaling.weights == 2 and obs.finite
    np.testing.assert_allclose(ReferenceRunner(model).run(x)["y"], want, rtol=1e-6)  # powers of two: exact
    derived, again = scaled_observation(obs, rescaling.scaled), observe(model, [x])
    assert derived.max_abs == again.max_abs and derived.shapes == again.shapes and derived.first.keys() == \
        again.first.keys() and all(np.array_equal(derived.first[k], again.first[k]) for k in again.first)
    assert derived.max_abs["h"] < obs.max_abs["h"] / 64  # h and what follows are stored scaled down
    report = apply_precision(build(), [x], PrecisionOptions())
    assert report.flop_share > 0.9 and report.predicted["y"]["nonfinite"] == 0
    assert report.predicted["y"]["max_rel_error"] <= 1e-2
    naive = apply_precision(build(), [x], PrecisionOptions(force_fp16=["*"], rescale=False))
    assert naive.predicted["y"]["nonfinite"] > 0


def _splat_chain() -> ir.Model:
    """x -> MatMul(W: a 256x128 splat of 500, 128 KiB) -> Reshape(shape) -> y; plus an unread weight."""
    from trtc.ir.splat import SplatTensor

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape")]
    model = _model(nodes, {"w": np.zeros((256, 128)), "unread": np.ones((128, 256))},
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])])
    shape = ir.Value(name="shape", const_value=ir.tensor(np.array([8, 64], dtype=np.int64), name="shape"))
    model.graph.register_initializer(shape)
    model.graph.node(1).replace_input_with(1, shape)
    model.graph.initializers["w"].const_value = SplatTensor(500.0, (256, 128), ir.DataType.FLOAT, name="w")
    return model


def test_reference_runner_hands_large_weights_over_with_the_same_results():
    """Weights of 64 KiB and more reach onnxruntime as arrays, not proto bytes; shape operands
    stay in the proto (its shape inference reads them there); an unread weight is left out."""
    import onnxruntime as ort

    from trtc.ir.onnx_export import to_model_proto
    from trtc.reference.runner import ReferenceRunner, ort_model

    model = _splat_chain()
    loaded = ort_model(model)
    proto, weights = loaded.proto, loaded.weights
    assert list(weights) == ["w"] and {t.name for t in proto.graph.initializer} == {"w", "shape"}
    x = {"x": RNG.standard_normal((4, 256)).astype(np.float32)}
    runner = ReferenceRunner(model, fetch=[model.graph.node(0).outputs[0]])
    got = runner.run(x)
    assert runner.backend == "onnxruntime" and runner.fallback_reason is None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    inline = ort.InferenceSession(to_model_proto(model).SerializeToString(), options,
                                  providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got["y"], inline.run(None, x)[0])
    assert got["h"].shape == (4, 128)


def test_a_fallback_to_onnx_reference_is_said(caplog):
    """A model onnxruntime cannot load runs on onnx.reference (20x slower): the precision pass says so."""
    from trtc.precision.observe import observe

    model = outlier_transformer_block()
    model.graph.node(0).outputs[0].type = ir.TensorType(ir.DataType.INT64)  # a type error ORT refuses
    with caplog.at_level("WARNING", logger="trtc"):
        try:
            observe(model, _samples()[:1])
        except Exception:  # noqa: BLE001  (onnx.reference may fail on it as well: the warning is the point)
            pass
    assert "precision: the calibration run ran on onnx.reference (slower): onnxruntime" in caplog.text


def test_splat_weights_stay_splats_through_rescaling_and_conversion():
    """A 500-valued splat weight drives activations past fp16's range: rescaled and converted to
    fp16, it stays one element (no 128 KiB arrays), with the numbers the full arrays would give."""
    from trtc.ir.splat import SplatTensor

    model = _splat_chain()
    x = {"x": np.abs(RNG.standard_normal((4, 256))).astype(np.float32)}
    report = apply_precision(model, [x], PrecisionOptions())
    assert report.counts["weights-rescaled"] == 1 and report.counts["weights-converted"] == 1
    fc = model.graph.node("fc")
    weight = fc.inputs[1].const_value
    assert isinstance(weight, SplatTensor) and weight.dtype == ir.DataType.FLOAT16
    exponent = int(np.log2(500.0 / float(weight.value)))
    assert float(weight.value) == np.float16(500.0 * 2.0**-exponent)
    assert report.predicted["y"]["nonfinite"] == 0 and report.predicted["y"]["cosine"] > 0.9999


@pytest.mark.parametrize("target", ["fp16", "bf16"])
def test_big_weights_are_converted_when_read_and_rounded_as_the_simulation_runs(monkeypatch, target):
    """Converted weights hold only their fp32 source (trtc.ir.converted): their elements, and the bytes saved,
    are numpy's conversion. The simulation of a big model (weights onnxruntime maps: `MAP_FILE_BYTES`) reads
    the fp32 source and rounds it with Casts as it runs; it predicts the same errors as the simulation with
    rounded fp32 constants: each reader sees the same weights (the outputs differ where onnxruntime's prepacked
    constants sum in another order)."""
    import io

    from trtc.ir.converted import ConvertedTensor
    from trtc.precision import simulate
    from trtc.reference.runner import ReferenceRunner

    model = outlier_transformer_block()
    samples = _samples()
    apply_precision(model, samples, PrecisionOptions(target=target, force_fp16=["*"]))
    converted = {v.name: v.const_value for v in model.graph.initializers.values()
                 if isinstance(v.const_value, ConvertedTensor)}
    assert f"w2__{TARGETS[target].name.lower()}" in converted
    for tensor in converted.values():
        assert tensor.source.dtype == ir.DataType.FLOAT
        want = tensor.source.numpy().astype(TARGETS[target].numpy())
        assert np.array_equal(tensor.numpy(), want, equal_nan=True)
        saved = io.BytesIO()
        tensor.tofile(saved)
        assert saved.getvalue() == want.tobytes()

    small = simulate.simulation_model(model)
    assert all(v.dtype == ir.DataType.FLOAT for v in small.graph.initializers.values())
    monkeypatch.setattr(simulate, "MAP_FILE_BYTES", 1)
    big = simulate.simulation_model(model)
    sources = {id(t.source) for t in converted.values()}
    assert all(id(v.const_value) in sources for v in big.graph.initializers.values() if v.name.endswith("__float"))
    assert sum(n.op_type == "Cast" for n in big.graph) == sum(n.op_type == "Cast" for n in small.graph) \
        + 2 * len(converted)
    # The weights each reader sees: bit for bit the constants of the small-model form.
    widened = [v for n in big.graph if n.op_type == "Cast" for v in n.outputs if v.name in small.graph.initializers]
    assert len(widened) == len(converted)
    seen = ReferenceRunner(big, fetch=widened).run(samples[0])
    for value in widened:
        assert np.array_equal(seen[value.name], small.graph.initializers[value.name].const_value.numpy())
    for sample in samples:  # the outlier channels' softmax magnifies a last-ulp difference that flips a rounding
        np.testing.assert_allclose(seen["y"] if sample is samples[0] else ReferenceRunner(big).run(sample)["y"],
                                   ReferenceRunner(small).run(sample)["y"], rtol=0.05, atol=1e-4)


def test_a_weight_read_for_its_range_is_not_left_mapped(tmp_path):
    """The rules read every weight once for its range: a weight file's pages must not stay resident after
    (a big model's fp32 weights beside everything the next stages hold); read again, it maps again."""
    from trtc.precision.observe import Observation

    array = RNG.standard_normal((64, 64)).astype(np.float32)
    array.tofile(tmp_path / "w.bin")
    value = ir.Value(name="w", const_value=ir.ExternalTensor("w.bin", offset=0, length=array.nbytes,
                                                             dtype=ir.DataType.FLOAT, shape=ir.Shape([64, 64]),
                                                             name="w", base_dir=tmp_path))
    obs = Observation({}, {}, 1, {}, [], True)
    assert obs.magnitude(value) == float(np.abs(array).max())
    assert value.const_value.raw is None  # its map is closed
    np.testing.assert_array_equal(value.const_value.numpy(), array)


def test_values_fetched_a_few_at_a_time_give_the_same_errors(monkeypatch):
    """A big model's intermediate values are fetched over several runs of the first sample (`FETCH_BYTES`):
    the per-value errors, and so the contributions, are those of one run fetching them all."""
    import trtc.precision as precision

    samples = _samples()
    typed = outlier_transformer_block()
    report = apply_precision(typed, samples, PrecisionOptions())
    model = outlier_transformer_block()
    obs = precision.observe(model, samples)
    whole = precision.simulate_errors(typed, samples, obs.outputs, obs.first, "test")
    monkeypatch.setattr(precision, "FETCH_BYTES", 1)  # one value a run
    assert len(precision._fetch_groups(list(obs.first), obs.first)) == len(obs.first)
    piecewise = precision.simulate_errors(typed, samples, obs.outputs, obs.first, "test")
    assert piecewise == whole and len(whole[1]) > 3 and report.contributions
