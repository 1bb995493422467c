"""`If` with a constant condition -> the nodes of the branch it takes, in the parent graph.

    sr: initializer 16000 (--freeze sr=16000)           sr: (gone: nothing reads it)
    c = Equal(Gather(Reshape(sr, s), 0), 16000)   -->   a = Conv(x, w_then) ...
    y = If(c) {then: a = Conv(x, w_then) ... y_t = ...;  y = ...            (y_t renamed y)
               else: a = Conv(x, w_else) ... y_e = ...}

Exporters write `If` for what is fixed at deployment (a sample rate, an opset-dependent
path, a shape test); once the condition is known the dead branch must not block the
build or the support check, nor be checked for TensorRT's equal-rank rule. The condition
is constant when it is an initializer, or computed by a few small standard nodes from
initializers only (evaluated here with `onnx.reference`), so a frozen input triggers the
rule at parse without the optimizer. The same code runs as the optimizer pass
`inline-constant-if` (trtc/passes/inline_constant_if.py), after folding has made a condition
constant. Nested Ifs are inlined level by level until none is left with a constant
condition.

`condition_inputs` names the graph inputs a run-time condition depends on: what to freeze.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from trtc.frontend.canonicalize import canonical_rule
from trtc.ir.rewrite import STANDARD_DOMAINS, is_op
from trtc.ir.walk import all_graphs, subgraphs

# A condition is evaluated only from this few nodes and this small constants: exporters compute
# it from scalars, and evaluating a large constant region is the optimizer's folding's work.
MAX_CONDITION_NODES = 32
MAX_CONDITION_ELEMENTS = 4096
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                     "Multinomial"})


def _constant_array(value: ir.Value) -> np.ndarray | None:
    """An initializer's data (an overridable graph input is not a constant)."""
    if value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def _condition_cone(cond: ir.Value) -> list[ir.Node] | None:
    """The nodes computing `cond` from constants only (topological order), or None when it reads
    anything else, or is too large to evaluate here."""
    cone: dict[ir.Node, None] = {}
    pending = [cond]
    while pending:
        value = pending.pop()
        if value.const_value is not None and not value.is_graph_input():
            if value.const_value.size > MAX_CONDITION_ELEMENTS:
                return None  # (checked before anything reads a memory-mapped weight)
            continue
        node = value.producer()
        if node is None:
            return None  # a graph input (or a Loop body's iteration value): known at run time only
        if node in cone:
            continue
        if (node.domain not in STANDARD_DOMAINS or node.op_type in _RANDOM or any(subgraphs(node))
                or len(cone) >= MAX_CONDITION_NODES):
            return None
        cone[node] = None
        pending.extend(v for v in node.inputs if v is not None)
    # Walking backwards met nodes consumers first: order them producers first (a few nodes only).
    order: list[ir.Node] = []
    placed: set[ir.Node] = set()
    remaining = list(cone)
    while remaining:
        ready = [n for n in remaining if all(v is None or v.producer() not in cone or v.producer() in placed
                                             for v in n.inputs)]
        if not ready:
            return None
        for node in ready:
            order.append(node)
            placed.add(node)
            remaining.remove(node)
    return order


def _evaluate(cone: list[ir.Node], cond: ir.Value, opsets: Mapping[str, int]) -> np.ndarray | None:
    """`cond` computed by `cone` with `onnx.reference` (tiny graphs: no session to set up)."""
    import onnx.reference  # ~0.2 s, paid only by models with such a condition

    produced = {v for n in cone for v in n.outputs}
    initializers: dict[str, onnx.TensorProto] = {}
    for node in cone:
        for value in node.inputs:
            if value is not None and value not in produced and value.name not in initializers:
                tensor = ir.serde.serialize_tensor(value.const_value)
                tensor.name = value.name
                initializers[value.name] = tensor
    graph = helper.make_graph([ir.serde.serialize_node(n) for n in cone], "condition", [],
                              [onnx.ValueInfoProto(name=cond.name)], list(initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    try:
        return np.asarray(onnx.reference.ReferenceEvaluator(model).run([cond.name], {})[0])
    except Exception:  # an op or case the reference does not cover: the If stays; folding may still decide
        return None


def constant_condition(node: ir.Node, opsets: Mapping[str, int] | None = None) -> bool | None:
    """The value of `node`'s condition when it is constant (see the module docstring), else None."""
    cond = node.inputs[0] if node.inputs else None
    if cond is None:
        return None
    array = _constant_array(cond)
    if array is None and cond.name:
        cone = _condition_cone(cond)
        if cone:
            array = _evaluate(cone, cond, opsets or {"": 18})
    if array is None or array.size != 1:
        return None
    return bool(array.reshape(-1)[0])


def _names(graph: ir.Graph) -> Iterator[str]:
    """Names of the values `graph` and its subgraphs define."""
    for g in all_graphs(graph):
        for value in (*g.inputs, *g.initializers.values()):
            if value.name:
                yield value.name
        for node in g:
            yield from (v.name for v in node.outputs if v.name)


def _fresh(name: str, taken: Counter[str]) -> str:
    base, i = name, 1
    while taken[name]:
        name, i = f"{base}_{i}", i + 1
    return name


def _detach(graph: ir.Graph) -> None:
    """Drop the uses that nodes of `graph` (and of its subgraphs) make of other values, so that
    discarding the graph leaves no reader behind (outer values must not look read)."""
    for g in all_graphs(graph):
        for node in g:
            for i, value in enumerate(node.inputs):
                if value is not None:
                    node.replace_input_with(i, None)


def _detach_node(node: ir.Node) -> None:
    """`_detach` for the subgraphs of a node about to be removed (its own inputs go with `remove`)."""
    for sub in subgraphs(node):
        _detach(sub)


def _better_shape(a: ir.Shape | None, b: ir.Shape | None) -> ir.Shape | None:
    """Of the If output's shape `a` and the taken branch's `b`, the one with more known dims (`a` on
    a tie); `b` when their ranks differ, since the branch is what now computes the value."""
    if a is None or b is None:
        return a if a is not None else b
    if len(a) != len(b):
        return b

    def known(shape: ir.Shape) -> int:
        return sum(isinstance(d, int) or bool(d.value) for d in shape.dims)

    return b if known(b) > known(a) else a


def inline_branch(node: ir.Node, taken: bool, names: Counter[str]) -> None:
    """Replace If `node` by the nodes of its then (`taken`) or else branch.

    The branch's initializers and nodes move into `node`'s graph before it; its outputs take the
    names of the If's outputs (an output the branch does not compute itself, an outer value or
    a constant, goes through an Identity); the other branch is dropped. `names` counts the
    names defined in the model and is kept up to date (a moved name that another graph also
    defines is renamed: a subgraph must not redefine an outer name)."""
    graph = node.graph
    branch = node.attributes["then_branch" if taken else "else_branch"].value
    dead = node.attributes["else_branch" if taken else "then_branch"].value
    names.subtract(_names(dead))
    _detach(dead)
    outputs = list(branch.outputs)
    branch.outputs.clear()  # the moved values stop being graph outputs of the branch
    for value in list(branch.initializers.values()):
        branch.initializers.pop(value.name)
        if names[value.name] > 1:
            names[value.name] -= 1
            value.name = _fresh(value.name, names)
            value.const_value.name = value.name
            names[value.name] += 1
        graph.register_initializer(value)
    moved = list(branch)
    for inner in moved:
        branch.remove(inner)
        for value in inner.outputs:
            if value.name and names[value.name] > 1:
                names[value.name] -= 1
                value.name = _fresh(value.name, names)
                names[value.name] += 1
        graph.insert_before(node, inner)
    computed = {v for inner in moved for v in inner.outputs}
    renamed: set[ir.Value] = set()
    for if_out, br_out in zip(node.outputs, outputs, strict=True):
        dtype = if_out.type or br_out.type
        shape = _better_shape(if_out.shape, br_out.shape)
        name = if_out.name
        if br_out in computed and br_out not in renamed and not br_out.is_graph_output():
            # The branch computes this output itself: its value becomes the If's output.
            renamed.add(br_out)
            if_out.name = None
            if br_out.name:
                names[br_out.name] -= 1  # the If's output's name replaces it
            br_out.name = name
            result = br_out
        else:
            if_out.name = None
            result = ir.Value(name=name)
            graph.insert_before(node, ir.Node("", "Identity", [br_out], outputs=[result],
                                              name=f"{node.name or 'If'}/{name}"))
        result.type, result.shape = dtype, shape
        if_out.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(node, safe=True)  # (safe: also stops it reading its condition)


def _drop_unread(values: Iterable[ir.Value]) -> None:
    """Remove what only the inlined If read: of `values` and, going up, their producers, the nodes
    whose outputs nobody reads any more and the initializers nobody reads (graph inputs and
    outputs stay). The condition's nodes and the weights of the dropped branch go this way."""
    pending = [v for v in values if v is not None]
    while pending:
        value = pending.pop()
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.is_initializer():
            if value.graph is not None and value.graph.initializers.get(value.name) is value:
                value.graph.initializers.pop(value.name)
            continue
        node = value.producer()
        if node is None or node.graph is None or any(v.uses() or v.is_graph_output() for v in node.outputs):
            continue
        inputs = [v for v in node.inputs if v is not None]
        inputs.extend(_outer_reads(node))
        _detach_node(node)
        node.graph.remove(node, safe=True)
        pending.extend(inputs)


def inline_constant_ifs(model: ir.Model) -> int:
    """Inline every If of `model` (any graph, nested ones too) whose condition is constant; return
    how many were inlined."""
    names: Counter[str] | None = None  # counted once, when the first If is inlined
    opsets = dict(model.opset_imports)
    count = 0
    changed = True
    while changed:
        changed = False
        for graph in list(all_graphs(model.graph)):
            for node in list(graph):
                if node.graph is not graph or not is_op(node, "If"):
                    continue
                taken = constant_condition(node, opsets)
                if taken is None:
                    continue
                if names is None:
                    names = Counter(_names(model.graph))
                read = [node.inputs[0], *_outer_reads(node)]
                inline_branch(node, taken, names)
                _drop_unread(read)
                count += 1
                changed = True
    return count


@canonical_rule
def inline_constant_if(model: ir.Model) -> int:
    """`If` with a constant condition (an initializer, or computed from initializers only) ->
    the taken branch's nodes."""
    return inline_constant_ifs(model)


def _owners(root: ir.Graph) -> dict[ir.Graph, ir.Node]:
    """The node holding each subgraph of `root`."""
    owners = {}
    for graph in all_graphs(root):
        for node in graph:
            for sub in subgraphs(node):
                owners[sub] = node
    return owners


def condition_dependencies(node: ir.Node, root: ir.Graph | None = None) -> dict[str, str]:
    """The graph inputs that the condition of If `node` depends on, in the order first met, each
    with how: "value" (its data decides; freeze it) or "shape" (only its shape does, through
    Shape/Size: a fixed shape decides, which freezing cannot give).

    With `root` (the model's main graph), an input of a Loop/Scan body is followed to the value
    the Loop/Scan node feeds it, so the names are inputs of the main graph; without it, such a
    body input is named itself. Values read inside a producer's subgraphs count too."""
    owners = _owners(root) if root is not None else {}
    found: dict[str, str] = {}
    seen: set[tuple[ir.Value, bool]] = set()
    cond = node.inputs[0] if node.inputs else None
    pending: list[tuple[ir.Value, bool]] = [(cond, False)] if cond is not None else []
    while pending:
        value, shape_only = pending.pop()
        if (value, shape_only) in seen:
            continue
        seen.add((value, shape_only))
        if value.is_graph_input():
            owner = owners.get(value.graph)
            if owner is not None and owner.op_type in ("Loop", "Scan"):
                pending.extend((v, shape_only) for v in _fed_by(owner, value))
            elif value.name and found.get(value.name) != "value":
                found[value.name] = "shape" if shape_only else "value"
            continue
        producer = value.producer()
        if producer is None:
            continue  # an initializer: constant already
        # Shape and Size read their input's dims only (and so does everything upstream of them here).
        through_shape = shape_only or is_op(producer, "Shape", "Size")
        pending.extend((v, through_shape) for v in producer.inputs if v is not None)
        pending.extend((v, shape_only) for v in _outer_reads(producer))
    return found


def condition_inputs(node: ir.Node, root: ir.Graph | None = None) -> list[str]:
    """The names of the graph inputs that the condition of If `node` depends on (by value or by
    shape; see `condition_dependencies`): what decides which branch runs."""
    return list(condition_dependencies(node, root))


def _fed_by(owner: ir.Node, value: ir.Value) -> list[ir.Value]:
    """The inputs of Loop/Scan `owner` that feed its body input `value` (the Loop's iteration
    number depends on its trip count)."""
    body = owner.attributes["body"].value
    index = list(body.inputs).index(value)
    # Loop: body (iteration, cond, carried...) <- node (M, cond, carried...); Scan: aligned.
    source = owner.inputs[index] if index < len(owner.inputs) else None
    return [source] if source is not None else []


def _outer_reads(node: ir.Node) -> Iterable[ir.Value]:
    """Values that `node`'s subgraphs read from outside themselves (they decide its outputs too)."""
    for sub in subgraphs(node):
        inner = {v for g in all_graphs(sub) for n in g for v in n.outputs}
        inner.update(v for g in all_graphs(sub) for v in (*g.inputs, *g.initializers.values()))
        for g in all_graphs(sub):
            for n in g:
                yield from (v for v in n.inputs if v is not None and v not in inner)
        yield from (v for v in sub.outputs if v not in inner)


def freeze_hint(node: ir.Node, root: ir.Graph | None = None) -> str:
    """What to tell the user whose If `node` cannot be built with a run-time condition: the inputs
    to freeze, or to fix the shape of, so that one branch is known before the build."""
    deps = condition_dependencies(node, root)
    values = [name for name, how in deps.items() if how == "value"]
    shapes = [name for name, how in deps.items() if how == "shape"]
    if not deps:
        return "its condition is computed from constants only: run `trtc optimize` to fold it"
    parts = []
    if values:
        freeze = " ".join(f"--freeze {name}=VALUE" for name in values)
        parts.append(f"its condition depends on the value of {', '.join(values)}: parse with {freeze}")
    if shapes:
        parts.append(f"{'it' if values else 'its condition'} depends on the shape of {', '.join(shapes)}: "
                     "give those dims fixed sizes (re-export with static shapes)")
    return "; ".join(parts)
