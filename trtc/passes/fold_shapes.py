"""Shape-computation folding: what a Shape chain computes from static dims becomes a constant,
and Reshape targets built from the reshaped tensor's own dims become 0 (copy) or -1.

    Before:  x: [batch, seq, 768]
             d = Gather(Shape(x), 2)
             t = Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [12], [64])
             y = Reshape(x, t)
    After:   d = 768
             y = Reshape(x, [0, 0, 12, 64])

Each element of a shape vector is tracked as a number (a static dim, a constant) or as
"dim `axis` of value `x`". The data-movement ops over shape vectors (Gather, Slice, Concat,
Unsqueeze, Where with a constant condition...) are not re-implemented: they run once, all
together, on the CPU reference with index vectors in place of the shape vectors, and the
indices they return say which element went where. `Equal` of a dim and a negative number
(a dim never is) is decided, which unties the `Where(Equal(shape, -1), 1, shape)` masks
torch emits.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

import numpy as np
import onnx_ir as ir

from trtc.ir.dims import dims
from trtc.ir.rewrite import add_constant, const_array, is_op
from trtc.passes._evaluate import (
    EvaluationError,
    drop_dead_initializers,
    evaluate,
    is_constant,
    is_standard,
    value_to_constant,
)
from trtc.passes.registry import PassContext, register_pass

# Ops that only move elements; the value is which inputs carry elements (None: all of
# them); their other inputs must be constants.
MOVEMENT = {"Identity": (0,), "Gather": (0,), "Slice": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Reshape": (0,),
            "Flatten": (0,), "Transpose": (0,), "Expand": (0,), "Tile": (0,), "Split": (0,), "Concat": None,
            "Where": (1, 2), "Cast": (0,)}
INDEX_TYPES = {ir.DataType.INT64, ir.DataType.INT32}
MAX_ELEMENTS = 4096  # shape vectors are short; anything longer is not one
MAX_ROUNDS = 4
INVENTED = re.compile(r"^unk__\d+$|_o\d+__d\d+")  # as trtc.frontend.shapes: dims a run made up


@dataclasses.dataclass(frozen=True)
class DimOf:
    """Dim `axis` of `value`, unknown until run time."""

    value: ir.Value
    axis: int


Element = int | DimOf


@register_pass("fold-shapes", order=30)
def fold_shapes(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fold shape computations: static dims to constants, Reshape targets to 0/-1 forms."""
    counts: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        done = _ShapeTrace(model).fold()
        if not done:
            break
        counts.update(done)
    return dict(counts)


class _ShapeTrace:
    def __init__(self, model: ir.Model):
        self.model, self.graph = model, model.graph
        self.table: list[Element] = []  # every tracked element; shape vectors hold indices into it
        self.tracked: dict[ir.Value, np.ndarray] = {}  # value -> its elements' indices
        self.dtypes: dict[ir.Value, ir.DataType] = {}
        self.feeds: dict[str, np.ndarray] = {}
        self.rename: dict[tuple[ir.Node, int], str] = {}
        self.nodes: list[ir.Node] = []  # sources and movement ops, in graph order

    def fold(self) -> dict[str, int]:
        moved: list[ir.Node] = []
        live: set[ir.Value] = set()
        for node in self.graph:
            if self.add_source(node):
                live.add(node.outputs[0])
            elif self.is_movement(node, live):
                for i in MOVEMENT[node.op_type] or range(len(node.inputs)):
                    if node.inputs[i] not in live:  # a constant: its elements get indices of their own
                        name = f"__index_{len(self.feeds)}"
                        self.feeds[name] = self.index(node.inputs[i].const_value)
                        self.rename[node, i] = name
                moved.append(node)
                self.nodes.append(node)
                live.update(node.outputs)
        if not self.tracked:
            return {}
        if moved:
            self.run(moved)  # where the executors refuse, the sources' own elements still fold
        counts = self.rewrite()
        if counts:
            self.remove_dead()
        return counts

    def add_source(self, node: ir.Node) -> bool:
        """Shape(x) and static Size(x): their elements enter the table."""
        if is_op(node, "Shape") and node.inputs[0] is not None and node.inputs[0].shape is not None:
            x = node.inputs[0]
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
            axes = range(len(x.shape))[start:end]
            elements = [x.shape[a] if isinstance(x.shape[a], int) else DimOf(x, a) for a in axes]
        elif is_op(node, "Size") and node.inputs[0].shape is not None and node.inputs[0].shape.is_static():
            elements = [math.prod(node.inputs[0].shape.numpy())]
        else:
            return False
        out = node.outputs[0]
        start = len(self.table)
        self.table.extend(elements)
        indices = np.arange(start, len(self.table), dtype=np.int64)
        self.feeds[out.name] = self.tracked[out] = indices if node.op_type == "Shape" else indices.reshape(())
        self.dtypes[out] = ir.DataType.INT64
        self.nodes.append(node)
        return True

    def is_movement(self, node: ir.Node, live: set[ir.Value]) -> bool:
        if not is_standard(node) or node.op_type not in MOVEMENT:
            return False
        if node.op_type == "Cast" and ir.DataType(node.attributes.get_int("to", 0)) not in INDEX_TYPES:
            return False
        data = MOVEMENT[node.op_type] or range(len(node.inputs))
        if any(i >= len(node.inputs) for i in data) or not any(node.inputs[i] in live for i in data):
            return False
        for i, value in enumerate(node.inputs):
            if i in data and value not in live and not _small_int_constant(value):
                return False
            if i not in data and not is_constant(value):
                return False
        growing = node.op_type in ("Expand", "Tile")  # their outputs can be large: only known sizes
        return all((v.shape is None and not growing)
                   or (v.shape is not None and v.shape.is_static() and math.prod(v.shape.numpy()) <= MAX_ELEMENTS)
                   for v in node.outputs)

    def index(self, tensor: ir.TensorProtocol) -> np.ndarray:
        """Table indices standing for a constant's elements, in the constant's dtype."""
        array = tensor.numpy()
        start = len(self.table)
        self.table.extend(int(e) for e in array.ravel())
        return np.arange(start, len(self.table)).astype(array.dtype).reshape(array.shape)

    def run(self, moved: list[ir.Node]) -> None:
        """Run the movement ops on index vectors; record where each output's elements came from."""
        outputs = [v for n in moved for v in n.outputs]
        try:
            results = [np.asarray(r) for r in evaluate(moved, outputs, self.model.opset_imports, feeds=self.feeds,
                                                       rename=self.rename)]
        except EvaluationError:
            return
        size = len(self.table)
        if any(r.dtype.kind not in "iu" or (r.size and not 0 <= r.min() <= r.max() < size) for r in results):
            return  # not index vectors: trust none of it
        for value, result in zip(outputs, results, strict=True):
            self.tracked[value] = result.astype(np.int64)
            self.dtypes[value] = ir.DataType.from_numpy(result.dtype)

    def elements(self, value: ir.Value) -> list[Element]:
        return [self.table[i] for i in self.tracked[value].ravel()]

    def rewrite(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        static = {v for v in self.tracked if all(isinstance(e, int) for e in self.elements(v))}
        inside = set(self.nodes)
        for value in list(self.tracked):
            if value not in static or not (value.uses() or value.is_graph_output()):
                continue
            # Materialize where the value leaves the static part of the trace.
            if value.is_graph_output() or any(u.node not in inside or not all(o in static for o in u.node.outputs)
                                              for u in value.uses()):
                array = np.array(self.elements(value), dtype=self.dtypes[value].numpy())
                value_to_constant(self.graph, value, ir.tensor(array.reshape(self.tracked[value].shape)))
                counts["static-shape"] += 1
        for node in list(self.graph):
            if is_op(node, "Reshape") and not is_constant(node.inputs[1]) and node.inputs[1] not in static:
                target = self.reshape_target(node) if node.inputs[1] in self.tracked else inferred_target(node)
                if target is not None:
                    node.replace_input_with(1, add_constant(self.graph, target, f"{node.inputs[1].name}_target"))
                    if 0 in target:  # copies (see reshape_target)
                        node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
                    counts["reshape-target"] += 1
            elif is_op(node, "Equal") and any(v in self.tracked for v in node.inputs) and self.decide_equal(node):
                counts["equal-decided"] += 1
        return counts

    def reshape_target(self, node: ir.Node) -> np.ndarray | None:
        """The Reshape's target with dims of its own input as 0 (copy) and one unknown as -1, or as the
        static size the IR infers for it (so that TensorRT knows it while building: a head count).

        With allowzero=1 a 0 is a size, not a copy; a target with no literal 0 means the same either way, so
        such a Reshape gets its copies too and allowzero=0 (`rewrite` sets it)."""
        shape = node.inputs[1]
        if self.tracked[shape].ndim != 1:
            return None
        elements = self.elements(shape)
        copy_ok = node.attributes.get_int("allowzero", 0) == 0 or 0 not in elements
        out = dims(node.outputs[0]) or ()
        target: list[int | None] = []
        for k, element in enumerate(elements):
            if isinstance(element, int):
                target.append(element)
            elif copy_ok and _same_dim(element, node.inputs[0], k):
                target.append(0)
            else:
                target.append(None)
        unknown = [k for k, t in enumerate(target) if t is None]
        if len(out) == len(target) and copy_ok:  # -1 (given or unknown) where the IR knows the size
            for k, t in enumerate(target):
                if (t is None or t == -1) and isinstance(out[k], int) and out[k] > 0:
                    target[k] = out[k]
            unknown = [k for k, t in enumerate(target) if t is None]
        if len(unknown) > 1 or (unknown and -1 in target):
            return None
        if unknown:
            target[unknown[0]] = -1
        return np.array(target, dtype=np.int64)

    def decide_equal(self, node: ir.Node) -> bool:
        """Equal(shape vector, numbers) where every pair is decidable (a dim is never negative)."""
        sides = []
        for value in node.inputs:
            if value in self.tracked:
                sides.append(np.array(self.elements(value), dtype=object).reshape(self.tracked[value].shape))
            elif _small_int_constant(value):
                sides.append(const_array(value).astype(object))
            else:
                return False
        a, b = np.broadcast_arrays(*sides)
        decided = []
        for x, y in zip(a.ravel(), b.ravel(), strict=True):
            if isinstance(x, DimOf) and isinstance(y, DimOf):
                if x != y:
                    return False
                decided.append(True)
            elif isinstance(x, DimOf) or isinstance(y, DimOf):
                number = y if isinstance(x, DimOf) else x
                if number >= 0:
                    return False
                decided.append(False)
            else:
                decided.append(x == y)
        value_to_constant(self.graph, node.outputs[0], ir.tensor(np.array(decided, dtype=bool).reshape(a.shape)))
        self.graph.remove(node, safe=True)
        return True

    def remove_dead(self) -> None:
        inputs = set()
        for node in reversed(self.nodes):
            if node.graph is self.graph and not any(v.uses() or v.is_graph_output() for v in node.outputs):
                inputs.update(v for v in node.inputs if v is not None)
                self.graph.remove(node, safe=True)
        drop_dead_initializers(self.graph, inputs)


def inferred_target(node: ir.Node) -> np.ndarray | None:
    """A Reshape's target read off the IR's dims, for a target computed where the trace does not follow
    (dim arithmetic such as past + seq): the output's static sizes, 0 where it keeps its input's dim on
    the same axis (the same named symbol), -1 for at most one other dim."""
    x, out = dims(node.inputs[0]), dims(node.outputs[0])
    if x is None or out is None or 0 in out:  # a literal 0 would read as a copy
        return None
    target = [d if isinstance(d, int) else 0 if k < len(x) and _named(d) and d == x[k] else -1
              for k, d in enumerate(out)]
    return np.array(target, dtype=np.int64) if target.count(-1) <= 1 else None


def _named(dim: ir.SymbolicDim) -> bool:
    return dim.value is not None and not INVENTED.search(dim.value)


def _same_dim(element: DimOf, value: ir.Value, axis: int) -> bool:
    """Whether `element` is dim `axis` of `value`: the same dim of the same value, or one that shape
    inference gave the same symbol (`batch`, `batch*sequence`: equal by construction). Names an
    inference run invents (`unk__3`) are not compared: another run may reuse them elsewhere."""
    if element.value is value and element.axis == axis:
        return True
    if value.shape is None or axis >= len(value.shape):
        return False
    mine, theirs = value.shape[axis], element.value.shape[element.axis]
    return (isinstance(mine, ir.SymbolicDim) and mine.value is not None and not INVENTED.search(mine.value)
            and mine == theirs)


def _small_int_constant(value: ir.Value | None) -> bool:
    return (value is not None and is_constant(value) and value.const_value.dtype in INDEX_TYPES
            and value.const_value.size <= MAX_ELEMENTS)
