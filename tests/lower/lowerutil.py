"""Helpers for the converter tests: make a one-or-few-node ONNX model, parse it
with trtc's frontend and build it with TensorRT-RTX (the dtype/shape agreement check runs inside)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtc.frontend import parse_onnx
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
from trtc.lower.network import lower
from trtc.lower.registry import support_issue

ONNX_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
              np.dtype(np.int32): onnx.TensorProto.INT32, np.dtype(np.int64): onnx.TensorProto.INT64,
              np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.uint8): onnx.TensorProto.UINT8,
              np.dtype(np.int8): onnx.TensorProto.INT8}


def vi(name: str, dtype, shape):
    """A value info; `dtype` is a numpy type, `shape` may hold strings (symbolic dims) or be None."""
    return helper.make_tensor_value_info(name, ONNX_TYPES[np.dtype(dtype)], shape)


def model(nodes, inputs, outputs, inits=None, opset: int = 18):
    """An ONNX model; `inits` maps names to numpy arrays (initializers). Unnamed nodes get names
    (TensorRT-RTX's Myelin rejects layers with empty names)."""
    for index, node in enumerate(nodes):
        if not node.name:
            node.name = f"{node.op_type.lower()}_{index}"
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def parse(proto, tmp_path: Path):
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    return parse_onnx(path)


def build(proto, tmp_path: Path, profile: dict | None = None):
    """Parse and build; `profile` maps input names to (min, opt, max) dims."""
    artifact = parse(proto, tmp_path)
    options = BuildOptions(profiles=[profile] if profile else [])
    return build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), options)


def issues(proto, tmp_path: Path) -> list[str | None]:
    """support_issue for every node of the parsed model."""
    artifact = parse(proto, tmp_path)
    opset = artifact.model.opset_imports.get("", 18)
    return [support_issue(node, opset) for node in artifact.model.graph]


def output_shapes(proto, tmp_path: Path) -> list[tuple[int, ...]]:
    """The TensorRT shapes of the outputs after lowering (no engine build; -1 for run-time dims)."""
    artifact = parse(proto, tmp_path)
    lowered = lower(artifact.model, load_backend("tensorrt-rtx"))
    network = lowered.network
    return [tuple(network.get_output(i).shape) for i in range(network.num_outputs)]


def one_node(op: str, inputs, outputs, attrs=None, inits=None, opset: int = 18):
    """A model of one node. `inputs`/`outputs`: (name, dtype, shape) triples (name '' = absent input);
    inputs also named in `inits` become initializers instead of graph inputs."""
    inits = inits or {}
    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], name=op.lower(), **(attrs or {}))
    graph_inputs = [vi(*i) for i in inputs if i[0] and i[0] not in inits]
    return model([node], graph_inputs, [vi(*o) for o in outputs], inits, opset)
