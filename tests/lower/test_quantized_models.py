"""Quantized models as onnxruntime's quantizer writes them (`quantize_static`, QDQ format), legalized
by `trtc.lower.legalize_qdq` into Q/DQ that TensorRT runs, checked bit for bit against onnxruntime
running the original model as ONNX defines it (graph optimizations off), and built with TensorRT-RTX."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from trtc.frontend import parse_onnx
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
from trtc.lower.legalize_qdq import legalize_quantized
from trtc.lower.network import lower
from trtc.lower.profiles import parse_profiles
from trtc.reference.runner import ReferenceRunner

from lowerutil import model, vi

D = ir.DataType
REAL = Path(__file__).resolve().parents[3] / "shared" / "models" / "real"


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv-Relu, Conv with a residual Add, Relu, Flatten, Gemm: a dynamic batch of 3x6x6 images."""
    inits = {"w1": _weights(rng, 8, 3, 3, 3), "b1": _weights(rng, 8), "w2": _weights(rng, 8, 8, 3, 3),
             "b2": _weights(rng, 8), "wg": _weights(rng, 8 * 6 * 6, 10), "bg": _weights(rng, 10)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"])]
    return model(nodes, [vi("x", np.float32, ["N", 3, 6, 6])], [vi("y", np.float32, ["N", 10])], inits, opset=17)


def mlp_model(rng: np.random.Generator) -> onnx.ModelProto:
    """MatMul + bias, Relu, MatMul + bias and a residual Add on [N, 16] (bias Adds stay Adds)."""
    inits = {"w1": _weights(rng, 16, 32), "b1": _weights(rng, 32), "w2": _weights(rng, 32, 16),
             "b2": _weights(rng, 16)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["a2"]), helper.make_node("Add", ["a2", "x"], ["y"])]
    return model(nodes, [vi("x", np.float32, ["N", 16])], [vi("y", np.float32, ["N", 16])], inits, opset=17)


MODELS = {"conv": (conv_model, (3, 6, 6)), "mlp": (mlp_model, (16,))}


class _Samples(CalibrationDataReader):
    def __init__(self, samples: list[np.ndarray], name: str = "x"):
        self._samples, self._name = iter(samples), name

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._samples, None)
        return None if sample is None else {self._name: sample}


def quantized(tmp_path: Path, kind: str, activation: QuantType, weight: QuantType, per_channel: bool,
              symmetric: bool = False) -> Path:
    """The float model of `kind`, quantized by onnxruntime's quantizer from four random samples."""
    rng = np.random.default_rng(0)
    make, sample_shape = MODELS[kind]
    float_path, path = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(make(rng), str(float_path))
    samples = [rng.standard_normal((2, *sample_shape)).astype(np.float32) for _ in range(4)]
    quantize_static(str(float_path), str(path), _Samples(samples), quant_format=QuantFormat.QDQ,
                    activation_type=activation, weight_type=weight, per_channel=per_channel,
                    extra_options={"ActivationSymmetric": symmetric})
    return path


def feeds(shape: tuple[int, ...], count: int = 8) -> list[np.ndarray]:
    """Inputs from within the calibrated range to far beyond it (saturating every quantizer)."""
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((3, *shape)) * (1 + 2 * k)).astype(np.float32) for k in range(count)]


def ort_unoptimized(path: Path) -> ort.InferenceSession:
    """onnxruntime executing each node as ONNX defines it: no Q/DQ fusion into integer kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_same_bits(want: np.ndarray, got: np.ndarray) -> None:
    """Equal as float32 bit patterns: values, signed zeros and all."""
    assert want.dtype == got.dtype == np.float32 and want.shape == got.shape
    differ = want.view(np.int32) != got.view(np.int32)
    assert not differ.any(), (f"{int(differ.sum())} of {differ.size} differ, "
                              f"max abs {float(np.abs(want - got).max())}")


def check_against_original(path: Path, legalized: ir.Model, shape: tuple[int, ...]) -> None:
    """The original in onnxruntime against the legalized IR on the CPU reference, over `feeds`."""
    session, runner = ort_unoptimized(path), ReferenceRunner(legalized)
    for x in feeds(shape):
        want = session.run(None, {"x": x})[0]
        assert_same_bits(want, runner.run({"x": x})["y"])


def check_feed(path: Path, legalized: ir.Model, x: np.ndarray, output: str = "y") -> None:
    """One feed: the original in onnxruntime against the legalized IR on the CPU reference."""
    assert_same_bits(ort_unoptimized(path).run([output], {"x": x})[0], ReferenceRunner(legalized).run({"x": x})[output])


def build(artifact, shape: tuple[int, ...]):
    profile = {"x": ((1, *shape), (2, *shape), (4, *shape))}
    return build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions(profiles=[profile]))


def qdq_summary(graph: ir.Graph) -> dict[str, object]:
    """What TensorRT will see: the types Q/DQ carry, and whether any zero point is non-zero."""
    qdq = [n for n in graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    types = Counter(n.outputs[0].dtype.name if n.op_type == "QuantizeLinear" else n.inputs[0].dtype.name for n in qdq)
    nonzero = [n.name for n in qdq if len(n.inputs) > 2 and n.inputs[2] is not None
               and np.asarray(n.inputs[2].const_value.numpy()).any()]
    return {"types": dict(types), "nonzero_zero_points": nonzero}


U8, I8 = QuantType.QUInt8, QuantType.QInt8


@pytest.mark.parametrize(("kind", "activation", "weight", "per_channel"), [
    ("conv", U8, I8, False),  # onnxruntime's defaults
    ("conv", U8, I8, True),
    ("conv", I8, I8, True),
    ("conv", U8, U8, False),  # asymmetric uint8 weights
    ("mlp", U8, U8, False),
    ("mlp", I8, I8, True),
])
def test_asymmetric_activations_become_exact_float_arithmetic(tmp_path, kind, activation, weight, per_channel):
    """The quantizer's default, asymmetric activations: each Q -> DQ pair becomes Round/Min/Max arithmetic
    (TensorRT has no int8 form with a zero point), int32 biases and asymmetric weights become float
    constants, int8 weights with zero point 0 stay TensorRT's int8 dequantize. Bit-exact, and it builds."""
    path = quantized(tmp_path, kind, activation, weight, per_channel)
    shape = MODELS[kind][1]
    artifact = parse_onnx(path)
    counts = legalize_quantized(artifact.model)
    assert counts["asymmetric-qdq-to-float"] >= 4
    if kind == "conv":
        assert counts["int32-bias-folded"] == 3
    if weight == U8:
        assert counts["dequantized-constant-folded"] >= 2
    assert legalize_quantized(artifact.model) == {}  # nothing left for a second call
    summary = qdq_summary(artifact.model.graph)
    assert summary["nonzero_zero_points"] == []
    assert set(summary["types"]) <= {"INT8"}
    assert not any(v.dtype == D.UINT8 for n in artifact.model.graph for v in n.outputs)
    check_against_original(path, artifact.model, shape)
    assert build(artifact, shape).plan


@pytest.mark.parametrize(("kind", "activation", "per_channel"), [
    ("conv", U8, True),  # uint8 with zero point 128 -> int8 with 0
    ("conv", I8, False),
    ("mlp", U8, False),
])
def test_symmetric_activations_become_tensorrt_int8_qdq(tmp_path, kind, activation, per_channel):
    """`ActivationSymmetric`: every pair becomes int8 Q/DQ with zero point 0, which TensorRT runs itself;
    the int32 biases become float constants."""
    path = quantized(tmp_path, kind, activation, I8, per_channel, symmetric=True)
    shape = MODELS[kind][1]
    artifact = parse_onnx(path)
    counts = legalize_quantized(artifact.model)
    assert "asymmetric-qdq-to-float" not in counts
    quantizes = sum(n.op_type == "QuantizeLinear" for n in artifact.model.graph)
    assert counts.get("uint8-qdq-to-int8", 0) == (0 if activation == I8 else quantizes)
    if kind == "conv":
        assert counts["int32-bias-folded"] == 3
    summary = qdq_summary(artifact.model.graph)
    assert summary["nonzero_zero_points"] == [] and set(summary["types"]) == {"INT8"}
    assert summary["types"]["INT8"] >= 8  # the activation pairs and the weights are all still Q/DQ
    check_against_original(path, artifact.model, shape)
    # Every Q/DQ reaches TensorRT as its own quantize/dequantize layer, not as arithmetic.
    network = lower(artifact.model, load_backend("tensorrt-rtx")).network
    layers = Counter(str(network.get_layer(i).type).rsplit(".", 1)[-1] for i in range(network.num_layers))
    assert layers["QUANTIZE"] == quantizes
    assert layers["DEQUANTIZE"] == sum(n.op_type == "DequantizeLinear" for n in artifact.model.graph)
    assert build(artifact, shape).plan


# ------------------------------------------------------------------ hand-built Q/DQ


def _qdq_model(zero_q: np.ndarray, zero_dq: list[np.ndarray], scale_q: float, scale_dq: list[float],
               shape: list[int]) -> onnx.ModelProto:
    """x -> QuantizeLinear -> one DequantizeLinear per entry of `zero_dq` -> outputs y0, y1, ..."""
    inits = {"s": np.float32(scale_q), "z": zero_q}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q")]
    for k, (zero, scale) in enumerate(zip(zero_dq, scale_dq, strict=True)):
        inits[f"s{k}"], inits[f"z{k}"] = np.float32(scale), zero
        nodes.append(helper.make_node("DequantizeLinear", ["q", f"s{k}", f"z{k}"], [f"y{k}"], name=f"dq{k}"))
    outputs = [vi(f"y{k}", np.float32, shape) for k in range(len(zero_dq))]
    return model(nodes, [vi("x", np.float32, shape)], outputs, inits)


def _hard_inputs(scale: float) -> np.ndarray:
    """Every rounding tie of x / scale over the whole range and past it, their float neighbours, signed
    zeros and values that round to -0, and inputs far beyond saturation."""
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32) * np.float32(scale)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    extra = np.array([0.0, -0.0, -0.3 * scale, 0.3 * scale, 1e30, -1e30, 3e7 * scale, -3e7 * scale], np.float32)
    values = np.concatenate([ties, near, extra]).astype(np.float32)
    return np.resize(values, (values.size // 8 + 1) * 8).reshape(-1, 8)


def _run_both(proto: onnx.ModelProto, tmp_path: Path, x: np.ndarray) -> tuple[dict[str, int], list, list]:
    path = tmp_path / "qdq.onnx"
    onnx.save(proto, str(path))
    want = ort_unoptimized(path).run(None, {"x": x})
    artifact = parse_onnx(path)
    counts = legalize_quantized(artifact.model)
    runner = ReferenceRunner(artifact.model)
    got = runner.run({"x": x})
    return counts, want, [got[v.name] for v in artifact.model.graph.outputs]


@pytest.mark.parametrize(("dtype", "zero"), [(np.uint8, 0), (np.uint8, 117), (np.uint8, 255), (np.int8, -11),
                                             (np.int8, 127)])
def test_pair_arithmetic_is_bit_exact_at_ties_zeros_and_saturation(tmp_path, dtype, zero):
    """Round(x / s) clamped and scaled equals ONNX's Q -> DQ at every tie and neighbour of one, keeps
    +0 where the integer round trip gives +0, and saturates like it for huge values."""
    scale = 0.0193
    x = _hard_inputs(scale)
    proto = _qdq_model(np.array(zero, dtype), [np.array(zero, dtype)], scale, [scale], [x.shape[0], 8])
    counts, want, got = _run_both(proto, tmp_path, x)
    assert counts == {"asymmetric-qdq-to-float": 1}
    for w, g in zip(want, got, strict=True):
        assert_same_bits(w, g)


def test_one_quantize_read_by_dequantizes_of_other_parameters(tmp_path):
    """A quantized value read by two DequantizeLinear, one with other scale and zero point: the second
    takes the general form, (clamp(r + zp) - zp') * s'."""
    scale = 0.05
    x = _hard_inputs(scale)
    proto = _qdq_model(np.array(140, np.uint8), [np.array(140, np.uint8), np.array(100, np.uint8)],
                       scale, [scale, 0.07], [x.shape[0], 8])
    counts, want, got = _run_both(proto, tmp_path, x)
    assert counts == {"asymmetric-qdq-to-float": 1}
    for w, g in zip(want, got, strict=True):
        assert_same_bits(w, g)


def test_uint8_zero_point_128_becomes_int8_zero(tmp_path):
    """uint8 Q/DQ with zero point 128 is int8 Q/DQ with 0, exactly (every value of q shifts by 128)."""
    proto = _qdq_model(np.array(128, np.uint8), [np.array(128, np.uint8)], 0.02, [0.02], [4, 8])
    path = tmp_path / "qdq.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    assert legalize_quantized(artifact.model) == {"uint8-qdq-to-int8": 1}
    assert qdq_summary(artifact.model.graph) == {"types": {"INT8": 2}, "nonzero_zero_points": []}
    x = _hard_inputs(0.02)[:4]
    check_feed(path, artifact.model, x, "y0")
    assert build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions()).plan


def test_uint8_weights_with_zero_point_128_stay_quantized_as_int8(tmp_path):
    """A uint8 constant dequantized with zero point 128 becomes int8 data with zero point 0 (TensorRT's
    int8 weights), not a float constant."""
    rng = np.random.default_rng(2)
    w = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    proto = model(nodes, [vi("x", np.float32, [3, 4])], [vi("y", np.float32, [3, 8])],
                  {"w": w, "ws": np.array([0.1, 0.2, 0.3, 0.4], np.float32), "wz": np.full(4, 128, np.uint8)})
    path = tmp_path / "w.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    assert legalize_quantized(artifact.model) == {"uint8-weight-to-int8": 1}
    dq = next(n for n in artifact.model.graph if n.op_type == "DequantizeLinear")
    assert dq.inputs[0].dtype == D.INT8 and not dq.inputs[2].const_value.numpy().any()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    check_feed(path, artifact.model, x)


def test_quantized_value_read_by_other_ops_is_left_alone(tmp_path):
    """A Q output that is also a graph output is observable as uint8: no rewrite may change its type."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    proto = model(nodes, [vi("x", np.float32, [2, 3])], [vi("y", np.float32, [2, 3]), vi("q", np.uint8, [2, 3])],
                  {"s": np.float32(0.1), "z": np.uint8(3)})
    path = tmp_path / "q.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    assert legalize_quantized(artifact.model) == {}
    assert next(n for n in artifact.model.graph if n.op_type == "QuantizeLinear").outputs[0].dtype == D.UINT8


@pytest.mark.parametrize("zero", [np.uint8(117), np.uint8(128)])
def test_constant_pairs_fold_where_tensorrt_cannot_quantize_them(tmp_path, zero):
    """Q -> DQ of a constant (the quantizer quantizes the constant operands of Add/Mul, HardSigmoid's 3.0):
    asymmetric ones, and scalars (TensorRT's quantize layer needs rank >= 1), fold into float constants
    computed as onnxruntime does; a symmetric one of rank >= 1 stays for TensorRT to quantize."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="qc"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dqc"),
             helper.make_node("QuantizeLinear", ["k", "s", "z"], ["kq"], name="qk"),
             helper.make_node("DequantizeLinear", ["kq", "s", "z"], ["kd"], name="dqk"),
             helper.make_node("Mul", ["x", "cd"], ["m"]), helper.make_node("Add", ["m", "kd"], ["y"])]
    inits = {"c": np.concatenate([(np.arange(-40, 40) + 0.5) * 0.02, rng.standard_normal(48)]).astype(np.float32)
             .reshape(8, 16), "k": np.float32(3.0), "s": np.float32(0.02), "z": zero}
    proto = model(nodes, [vi("x", np.float32, [8, 16])], [vi("y", np.float32, [8, 16])], inits)
    path = tmp_path / "c.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    counts = legalize_quantized(artifact.model)
    left = [n.name for n in artifact.model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if zero == 128:
        assert counts == {"constant-qdq-folded": 1, "uint8-qdq-to-int8": 1} and left == ["qc", "dqc"]
    else:
        assert counts == {"constant-qdq-folded": 2} and left == []
    x = rng.standard_normal((8, 16)).astype(np.float32)
    check_feed(path, artifact.model, x)
    assert build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions()).plan


def test_scalar_activation_pair_keeps_its_rank(tmp_path):
    """The expansion's constants take the data's rank (so TensorRT broadcasts without reshapes), and a
    scalar stays a scalar."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    proto = model(nodes, [vi("x", np.float32, [])], [vi("y", np.float32, [])],
                  {"s": np.array([0.1], np.float32), "z": np.array([3], np.uint8)})
    path = tmp_path / "s.onnx"
    onnx.save(proto, str(path))
    artifact = parse_onnx(path)
    assert legalize_quantized(artifact.model) == {"asymmetric-qdq-to-float": 1}
    for x in (np.array(v, np.float32) for v in (-0.04, 0.35, 1e9)):
        check_feed(path, artifact.model, x)
    assert build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions()).plan


# ------------------------------------------------------------------ a real model, quantized


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
def test_real_model_quantized_by_onnxruntime(tmp_path, symmetric):
    """ppocr_cls (Paddle2ONNX; HardSwish, depthwise Conv, BatchNorm, Gemm) quantized by onnxruntime's
    quantizer from its reference input: bit-exact against onnxruntime on that input and others, and it
    builds with its profile."""
    path = REAL / "ppocr_cls.onnx"
    if not path.exists():
        pytest.skip(f"{path} is missing (the real-model set lives in ../shared/models/real)")
    x = np.load(REAL / "ppocr_cls.npz")["x"]
    rng = np.random.default_rng(4)
    samples = [x] + [(x + rng.standard_normal(x.shape) * 0.1).astype(np.float32) for _ in range(2)]
    quantized_path = tmp_path / "ppocr_cls.q.onnx"
    quantize_static(str(path), str(quantized_path), _Samples(samples, "x"), quant_format=QuantFormat.QDQ,
                    activation_type=U8, weight_type=I8, per_channel=True,
                    extra_options={"ActivationSymmetric": symmetric})
    artifact = parse_onnx(quantized_path)
    counts = legalize_quantized(artifact.model)
    assert counts["uint8-qdq-to-int8" if symmetric else "asymmetric-qdq-to-float"] > 200
    assert not any(v.dtype == D.UINT8 for n in artifact.model.graph for v in n.outputs)
    session, runner = ort_unoptimized(quantized_path), ReferenceRunner(artifact.model)
    for feed in (x, (x * 1.5).astype(np.float32), (x + rng.standard_normal(x.shape)).astype(np.float32)):
        want, = session.run(None, {"x": feed})
        assert_same_bits(want, runner.run({"x": feed})["save_infer_model/scale_0.tmp_1"])
    options = BuildOptions(profiles=parse_profiles(["x:1x3x48x192,6x3x48x192,6x3x48x192"]))
    assert build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), options).plan
