"""Common-subexpression elimination: compute each distinct expression once.

    a = Relu(x); b = Relu(x); y = Add(a, b)   ->   a = Relu(x); y = Add(a, a)
    w1 = [1, 2, 3]; w2 = [1, 2, 3] (initializers)   ->   w1 (both users read it)

Identical constant initializers (same dtype, shape and bytes) are merged first, so nodes
reading them become equal too. Nodes are then visited in topological order, keyed by op,
domain, input Values (by identity) and attributes, so merges cascade in one run. Only
standard-domain, deterministic nodes without subgraphs are merged; when both outputs
are graph outputs, both are kept.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import STANDARD_DOMAINS
from trtc.ir.walk import all_graphs
from trtc.ir.weightless import is_weightless
from trtc.passes.registry import PassContext, register_pass

# Ops whose two evaluations on the same inputs may differ.
NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Bernoulli", "Multinomial", "Dropout"})
SAMPLE_ELEMENTS = 256  # elements read from each end of a large initializer before comparing it whole

_Type = ir.AttributeType
_UNMERGEABLE_ATTRS = (_Type.GRAPH, _Type.GRAPHS, _Type.SPARSE_TENSOR, _Type.SPARSE_TENSORS, _Type.UNDEFINED)


def _flat_bytes(array: np.ndarray) -> np.ndarray:
    """`array`'s memory as a flat uint8 view (bitwise comparison: -0.0 != 0.0, NaN == NaN);
    a string tensor as its flattened elements."""
    if array.dtype.kind in "OSU":
        return array.reshape(-1)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _hashable(array: np.ndarray) -> Hashable:
    flat = _flat_bytes(array)
    return tuple(flat.tolist()) if flat.dtype.kind in "OSU" else flat.tobytes()


def _tensor_fingerprint(tensor: ir.TensorProtocol) -> Hashable:
    """dtype, shape and a cheap sample of the bytes: equal tensors have equal fingerprints."""
    array = tensor.numpy()
    flat = array.reshape(-1)
    if flat.size <= 2 * SAMPLE_ELEMENTS:
        sample = _hashable(flat)
    else:
        sample = (_hashable(flat[:SAMPLE_ELEMENTS]), _hashable(flat[-SAMPLE_ELEMENTS:]))
    return tensor.dtype, tuple(array.shape), sample


def tensors_equal(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    """Same dtype, shape and bytes."""
    if a.dtype != b.dtype:
        return False
    x, y = a.numpy(), b.numpy()
    return x.shape == y.shape and np.array_equal(_flat_bytes(x), _flat_bytes(y))


def _attribute_key(attr: ir.Attr) -> Hashable | None:
    """A hashable summary of an attribute (None: never merge its node)."""
    if attr.is_ref() or attr.type in _UNMERGEABLE_ATTRS:
        return None
    value = attr.value
    if attr.type == _Type.FLOAT:
        value = struct.pack("<d", value)  # bitwise: a 0.0 pad value differs from -0.0
    elif attr.type == _Type.FLOATS:
        value = struct.pack(f"<{len(value)}d", *value)
    elif attr.type == _Type.TENSOR:
        value = _tensor_fingerprint(value)
    elif attr.type == _Type.TENSORS:
        value = tuple(_tensor_fingerprint(t) for t in value)
    elif attr.type in (_Type.TYPE_PROTO, _Type.TYPE_PROTOS):
        value = repr(value)
    return attr.name, attr.type, value


def _node_key(node: ir.Node) -> Hashable | None:
    if node.domain not in STANDARD_DOMAINS or node.op_type in NON_DETERMINISTIC or not node.outputs:
        return None
    attrs = []
    for attr in node.attributes.values():
        key = _attribute_key(attr)
        if key is None:
            return None
        attrs.append(key)
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:  # a trailing omitted optional input is no input
        inputs.pop()
    return node.op_type, node.overload, len(node.outputs), tuple(inputs), tuple(sorted(attrs))


def _same_tensor_attributes(a: ir.Node, b: ir.Node) -> bool:
    """Fingerprints matched; confirm tensor attributes byte for byte."""
    for name, attr in a.attributes.items():
        tensors = {_Type.TENSOR: [attr.value], _Type.TENSORS: attr.value}.get(attr.type, ())
        others = {_Type.TENSOR: [b.attributes[name].value], _Type.TENSORS: b.attributes[name].value}.get(attr.type, ())
        if not all(tensors_equal(x, y) for x, y in zip(tensors, others, strict=True)):
            return False
    return True


def _merge_values(graph: ir.Graph, keep: list[ir.Value], drop: list[ir.Value]) -> bool:
    """Move every use of `drop[i]` to `keep[i]`; a graph output keeps its name."""
    if any(k.is_graph_output() and d.is_graph_output() for k, d in zip(keep, drop, strict=True)):
        return False  # two outputs cannot share one value without a copy
    for k, d in zip(keep, drop, strict=True):
        if d.is_graph_output():
            name, d.name = d.name, None
            k.name = name
        d.replace_all_uses_with(k, replace_graph_outputs=True)
    return True


def _dedupe_initializers(graph: ir.Graph) -> int:
    graph_inputs = set(graph.inputs)
    buckets: dict[Hashable, list[ir.Value]] = {}
    merged = 0
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        # An initializer that is a graph input is an overridable default, not a constant; one a weight-stripped
        # model leaves out (--weightless) has no values to compare: two of them are never one.
        if tensor is None or value in graph_inputs or value.is_graph_output() or is_weightless(tensor):
            continue
        group = buckets.setdefault(_tensor_fingerprint(tensor), [])
        same = next((kept for kept in group if tensors_equal(kept.const_value, tensor)), None)
        if same is None:
            group.append(value)
        elif _merge_values(graph, [same], [value]):
            graph.initializers.pop(value.name)
            merged += 1
    return merged


def _merge_nodes(graph: ir.Graph) -> int:
    seen: dict[Hashable, list[ir.Node]] = {}
    merged = 0
    for node in list(graph):
        key = _node_key(node)
        if key is None:
            continue
        group = seen.setdefault(key, [])
        same = next((kept for kept in group if _same_tensor_attributes(kept, node)), None)
        if same is None:
            group.append(node)
        elif _merge_values(graph, list(same.outputs), list(node.outputs)):
            graph.remove(node, safe=True)
            merged += 1
    return merged


@register_pass("cse", order=90)
def eliminate_common_subexpressions(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Merge identical constant initializers and nodes computing the same thing."""
    initializers = nodes = 0
    for graph in all_graphs(model.graph):  # outer graphs first: subgraphs then see merged outer values
        initializers += _dedupe_initializers(graph)
        nodes += _merge_nodes(graph)
    return {"nodes": nodes, "initializers": initializers}
