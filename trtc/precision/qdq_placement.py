"""Where Q/DQ go: TensorRT's placement for explicit quantization, decided node by node with a
reason for every node left in float.

Quantized (TensorRT fuses the Q/DQ into the layer's int8/fp8 kernel):
    Conv, ConvTranspose     data input per tensor; constant weight per output channel
    MatMul, Gemm            data input per tensor; constant weight per output channel (N); a second
                            activation operand (attention's Q.K^T and P.V) per tensor
    Add after a Conv        the residual (skip) input of an Add whose other input is a quantized
                            Conv's only output: TensorRT fuses the Add into the Conv's epilogue when
                            the skip input is quantized (its Q/DQ placement guidance)
Everything is symmetric (TensorRT has no zero points). Outputs are not quantized: the next
quantized layer's input Q/DQ does it. Left in float, with the reason:
    - MatMul/Gemm with K or N < 16 (as ModelOpt: no int8 kernel gains anything there),
    - weights computed at run time, inputs that are not fp32, inputs reaching mask values (>= 1e30),
    - a fused Attention (kept fused when its matmuls are too small to quantize, see split_attention),
    - --keep-fp32 globs, nodes inside If/Loop/Scan bodies,
    - normalisations, softmax, exponentials and reductions (not weighted layers: they stay fp16/fp32).
With --int4-weights alone only MatMul/Gemm weights are quantized (weight-only, per channel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir

from trtc.ir.rewrite import STANDARD_DOMAINS, const_array
from trtc.precision.calibrate import HUGE
from trtc.precision.observe import Observation
from trtc.precision.rules import EXPONENTIAL, NORMALISATIONS, REDUCTIONS, SOFTMAX, PrecisionOptions, user_keep

FLOAT = ir.DataType.FLOAT
WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
MIN_DIM = 16  # ModelOpt skips MatMuls with N or K below this, Convs with fewer channels
# Families of quantized activations: each has its own default range method (quantize.DEFAULT_METHODS).
FAMILIES = ("conv", "linear", "attention", "probabilities", "residual")


@dataclasses.dataclass
class QTensor:
    """One tensor quantized once for all its quantized readers: `axis` None is per tensor."""

    value: ir.Value
    family: str  # an activation family, or "weight"
    axis: int | None
    readers: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)

    @property
    def is_weight(self) -> bool:
        return self.family == "weight"


@dataclasses.dataclass
class Placement:
    quantized: dict[str, str]  # node name -> op
    tensors: dict[tuple[str, int | None], QTensor]  # (value name, axis)
    kept: dict[str, dict[str, str]]  # node name -> {"op", "reason"}
    weight_only: bool = False  # --int4-weights alone: no activation is quantized


def _shape(obs: Observation, value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    return obs.shapes.get(value.name)


def _is_float_activation(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == FLOAT and const_array(value) is None


def weight_axis(node: ir.Node, index: int, rank: int) -> int | None:
    """The output-channel axis of weight input `index` of `node` (None: per tensor)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return (0 if node.attributes.get_int("transB", 0) else 1) if index == 1 and rank == 2 else None
    return rank - 1 if index == 1 and rank >= 2 else None  # MatMul B [.., K, N]: N


def _matmul_dims(node: ir.Node, obs: Observation) -> tuple[int, int] | None:
    """(K, N) of a MatMul/Gemm at the calibration shapes."""
    a, b = _shape(obs, node.inputs[0]), _shape(obs, node.inputs[1])
    if not a or not b:
        return None
    trans_a = node.op_type == "Gemm" and node.attributes.get_int("transA", 0)
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    k = a[0] if trans_a else a[-1]
    n = (b[0] if trans_b else b[-1]) if len(b) >= 2 else 1
    return k, n


def weighted_reason(node: ir.Node, obs: Observation, weight_only: bool) -> str | None:
    """Why weighted layer `node` is not quantized, or None."""
    data, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
           for v in node.inputs[:2]):
        return "it is quantized already (a DequantizeLinear feeds it)"
    if weight_only:
        if node.op_type not in ("MatMul", "Gemm"):
            return "--int4-weights quantizes MatMul/Gemm weights only (TensorRT's weight-only int4)"
        if const_array(weight) is None:
            return "its weight is computed at run time (weight-only int4 needs a constant)"
    elif not _is_float_activation(data):
        return "its data input is not an fp32 activation"
    if node.op_type in ("MatMul", "Gemm"):
        dims = _matmul_dims(node, obs)
        if dims is None:
            return "its operand shapes are unknown (it did not run on the calibration data)"
        k, n = dims
        if k < MIN_DIM or n < MIN_DIM:
            small = f"K={k}" if k < MIN_DIM else f"N={n}"
            return f"{small} < {MIN_DIM} at the calibration shapes: too small for low-precision kernels to gain"
    elif const_array(weight) is None:
        return "its weights are computed at run time"
    for value in node.inputs[:2]:
        if value is not None and const_array(value) is None and obs.max_abs.get(value.name, 0.0) >= HUGE:
            return f"input {value.name!r} reaches {obs.max_abs[value.name]:.3g} (a mask): it would saturate"
    return None


def float_reason(node: ir.Node, obs: Observation) -> str | None:
    """Why a node that is not a weighted layer stays in float, for the nodes worth a line."""
    op = node.op_type
    if op in NORMALISATIONS:
        return f"{op} is a normalisation: its statistics need float range (not quantized)"
    if op in SOFTMAX:
        return f"{op} exponentiates and sums: stays float (its output is quantized where a P.V MatMul reads it)"
    if op in EXPONENTIAL or op in ("Gelu", "Erf", "Tanh", "Sigmoid"):
        return f"{op} is non-linear: computed in float between the quantized layers"
    if op in REDUCTIONS:
        return f"{op} reduces: stays float"
    if op == "Attention":
        return _attention_reason(node, obs)
    return None


def _attention_reason(node: ir.Node, obs: Observation) -> str:
    from trtc.precision.split_attention import why_not_split

    return f"fused Attention left in float: {why_not_split(node, obs.shapes) or 'not split'}"


def place(model: ir.Model, obs: Observation, options: PrecisionOptions) -> Placement:
    """Decide which nodes are quantized and which tensors get Q/DQ (no graph change)."""
    weight_only = options.quantize is None and options.int4_weights
    quantized: dict[str, str] = {}
    kept: dict[str, dict[str, str]] = {}
    tensors: dict[tuple[str, int | None], QTensor] = {}

    def add(value: ir.Value, family: str, axis: int | None, node: ir.Node, index: int) -> None:
        entry = tensors.setdefault((value.name, axis), QTensor(value, family, axis))
        entry.readers.append((node, index))

    from trtc.precision.rules import RuleContext

    ctx = RuleContext(obs, options)
    for node in model.graph:
        if node.domain not in STANDARD_DOMAINS:
            continue
        if node.op_type not in WEIGHTED:
            if (reason := user_keep(node, ctx) or float_reason(node, obs)) is not None:
                kept[node.name] = {"op": node.op_type, "reason": reason}
            continue
        reason = user_keep(node, ctx) or weighted_reason(node, obs, weight_only)
        if reason is not None:
            kept[node.name] = {"op": node.op_type, "reason": reason}
            continue
        quantized[node.name] = node.op_type
        for index in (0, 1):
            value = node.inputs[index]
            if const_array(value) is not None:
                rank = len(value.const_value.shape)
                add(value, "weight", weight_axis(node, index, rank), node, index)
            elif not weight_only:
                add(value, _family(node, index), None, node, index)
    if not weight_only:
        _residual_inputs(model, quantized, add)
    for body_node in _body_nodes(model):
        if body_node.op_type in WEIGHTED:
            kept[body_node.name] = {"op": body_node.op_type, "reason": "inside an If/Loop/Scan body: not quantized"}
    return Placement(quantized, tensors, kept, weight_only)


def _family(node: ir.Node, index: int) -> str:
    if node.op_type in ("Conv", "ConvTranspose"):
        return "conv"
    other = node.inputs[1 - index]
    if const_array(other) is not None:
        return "linear"
    producer = node.inputs[index].producer()
    if producer is not None and producer.op_type in SOFTMAX:
        return "probabilities"
    return "attention"


def _residual_inputs(model: ir.Model, quantized: dict[str, str], add) -> None:
    """The skip input of Add(Conv(...), skip) where the Conv is quantized and read only by the Add."""
    for node in model.graph:
        if node.op_type != "Add" or len(node.inputs) != 2 or not all(map(_is_float_activation, node.inputs)):
            continue
        fused = [i for i, v in enumerate(node.inputs) if _fusable_conv(v, quantized)]
        if not fused:
            continue
        skip = 1 - fused[0]
        add(node.inputs[skip], "residual", None, node, skip)


def _fusable_conv(value: ir.Value, quantized: dict[str, str]) -> bool:
    producer = value.producer()
    return (producer is not None and producer.op_type == "Conv" and producer.name in quantized
            and len(value.uses()) == 1 and not value.is_graph_output())


def _body_nodes(model: ir.Model) -> Sequence[ir.Node]:
    from trtc.ir.walk import all_graphs

    return [n for g in list(all_graphs(model.graph))[1:] for n in g]
