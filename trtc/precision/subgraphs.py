"""The precision pass inside If/Loop/Scan bodies: unique names, observation of body values, and
the outer values a body captures.

Observing a body. onnxruntime returns graph outputs only, and a value computed inside a body is
not one. Each body therefore gets a few nodes that reduce each of its values to one row of
statistics (`ROW`: times computed, max |x| over the finite elements, whether any element was not
finite, rank, dims), concatenated into one float64 vector per body, which is threaded out as an
extra output of every enclosing node, up to the main graph:

- an If returns the vectors of the branch it took and zeros (computed 0 times) for the other's;
- a Loop or Scan carries one vector per body it contains as an extra loop-carried value, started
  at zeros and combined with each iteration's (counts add, maxima take the max, the shape is the
  last one computed), so its final value covers every iteration.

Why not the alternatives: flattening an If into the branch it takes needs one model per pattern of
conditions and says nothing about Loop and Scan; threading whole values out as Loop scan outputs
keeps every iteration's tensors, and onnxruntime refuses scan outputs whose shape changes from one
iteration to the next (a growing state does). The statistics have a fixed size per body, so they
pass through any nesting and any trip count, and they are exactly what the rules read
(`Observation.max_abs`, `shapes`, `finite`) plus how often a body value was computed (for its
FLOPs). The added nodes only read the model's values: the outputs it computes are unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from trtc.ir.onnx_export import to_model_proto
from trtc.ir.rewrite import STANDARD_DOMAINS
from trtc.ir.walk import all_graphs, subgraph_attrs

CONTROL_FLOW = {"If", "Loop", "Scan"}
MAX_RANK = 8  # dims of values of higher rank are not recorded (their FLOPs count as 0)
# One row per body value: [computed, peak, nonfinite, rank, dim_0 .. dim_{MAX_RANK-1}].
COMPUTED, PEAK, NONFINITE, RANK, DIMS = 0, 1, 2, 3, 4
ROW = DIMS + MAX_RANK
DOUBLE = ir.DataType.DOUBLE
MIN_OPSET = 11  # Slice, Reshape, Where, Less with tensor inputs


def is_control_flow(node: ir.Node, opset: int) -> bool:
    """A standard If/Loop/Scan: the ops whose bodies the pass observes and types (Scan-8, with
    its batch axis and sequence lengths, is left as exported)."""
    return node.op_type in CONTROL_FLOW and node.domain in STANDARD_DOMAINS and not (
        node.op_type == "Scan" and opset < 9)


def graph_values(graph: ir.Graph) -> list[ir.Value]:
    """The values a graph defines: its inputs and its nodes' outputs (not nested bodies')."""
    return [*graph.inputs, *(v for node in graph for v in node.outputs)]


def ensure_unique_names(model: ir.Model) -> None:
    """Decisions and observations are keyed by name: every node gets a name unique over all
    graphs, and every value of a body gets one unique over all graphs (ONNX lets two branches
    define the same name). Main-graph value names (the interface, what `compare` fetches) stay."""
    seen_nodes: set[str] = set()
    for depth, graph in enumerate(all_graphs(model.graph)):
        for i, node in enumerate(graph):
            if depth == 0:  # the main graph's nodes are named as they always were
                if not node.name or node.name in seen_nodes:
                    node.name = f"{node.op_type}_{i}"
            elif not node.name or node.name in seen_nodes:
                node.name = _fresh(node.name or node.op_type, seen_nodes)
            seen_nodes.add(node.name)
    seen_values: set[str] = set()
    for depth, graph in enumerate(all_graphs(model.graph)):
        for value in [*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)]:
            if depth and value.name in seen_values:
                value.name = _fresh(value.name, seen_values)  # an initializer's key follows its name
            elif depth and not value.name and (value.uses() or value.is_graph_output()):
                value.name = _fresh(f"{value.producer().name if value.producer() else 'input'}_out", seen_values)
            if value.name:
                seen_values.add(value.name)


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}__{k}"
    return name


def complete_body_types(model: ir.Model) -> None:
    """Give body values without a type or shape those ONNX's inference finds (the frontend's
    inference covers the main graph; the bodies keep what the file declares, and TensorRT needs
    the rank of an If's outputs, which the casts at a body's boundary copy). A value still untyped
    keeps its node fp32 (`assign`). Names must be unique (`ensure_unique_names`)."""
    missing = {v.name: v for graph in list(all_graphs(model.graph))[1:] for v in graph_values(graph)
               if v.name and (v.type is None or v.shape is None)}
    if not missing:
        return
    # Weights over 64 KiB keep an external reference: inference reads only small constants.
    proto = to_model_proto(model, embed_limit=1 << 16)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # onnx raises its own errors for models it cannot infer: those stay untyped
        return
    stack, infos = [inferred.graph], {}
    while stack:
        graph = stack.pop()
        for info in [*graph.value_info, *graph.output]:
            infos[info.name] = info
        for node in graph.node:
            stack.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            stack.extend(g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs)
    for name, value in missing.items():
        info = infos.get(name)
        if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.elem_type:
            continue
        tensor = info.type.tensor_type
        if value.type is None:
            value.type = ir.TensorType(ir.DataType(tensor.elem_type))
        if value.shape is None and tensor.HasField("shape"):
            value.shape = ir.Shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                    for d in tensor.shape.dim])


def captured_uses(node: ir.Node) -> dict[ir.Value, list[tuple[ir.Node, int]]]:
    """The outer values that `node`'s bodies (at any depth) read, with those reads."""
    inner = {id(g) for _, body in subgraph_attrs(node) for g in all_graphs(body)}
    uses: dict[ir.Value, list[tuple[ir.Node, int]]] = {}
    for _, body in subgraph_attrs(node):
        for graph in all_graphs(body):
            for user in graph:
                for index, value in enumerate(user.inputs):
                    if value is not None and id(value.graph) not in inner:
                        uses.setdefault(value, []).append((user, index))
    return uses


# ------------------------------------------------------------------ instrumenting bodies


@dataclasses.dataclass
class Instrumented:
    """An observation copy of a model: `stats` are main-graph values, one per body, each the
    flattened [values, ROW] statistics of the body's values named in `layout`."""

    model: ir.Model
    stats: list[tuple[ir.Value, list[tuple[str, bool]]]]  # (vector, [(value name, is float)])


class _Builder:
    """Nodes appended to one graph, with unique names."""

    def __init__(self, graph: ir.Graph, counter: list[int]):
        self.graph = graph
        self.counter = counter
        self.nodes: list[ir.Node] = []
        self._consts: dict[tuple, ir.Value] = {}

    def name(self, what: str) -> str:
        self.counter[0] += 1
        return f"trtc_observe_{self.counter[0]}_{what}"

    def op(self, op_type: str, inputs: list[ir.Value], attrs: dict | None = None,
           dtype: ir.DataType | None = None, shape: list[int] | None = None) -> ir.Value:
        node = ir.node(op_type, inputs, attrs, name=self.name(op_type))
        out = node.outputs[0]
        out.name = self.name(op_type.lower())
        if dtype is not None:
            out.type = ir.TensorType(dtype)
        if shape is not None:
            out.shape = ir.Shape(shape)
        self.nodes.append(node)
        return out

    def const(self, array: np.ndarray) -> ir.Value:
        """A Constant node (bodies may not see the main graph's initializers under new names)."""
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.op("Constant", [], {"value": ir.tensor(array)},
                                        dtype=ir.DataType.from_numpy(array.dtype), shape=list(array.shape))
        return self._consts[key]

    def row(self, value: ir.Value) -> ir.Value:
        """The statistics row of one value, computed once."""
        f32, i64 = np.float32, np.int64
        if value.dtype is not None and value.dtype.is_floating_point():
            x = value if value.dtype == ir.DataType.FLOAT else self.op("Cast", [value], {"to": ir.DataType.FLOAT})
            magnitude = self.op("Abs", [self.op("Reshape", [x, self.const(np.array([-1], i64))])])
            # x < inf is false for inf and NaN: the finite elements.
            finite = self.op("Less", [magnitude, self.const(np.array([np.inf], f32))])
            zero = self.const(np.zeros(1, f32))  # prepended: an empty value reduces to 0, not an error
            clean = self.op("Where", [finite, magnitude, zero])
            peak = self.op("ReduceMax", [self.op("Concat", [zero, clean], {"axis": 0})], {"keepdims": 1})
            bad = self.op("Cast", [self.op("Not", [finite])], {"to": ir.DataType.FLOAT})
            nonfinite = self.op("ReduceMax", [self.op("Concat", [zero, bad], {"axis": 0})], {"keepdims": 1})
            head = self.op("Cast", [self.op("Concat", [peak, nonfinite], {"axis": 0})], {"to": DOUBLE})
        else:
            head = self.const(np.zeros(2, np.float64))
        shape = self.op("Shape", [value])
        rank = self.op("Shape", [shape])
        padded = self.op("Concat", [shape, self.const(np.full(MAX_RANK, -1, i64))], {"axis": 0})
        dims = self.op("Slice", [padded, self.const(np.array([0], i64)), self.const(np.array([MAX_RANK], i64)),
                                 self.const(np.array([0], i64))])
        tail = self.op("Cast", [self.op("Concat", [rank, dims], {"axis": 0})], {"to": DOUBLE})
        return self.op("Concat", [self.const(np.ones(1, np.float64)), head, tail], {"axis": 0})

    def combine(self, old: ir.Value, new: ir.Value, size: int) -> ir.Value:
        """Statistics of two runs of a body: counts add, peaks and non-finite flags take the max,
        the shape is the later run's where it computed the value, else the earlier one's."""
        i64 = np.int64
        shape = self.const(np.array([-1, ROW], i64))
        a, b = self.op("Reshape", [old, shape]), self.op("Reshape", [new, shape])

        def columns(x: ir.Value, start: int, stop: int) -> ir.Value:
            return self.op("Slice", [x, self.const(np.array([start], i64)), self.const(np.array([stop], i64)),
                                     self.const(np.array([1], i64))])

        total = columns(self.op("Add", [a, b]), COMPUTED, COMPUTED + 1)
        peaks = columns(self.op("Max", [a, b]), PEAK, RANK)
        computed = self.op("Greater", [columns(b, COMPUTED, COMPUTED + 1), self.const(np.zeros(1, np.float64))])
        shapes = columns(self.op("Where", [computed, b, a]), RANK, ROW)
        joined = self.op("Concat", [total, peaks, shapes], {"axis": 1})
        return self.op("Reshape", [joined, self.const(np.array([-1], i64))], dtype=DOUBLE, shape=[size])

    def flush(self, before: ir.Node | None = None) -> None:
        if before is None:
            self.graph.extend(self.nodes)
        else:
            self.graph.insert_before(before, self.nodes)
        self.nodes = []


def _vector_value(name: str, size: int) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(DOUBLE), shape=ir.Shape([size]))


def instrument(model: ir.Model) -> Instrumented:
    """A copy of `model` whose main graph also computes the statistics of every If/Loop/Scan
    body's values (see the module's docstring). Names must be unique (`ensure_unique_names`)."""
    copy = model.clone()  # shares the weights' tensors, which are only read
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18))
    counter = [0]
    layouts: list[list[tuple[str, bool]]] = []

    def visit(graph: ir.Graph, own: bool) -> list[tuple[int, ir.Value]]:
        """Instrument `graph`'s nodes' bodies; return (layout index, vector in `graph`) for every
        body under `graph` (and for `graph` itself when `own`)."""
        # The values are taken before rebuilt Loop/Scan nodes replace their outputs: by name.
        names = [(v.name, bool(v.dtype is not None and v.dtype.is_floating_point())) for v in graph_values(graph)
                 if v.name and isinstance(v.type, ir.TensorType)]
        found: list[tuple[int, ir.Value]] = []
        for node in list(graph):
            if is_control_flow(node, opset):
                found.extend(_thread(graph, node, visit, counter))
        if own:
            by_name = {v.name: v for v in graph_values(graph)}
            builder = _Builder(graph, counter)
            rows = [builder.row(by_name[name]) for name, _ in names]
            if rows:
                vector = builder.op("Concat", rows, {"axis": 0}, dtype=DOUBLE, shape=[len(rows) * ROW])
                builder.flush()
                layouts.append(names)
                found.append((len(layouts) - 1, vector))
        return found

    top = visit(copy.graph, own=False)
    return Instrumented(copy, [(vector, layouts[index]) for index, vector in top])


def _thread(graph: ir.Graph, node: ir.Node, visit, counter: list[int]) -> list[tuple[int, ir.Value]]:
    """Bring the statistics of `node`'s bodies out as extra outputs of `node` (rebuilt for
    Loop/Scan, whose loop-carried values come before their scan outputs)."""
    if node.op_type == "If":
        then_graph, else_graph = node.attributes["then_branch"].value, node.attributes["else_branch"].value
        branches = {"then": visit(then_graph, True), "else": visit(else_graph, True)}
        keys = [k for k, _ in branches["then"]] + [k for k, _ in branches["else"]]
        if not keys:
            return []
        sizes: dict[int, int] = {}
        for found in branches.values():
            for k, v in found:
                sizes[k] = v.shape[0]
        for side, body in (("then", then_graph), ("else", else_graph)):
            have = dict(branches[side])
            builder = _Builder(body, counter)
            outs = [have[k] if k in have else builder.const(np.zeros(sizes[k], np.float64)) for k in keys]
            builder.flush()
            body.outputs.extend(outs)
        first = len(node.outputs)
        node.resize_outputs(first + len(keys))
        result = []
        for i, k in enumerate(keys):
            out = node.outputs[first + i]
            out.name = f"trtc_observe_{k}_{counter[0]}_if"
            counter[0] += 1
            out.type, out.shape = ir.TensorType(DOUBLE), ir.Shape([sizes[k]])
            result.append((k, out))
        return result
    body = node.attributes["body"].value
    found = visit(body, True)
    if not found:
        return []
    carried = len(node.inputs) - 2 if node.op_type == "Loop" else \
        len(node.inputs) - node.attributes.get_int("num_scan_inputs")
    # Positions of the new loop-carried values in the node's inputs, the body's inputs, the body's
    # outputs and the node's outputs.
    in_at, body_in_at, body_out_at, out_at = ((2 + carried, 2 + carried, 1 + carried, carried)
                                              if node.op_type == "Loop" else (carried, carried, carried, carried))
    builder = _Builder(graph, counter)
    starts = [builder.const(np.zeros(v.shape[0], np.float64)) for _, v in found]
    builder.flush(before=node)
    inner = _Builder(body, counter)
    olds, news = [], []
    for _, vector in found:
        old = _vector_value(inner.name("carried"), vector.shape[0])
        olds.append(old)
        news.append(inner.combine(old, vector, vector.shape[0]))
    inner.flush()
    body.inputs[body_in_at:body_in_at] = olds
    body.outputs[body_out_at:body_out_at] = news
    inputs = list(node.inputs)
    inputs[in_at:in_at] = starts
    rebuilt = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                      num_outputs=len(node.outputs) + len(found), version=node.version, name=node.name)
    for i, old_out in enumerate(node.outputs):
        new_out = rebuilt.outputs[i if i < out_at else i + len(found)]
        name, old_out.name = old_out.name, None
        new_out.name, new_out.type, new_out.shape = name, old_out.type, old_out.shape
        old_out.replace_all_uses_with(new_out, replace_graph_outputs=True)
    graph.insert_before(node, rebuilt)
    graph.remove(node)
    result = []
    for i, (k, vector) in enumerate(found):
        out = rebuilt.outputs[out_at + i]
        out.name = f"trtc_observe_{k}_{counter[0]}_loop"
        counter[0] += 1
        out.type, out.shape = ir.TensorType(DOUBLE), ir.Shape([vector.shape[0]])
        result.append((k, out))
    return result


@dataclasses.dataclass
class BodyStats:
    """What the statistics vectors of one sample say, accumulated over samples."""

    max_abs: dict[str, float] = dataclasses.field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    runs: dict[str, int] = dataclasses.field(default_factory=dict)  # times computed, over all samples
    finite: bool = True

    def add(self, vector: np.ndarray, layout: list[tuple[str, bool]]) -> None:
        rows = np.asarray(vector, np.float64).reshape(-1, ROW)
        for (name, is_float), row in zip(layout, rows, strict=True):
            computed = int(round(row[COMPUTED]))
            self.runs[name] = self.runs.get(name, 0) + computed
            if not computed:
                continue
            if is_float:
                self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(row[PEAK]))
                self.finite &= not row[NONFINITE]
            rank = int(round(row[RANK]))
            if rank <= MAX_RANK:
                self.shapes[name] = tuple(int(round(d)) for d in row[DIMS:DIMS + rank])
