"""Constant folding: a node whose inputs are all constants becomes an initializer.

    Before:  w = ConstantOfShape([4096, 25088]);  p = Cast(Reshape(Concat(c1, c2), c3))
    After:   w: initializer (lazy splat);          p: initializer

`ConstantOfShape`, `Expand` of one element and shape-only ops (Reshape, Unsqueeze, Cast...)
of a splat give lazy splats (`trtc.ir.splat`: no memory until written). Everything else is
evaluated by the CPU reference executors, the whole constant region in one session. Never
folded: random ops, ops with subgraphs, custom domains. Size limits: a dense result over
`ctx.fold_max_bytes` stays a node, and folding never takes the dense weights past
2 x the model's weights + fold_max_bytes (so Expand(weight) to a huge tensor is refused);
a splat may be up to 16 x fold_max_bytes (it costs bytes only in the written artifact).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import const_array
from trtc.ir.splat import SplatTensor
from trtc.ir.walk import all_initializers, has_subgraphs
from trtc.passes._evaluate import (
    EvaluationError,
    drop_dead_initializers,
    evaluate,
    is_constant,
    is_standard,
    value_to_constant,
)
from trtc.passes.registry import PassContext, register_pass

NEVER_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                        "Multinomial", "Dropout"})
SHAPE_ONLY = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
# Quantized weights TensorRT runs as such: a DequantizeLinear of these with no zero point (or zeros).
QUANTIZED_WEIGHT_TYPES = frozenset({ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4})


def is_quantized_weight(node: ir.Node) -> bool:
    """DequantizeLinear(int8/fp8/int4 constant, scale[, zero point 0]): folding it into float weights
    would turn TensorRT's int8/fp8/int4 kernels into float ones, so it stays."""
    data = node.inputs[0] if node.op_type == "DequantizeLinear" else None
    if data is None or data.dtype not in QUANTIZED_WEIGHT_TYPES:
        return False
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    if zero_point is None:
        return True
    tensor = zero_point.const_value
    return tensor is not None and not tensor.numpy().astype(np.float64).any()
SPLAT_CAP_FACTOR = 16


@register_pass("fold-constants", order=20)
def fold_constants(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fold nodes whose inputs are all constants into initializers (ConstantOfShape/Expand as lazy splats)."""
    folder = _Folder(model, ctx)
    while folder.fold_splats() | folder.fold_region():
        pass
    folder.drop_dead_initializers()
    if not (folder.counts["folded"] or folder.counts["splat"]):
        return {}  # refusals alone change nothing: a second run must report nothing
    return dict(folder.counts)


def static_nbytes(value: ir.Value) -> int | None:
    """Bytes of `value` when its dtype and every dim are known (strings have no fixed size: None)."""
    if value.type is None or value.shape is None or not isinstance(value.type, ir.TensorType):
        return None
    if not all(isinstance(d, int) for d in value.shape.dims) or value.dtype == ir.DataType.STRING:
        return None
    return math.ceil(math.prod(value.shape.dims) * value.dtype.itemsize)


def dense_bytes(graph: ir.Graph) -> int:
    """Bytes of the weights held in memory (splats take none)."""
    return sum(v.const_value.nbytes for v in all_initializers(graph)
               if v.const_value is not None and not isinstance(v.const_value, SplatTensor))


class _Folder:
    def __init__(self, model: ir.Model, ctx: PassContext):
        self.model, self.graph, self.cap = model, model.graph, ctx.fold_max_bytes
        self.dense = dense_bytes(self.graph)
        self.dense_limit = 2 * (ctx.model_weight_bytes or self.dense) + ctx.fold_max_bytes
        self.blocked: set[ir.Node] = set()
        self.touched: set[ir.Value] = set()  # inputs of folded nodes: initializers that may have died
        self.counts: Counter[str] = Counter()

    def foldable(self, node: ir.Node) -> bool:
        return (node not in self.blocked and is_standard(node) and node.op_type not in NEVER_FOLD
                and not has_subgraphs(node) and bool(node.outputs) and not is_quantized_weight(node)
                and all(v.type is None or isinstance(v.type, ir.TensorType) for v in node.outputs))

    def refuse(self, node: ir.Node, reason: str) -> None:
        self.blocked.add(node)
        self.counts[f"skipped-{reason}"] += 1

    def fold_splats(self) -> bool:
        """Replace ConstantOfShape, Expand of one element and shape-only ops of splats by splats."""
        changed = False
        for node in list(self.graph):
            if not self.foldable(node) or not all(is_constant(v) for v in node.inputs):
                continue
            splat = _splat_of(node)
            if splat is None:
                continue
            if splat.nbytes > SPLAT_CAP_FACTOR * self.cap:
                self.refuse(node, "size-cap")
                continue
            self.replace_node(node, [splat])
            self.counts["splat"] += 1
            changed = True
        return changed

    def fold_region(self) -> bool:
        """Evaluate every node computable from constants in one session; their results become initializers."""
        region: list[ir.Node] = []
        produced: set[ir.Value] = set()
        for node in self.graph:
            if not self.foldable(node) or not all(is_constant(v) or v in produced for v in node.inputs):
                continue
            pending = any(v in produced for v in node.inputs)
            if pending and node.op_type in ("ConstantOfShape", "Expand"):
                continue  # next round, when its inputs are constants, it may become a splat
            sizes = [static_nbytes(v) for v in node.outputs]
            if any(s is not None and s > self.cap for s in sizes):
                if not pending:
                    self.refuse(node, "size-cap")
                continue
            region.append(node)
            produced.update(node.outputs)
        if not region:
            return False
        members = set(region)
        boundary = [v for n in region for v in n.outputs
                    if v.is_graph_output() or any(u.node not in members for u in v.uses())]
        try:
            arrays = evaluate(region, boundary, self.model.opset_imports)
        except EvaluationError:
            return self.fold_one_by_one(region)
        refused = False
        added = 0
        for value, array in zip(boundary, arrays, strict=True):
            reason = self.check(array, added)
            if reason:
                self.refuse(value.producer(), reason)
                refused = True
            else:
                added += array.nbytes
        if refused:
            return True  # evaluate again without the refused nodes (their inputs become boundary)
        for value, array in zip(boundary, arrays, strict=True):
            self.to_initializer(value, ir.tensor(array))
        self.dense += added
        self.remove(region)
        self.counts["folded"] += len(region)
        return True

    def check(self, array, added: int) -> str | None:
        if not isinstance(array, np.ndarray) or array.dtype == object:
            return "not-a-tensor"
        if array.nbytes > self.cap:
            return "size-cap"
        if self.dense + added + array.nbytes > self.dense_limit:
            return "weight-budget"
        return None

    def fold_one_by_one(self, region: list[ir.Node]) -> bool:
        """The region failed as a whole (an op neither executor runs): fold what can be, node by node."""
        for node in region:
            if not all(is_constant(v) for v in node.inputs):
                continue  # a producer of its inputs failed
            used = [v for v in node.outputs if v.uses() or v.is_graph_output()]
            try:
                arrays = evaluate([node], used, self.model.opset_imports)
            except EvaluationError:
                self.refuse(node, "unsupported")
                continue
            reasons = [r for r in (self.check(a, 0) for a in arrays) if r]
            if reasons:
                self.refuse(node, reasons[0])
                continue
            for value, array in zip(used, arrays, strict=True):
                self.to_initializer(value, ir.tensor(array))
                self.dense += array.nbytes
            self.remove([node])
            self.counts["folded"] += 1
        return True

    def replace_node(self, node: ir.Node, tensors: list[ir.TensorProtocol]) -> None:
        for value, tensor in zip(node.outputs, tensors, strict=True):
            if value.uses() or value.is_graph_output():
                self.to_initializer(value, tensor)
        self.remove([node])

    def to_initializer(self, value: ir.Value, tensor: ir.TensorProtocol) -> None:
        value_to_constant(self.graph, value, tensor)

    def remove(self, nodes: list[ir.Node]) -> None:
        self.touched.update(v for n in nodes for v in n.inputs if v is not None)
        self.graph.remove(nodes, safe=True)

    def drop_dead_initializers(self) -> None:
        drop_dead_initializers(self.graph, self.touched)


def _splat_of(node: ir.Node) -> SplatTensor | None:
    """The splat `node` computes from its constant inputs, or None if it is not one."""
    try:
        if node.op_type == "ConstantOfShape":
            shape = const_array(node.inputs[0])
            attr = node.attributes.get("value")
            fill = attr.value if attr is not None else ir.tensor(np.zeros(1, np.float32))
            return SplatTensor(fill.numpy().reshape(()), tuple(int(d) for d in shape), fill.dtype)
        data = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        splat = data if isinstance(data, SplatTensor) else None
        if node.op_type == "Expand" and data is not None and (splat or data.size == 1):
            element = splat.value if splat else data.numpy().reshape(())
            target = np.broadcast_shapes(tuple(data.shape.numpy()), tuple(int(d) for d in const_array(node.inputs[1])))
            return SplatTensor(element, target, data.dtype)
        if splat is None:
            return None
        if node.op_type == "Cast":
            to = ir.DataType(node.attributes["to"].value)
            element = _cast_element(splat.value, to)
            return None if element is None else SplatTensor(element, splat.shape, to)
        out = node.outputs[0]
        if node.op_type in SHAPE_ONLY and out.shape is not None and out.shape.is_static() \
                and math.prod(out.shape.numpy()) == splat.size:
            return SplatTensor(splat.value, out.shape, splat.dtype)
    except (ValueError, TypeError, KeyError):  # a malformed node (bad shape, dtype): leave it to the executors
        return None
    return None


_NUMPY_CASTS = frozenset({ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.BFLOAT16,
                          ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT8,
                          ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64, ir.DataType.BOOL})


def _cast_element(element: np.ndarray, to: ir.DataType) -> np.ndarray | None:
    """Cast one element as ONNX Cast does, where numpy's cast is the same (not float8's saturation,
    not float-to-integer outside the target's range, which ONNX leaves undefined)."""
    source = ir.DataType.from_numpy(element.dtype)
    if source not in _NUMPY_CASTS or to not in _NUMPY_CASTS:
        return None
    if source.is_floating_point() and to.is_integer():
        info = np.iinfo(to.numpy())
        as_float = float(element)
        if not (math.isfinite(as_float) and info.min <= math.trunc(as_float) <= info.max):
            return None
    return element.astype(to.numpy())
