"""Control flow: If -> the taken branch (constant condition) or IIfConditional; Loop and Scan ->
ILoop (trip limit, iterators, recurrences, last-value and concatenated outputs); Constant (left
in subgraphs, where constants are not initializers). Subgraph nodes are lowered with the same
converters as the main graph, and checked by them: one unsupported node refuses the whole op.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.frontend.canonicalize.inline_if import freeze_hint
from trtc.lower.ops.attention import given
from trtc.lower.registry import Constraint, converter, find_converter, support_issue, tensor_types

DEFAULT_OPSET = 18


def _opset(node: ir.Node) -> int:
    imports = node.graph.opset_imports if node.graph is not None else {}
    return imports.get("", imports.get("ai.onnx", DEFAULT_OPSET))


def subgraph_issue(node: ir.Node, backend: str) -> str | None:
    """Why a node of one of `node`'s subgraphs (at any depth) cannot be lowered by `backend`."""
    opset = _opset(node)
    for attr in node.attributes.values():
        if attr.type != ir.AttributeType.GRAPH:
            continue
        for inner in attr.value:
            reason = support_issue(inner, opset, backend)
            if reason is not None:
                return f"{attr.name} node {inner.name or inner.op_type!r} ({inner.op_type}): {reason}"
    return None


def subgraphs_supported() -> Constraint:
    return Constraint("every subgraph node supported", subgraph_issue, on_backend=True)


def lower_subgraph(ctx, graph: ir.Graph, opset: int) -> list:
    """Lower `graph`'s nodes into the network (its inputs already bound); its output tensors. Every
    node has a converter (`subgraphs_supported` checked it); an error names the node it is about."""
    outer_node = ctx.node
    with ctx.constant_scope():
        for node in graph:
            ctx.node = node
            try:
                outputs = find_converter(node, opset).fn(ctx, node)
            except TrtcError as exc:
                raise TrtcError(f"subgraph node {node.name!r} ({node.op_type}): {exc.message}") from None
            for value, tensor in zip(node.outputs, outputs, strict=False):
                if tensor is not None and value.name:
                    ctx.bind(value, tensor)
        ctx.node = outer_node
        return [ctx.tensor(value) for value in graph.outputs]


def scalar_of(ctx, tensor):
    """A one-element tensor as a 0-D one (conditions and trip counts must be scalars)."""
    return tensor if ctx.rank(tensor) == 0 else ctx.reshape(tensor, [])


def identity(ctx, tensor):
    return ctx.check(ctx.network.add_identity(tensor)).get_output(0)


# ------------------------------------------------------------------ Constant


def _check_constant(node: ir.Node) -> str | None:
    names = set(node.attributes)
    if names & {"sparse_value", "value_string", "value_strings"}:
        return f"Constant with {sorted(names)[0]} is not supported"
    return None


@converter("Constant", constraints=[tensor_types(), Constraint("dense numeric value", _check_constant)])
def lower_constant(ctx, node):
    """Constant (value, value_float(s), value_int(s)) -> a constant layer."""
    attrs = node.attributes
    if "value" in attrs:
        array = attrs["value"].value.numpy()
    elif "value_float" in attrs or "value_floats" in attrs:
        array = np.array(attrs["value_float"].value if "value_float" in attrs else attrs["value_floats"].value,
                         np.float32)
    else:
        array = np.array(attrs["value_int"].value if "value_int" in attrs else attrs["value_ints"].value, np.int64)
    return [array]  # data: a constant layer is made where a consumer needs a tensor (`LowerCtx.known`)


# ------------------------------------------------------------------ If


def _check_if(node: ir.Node) -> str | None:
    cond = node.inputs[0]
    if cond.const_value is not None and not cond.is_graph_input():
        return None  # only the taken branch is built, so the branches may differ
    then_out, else_out = (node.attributes[name].value.outputs for name in ("then_branch", "else_branch"))
    for a, b in zip(then_out, else_out, strict=True):
        if a.shape is None or b.shape is None or a.shape.rank() != b.shape.rank():
            return (f"the branches' outputs {a.name!r} and {b.name!r} must have the same known rank; "
                    f"{freeze_hint(node)}")
        if any(x != y for x, y in zip(a.shape.dims, b.shape.dims)):
            return (f"with a run-time condition, TensorRT needs the branches' outputs to have the same shape "
                    f"({a.name!r} {a.shape} vs {b.name!r} {b.shape}); {freeze_hint(node)}")
    return None


@converter("If", constraints=[tensor_types(), subgraphs_supported(), Constraint("branches of one shape", _check_if)])
def lower_if(ctx, node):
    """If: a constant condition inlines the taken branch; a run-time one builds both branches
    inside an IIfConditional (TensorRT runs only the taken one)."""
    opset = _opset(node)
    then_graph, else_graph = node.attributes["then_branch"].value, node.attributes["else_branch"].value
    constant = ctx.const(node.inputs[0])
    if constant is not None:
        return lower_subgraph(ctx, then_graph if bool(constant.reshape(-1)[0]) else else_graph, opset)
    conditional = ctx.network.add_if_conditional()
    ctx.check(conditional.set_condition(scalar_of(ctx, ctx.tensor(node.inputs[0]))))
    # Identities keep each output inside its branch (a branch may return an outer tensor as is).
    then_out = [identity(ctx, t) for t in lower_subgraph(ctx, then_graph, opset)]
    else_out = [identity(ctx, t) for t in lower_subgraph(ctx, else_graph, opset)]
    return [ctx.check(conditional.add_output(t, e)).get_output(0) for t, e in zip(then_out, else_out, strict=True)]


# ------------------------------------------------------------------ Loop


def _is_true(value: ir.Value | None) -> bool:
    """An absent condition or a constant true one."""
    if value is None or value.name == "":
        return True
    if value.const_value is None or value.is_graph_input():
        return False
    return bool(np.asarray(value.const_value.numpy()).reshape(-1)[0])


def _cond_unchanged(node: ir.Node) -> bool:
    """The body returns its condition input unchanged (directly, through Identity, or a constant
    true when the loop starts true), so only the trip count stops the loop."""
    body = node.attributes["body"].value
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    producer = cond_out.producer()
    if cond_out is cond_in or (producer is not None and producer.op_type == "Identity"
                               and producer.inputs[0] is cond_in):
        return True
    return _is_true(cond_out) and _is_true(node.inputs[1] if len(node.inputs) > 1 else None)


def _check_loop(node: ir.Node) -> str | None:
    body = node.attributes["body"].value
    has_count = given(node.inputs, 0)
    unchanged = _cond_unchanged(node)
    if not has_count and unchanged and _is_true(node.inputs[1] if len(node.inputs) > 1 else None):
        return "a Loop with no trip count M and a condition that never turns false never ends"
    scan_outputs = len(body.outputs) - len(node.inputs) + 1
    if scan_outputs and not (has_count and unchanged and _is_true(node.inputs[1] if len(node.inputs) > 1 else None)):
        return ("scan outputs need a trip count M, a condition that is absent or constant true, and a body "
                "that keeps it (TensorRT sizes concatenated outputs before the loop runs)")
    return None


@converter("Loop", constraints=[tensor_types(), subgraphs_supported(), Constraint("bounded loop", _check_loop)])
def lower_loop(ctx, node):
    """Loop(M, cond, v...) -> ILoop: a COUNT trip limit on M, a WHILE limit on a recurrence of the
    condition (unless it is constant true), recurrences for the iteration number and the carried
    values (last values out), scan outputs concatenated along a new axis 0 (M of them)."""
    E, trt = ctx.trt.ElementWiseOperation, ctx.trt
    body = node.attributes["body"].value
    loop = ctx.network.add_loop()
    count = ctx.cast(scalar_of(ctx, ctx.tensor(node.inputs[0])), trt.int64) if given(node.inputs, 0) else None
    if count is not None:
        # A negative M runs no iteration (onnxruntime's reading); TensorRT would size scan outputs by it.
        count = ctx.elementwise(count, ctx.constant(np.zeros((), np.int64)), E.MAX)
        ctx.check(loop.add_trip_limit(count, trt.TripLimit.COUNT))
    true = ctx.constant(np.ones((), np.bool_))
    always = _is_true(node.inputs[1] if len(node.inputs) > 1 else None) and _cond_unchanged(node)
    cond_recurrence = None
    if not always:
        start = scalar_of(ctx, ctx.tensor(node.inputs[1])) if given(node.inputs, 1) else true
        cond_recurrence = ctx.check(loop.add_recurrence(start))
        ctx.check(loop.add_trip_limit(cond_recurrence.get_output(0), trt.TripLimit.WHILE))
    counter = ctx.check(loop.add_recurrence(ctx.constant(np.zeros((), np.int64))))
    one = ctx.constant(np.ones((), np.int64))
    counter.set_input(1, ctx.elementwise(counter.get_output(0), one, E.SUM))
    carried = [ctx.check(loop.add_recurrence(ctx.tensor(v))) for v in node.inputs[2:]]
    ctx.tensors[body.inputs[0]] = counter.get_output(0)
    ctx.tensors[body.inputs[1]] = cond_recurrence.get_output(0) if cond_recurrence is not None else true
    for value, recurrence in zip(body.inputs[2:], carried, strict=True):
        ctx.tensors[value] = recurrence.get_output(0)
    outputs = lower_subgraph(ctx, body, _opset(node))
    if cond_recurrence is not None:
        cond_recurrence.set_input(1, scalar_of(ctx, outputs[0]))
    for recurrence, value in zip(carried, outputs[1:], strict=False):
        recurrence.set_input(1, value)
    results = [ctx.check(loop.add_loop_output(r.get_output(0), trt.LoopOutput.LAST_VALUE)).get_output(0)
               for r in carried]
    for value in outputs[1 + len(carried):]:
        layer = ctx.check(loop.add_loop_output(value, trt.LoopOutput.CONCATENATE, 0))
        layer.set_input(1, count)
        results.append(layer.get_output(0))
    return results


# ------------------------------------------------------------------ Scan


@converter("Scan", since=9, constraints=[tensor_types(), subgraphs_supported()])
def lower_scan(ctx, node):
    """Scan -> ILoop: iterators over the scan inputs (axis, direction), recurrences for the state
    variables (last values out), scan outputs concatenated (or reversed) along their axes."""
    trt = ctx.trt
    body = node.attributes["body"].value
    attrs = node.attributes
    scans = attrs.get_int("num_scan_inputs")
    states = len(node.inputs) - scans
    in_axes = list(attrs.get_ints("scan_input_axes", [0] * scans))
    in_reverse = list(attrs.get_ints("scan_input_directions", [0] * scans))
    outputs_count = len(body.outputs) - states
    out_axes = list(attrs.get_ints("scan_output_axes", [0] * outputs_count))
    out_reverse = list(attrs.get_ints("scan_output_directions", [0] * outputs_count))
    loop = ctx.network.add_loop()
    first = ctx.tensor(node.inputs[states])
    axis0 = ctx.axis(in_axes[0], ctx.rank(first))
    length = ctx.check(ctx.network.add_slice(ctx.shape_of(first), (axis0,), (1,), (1,))).get_output(0)
    length = ctx.reshape(length, [])
    ctx.check(loop.add_trip_limit(length, trt.TripLimit.COUNT))
    recurrences = [ctx.check(loop.add_recurrence(ctx.tensor(v))) for v in node.inputs[:states]]
    for value, recurrence in zip(body.inputs[:states], recurrences, strict=True):
        ctx.tensors[value] = recurrence.get_output(0)
    for k, (value, inner) in enumerate(zip(node.inputs[states:], body.inputs[states:], strict=True)):
        tensor = ctx.tensor(value)
        iterator = ctx.check(loop.add_iterator(tensor, ctx.axis(in_axes[k], ctx.rank(tensor)), bool(in_reverse[k])))
        ctx.tensors[inner] = iterator.get_output(0)
    outputs = lower_subgraph(ctx, body, _opset(node))
    for recurrence, value in zip(recurrences, outputs[:states], strict=True):
        recurrence.set_input(1, value)
    results = [ctx.check(loop.add_loop_output(r.get_output(0), trt.LoopOutput.LAST_VALUE)).get_output(0)
               for r in recurrences]
    for k, value in enumerate(outputs[states:]):
        kind = trt.LoopOutput.REVERSE if out_reverse[k] else trt.LoopOutput.CONCATENATE
        layer = ctx.check(loop.add_loop_output(value, kind, ctx.axis(out_axes[k], ctx.rank(value) + 1)))
        layer.set_input(1, length)
        results.append(layer.get_output(0))
    return results
