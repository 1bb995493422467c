"""Types TensorRT lacks, carried in types it has (trtc/lower/legalize.py, emulate.py).

The carried model is an ordinary ONNX graph, so its semantics are proven on the CPU: run it
with the reference executor on inputs converted to the carriers, convert the outputs back,
and they must equal the original model's expected outputs bit for bit (NaN and the sign of
zero included). Builds then prove TensorRT-RTX accepts the carried graph."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx.reference.ops.op_cast as onnx_cast
import onnx_ir as ir
import pytest
from onnx import helper

from trtc.errors import TrtcError
from trtc.lower.legalize import CARRIERS, legalize_types
from trtc.lower.registry import unsupported_nodes
from trtc.reference.runner import ReferenceRunner
from trtc.runtime.engine import to_engine_type

from corpus import NODE_TESTS, REPO, run_trtc

sys.path.insert(0, str(REPO / "benchmarks"))
from lowerutil import build, model, parse
from node_suite import case_data  # noqa: E402

D = ir.DataType


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal values; floats with NaN == NaN and the sign of zero compared too."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype.kind in "iub" or "int" in want.dtype.name:
        assert np.array_equal(got.astype(np.int64), want.astype(np.int64)), f"{what}: {got} != {want}"
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    bad = ~((g == w) | (np.isnan(g) & np.isnan(w))) | (np.signbit(g) != np.signbit(w)) & ~np.isnan(w)
    assert not bad.any(), f"{what}: at {np.argwhere(bad)[:5].tolist()} got {g[bad][:5]} want {w[bad][:5]}"


def run_carried(ir_model: ir.Model, feeds: dict) -> dict:
    """Legalize, run on the CPU with carried inputs, outputs back in the model's types."""
    original = {v.name: v.dtype for v in [*ir_model.graph.inputs, *ir_model.graph.outputs]}
    carried = legalize_types(ir_model)
    assert all(v.dtype not in CARRIERS or v.dtype in (D.FLOAT8E4M3FN, D.INT4)
               for n in ir_model.graph for v in n.outputs), "a value kept a type TensorRT lacks"
    runner = ReferenceRunner(ir_model, threads=1)
    outputs = runner.run({k: v.astype(CARRIERS[carried[k]].numpy()) if k in carried else v for k, v in feeds.items()})
    return {k: np.asarray(v).astype(original[k].numpy()) if k in carried else v for k, v in outputs.items()}


def _carried_cases() -> list:
    if not NODE_TESTS.is_dir():
        return [pytest.param(None, id="node-tests-missing", marks=pytest.mark.skip(
            reason=f"ONNX node test suite missing at {NODE_TESTS}"))]
    out = []
    for case in sorted(p for p in NODE_TESTS.iterdir() if (p / "model.onnx").exists()):
        proto = onnx.load(str(case / "model.onnx"), load_external_data=False)
        types = {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]
                 if v.type.HasField("tensor_type")} | {t.data_type for t in proto.graph.initializer}
        if any(D(t) in CARRIERS for t in types) and "bitcast" not in case.name:
            out.append(pytest.param(case.name, id=case.name))
    return out


@pytest.mark.parametrize("case", _carried_cases())
def test_carried_node_case_matches_expected_outputs(case, tmp_path):
    """Every node test using a type TensorRT lacks (Cast/CastLike/QuantizeLinear/
    DequantizeLinear to and from FP8/FP4/INT2/4, integer arithmetic on INT16/UINT16-64)."""
    path = NODE_TESTS / case
    proto = onnx.load(str(path / "model.onnx"), load_external_data=False)
    feeds, expected = case_data(path, proto)
    outputs = run_carried(parse(proto, tmp_path).model, feeds)
    for name, want in expected.items():
        assert_same(np.asarray(outputs[name]), np.asarray(want), f"{case}/{name}")


NARROW_FLOATS = [D.FLOAT8E4M3FN, D.FLOAT8E4M3FNUZ, D.FLOAT8E5M2, D.FLOAT8E5M2FNUZ, D.FLOAT4E2M1]


def _probe_values() -> np.ndarray:
    """Every finite float16, the midpoints between neighbours (ties), specials and random floats."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = (halves[:-1] + halves[1:]) / 2
    rng = np.random.default_rng(0)
    extra = np.array([np.inf, np.nan, 1e6, 65504, 57344, 61440, 448, 464, 240, 6, 7, 1e-7, 0], np.float32)
    values = np.concatenate([halves, mids, rng.standard_normal(2000).astype(np.float32) * 100, extra])
    return np.concatenate([values, -values])


@pytest.mark.parametrize(("dtype", "saturate"), [(d, s) for d in NARROW_FLOATS for s in (1, 0)
                                                  if d != D.FLOAT4E2M1 or s],  # FP4 always saturates
                         ids=lambda v: v.name if isinstance(v, D) else f"saturate{v}")
def test_cast_to_narrow_float_rounds_like_the_spec(dtype, saturate, tmp_path):
    """Cast float -> narrow float: round to nearest even, saturate or overflow to Inf/NaN, as
    onnx.reference's cast (ml_dtypes) does, for every float16 value and every tie between two."""
    x = _probe_values()
    proto = model([helper.make_node("Cast", ["x"], ["y"], to=int(dtype), saturate=saturate)],
                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [len(x)])],
                  [helper.make_tensor_value_info("y", int(dtype), [len(x)])], opset=23)
    got = run_carried(parse(proto, tmp_path).model, {"x": x})["y"]
    want = onnx_cast.cast_to(x, int(dtype), bool(saturate))
    assert_same(got, want, dtype.name)


def test_integer_arithmetic_wraps_like_the_narrow_type(tmp_path):
    """INT16/UINT16 in INT32 and UINT32 in INT64: results wrap as the model's type does."""
    cases = [(np.int16, "Add", [30000, -32768, 5], [30000, -1, 7]),
             (np.uint16, "Sub", [1, 0, 65535], [2, 1, 65535]),
             (np.uint32, "Mul", [4_000_000_000, 3, 65536], [3, 5, 65536]),
             (np.int16, "Mul", [300, -300, 181], [300, 300, 181])]
    for dtype, op, a, b in cases:
        a, b = np.array(a, dtype), np.array(b, dtype)
        onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        proto = model([helper.make_node(op, ["a", "b"], ["c"])],
                      [helper.make_tensor_value_info(n, onnx_type, [3]) for n in "ab"],
                      [helper.make_tensor_value_info("c", onnx_type, [3])], opset=14)
        got = run_carried(parse(proto, tmp_path).model, {"a": a, "b": b})["c"]
        with np.errstate(over="ignore"):
            want = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
        assert_same(got, want, f"{op} {np.dtype(dtype)}")


def _qdq_model(op: str, data_type: int, out_type: int, shape: list[int], scale: np.ndarray, zero: np.ndarray,
               **attrs):
    x_type = data_type
    inits = {"scale": scale, "zero": zero}
    node = helper.make_node(op, ["x", "scale", "zero"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, shape)],
                              [helper.make_tensor_value_info("y", out_type, shape)],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def test_blocked_quantize_to_uint4_matches_reference(tmp_path):
    """QuantizeLinear with block_size: the scale repeats along the axis in blocks."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-8, 40, size=(4, 6)).astype(np.float32)
    scale = np.array([[1.5, 2.0, 3.0], [0.5, 4.0, 1.0], [2.5, 2.5, 2.5], [1.0, 3.0, 6.0]], np.float32)
    zero = onnx.numpy_helper.to_array(onnx.numpy_helper.from_array(np.full((4, 3), 3, np.uint8)))
    import ml_dtypes

    zero = zero.astype(ml_dtypes.uint4)
    proto = _qdq_model("QuantizeLinear", onnx.TensorProto.FLOAT, onnx.TensorProto.UINT4, [4, 6], scale, zero,
                       axis=1, block_size=2)
    got = run_carried(parse(proto, tmp_path).model, {"x": x})["y"]
    want = onnx.reference.ReferenceEvaluator(proto).run(None, {"x": x})[0]
    assert_same(got, want, "blocked uint4")


def test_carried_models_build_and_the_sidecar_keeps_model_types(tmp_path):
    """TensorRT-RTX builds the carried graphs; engine I/O is the carrier, the sidecar says both."""
    add = model([helper.make_node("Add", ["a", "b"], ["c"])],
                [helper.make_tensor_value_info(n, onnx.TensorProto.UINT16, [2, 3]) for n in "ab"],
                [helper.make_tensor_value_info("c", onnx.TensorProto.UINT16, [2, 3])], opset=14)
    sidecar = build(add, tmp_path).sidecar
    assert sidecar["inputs"][0] == {"name": "a", "dtype": "uint16", "engine_dtype": "int32", "shape": [2, 3]}
    assert sidecar["outputs"][0]["engine_dtype"] == "int32"
    cast = model([helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT8E5M2, saturate=0),
                  helper.make_node("Cast", ["y"], ["z"], to=onnx.TensorProto.FLOAT)],
                 [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8])],
                 [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT8E5M2, [8]),
                  helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [8])], opset=23)
    (tmp_path / "b").mkdir()
    sidecar = build(cast, tmp_path / "b").sidecar
    assert [(o["dtype"], o.get("engine_dtype")) for o in sidecar["outputs"]] == [("float8e5m2", "float16"),
                                                                               ("float", None)]
    quant = _qdq_model("QuantizeLinear", onnx.TensorProto.FLOAT, onnx.TensorProto.INT4, [3, 4],
                       np.array([2, 3, 4], np.float32), np.zeros(3, np.int8).astype(__import__("ml_dtypes").int4),
                       axis=0)
    (tmp_path / "c").mkdir()
    assert build(quant, tmp_path / "c").sidecar["outputs"][0] == {
        "name": "y", "dtype": "int4", "engine_dtype": "int8", "shape": [3, 4]}


def test_bitcast_of_a_carried_type_is_reported_not_built(tmp_path):
    proto = model([helper.make_node("BitCast", ["x"], ["y"], to=onnx.TensorProto.INT16)],
                  [helper.make_tensor_value_info("x", onnx.TensorProto.UINT16, [4])],
                  [helper.make_tensor_value_info("y", onnx.TensorProto.INT16, [4])], opset=26)
    try:
        artifact = parse(proto, tmp_path)
    except TrtcError as exc:  # an onnx without BitCast cannot even check the model
        pytest.skip(f"this onnx cannot parse BitCast: {exc.one_line()}")
    problems = unsupported_nodes(artifact.model)
    assert [p["op"] for p in problems] == ["BitCast"]
    assert "reinterprets the bits" in problems[0]["reason"]


def test_dry_run_reports_carried_types_as_supported(tmp_path):
    proto = model([helper.make_node("Mul", ["a", "b"], ["c"])],
                  [helper.make_tensor_value_info(n, onnx.TensorProto.INT16, [4]) for n in "ab"],
                  [helper.make_tensor_value_info("c", onnx.TensorProto.INT16, [4])], opset=14)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    result = run_trtc("build", str(tmp_path / "m.onnx"), "--dry-run", "--json", "-o", str(tmp_path / "m.plan"))
    assert result.returncode == 0, result.stderr
    assert '"supported": true' in result.stdout


def test_engine_inputs_convert_exactly_or_say_why():
    assert to_engine_type("x", np.array([1, 65535], np.uint16), np.dtype(np.int32), "m.plan").dtype == np.int32
    e5m2 = np.array([0.5, -57344, np.inf], np.float32).astype(__import__("ml_dtypes").float8_e5m2)
    half = to_engine_type("x", e5m2, np.dtype(np.float16), "m.plan")
    assert np.array_equal(half.astype(e5m2.dtype).astype(np.float32), e5m2.astype(np.float32))
    with pytest.raises(TrtcError, match="input 'ids' has uint64 values the engine's int64 cannot hold"):
        to_engine_type("ids", np.array([2**63], np.uint64), np.dtype(np.int64), "m.plan")


def test_fp8_between_quantize_and_dequantize_stays_native(tmp_path):
    """FP8 made by QuantizeLinear and read only by DequantizeLinear is TensorRT's own Q/DQ pair: not carried."""
    scale = onnx.numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    zero = helper.make_tensor("zero", onnx.TensorProto.FLOAT8E4M3FN, [], [0])
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])], [scale, zero])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    artifact = parse(proto, tmp_path)
    assert legalize_types(artifact.model) == {}
    assert [n.op_type for n in artifact.model.graph] == ["QuantizeLinear", "DequantizeLinear"]
    assert build(proto, tmp_path).sidecar["outputs"][0]["dtype"] == "float"
