"""Rules that keep a node in fp32. Each returns the reason it applies, or None.

Rules are registered in order with `@keep_rule`; the first that applies gives the
node's reason, which `trtc inspect --precision` and the optimize report show.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Sequence

import onnx_ir as ir

from trtc.precision.observe import Observation

FP16_MAX = 65504.0
NORMALISATIONS = {"LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization",
                  "BatchNormalization", "LpNormalization", "MeanVarianceNormalization", "SkipLayerNormalization"}
SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
              "ReduceSumSquare", "ReduceProd", "GlobalAveragePool", "GlobalLpPool", "CumSum"}
EXPONENTIAL = {"Exp", "Pow", "Log", "Softplus"}
# Ops whose output type comes from an attribute, not from their inputs.
ATTRIBUTE_TYPED = {"ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                   "RandomUniformLike", "Multinomial", "Bernoulli", "Range"}


@dataclasses.dataclass
class PrecisionOptions:
    """What the user can set; defaults follow ModelOpt AutoCast's (data_max 512, init_max 65504)."""

    target: str = "fp16"  # or "bf16"; "fp32" with quantization: what is not quantized stays fp32
    data_max: float = 512.0
    init_max: float = FP16_MAX
    max_reduction: int = 1024  # reductions over more elements than this stay fp32
    exp_input_max: float = 8.0  # Exp of larger inputs gets within 1/20 of fp16's range quickly
    keep_fp32: Sequence[str] = ()  # node-name globs
    keep_fp32_ops: Sequence[str] = ()  # op-type globs
    force_fp16: Sequence[str] = ()  # node-name or op-type globs; beats every automatic rule
    cast_io: bool = False
    rescale: bool = True  # power-of-two activation rescaling of homogeneous chains (rescale.py)
    # Calibration: .npz files of inputs keyed by name, else this many seeded random samples.
    calib: Sequence[str] = ()
    calib_samples: int = 4
    tolerance: float | None = None  # fail when a predicted error relative to the output's range exceeds it
    # Quantization (precision/quantize.py): "int8" or "fp8" Q/DQ on the weighted layers, or weight-only int4
    # MatMul/Gemm weights; the range method of each activation: "METHOD", "FAMILY=METHOD" or "NAME-GLOB=METHOD".
    quantize: str | None = None
    int4_weights: bool = False
    calib_methods: Sequence[str] = ()
    # Accuracy-driven precision (precision/search.py): targets "METRIC=VALUE" or "OUTPUT:METRIC=VALUE" (cosine,
    # max-error, mean-error; errors relative to the output's range), or a command that judges the outputs.
    accuracy: Sequence[str] = ()
    check: str | None = None


@dataclasses.dataclass
class RuleContext:
    obs: Observation
    options: PrecisionOptions


Rule = Callable[[ir.Node, RuleContext], "str | None"]
RULES: list[tuple[str, Rule]] = []


def keep_rule(name: str) -> Callable[[Rule], Rule]:
    def decorate(fn: Rule) -> Rule:
        RULES.append((name, fn))
        return fn

    return decorate


def _matches(patterns: Sequence[str], text: str) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(text, p)), None)


def forced_fp16(node: ir.Node, options: PrecisionOptions) -> bool:
    return bool(_matches(options.force_fp16, node.name or "") or _matches(options.force_fp16, node.op_type))


def user_keep(node: ir.Node, ctx: RuleContext) -> str | None:
    """--keep-fp32 NAME-GLOB / --keep-fp32-op OP-GLOB."""
    if (p := _matches(ctx.options.keep_fp32, node.name or "")) is not None:
        return f"user rule --keep-fp32 {p!r}"
    if (p := _matches(ctx.options.keep_fp32_ops, node.op_type)) is not None:
        return f"user rule --keep-fp32-op {p!r}"
    return None


@keep_rule("attribute-typed")
def attribute_typed(node: ir.Node, ctx: RuleContext) -> str | None:
    return f"{node.op_type} sets its output type by attribute" if node.op_type in ATTRIBUTE_TYPED else None


@keep_rule("normalisation")
def normalisation(node: ir.Node, ctx: RuleContext) -> str | None:
    return f"{node.op_type} is a normalisation (fp16 variance overflows)" if node.op_type in NORMALISATIONS else None


@keep_rule("softmax")
def softmax(node: ir.Node, ctx: RuleContext) -> str | None:
    return f"{node.op_type} exponentiates and sums" if node.op_type in SOFTMAX else None


@keep_rule("deep-reduction")
def deep_reduction(node: ir.Node, ctx: RuleContext) -> str | None:
    if node.op_type not in REDUCTIONS or not node.inputs or node.inputs[0] is None:
        return None
    in_shape = ctx.obs.shapes.get(node.inputs[0].name)
    out_shape = ctx.obs.shapes.get(node.outputs[0].name)
    if in_shape is None or out_shape is None:
        return None
    depth = math.prod(in_shape) // max(1, math.prod(out_shape))
    if depth > ctx.options.max_reduction:
        return f"reduces {depth} elements per output (> --max-reduction {ctx.options.max_reduction})"
    return None


@keep_rule("weights-out-of-range")
def weights_out_of_range(node: ir.Node, ctx: RuleContext) -> str | None:
    for value in node.inputs:
        if value is not None and value.const_value is not None:
            peak = ctx.obs.magnitude(value)
            if peak > ctx.options.init_max:
                return f"weight {value.name!r} reaches {peak:.4g} (> {ctx.options.init_max:g})"
    return None


@keep_rule("large-values")
def large_values(node: ir.Node, ctx: RuleContext) -> str | None:
    """Observed output magnitude above data_max, or an input beyond fp16's range."""
    for value in node.outputs:
        peak = ctx.obs.magnitude(value)
        if peak > ctx.options.data_max:
            return f"output {value.name!r} reaches {peak:.4g} on calibration data (> data_max {ctx.options.data_max:g})"
    for value in node.inputs:
        peak = ctx.obs.magnitude(value) if value is not None and value.const_value is None else 0.0
        if peak > FP16_MAX:
            return f"input {value.name!r} reaches {peak:.4g}, beyond fp16's range"
    return None


# Unit roundoff of each target, relative to fp16's: thresholds on absolute error scale by it.
ROUNDOFF_VS_FP16 = {"fp16": 1.0, "bf16": 8.0}
EXPONENTIATING = {"Softmax", "LogSoftmax", "Exp", "Softplus"}
# Cheap ops through which logits flow into a softmax unchanged in magnitude order.
_LOGIT_PATH = {"Add", "Sub", "Mul", "Div", "Where", "Neg", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
               "Cast", "Identity", "Concat", "Slice"}


def feeds_exponential_op(node: ir.Node, depth: int = 4) -> ir.Node | None:
    """The Softmax/Exp this node's output reaches through cheap logit ops, if any."""
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for current in frontier:
            for value in current.outputs:
                for user in value.consumers():
                    if user.op_type in EXPONENTIATING:
                        return user
                    if user.op_type in _LOGIT_PATH and user not in seen:
                        seen.add(user)
                        nxt.append(user)
        frontier = nxt
    return None


@keep_rule("feeds-exponential")
def feeds_exponential(node: ir.Node, ctx: RuleContext) -> str | None:
    """Nodes producing large logits for a Softmax/Exp (directly or through cheap ops): an
    absolute rounding error of |x| * 2^-11 in a logit becomes a relative error of the same
    size in exp(x)."""
    if node.op_type not in _LOGIT_PATH and node.op_type not in ("MatMul", "Gemm", "Einsum"):
        return None
    limit = ctx.options.exp_input_max / ROUNDOFF_VS_FP16.get(ctx.options.target, 1.0)
    peak = max((ctx.obs.magnitude(v) for v in node.outputs), default=0.0)
    if peak <= limit:
        return None
    target = feeds_exponential_op(node)
    if target is None:
        return None
    return f"feeds {target.op_type} {target.name!r} with values up to {peak:.4g} (> {limit:g})"


@keep_rule("exponential")
def exponential(node: ir.Node, ctx: RuleContext) -> str | None:
    """Exp/Pow/Log/Softplus whose inputs are large enough to overflow or lose precision."""
    if node.op_type not in EXPONENTIAL or not node.inputs or node.inputs[0] is None:
        return None
    peak = ctx.obs.magnitude(node.inputs[0])
    limit = ctx.options.exp_input_max if node.op_type in ("Exp", "Softplus") else ctx.options.data_max
    limit /= ROUNDOFF_VS_FP16.get(ctx.options.target, 1.0)
    if peak > limit:
        return f"{node.op_type} of inputs up to {peak:.4g} (> {limit:g})"
    return None


def keep_reason(node: ir.Node, ctx: RuleContext) -> str | None:
    """The user's --keep-fp32 rules, else the first automatic rule that keeps `node` in
    fp32 (unless the user forces it to fp16)."""
    if (reason := user_keep(node, ctx)) is not None:
        return reason
    if forced_fp16(node, ctx.options):
        return None
    for _, rule in RULES:
        if (reason := rule(node, ctx)) is not None:
            return reason
    return None
