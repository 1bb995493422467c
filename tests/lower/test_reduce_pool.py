"""Reductions (Reduce*, ArgMax/ArgMin, TopK, CumSum) and pooling converters: each variant builds
with TensorRT-RTX (the lowering checks every output's dtype and shape against the IR), dynamic
dims build with a profile, and unsupported variants report their reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
from trtc.lower.network import lower
from trtc.lower.registry import support_issue

from lowerutil import build, parse

F, F16, I32, I64 = np.float32, np.float16, np.int32, np.int64
TYPES = {np.dtype(F): onnx.TensorProto.FLOAT, np.dtype(F16): onnx.TensorProto.FLOAT16,
         np.dtype(I32): onnx.TensorProto.INT32, np.dtype(I64): onnx.TensorProto.INT64,
         np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.uint8): onnx.TensorProto.UINT8}
BATCH = {"x": ((1, 3, 8), (2, 3, 8), (4, 3, 8))}


def one_node(op, inputs, outputs, attrs=None, inits=None, opset=18):
    """A named one-node model; `inputs`/`outputs` are (name, dtype, shape) (shape None: let ONNX
    infer it); inputs named in `inits` are initializers."""
    inits = inits or {}
    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], name=op.lower(), **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TYPES[np.dtype(t)], s) for n, t, s in inputs if n not in inits],
        [helper.make_tensor_value_info(n, TYPES[np.dtype(t)], s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def shapes(proto, tmp_path: Path):
    """The TensorRT output shapes after lowering."""
    network = lower(parse(proto, tmp_path).model, load_backend("tensorrt-rtx")).network
    return [tuple(network.get_output(i).shape) for i in range(network.num_outputs)]


def issue(proto, tmp_path: Path):
    artifact = parse(proto, tmp_path)
    return support_issue(next(iter(artifact.model.graph)), artifact.model.opset_imports[""])


# ------------------------------------------------------------------ Reduce*

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_constant_axes(tmp_path, op, keepdims):
    out = [2, 1, 4] if keepdims else [2, 4]
    proto = one_node(op, [("x", F, [2, 3, 4]), ("axes", I64, [1])], [("y", F, out)], {"keepdims": keepdims},
                     inits={"axes": np.array([-2], I64)})
    assert shapes(proto, tmp_path) == [tuple(out)]
    build(proto, tmp_path)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceLogSumExp", "ReduceL2"])
def test_reduce_all_axes_dynamic_batch(tmp_path, op):
    """No axes: every axis, with a run-time batch dim."""
    proto = one_node(op, [("x", F, ["b", 3, 8])], [("y", F, [1, 1, 1])])
    build(proto, tmp_path, BATCH)


def test_reduce_noop_with_empty_axes_keeps_shape(tmp_path):
    proto = one_node("ReduceSumSquare", [("x", F, [2, 3])], [("y", F, [2, 3])], {"noop_with_empty_axes": 1})
    assert shapes(proto, tmp_path) == [(2, 3)]
    build(proto, tmp_path)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
def test_reduce_bool_uint8_max_min(tmp_path, op, dtype):
    proto = one_node(op, [("x", dtype, [2, 3]), ("axes", I64, [1])], [("y", dtype, [2])],
                     {"keepdims": 0}, inits={"axes": np.array([1], I64)})
    build(proto, tmp_path)


def test_reduce_int_sum(tmp_path):
    proto = one_node("ReduceSum", [("x", I64, [2, 3]), ("axes", I64, [1])], [("y", I64, [2, 1])],
                     inits={"axes": np.array([1], I64)})
    build(proto, tmp_path)


def test_reduce_runtime_axes_refused(tmp_path):
    proto = one_node("ReduceMean", [("x", F, [2, 3]), ("axes", I64, [1])], [("y", F, None)])
    assert issue(proto, tmp_path) == "the axes ('axes') must be a constant: give its value with --freeze axes=VALUES"


def test_reduce_l2_of_integers_refused(tmp_path):
    proto = one_node("ReduceL2", [("x", I32, [2, 3])], [("y", I32, [1, 1])])
    assert issue(proto, tmp_path) == "ReduceL2 of INT32 input is not supported (floating-point only)"


# ------------------------------------------------------------------ ArgMax / ArgMin / TopK


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims,last", [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_arg_extreme(tmp_path, op, keepdims, last):
    out = [2, 1, 4] if keepdims else [2, 4]
    proto = one_node(op, [("x", F, [2, 3, 4])], [("y", I64, out)],
                     {"axis": -2, "keepdims": keepdims, "select_last_index": last})
    assert shapes(proto, tmp_path) == [tuple(out)]
    build(proto, tmp_path)


def test_argmax_last_index_dynamic_axis_and_1d(tmp_path):
    """select_last_index over a run-time dim reverses with a shape-driven slice; 1-D inputs
    get a unit dim for TopK."""
    proto = one_node("ArgMax", [("x", F, ["b", 3, 8])], [("y", I64, [1, 3, 8])], {"select_last_index": 1})
    build(proto, tmp_path, BATCH)
    flat = one_node("ArgMin", [("x", np.uint8, [7])], [("y", I64, [])], {"keepdims": 0})
    build(flat, tmp_path)


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("shape,axis", [([3, 4], -1), ([6], 0), ([2, 5, 3], 1)])
def test_topk(tmp_path, largest, shape, axis):
    out = list(shape)
    out[axis] = 2
    proto = one_node("TopK", [("x", F, shape), ("k", I64, [1])], [("v", F, out), ("i", I64, out)],
                     {"axis": axis, "largest": largest}, inits={"k": np.array([2], I64)})
    assert shapes(proto, tmp_path) == [tuple(out)] * 2
    build(proto, tmp_path)


def test_topk_int_and_dynamic(tmp_path):
    proto = one_node("TopK", [("x", I32, ["b", 3, 8]), ("k", I64, [1])], [("v", I32, ["b", 3, 3]),
                     ("i", I64, ["b", 3, 3])], inits={"k": np.array([3], I64)})
    build(proto, tmp_path, BATCH)


def test_topk_runtime_k(tmp_path):
    """A run-time K is a TensorRT shape tensor: its range is given at build time."""
    proto = one_node("TopK", [("x", F, [3, 8]), ("k", I64, [1])], [("v", F, [3, "k"]), ("i", I64, [3, "k"])])
    artifact = parse(proto, tmp_path)
    build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
                 BuildOptions(shape_inputs={"k": ((1,), (2,), (8,))}))


def test_topk_k_out_of_range_refused(tmp_path):
    huge = one_node("TopK", [("x", F, [3, 5000]), ("k", I64, [1])], [("v", F, None), ("i", I64, None)],
                    inits={"k": np.array([4000], I64)})
    assert issue(huge, tmp_path) == "K=4000 is out of TensorRT's range 1..3840"


# ------------------------------------------------------------------ CumSum


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [F, I32])
def test_cumsum(tmp_path, exclusive, reverse, dtype):
    proto = one_node("CumSum", [("x", dtype, [2, 3]), ("axis", I32, [])], [("y", dtype, [2, 3])],
                     {"exclusive": exclusive, "reverse": reverse}, inits={"axis": np.array(-1, I32)})
    build(proto, tmp_path)


def test_cumsum_dynamic_and_runtime_axis(tmp_path):
    proto = one_node("CumSum", [("x", F, ["b", 3, 8]), ("axis", I64, [1])], [("y", F, ["b", 3, 8])],
                     inits={"axis": np.array([0], I64)})
    build(proto, tmp_path, BATCH)
    # A runtime axis builds as a shape tensor pinned to one value (TensorRT needs it at build time).
    runtime = one_node("CumSum", [("x", F, [2, 3]), ("axis", I64, [])], [("y", F, [2, 3])])
    assert issue(runtime, tmp_path) is None
    artifact = parse(runtime, tmp_path)
    build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
                 BuildOptions(shape_inputs={"axis": ((1,), (1,), (1,))}))
    computed = one_node("CumSum", [("x", F, [2, 3]), ("axis", I64, [])], [("y", F, [2, 3])])
    computed.graph.node.insert(0, onnx.helper.make_node("Abs", ["axis"], ["axis_abs"], name="abs"))
    computed.graph.node[1].input[1] = "axis_abs"  # computed at run time: no build-time value
    artifact = parse(computed, tmp_path)
    cumsum = [n for n in artifact.model.graph if n.op_type == "CumSum"][0]
    assert support_issue(cumsum, artifact.model.opset_imports[""]) == "the axis ('axis_abs') must be a constant"


# ------------------------------------------------------------------ pooling

POOLS = [  # (attrs, input shape, ONNX output shape)
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [1, 2, 4, 4], [1, 2, 2, 2]),
    ({"kernel_shape": [1, 1], "strides": [2, 2], "ceil_mode": 1}, [1, 2, 2, 2], [1, 2, 1, 1]),
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [3, 3], "ceil_mode": 1}, [1, 2, 2, 2], [1, 2, 1, 1]),
    ({"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}, [1, 2, 5, 5], [1, 2, 5, 5]),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, [1, 2, 5, 5], [1, 2, 3, 3]),
    ({"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"}, [1, 2, 6, 6], [1, 2, 6, 6]),
    ({"kernel_shape": [2, 2], "auto_pad": "VALID", "strides": [2, 2]}, [1, 2, 5, 5], [1, 2, 2, 2]),
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, [1, 2, 9], [1, 2, 5]),
    ({"kernel_shape": [2, 2, 2]}, [1, 2, 4, 4, 4], [1, 2, 3, 3, 3]),
    ({"kernel_shape": [2, 2], "dilations": [2, 2], "ceil_mode": 1}, [1, 2, 4, 4], [1, 2, 2, 2]),
    ({"kernel_shape": [3, 3, 3], "dilations": [2, 2, 2], "strides": [3, 3, 3], "ceil_mode": 1},
     [1, 1, 11, 11, 11], [1, 1, 3, 3, 3]),
    ({"kernel_shape": [2, 2, 2, 2]}, [1, 1, 3, 3, 3, 3], [1, 1, 2, 2, 2, 2]),
]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
@pytest.mark.parametrize("attrs,shape,out", POOLS)
def test_pool_geometry(tmp_path, op, attrs, shape, out):
    """Every geometry builds with ONNX's exact output shape, natively or from slices."""
    extra = {"AveragePool": {"count_include_pad": 1}, "LpPool": {"p": 3}}.get(op, {})
    proto = one_node(op, [("x", F, shape)], [("y", F, out)], {**attrs, **extra}, opset=22)
    assert shapes(proto, tmp_path) == [tuple(out)]
    build(proto, tmp_path)


def test_pool_output_size_disagreement_refused(tmp_path):
    """onnx's shape inference keeps a ceil_mode window that starts past the input; the
    reference (and ONNX Runtime, PyTorch) drop it. A model declaring onnx's size gets the right one
    at parse (a warning says so); an IR saying otherwise is refused."""
    proto = one_node("MaxPool", [("x", F, [1, 2, 2, 2])], [("y", F, [1, 2, 2, 2])],
                     {"kernel_shape": [1, 1], "strides": [2, 2], "ceil_mode": 1})
    artifact = parse(proto, tmp_path)
    node = next(iter(artifact.model.graph))
    assert list(node.outputs[0].shape.dims) == [1, 2, 1, 1]
    assert artifact.meta["parse"]["shape_warnings"] == [
        "output 'y' is declared float32[1, 2, 2, 2] but the graph computes float32[1, 2, 1, 1]; the declaration is "
        "ignored"]
    node.outputs[0].shape = ir.Shape([1, 2, 2, 2])
    assert support_issue(node, 18).startswith("the model gives MaxPool output spatial dims [2, 2], ONNX's pooling "
                                              "rule [1, 1]")


@pytest.mark.parametrize("attrs,shape,out", [*POOLS[:5], ({"kernel_shape": [2, 2], "pads": [2, 2, 2, 2]},
                                                            [1, 1, 3, 3], [1, 1, 6, 6])])
def test_average_pool_excluding_pads(tmp_path, attrs, shape, out):
    proto = one_node("AveragePool", [("x", F, shape)], [("y", F, out)], attrs)
    build(proto, tmp_path)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(tmp_path, storage_order):
    proto = one_node("MaxPool", [("x", F, [1, 2, 5, 5])], [("y", F, [1, 2, 3, 3]), ("i", I64, [1, 2, 3, 3])],
                     {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2],
                      "storage_order": storage_order})
    build(proto, tmp_path)


def test_max_pool_uint8(tmp_path):
    proto = one_node("MaxPool", [("x", np.uint8, [1, 1, 5, 5])], [("y", np.uint8, [1, 1, 5, 5])],
                     {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]})
    build(proto, tmp_path)


def test_pools_dynamic_spatial(tmp_path):
    """Run-time H/W: padding modes and a ceil_mode whose last window always starts inside."""
    profile = {"x": ((1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 32, 32))}
    for op, attrs in [("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
                      ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
                      ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
                      ("LpPool", {"kernel_shape": [2, 2], "strides": [2, 2], "p": 2})]:
        proto = one_node(op, [("x", F, ["n", 3, "h", "w"])], [("y", F, None)], attrs)
        build(proto, tmp_path, profile)


def test_pools_dynamic_spatial_refused(tmp_path):
    dilated = one_node("MaxPool", [("x", F, ["n", 3, "h", "w"])], [("y", F, None)],
                       {"kernel_shape": [2, 2], "dilations": [2, 2]})
    assert issue(dilated, tmp_path) == "MaxPool with dilations needs static spatial dims"
    ceil = one_node("AveragePool", [("x", F, ["n", 3, "h", "w"])], [("y", F, None)],
                    {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1})
    assert issue(ceil, tmp_path) == "AveragePool with ceil_mode and these pads needs static spatial dims"
    wide = one_node("AveragePool", [("x", F, ["n", 3, "h", "w"])], [("y", F, None)],
                    {"kernel_shape": [2, 2], "pads": [2, 2, 0, 0]})
    assert issue(wide, tmp_path) == "AveragePool with padding as large as the kernel needs static spatial dims"
    indices = one_node("MaxPool", [("x", F, ["n", 3, 4, 4])], [("y", F, None), ("i", I64, None)],
                       {"kernel_shape": [2, 2]})
    assert issue(indices, tmp_path) == "MaxPool with the Indices output needs static input dims"


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
def test_global_pools(tmp_path, op):
    proto = one_node(op, [("x", F, ["n", 3, "h", "w"])], [("y", F, ["n", 3, 1, 1])])
    build(proto, tmp_path, {"x": ((1, 3, 4, 4), (2, 3, 8, 8), (4, 3, 16, 16))})
