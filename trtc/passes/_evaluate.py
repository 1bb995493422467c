"""Evaluate a handful of IR nodes on the CPU reference executors (onnxruntime, falling back
to `onnx.reference`), for the folding passes: one session for a whole set of nodes, not one
per node."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

from trtc.ir.rewrite import STANDARD_DOMAINS
from trtc.ir.weightless import is_weightless

# numpy dtypes onnxruntime's Python API takes as feeds; other constants travel as initializers.
_FEEDABLE = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                   np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


class EvaluationError(Exception):
    """Neither executor could evaluate the nodes."""


def is_constant(value: ir.Value | None) -> bool:
    """An initializer that is not an overridable graph input (None, an omitted input, counts), nor a weight a
    weight-stripped model leaves out (--weightless): nothing is folded from values the model does not hold."""
    return value is None or (value.const_value is not None and not value.is_graph_input()
                             and not is_weightless(value.const_value))


def is_standard(node: ir.Node) -> bool:
    return node.domain in STANDARD_DOMAINS


def value_to_constant(graph: ir.Graph, value: ir.Value, tensor: ir.TensorProtocol) -> ir.Value:
    """Move every use of the node output `value` (graph outputs included) to a new initializer
    holding `tensor`, which takes over the value's name."""
    name = value.name
    value.name = None
    tensor.name = name
    constant = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape.numpy()),
                        const_value=tensor)
    graph.register_initializer(constant)
    value.replace_all_uses_with(constant, replace_graph_outputs=True)
    return constant


def drop_dead_initializers(graph: ir.Graph, values: Iterable[ir.Value]) -> None:
    """Remove those of `values` that are initializers of `graph` nobody reads any more."""
    for value in values:
        if (value.is_initializer() and value.graph is graph and not value.uses()
                and not value.is_graph_output() and not value.is_graph_input()):
            graph.initializers.pop(value.name)


def evaluate(nodes: Sequence[ir.Node], outputs: Sequence[ir.Value], opset_imports: Mapping[str, int], *,
             feeds: Mapping[str, np.ndarray] | None = None,
             rename: Mapping[tuple[ir.Node, int], str] | None = None) -> list[np.ndarray]:
    """The arrays of `outputs` computed by `nodes` (in topological order).

    Inputs of `nodes` that no node among them produces are constants (their tensors are
    used), or named in `feeds`. `rename` reads input `i` of a node from another name (a
    feed) instead of its value.
    """
    feeds = dict(feeds or {})
    rename = rename or {}
    produced = {v for n in nodes for v in n.outputs}
    initializers: list[onnx.TensorProto] = []
    seen: set[str] = set(feeds)
    node_protos = []
    for node in nodes:
        proto = ir.serde.serialize_node(node)
        for i, value in enumerate(node.inputs):
            if (node, i) in rename:
                proto.input[i] = rename[node, i]
            elif value is not None and value not in produced and value.name not in seen:
                if value.const_value is None:
                    raise EvaluationError(f"input {value.name!r} of {node.op_type} is not a constant")
                seen.add(value.name)
                _add_constant(value, feeds, initializers)
        node_protos.append(proto)
    graph = helper.make_graph(
        node_protos, "fold",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for name, a in feeds.items()],
        [onnx.ValueInfoProto(name=v.name) for v in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opset_imports.items()])
    model.ir_version = 10
    names = [v.name for v in outputs]
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # failures fall back quietly
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return list(session.run(names, feeds))
    except Exception:  # onnxruntime raises its own types for every failure; try the other executor
        pass
    try:
        return list(onnx.reference.ReferenceEvaluator(model).run(names, feeds))
    except Exception as exc:
        raise EvaluationError(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__) \
            from None


def _add_constant(value: ir.Value, feeds: dict[str, np.ndarray], initializers: list[onnx.TensorProto]) -> None:
    """Pass a constant as a feed (no protobuf copy, no 2 GiB limit) where onnxruntime takes its dtype."""
    tensor = value.const_value
    if tensor.dtype != ir.DataType.STRING and tensor.dtype.itemsize >= 1:
        array = tensor.numpy()
        if array.dtype in _FEEDABLE:
            # (np.ascontiguousarray would turn a 0-d array into 1-d)
            feeds[value.name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)
            return
    proto = ir.serde.serialize_tensor(tensor)
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        proto.ClearField("data_location")
        del proto.external_data[:]
        proto.raw_data = tensor.tobytes()
    proto.name = value.name
    initializers.append(proto)
