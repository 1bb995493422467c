"""Types TensorRT does not have, carried in types it has.

A value of a type TensorRT lacks (INT16, UINT16/32/64, FP8 E5M2 and the FNUZ variants, FP4,
INT2/UINT2/UINT4) is carried in a TensorRT type that holds every one of its values exactly:
16-bit integers in INT32, UINT32/UINT64 in INT64, narrow floats in FLOAT16, 2/4-bit integers in
INT8. FP8 E4M3FN and INT4, which TensorRT has only next to its quantize/dequantize layers, are
carried too where they meet anything else (a Cast, a graph input or output).

Carrying is exact because the nodes that could leave the type's value set are rewritten:
- Cast to a carried type rounds (floats: `emulate.round_to_float`) or wraps (integers) there;
- integer arithmetic on a carried type wraps its result to the type's range after the node;
- QuantizeLinear/DequantizeLinear of a carried type become their arithmetic.
Engine inputs and outputs keep the model's types in the sidecar; the runner converts arrays
to and from the carrier (exact, see `trtc.runtime.engine`).

UINT64 in INT64 is exact for values below 2**63 (the runner refuses larger inputs); its
additions and multiplications wrap like UINT64's, but divisions and comparisons of values at or
above 2**63 would differ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.rewrite import is_op, replace_with
from trtc.lower.emulate import Emitter, dequantize, qdq_issue, quantize, round_to_float, wrap_integer

D = ir.DataType

CARRIERS: dict[ir.DataType, ir.DataType] = {
    D.INT16: D.INT32, D.UINT16: D.INT32, D.UINT32: D.INT64, D.UINT64: D.INT64,
    D.FLOAT8E5M2: D.FLOAT16, D.FLOAT8E4M3FNUZ: D.FLOAT16, D.FLOAT8E5M2FNUZ: D.FLOAT16, D.FLOAT4E2M1: D.FLOAT16,
    D.INT2: D.INT8, D.UINT2: D.INT8, D.UINT4: D.INT8,
    D.FLOAT8E4M3FN: D.FLOAT16, D.INT4: D.INT8,  # only where TensorRT's Q/DQ rules forbid them
}
QDQ_NATIVE = {D.FLOAT8E4M3FN, D.INT4}
FLOATS = {D.FLOAT, D.FLOAT16, D.BFLOAT16, D.DOUBLE, D.FLOAT8E5M2, D.FLOAT8E4M3FNUZ, D.FLOAT8E5M2FNUZ,
          D.FLOAT4E2M1, D.FLOAT8E4M3FN}
# Ops whose outputs are some of their inputs' values: a carried integer needs no wrap after them.
VALUE_PRESERVING = {
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Where", "Min", "Max", "ReduceMin", "ReduceMax", "TopK",
    "Pad", "Compress", "ScatterND", "ScatterElements", "Mod", "DepthToSpace", "SpaceToDepth", "ReverseSequence",
    "Trilu", "MaxPool",
}


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    return value.dtype if value is not None and isinstance(value.type, ir.TensorType) else None


def needs_carrier(value: ir.Value) -> bool:
    """A value whose type TensorRT lacks, or FP8/INT4 outside a quantize -> dequantize pair."""
    dtype = _dtype(value)
    if dtype not in CARRIERS:
        return False
    if dtype not in QDQ_NATIVE:
        return True
    producer = value.producer()
    # TensorRT takes FP8/INT4 from a constant or a quantize, into dequantizes; a graph output is carried
    # anyway, as the runner has no host type for FP8/INT4.
    from_constant_or_q = (producer is None and not value.is_graph_input()) or is_op(producer, "QuantizeLinear")
    into_dq_only = not value.is_graph_output() and all(is_op(u, "DequantizeLinear") for u in value.consumers())
    return not (from_constant_or_q and into_dq_only)


# A rewrite returns the values replacing the node's outputs, or None when it wraps them after the node.
Rewrite = Callable[[Emitter, ir.Node, dict], "list[ir.Value] | None"]


def _cast(em: Emitter, node: ir.Node, orig: dict) -> list[ir.Value]:
    """Cast to a carried type rounds (floats) or wraps (integers) in the carrier; from a carried
    type it is a cast of the carrier, which holds the value exactly."""
    x, out = node.inputs[0], node.outputs[0]
    dst = orig.get(out, out.dtype)
    saturate = bool(node.attributes.get_int("saturate", 1))
    if out not in orig:  # from a carried type to a native one
        return [em.cast(x, dst)]
    if dst in FLOATS:
        return [em.cast(round_to_float(em, em.cast(x, D.FLOAT), dst, saturate), CARRIERS[dst])]
    wide = D.INT64 if CARRIERS[dst] == D.INT64 else D.INT32
    return [em.cast(wrap_integer(em, em.cast(x, wide), dst), CARRIERS[dst])]


def _quantize(em: Emitter, node: ir.Node, orig: dict) -> list[ir.Value]:
    return quantize(em, node, orig[node.outputs[0]])


def _dequantize(em: Emitter, node: ir.Node, orig: dict) -> list[ir.Value]:
    return dequantize(em, node, orig[node.inputs[0]])


def _rewrite_for(node: ir.Node, orig: dict) -> Rewrite | None:
    """The rewrite a node touching carried values needs, or None when carrying needs nothing."""
    ins = [v for v in node.inputs if v is not None and v in orig]
    outs = [v for v in node.outputs if v in orig]
    if node.op_type == "Cast" and (ins or outs):
        return _cast
    if node.op_type == "QuantizeLinear" and outs:
        return _quantize
    if node.op_type == "DequantizeLinear" and node.inputs[0] in orig:
        return _dequantize
    if node.op_type not in VALUE_PRESERVING and any(orig[v] not in FLOATS and orig[v] != D.UINT64 for v in outs):
        return _wrap_outputs
    return None


def _wrap_outputs(em: Emitter, node: ir.Node, orig: dict) -> None:
    """Integer arithmetic in the carrier, wrapped to the carried type's range afterwards."""
    for value in node.outputs:
        if value in orig and orig[value] not in FLOATS:
            em.after_node_wrap(value, lambda v, t=orig[value]: wrap_integer(em, v, t))
    return None


def _convert_constant(value: ir.Value, carrier: ir.DataType) -> None:
    array = value.const_value.numpy()
    value.const_value = ir.tensor(np.asarray(array).astype(carrier.numpy()), name=value.name)


def _canonical_castlike(graph: ir.Graph) -> None:
    """CastLike(x, like) -> Cast(x, to=like's type) where a carried type is involved."""
    for node in list(graph):
        if is_op(node, "CastLike") and len(node.inputs) == 2:
            if not any(_dtype(v) in CARRIERS for v in (*node.inputs, *node.outputs)):
                continue
            attrs = {"to": int(node.inputs[1].dtype)}
            if "saturate" in node.attributes:
                attrs["saturate"] = node.attributes.get_int("saturate", 1)
            cast = ir.node("Cast", [node.inputs[0]], attrs, name=node.name)
            replace_with(graph, node, [cast], node.outputs, cast.outputs, dead=[node])


def _carried_values(graph: ir.Graph) -> dict[ir.Value, ir.DataType]:
    values = [*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)]
    return {v: v.dtype for v in values if needs_carrier(v)}


def _issue(node: ir.Node, orig: dict) -> str | None:
    if not any(v in orig for v in (*node.inputs, *node.outputs) if v is not None):
        return None
    if node.op_type == "BitCast":
        return "BitCast reinterprets the bits of a type TensorRT does not have"
    if (node.op_type == "QuantizeLinear" and node.outputs[0] in orig) or (
            node.op_type == "DequantizeLinear" and node.inputs[0] in orig):
        return qdq_issue(node)
    return None


def carry_issues(model: ir.Model) -> dict[ir.Node, str]:
    """The nodes whose types TensorRT lacks and cannot be carried, with the reason (nothing is changed)."""
    if CARRIED_KEY in model.graph.meta:
        return {}
    orig = _carried_values(model.graph)
    return {n: reason for n in model.graph if orig and (reason := _issue(n, orig)) is not None}


CARRIED_KEY = "trtc.carried_io"


def legalize_types(model: ir.Model) -> dict[str, ir.DataType]:
    """Carry every value whose type TensorRT lacks in one it has (in place, once); returns the
    model's own type of each graph input/output that is now carried (also kept in graph.meta)."""
    graph = model.graph
    if CARRIED_KEY in graph.meta:
        return graph.meta[CARRIED_KEY]
    _canonical_castlike(graph)
    problems = carry_issues(model)
    if problems:
        listed = "; ".join(f"{n.name or '<unnamed>'} ({n.op_type}): {reason}" for n, reason in problems.items())
        raise TrtcError(f"{len(problems)} node(s) cannot be lowered to TensorRT: {listed}")
    orig = _carried_values(graph)
    io = {v.name: orig[v] for v in (*graph.inputs, *graph.outputs) if v in orig}
    graph.meta[CARRIED_KEY] = io
    if not orig:
        return io
    rewrites = [(node, _rewrite_for(node, orig)) for node in list(graph)]
    model.opset_imports.setdefault("", 18)  # the emitted ops are standard ones
    for value, dtype in orig.items():
        value.type = ir.TensorType(CARRIERS[dtype])
        if value.const_value is not None:
            _convert_constant(value, CARRIERS[dtype])
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR and attr.value.dtype in CARRIERS:
                node.attributes[attr.name] = ir.AttrTensor(attr.name, ir.tensor(
                    attr.value.numpy().astype(CARRIERS[attr.value.dtype].numpy())))
    for node, rewrite in rewrites:
        if rewrite is not None:
            em = Emitter(graph, node)
            em.commit(rewrite(em, node, orig))
    return io
