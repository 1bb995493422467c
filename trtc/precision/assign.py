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
4. If/Loop/Scan bodies are typed like the main graph, node by node, from the values observed
   inside them. Their interfaces keep the types the If/Loop/Scan declares: the node's own inputs
   and outputs, the bodies' inputs and outputs (so both branches of an If return what the If
   declares, and a loop-carried value has one type in every iteration). A body output stored in
   the target type gets a Cast inside the body; a value a body reads from the outer scope is cast
   where it is defined (once, outside a loop), like any other value. A body that did not run on
   the calibration data, or could not be observed, stays fp32 with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from trtc.ir.converted import converted
from trtc.ir.rewrite import STANDARD_DOMAINS, add_constant
from trtc.ir.walk import all_graphs, has_subgraphs, subgraph_attrs
from trtc.precision.rules import RuleContext, forced_fp16, keep_reason, user_keep
from trtc.precision.subgraphs import graph_values, is_control_flow

FLOAT = ir.DataType.FLOAT
HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "Einsum", "LSTM", "GRU", "RNN"}
TARGETS = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


@dataclasses.dataclass
class Assignment:
    """Per node name: 'low' (target type), 'fp32', 'follow' (reads floats, computes none:
    takes its inputs' type), 'boundary' (an If/Loop/Scan: its inputs and outputs keep their
    declared types, its bodies are typed node by node), or None (no float values at all, or a
    Constant: a weight, converted for the consumers that want it in the target type)."""

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


def all_nodes(model: ir.Model) -> list[ir.Node]:
    """The nodes of the main graph and of every body, outermost graph first."""
    return [node for graph in all_graphs(model.graph) for node in graph]


def assign(model: ir.Model, ctx: RuleContext) -> Assignment:
    """Decide a compute type for every node, in the main graph and in every body (no graph
    change yet)."""
    compute: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    opset = _opset(model)
    forced = {n.name for n in all_nodes(model) if forced_fp16(n, ctx.options) and user_keep(n, ctx) is None}
    for node, body_reason in _walk(model.graph, None, ctx, opset):
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            compute[node.name] = None
        elif is_control_flow(node, opset):
            compute[node.name] = "boundary"
        elif not _float_node(node):
            compute[node.name] = None
        elif (reason := body_reason or _untyped(node)) is not None:
            compute[node.name] = "fp32"
            reasons[node.name] = reason
        elif not any(v.dtype == FLOAT for v in node.outputs):
            compute[node.name] = "follow"
        elif (reason := keep_reason(node, ctx)) is not None or _schema(node, opset) is None:
            compute[node.name] = "fp32"
            reasons[node.name] = reason or f"no ONNX schema for {node.domain}::{node.op_type}"
        elif has_subgraphs(node):
            compute[node.name] = "fp32"
            reasons[node.name] = f"{node.op_type} has subgraphs (only If, Loop and Scan bodies are typed)"
        else:
            compute[node.name] = "low"
    _smooth_islands(model, compute, set(reasons) | forced)
    return Assignment(compute, reasons, forced)


def _walk(graph: ir.Graph, reason: str | None, ctx: RuleContext, opset: int):
    """(node, why its body keeps it fp32 or None) for every node under `graph`."""
    for node in graph:
        yield node, reason
        for attr, body in subgraph_attrs(node):
            own = body_reason(node, body, ctx, opset)
            yield from _walk(body, reason or (own and f"inside {attr} of {node.op_type} {node.name!r}: {own}"),
                             ctx, opset)


def body_reason(node: ir.Node, body: ir.Graph, ctx: RuleContext, opset: int) -> str | None:
    """Why a body of `node` cannot be typed safely (all its nodes stay fp32), or None."""
    if not is_control_flow(node, opset):
        return "only If, Loop and Scan bodies are typed"
    if (kept := user_keep(node, ctx)) is not None:
        return f"the {kept} keeps the {node.op_type} and its bodies"
    if ctx.obs.body_error is not None:
        return f"values inside bodies could not be observed: {ctx.obs.body_error}"
    names = [v.name for v in graph_values(body) if v.name and isinstance(v.type, ir.TensorType)]
    if names and not any(ctx.obs.runs.get(name, 0) for name in names):
        # No value seen, no range known: the rules could not tell whether fp16 is safe.
        return "it did not run on the calibration data (calibrate with inputs that take it)"
    return None


def _untyped(node: ir.Node) -> str | None:
    """Why a node's types are not all known tensors (it is then left as it is), or None."""
    for value in [*node.outputs, *(v for v in node.inputs if v is not None)]:
        if value.type is None and value.name:
            return f"the type of {value.name!r} is unknown"
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            return f"{value.name!r} is a {type(value.type).__name__.removesuffix('Type').lower()}, not a tensor"
    return None


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", 18)


def _neighbours(node: ir.Node, compute: dict[str, str | None]) -> Iterable[str | None]:
    """Compute types around `node`; graph (and body) inputs and outputs, and If/Loop/Scan
    nodes, count as fp32: that is the type they keep."""
    def of(other: ir.Node) -> str | None:
        own = compute.get(other.name)
        return "fp32" if own == "boundary" else own

    for value in node.inputs:
        if value is not None and value.dtype == FLOAT and value.const_value is None:
            producer = value.producer()
            yield of(producer) if producer is not None else "fp32"
    for value in node.outputs:
        if value.dtype == FLOAT:
            if value.is_graph_output():
                yield "fp32"
            for user in value.consumers():
                yield of(user)


def _smooth_islands(model: ir.Model, compute: dict[str, str | None], pinned: set[str]) -> None:
    nodes = all_nodes(model)
    changed = True
    while changed:
        changed = False
        for node in nodes:
            own = compute[node.name]
            if own not in ("low", "fp32") or node.name in pinned or node.op_type in HEAVY:
                continue
            around = {t for t in _neighbours(node, compute) if t in ("low", "fp32")}
            if len(around) == 1 and own not in around:
                compute[node.name] = around.pop()
                changed = True


def apply(model: ir.Model, assignment: Assignment, target: str, cast_io: bool) -> dict[str, int]:
    """Rewrite the graph into the explicitly typed form; return counts of what was inserted."""
    low = TARGETS[target]
    graph = model.graph
    opset = _opset(model)
    bodies = list(all_graphs(graph))[1:]
    nodes = all_nodes(model)
    # Which inputs follow the compute type is read off the fp32 graph, before any retyping.
    typed = {node: _typed_indices(node, opset, assignment.compute.get(node.name)) for node in nodes}
    declared = {id(body): [v.dtype for v in body.outputs] for body in bodies}  # what the If/Loop/Scan says
    elements = {value for node in nodes if node.op_type == "Scan" and is_control_flow(node, opset)
                for value in node.attributes["body"].value.inputs[
                    len(node.inputs) - node.attributes.get_int("num_scan_inputs"):]}
    storage: dict[ir.Value, ir.DataType] = {}
    for value in graph.inputs:
        if value.dtype == FLOAT:
            storage[value] = low if cast_io else FLOAT
            if cast_io:
                value.type = ir.TensorType(low)  # new object: types may be shared
    # Outputs of nodes computing in the target type are stored in it.
    for node in nodes:
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
    for node in nodes:
        indices = typed[node]
        want = _wanted(assignment.compute.get(node.name), node, indices, storage, low)
        for index in indices:
            value = node.inputs[index]
            if value is None:
                continue
            if value.const_value is not None and not value.is_graph_input():
                node.replace_input_with(index, _weight_in(value.graph or graph, value, want, counts))
                continue
            if _constant_node(value) is not None:
                node.replace_input_with(index, _constant_in(value, want, casts, counts))
                continue
            have = storage.get(value, FLOAT)
            if have != want:
                node.replace_input_with(index, _cast(value.graph or node.graph, value, want, casts, counts,
                                                     element=value in elements))
    if not cast_io:
        for i, value in enumerate(list(graph.outputs)):
            if value.dtype == low:
                graph.outputs[i] = _cast_output(graph, value, counts)
    for body in bodies:
        for i, (value, want) in enumerate(zip(list(body.outputs), declared[id(body)], strict=True)):
            if value.dtype != want:
                body.outputs[i] = _cast_body_output(body, i, value, want, counts)
    return counts


def _typed_indices(node: ir.Node, opset: int, compute: str | None) -> list[int]:
    """The inputs whose type the node's compute type decides; every float input of an If/Loop/Scan
    (its declared type) and of a node left as it is (untyped or not tensors: left fp32)."""
    if compute == "boundary" or (compute == "fp32" and _untyped(node) is not None):
        return [i for i, v in enumerate(node.inputs) if v is not None and v.dtype == FLOAT]
    return typed_inputs(node, opset)


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
    # Converted when read (trtc.ir.converted): a big model's copies would sit beside its fp32 weights.
    return add_constant(graph, converted(value.const_value, want, name), name)


def _constant_node(value: ir.Value) -> ir.Node | None:
    """The Constant node (a weight inside a body) that produces a float `value`, if one does."""
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain not in STANDARD_DOMAINS:
        return None
    return producer if value.dtype in (FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16) else None


def _constant_array(node: ir.Node) -> np.ndarray | None:
    attrs = node.attributes
    if "value" in attrs:
        return attrs["value"].value.numpy()
    if "value_float" in attrs:
        return np.array(attrs["value_float"].value, np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"].value, np.float32)
    return None


def _constant_in(value: ir.Value, want: ir.DataType, casts: dict, counts: dict[str, int]) -> ir.Value:
    """A Constant node's value in type `want`: itself, or a converted Constant beside it, shared
    by all such users (a Cast would convert it again on every run of a loop body)."""
    producer = _constant_node(value)
    array = _constant_array(producer) if producer is not None else None
    if value.dtype == want or array is None:
        return value if value.dtype == want else _cast(value.graph, value, want, casts, counts)
    key = (value, want)
    if key not in casts:
        with np.errstate(over="ignore"):  # out-of-range constants only reach here when forced
            data = array.astype(np.float32).astype(want.numpy())
        name = f"{value.name}__{want.name.lower()}"
        node = ir.node("Constant", [], {"value": ir.tensor(data, name=name)},
                       name=f"{producer.name}__{want.name.lower()}")
        node.outputs[0].name = name
        node.outputs[0].type, node.outputs[0].shape = ir.TensorType(want), value.shape
        producer.graph.insert_after(producer, node)
        counts["weights-converted"] += 1
        casts[key] = node.outputs[0]
    return casts[key]


def _cast(graph: ir.Graph, value: ir.Value, want: ir.DataType, casts: dict, counts: dict[str, int],
          element: bool = False) -> ir.Value:
    """`value` in type `want`, cast once where `value` is defined (`graph`: where it is a graph
    input), so every reader sees the cast, the readers in bodies included. `element`: `value` is
    the element a Scan body gets per iteration, which is cast through an Identity: TensorRT-RTX
    1.7's builder fails (a Myelin CHECK in tactics_tiled_layout) on a cast layer that reads an
    ILoop iterator directly, and builds the same cast behind an identity layer."""
    key = (value, want)
    if key in casts:
        return casts[key]
    producer = value.producer()
    # Cast(Cast(x: want -> wider) -> want) is x: use it, leave no cast pair.
    if producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None \
            and producer.inputs[0].dtype == want and value.dtype == FLOAT:
        casts[key] = producer.inputs[0]
        return producer.inputs[0]
    source = value
    if element:
        identity = ir.node("Identity", [value], name=f"{value.name}__element")
        source = identity.outputs[0]
        source.name, source.type, source.shape = f"{value.name}__element", value.type, value.shape
        graph.insert_before(next(iter(graph)), identity)
    cast = ir.node("Cast", [source], {"to": want}, name=f"{value.name}__to_{want.name.lower()}")
    cast.outputs[0].name = f"{value.name}__{want.name.lower()}"
    cast.outputs[0].type = ir.TensorType(want)  # new object: types may be shared
    cast.outputs[0].shape = value.shape
    if producer is not None:
        producer.graph.insert_after(producer, cast)
    elif element:
        graph.insert_after(source.producer(), cast)
    else:
        graph.insert_before(next(iter(graph)), cast)
    counts["casts"] += 1
    casts[key] = cast.outputs[0]
    return cast.outputs[0]


def _cast_output(graph: ir.Graph, value: ir.Value, counts: dict[str, int]) -> ir.Value:
    """Cast a low-precision graph output back to fp32 under its own name."""
    name = value.name
    value.name = f"{name}__low"
    cast = ir.node("Cast", [value], {"to": FLOAT}, name=f"{name}__output_to_float")
    cast.outputs[0].name = name
    cast.outputs[0].type = ir.TensorType(FLOAT)  # new object: types may be shared
    cast.outputs[0].shape = value.shape
    graph.insert_after(value.producer(), cast)
    counts["casts"] += 1
    return cast.outputs[0]


def _cast_body_output(body: ir.Graph, index: int, value: ir.Value, want: ir.DataType,
                      counts: dict[str, int]) -> ir.Value:
    """Output `index` of `body` in the type its If/Loop/Scan declares, cast inside the body (the
    value may be defined outside it, or read by other nodes in its stored type)."""
    cast = ir.node("Cast", [value], {"to": want}, name=f"{value.name}__out{index}_to_{want.name.lower()}")
    cast.outputs[0].name = f"{value.name}__out{index}_{want.name.lower()}"
    cast.outputs[0].type = ir.TensorType(want)  # new object: types may be shared
    cast.outputs[0].shape = value.shape
    body.append(cast)
    counts["casts"] += 1
    return cast.outputs[0]
