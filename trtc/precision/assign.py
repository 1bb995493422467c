"""Assigning compute types and making the graph explicitly typed.

1. Every node that computes on fp32 tensors runs in the target type (fp16/bf16) unless a
   rule (rules.py) keeps it in fp32; nodes that only read floats (Shape, comparisons)
   follow their inputs.
2. Cheap nodes with no reason of their own take the type of their neighbours when all
   agree, so no island is a single cheap node between two casts.
3. Every float value is stored in its producer's type; a Cast is inserted once per
   (value, type) where a consumer computes in another type; weights used only in the
   target type are converted; a Cast of a Cast that only widened is bypassed, so no
   cast pair is left back to back. Model inputs and outputs keep fp32 unless cast_io.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from trtc.ir.rewrite import STANDARD_DOMAINS, add_constant
from trtc.ir.splat import map_elements
from trtc.precision.rules import RuleContext, forced_fp16, keep_reason, user_keep

FLOAT = ir.DataType.FLOAT
HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "Einsum", "LSTM", "GRU", "RNN"}
TARGETS = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


@dataclasses.dataclass
class Assignment:
    """Per node name: 'low' (target type), 'fp32', 'follow' (reads floats, computes none:
    takes its inputs' type), or None (no float values at all)."""

    compute: dict[str, str | None]
    reasons: dict[str, str]
    forced: set[str] = dataclasses.field(default_factory=set)  # by the user: never smoothed


def _schema(node: ir.Node, opset: int):
    if node.domain not in STANDARD_DOMAINS:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


# Ops whose float inputs may have their own type constraint in the schema but that TensorRT (and
# onnxruntime's type inference) want in one type: all their float inputs follow the compute type.
ONE_TYPE_OPS = {"LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization",
                "BatchNormalization"}
# Type parameters the schema keeps apart but onnxruntime binds to one type: Attention's V and
# past_value (T2) take Q's type (T1), else onnxruntime refuses the model and every CPU check falls
# back to onnx.reference. attn_mask (U) keeps its own type. TensorRT-RTX 1.7's trouble with an fp32
# attention fed through fp16->fp32 Casts is the lowering's to avoid (trtc/lower/ops/attention.py).
SAME_TYPE_PARAMS = {"Attention": {"T2": "T1"}}


def typed_inputs(node: ir.Node, opset: int) -> list[int]:
    """Indices of the float inputs that share the type of the node's float outputs."""
    if node.op_type == "Cast":
        return []
    if node.op_type in ONE_TYPE_OPS and node.domain in STANDARD_DOMAINS:
        return [i for i, v in enumerate(node.inputs) if v is not None and v.dtype == FLOAT]
    if node.op_type == "CastLike":
        return [1]
    schema = _schema(node, opset)
    if schema is None:
        return []
    same = SAME_TYPE_PARAMS.get(node.op_type, {})
    out_types = {same.get(t, t) for t in (schema.outputs[min(i, len(schema.outputs) - 1)].type_str
                                          for i, v in enumerate(node.outputs) if v.dtype == FLOAT and schema.outputs)}
    if not out_types:  # no float output: follow the float inputs (Shape, Less, ArgMax...)
        return [i for i, v in enumerate(node.inputs) if v is not None and v.dtype == FLOAT]
    typed = []
    for i, value in enumerate(node.inputs):
        formal = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        if value is not None and value.dtype == FLOAT and formal is not None and \
                same.get(formal.type_str, formal.type_str) in out_types:
            typed.append(i)
    return typed


def _float_node(node: ir.Node) -> bool:
    return any(v.dtype == FLOAT for v in node.outputs) or any(
        v is not None and v.dtype == FLOAT for v in node.inputs)


def assign(model: ir.Model, ctx: RuleContext) -> Assignment:
    """Decide a compute type for every node (no graph change yet)."""
    compute: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    forced = {n.name for n in model.graph if forced_fp16(n, ctx.options) and user_keep(n, ctx) is None}
    for node in model.graph:
        if not _float_node(node):
            compute[node.name] = None
        elif not any(v.dtype == FLOAT for v in node.outputs):
            compute[node.name] = "follow"
        elif (reason := keep_reason(node, ctx)) is not None or _schema(node, _opset(model)) is None:
            compute[node.name] = "fp32"
            reasons[node.name] = reason or f"no ONNX schema for {node.domain}::{node.op_type}"
        else:
            compute[node.name] = "low"
    _smooth_islands(model, compute, set(reasons) | forced)
    return Assignment(compute, reasons, forced)


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", 18)


def _neighbours(node: ir.Node, compute: dict[str, str | None]) -> Iterable[str | None]:
    for value in node.inputs:
        if value is not None and value.dtype == FLOAT and value.const_value is None:
            producer = value.producer()
            yield compute.get(producer.name) if producer is not None else "fp32"
    for value in node.outputs:
        if value.dtype == FLOAT:
            if value.is_graph_output():
                yield "fp32"
            for user in value.consumers():
                yield compute.get(user.name)


def _smooth_islands(model: ir.Model, compute: dict[str, str | None], pinned: set[str]) -> None:
    changed = True
    while changed:
        changed = False
        for node in model.graph:
            own = compute[node.name]
            if own not in ("low", "fp32") or node.name in pinned or node.op_type in HEAVY:
                continue
            around = {t for t in _neighbours(node, compute) if t in ("low", "fp32")}
            if len(around) == 1 and own not in around:
                compute[node.name] = around.pop()
                changed = True


def ensure_node_names(model: ir.Model) -> None:
    """Decisions are keyed by node name: give unnamed nodes unique names."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def apply(model: ir.Model, assignment: Assignment, target: str, cast_io: bool) -> dict[str, int]:
    """Rewrite the graph into the explicitly typed form; return counts of what was inserted."""
    low = TARGETS[target]
    graph = model.graph
    opset = _opset(model)
    # Which inputs follow the compute type is read off the fp32 graph, before any retyping.
    typed = {node: typed_inputs(node, opset) for node in graph}
    storage: dict[ir.Value, ir.DataType] = {}
    for value in graph.inputs:
        if value.dtype == FLOAT:
            storage[value] = low if cast_io else FLOAT
            if cast_io:
                value.type = ir.TensorType(low)  # new object: types may be shared
    # Outputs of nodes computing in the target type are stored in it.
    for node in graph:
        if assignment.compute.get(node.name) == "low":
            for value in node.outputs:
                if value.dtype == FLOAT:
                    value.type = ir.TensorType(low)  # new object: types may be shared
            if node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT:
                node.attributes["to"] = ir.AttrInt64("to", low)
            if node.op_type == "Attention":
                # TensorRT and ONNX keep the softmax of a low-precision Attention in fp32.
                node.attributes["softmax_precision"] = ir.AttrInt64("softmax_precision", FLOAT)
        for value in node.outputs:
            if value.dtype in (FLOAT, low):
                storage[value] = value.dtype
    counts = {"casts": 0, "weights-converted": 0}
    casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
    for node in list(graph):
        indices = typed[node]
        want = _wanted(assignment.compute.get(node.name), node, indices, storage, low)
        for index in indices:
            value = node.inputs[index]
            if value is None:
                continue
            if value.const_value is not None and not value.is_graph_input():
                node.replace_input_with(index, _weight_in(graph, value, want, counts))
                continue
            have = storage.get(value, FLOAT)
            if have != want:
                node.replace_input_with(index, _cast(graph, value, want, casts, counts))
    if not cast_io:
        for i, value in enumerate(list(graph.outputs)):
            if value.dtype == low:
                graph.outputs[i] = _cast_output(graph, value, counts)
    return counts


def _wanted(compute: str | None, node: ir.Node, indices: list[int], storage: dict, low: ir.DataType):
    if compute == "low":
        return low
    if compute == "follow":  # the type of the first computed input; constants adapt to it
        for i in indices:
            value = node.inputs[i]
            if value is not None and (value.const_value is None or value.is_graph_input()):
                return storage.get(value, FLOAT)
    return FLOAT


def _weight_in(graph: ir.Graph, value: ir.Value, want: ir.DataType, counts: dict[str, int]) -> ir.Value:
    """The weight in type `want`: itself, or a converted copy shared by all such users."""
    if value.dtype == want or value.dtype not in (FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        return value
    name = f"{value.name}__{want.name.lower()}"
    if name in graph.initializers:
        return graph.initializers[name]
    counts["weights-converted"] += 1
    with np.errstate(over="ignore"):  # out-of-range weights only reach here when forced
        converted = map_elements(value.const_value, lambda data: data.astype(np.float32).astype(want.numpy()))
    return add_constant(graph, converted, name)


def _cast(graph: ir.Graph, value: ir.Value, want: ir.DataType, casts: dict, counts: dict[str, int]) -> ir.Value:
    key = (value, want)
    if key in casts:
        return casts[key]
    producer = value.producer()
    # Cast(Cast(x: want -> wider) -> want) is x: use it, leave no cast pair.
    if producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None \
            and producer.inputs[0].dtype == want and value.dtype == FLOAT:
        casts[key] = producer.inputs[0]
        return producer.inputs[0]
    cast = ir.node("Cast", [value], {"to": want}, name=f"{value.name}__to_{want.name.lower()}")
    cast.outputs[0].name = f"{value.name}__{want.name.lower()}"
    cast.outputs[0].type = ir.TensorType(want)  # new object: types may be shared
    cast.outputs[0].shape = value.shape
    if producer is not None:
        graph.insert_after(producer, cast)
    else:
        graph.insert_before(next(iter(graph)), cast)
    counts["casts"] += 1
    casts[key] = cast.outputs[0]
    return cast.outputs[0]


def _cast_output(graph: ir.Graph, value: ir.Value, counts: dict[str, int]) -> ir.Value:
    """Cast a low-precision graph output back to fp32 under its own name."""
    name = value.name
    value.name = f"{name}__low"
    cast = ir.node("Cast", [value], {"to": FLOAT}, name=f"{name}__to_float")
    cast.outputs[0].name = name
    cast.outputs[0].type = ir.TensorType(FLOAT)  # new object: types may be shared
    cast.outputs[0].shape = value.shape
    graph.insert_after(value.producer(), cast)
    counts["casts"] += 1
    return cast.outputs[0]
