"""Normalisation (LayerNorm, RMSNorm, GroupNorm, InstanceNorm, BatchNorm, LpNorm, MVN, LRN) and
softmax-family converters: each variant builds with TensorRT-RTX (the lowering checks every
output's dtype and shape against the IR), dynamic dims build with a profile, and unsupported
variants report their reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
from trtc.lower.registry import support_issue

from lowerutil import build, parse

F, F16, I64 = np.float32, np.float16, np.int64
TYPES = {np.dtype(F): onnx.TensorProto.FLOAT, np.dtype(F16): onnx.TensorProto.FLOAT16,
         np.dtype(I64): onnx.TensorProto.INT64}
RNG = np.random.default_rng(0)
BATCH = {"x": ((1, 4, 6), (2, 4, 6), (4, 4, 6))}


def one_node(op, inputs, outputs, attrs=None, inits=None, opset=18):
    """A named one-node model; `inputs`/`outputs` are (name, dtype, shape) (name '' = absent;
    shape None: let ONNX infer it); inputs named in `inits` are initializers."""
    inits = inits or {}
    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], name=op.lower(), **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TYPES[np.dtype(t)], s) for n, t, s in inputs if n and n not in inits],
        [helper.make_tensor_value_info(n, TYPES[np.dtype(t)], s) for n, t, s in outputs if n],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def issue(proto, tmp_path: Path):
    artifact = parse(proto, tmp_path)
    return support_issue(next(iter(artifact.model.graph)), artifact.model.opset_imports[""])


# ------------------------------------------------------------------ softmax family


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("shape,axis", [([2, 3, 4], 0), ([2, 3, 4], -1), ([2, 3, 4], 1), ([5], 0)])
def test_softmax_family(tmp_path, op, shape, axis):
    proto = one_node(op, [("x", F, shape)], [("y", F, shape)], {"axis": axis})
    build(proto, tmp_path)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family_dynamic_and_fp16(tmp_path, op):
    build(one_node(op, [("x", F, ["b", 4, 6])], [("y", F, ["b", 4, 6])], {"axis": 1}), tmp_path, BATCH)
    build(one_node(op, [("x", F16, [2, 4, 6])], [("y", F16, [2, 4, 6])]), tmp_path)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_opset11_flattens_at_axis(tmp_path, op):
    """Before opset 13 the op normalises the 2-D view [prod(dims[:axis]), prod(dims[axis:])]
    (a model whose opset could not be upgraded keeps this form)."""
    artifact = parse(one_node(op, [("x", F, ["b", 4, 6])], [("y", F, ["b", 4, 6])], {"axis": 1}, opset=11),
                     tmp_path)
    opset = artifact.model.opset_imports[""]
    assert support_issue(next(iter(artifact.model.graph)), opset) is None
    build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions(profiles=[BATCH]))


# ------------------------------------------------------------------ LayerNormalization / RMSNormalization


@pytest.mark.parametrize("axis", [-1, 1, 0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(tmp_path, axis, with_bias):
    shape = [2, 4, 6]
    normalized = shape[axis:]
    inits = {"s": RNG.standard_normal(normalized).astype(F), "b": RNG.standard_normal(normalized).astype(F)}
    inputs = [("x", F, shape), ("s", F, normalized), ("b" if with_bias else "", F, normalized)]
    proto = one_node("LayerNormalization", inputs, [("y", F, shape)], {"axis": axis, "epsilon": 1e-3},
                     inits if with_bias else {"s": inits["s"]})
    build(proto, tmp_path)


def test_layer_norm_statistics_outputs_dynamic(tmp_path):
    """The Mean and InvStdDev outputs, and a run-time scale, over a run-time batch."""
    proto = one_node("LayerNormalization", [("x", F, ["b", 4, 6]), ("s", F, [6])],
                     [("y", F, ["b", 4, 6]), ("mean", F, ["b", 4, 1]), ("inv", F, ["b", 4, 1])])
    build(proto, tmp_path, {**BATCH, "s": ((6,), (6,), (6,))})


@pytest.mark.parametrize("stash", [0, 1])
def test_layer_norm_fp16(tmp_path, stash):
    proto = one_node("LayerNormalization", [("x", F16, [2, 4, 6]), ("s", F16, [6]), ("b", F16, [6])],
                     [("y", F16, [2, 4, 6])], {"stash_type": stash},
                     {"s": np.ones(6, F16), "b": np.zeros(6, F16)})
    build(proto, tmp_path)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("x_type,scale_type", [(F, F), (F16, F16), (F16, F)])
def test_rms_norm(tmp_path, axis, x_type, scale_type):
    """Opset 23; Y has the scale's type."""
    normalized = [4, 6][axis:] if axis < 0 else [4, 6]
    proto = one_node("RMSNormalization", [("x", x_type, [2, 4, 6]), ("s", scale_type, normalized)],
                     [("y", scale_type, [2, 4, 6])], {"axis": axis}, {"s": np.ones(normalized, scale_type)},
                     opset=23)
    build(proto, tmp_path)


def test_rms_norm_dynamic(tmp_path):
    proto = one_node("RMSNormalization", [("x", F, ["b", 4, 6]), ("s", F, [6])], [("y", F, ["b", 4, 6])],
                     {"epsilon": 1e-6}, {"s": np.ones(6, F)}, opset=23)
    build(proto, tmp_path, BATCH)


# ------------------------------------------------------------------ Group / Instance / Batch


def test_group_norm(tmp_path):
    inputs = [("x", F, ["b", 6, 3, 3]), ("s", F, [6]), ("bias", F, [6])]
    proto = one_node("GroupNormalization", inputs, [("y", F, ["b", 6, 3, 3])], {"num_groups": 2, "epsilon": 1e-3},
                     {"s": RNG.standard_normal(6).astype(F), "bias": np.zeros(6, F)}, opset=21)
    build(proto, tmp_path, {"x": ((1, 6, 3, 3), (2, 6, 3, 3), (4, 6, 3, 3))})


def test_group_norm_fp16_runtime_scale(tmp_path):
    inputs = [("x", F16, [2, 6, 4]), ("s", F16, [6]), ("bias", F16, [6])]
    build(one_node("GroupNormalization", inputs, [("y", F16, [2, 6, 4])], {"num_groups": 3}, opset=21), tmp_path)


@pytest.mark.parametrize("shape", [[2, 3, 5], [2, 3, 4, 4], [2, 3, 2, 2, 2]])
def test_instance_norm(tmp_path, shape):
    proto = one_node("InstanceNormalization", [("x", F, shape), ("s", F, [3]), ("b", F, [3])], [("y", F, shape)],
                     {"epsilon": 1e-3}, {"s": np.ones(3, F), "b": np.zeros(3, F)})
    build(proto, tmp_path)


@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("shape", [[2, 3], [2, 3, 4, 4]])
def test_batch_norm_inference(tmp_path, constant, shape):
    params = {n: RNG.random(3).astype(F) + 0.5 for n in ("s", "b", "m", "v")}
    proto = one_node("BatchNormalization", [("x", F, shape), *[(n, F, [3]) for n in params]], [("y", F, shape)],
                     {"epsilon": 1e-3}, params if constant else None)
    build(proto, tmp_path)


def test_batch_norm_training_mode(tmp_path):
    params = {n: RNG.random(3).astype(F) + 0.5 for n in ("s", "b", "m", "v")}
    proto = one_node("BatchNormalization", [("x", F, [2, 3, 4, 4]), *[(n, F, [3]) for n in params]],
                     [("y", F, [2, 3, 4, 4]), ("rm", F, [3]), ("rv", F, [3])], {"training_mode": 1}, params)
    build(proto, tmp_path)


# ------------------------------------------------------------------ Lp / MVN / LRN


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, -1])
def test_lp_norm(tmp_path, p, axis):
    build(one_node("LpNormalization", [("x", F, [3, 4])], [("y", F, [3, 4])], {"p": p, "axis": axis}), tmp_path)


def test_lp_norm_p3_refused(tmp_path):
    proto = one_node("LpNormalization", [("x", F, [3, 4])], [("y", F, [3, 4])], {"p": 3})
    assert issue(proto, tmp_path) == "attribute p=3 not supported (supported: 1, 2)"


@pytest.mark.parametrize("axes", [None, [1], [0, 1, 2, 3]])
def test_mean_variance_norm(tmp_path, axes):
    attrs = {} if axes is None else {"axes": axes}
    build(one_node("MeanVarianceNormalization", [("x", F, [2, 3, 4, 4])], [("y", F, [2, 3, 4, 4])], attrs), tmp_path)


@pytest.mark.parametrize("attrs", [{"size": 3}, {"size": 5, "alpha": 2e-4, "beta": 0.5, "bias": 2.0},
                                   {"size": 4}, {"size": 3, "beta": 0.001}])
def test_lrn(tmp_path, attrs):
    """Odd windows up to 15 use ILRNLayer; an even window or out-of-range beta, shifted slices."""
    proto = one_node("LRN", [("x", F, ["b", 6, 3, 3])], [("y", F, ["b", 6, 3, 3])], attrs)
    build(proto, tmp_path, {"x": ((1, 6, 3, 3), (2, 6, 3, 3), (4, 6, 3, 3))})


def test_lrn_not_4d(tmp_path):
    """ILRNLayer sums over the third dim from the end, the channels only for NCHW: other ranks
    use the slices."""
    build(one_node("LRN", [("x", F, [2, 6, 5])], [("y", F, [2, 6, 5])], {"size": 3}), tmp_path)
