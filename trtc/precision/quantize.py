"""Post-training quantization for strongly typed TensorRT: int8 or fp8 Q/DQ where TensorRT fuses
them, or weight-only int4 MatMul/Gemm weights; the rest fp32, or fp16/bf16 by the precision rules.

    report = apply_quantization(model, samples, PrecisionOptions(quantize="int8", target="fp16"))

1. observe the fp32 model on the calibration samples (the reference outputs, shapes);
2. split the fused Attentions whose matmuls are worth quantizing (split_attention.py), and move
   the outlier channels of normalisations into the weights that read them (smooth.py);
3. place Q/DQ (qdq_placement.py: every node left in float gets its reason);
4. calibrate each quantized activation by its family's range method (calibrate.py, DEFAULT_METHODS,
   overridden by --calib-method), quantize weights per output channel;
5. insert the Q/DQ (qdq_insert.py), then type the rest for fp16/bf16 when asked (assign.py);
6. predict on the CPU: onnxruntime runs the Q/DQ graph as ONNX defines it (graph optimizations
   off), fp16/bf16 storage simulated by rounding (simulate.py): the error per output against the
   fp32 reference, the quantized share of the weighted layers' FLOPs, each node's contribution.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.rewrite import require_opset
from trtc.precision.calibrate import Method, collect
from trtc.precision.flops import node_flops
from trtc.precision.observe import Observation, observe
from trtc.precision.qdq_insert import FORMATS, insert_qdq
from trtc.precision.qdq_placement import FAMILIES, Placement, place
from trtc.precision.rules import PrecisionOptions, RuleContext
from trtc.precision.smooth import smooth
from trtc.precision.split_attention import split_attentions

# The range method of each activation family (qdq_placement.FAMILIES), chosen on the corpus and the
# real models (calibrated on the evaluation inputs, and on some inputs judged on others):
# - conv, residual: percentile 99.99. Convolutional detectors live in their rare large activations
#   (text pixels): mse clips them (PP-OCRv4 det cosine 0.75, max 0.86, percentile 0.97; ddddocr 0.9926,
#   0.9874, 0.9935); classifiers and resnet tie within 1e-4.
# - linear, attention: mse, the least squared error with clipping: gpt2 0.99964 (percentile 0.99960),
#   vit, bert tie or gain; entropy clips transformers' activations too hard (vit 0.9984 against 0.9997).
# - probabilities: max. Softmax outputs are bounded by 1 and the few large ones (a head attending to one
#   token) carry the result; clipping them costs more than the finer step gains.
DEFAULT_METHODS = {"conv": Method("percentile"), "linear": Method("mse"), "attention": Method("mse"),
                   "probabilities": Method("max"), "residual": Method("percentile")}
FAMILIES_DOC = {
    "conv": "data input of a Conv/ConvTranspose",
    "linear": "data input of a MatMul/Gemm with constant weights",
    "attention": "an operand of a MatMul of two activations (Q, K^T, V of an attention)",
    "probabilities": "a Softmax output read by a MatMul (attention's P in P.V)",
    "residual": "the skip input of an Add fused into a quantized Conv",
}
HEAVY = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "Einsum")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass
class QuantReport:
    """A PrecisionReport (the same keys, so sidecars, `inspect` and `--tolerance` read it alike)
    with the quantization's own record."""

    target: str
    fp32_nodes: dict[str, dict[str, str]]
    low_nodes: int
    flop_share: float  # the quantized share of the weighted layers' FLOPs
    islands: int
    counts: dict[str, int]
    predicted: dict[str, dict[str, Any]]
    contributions: list[dict[str, Any]]
    quantization: dict[str, Any]
    subgraphs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quant_format(options: PrecisionOptions) -> str:
    """'int8', 'fp8' or 'int4' (weight-only), checked."""
    if options.quantize not in (None, "int8", "fp8"):
        raise TrtcError(f"unknown quantization {options.quantize!r}", where="--int8/--fp8")
    if options.quantize and options.int4_weights:
        raise TrtcError(f"--int4-weights is weight-only and does not combine with --{options.quantize}",
                        where="--int4-weights", hint=f"choose --int4-weights or --{options.quantize}")
    if options.quantize is None and not options.int4_weights:
        raise TrtcError("no quantization asked for", where="--int8/--fp8/--int4-weights")
    return options.quantize or "int4"


def target_name(options: PrecisionOptions) -> str:
    fmt = options.quantize or "int4-weights"
    return fmt if options.target == "fp32" else f"{fmt}+{options.target}"


def resolve_methods(placement: Placement, options: PrecisionOptions) -> dict[str, Method]:
    """The range method of each quantized activation: its family's default, then every
    --calib-method in order ('METHOD' for all, 'FAMILY=METHOD', 'GLOB=METHOD' on the tensor's or
    a reader's name)."""
    rules = []
    for text in options.calib_methods:
        key, sep, method = text.rpartition("=")
        rules.append((key if sep else "*", Method.parse(method)))
    methods = {}
    for t in placement.tensors.values():
        if t.is_weight:
            continue
        method = DEFAULT_METHODS[t.family]
        names = [t.value.name, *(n.name or "" for n, _ in t.readers)]
        for key, chosen in rules:
            if key == t.family or (key not in FAMILIES and any(fnmatch.fnmatchcase(n, key) for n in names)):
                method = chosen
        methods[t.value.name] = method
    return methods


def heavy_flops(model: ir.Model, obs: Observation) -> dict[str, float]:
    """FLOPs per weighted node (Conv/MatMul/Gemm/Attention...) of the main graph, per sample."""
    shapes = {v.name: tuple(v.const_value.shape.numpy()) for v in model.graph.initializers.values()
              if v.const_value is not None}
    shapes.update(obs.shapes)
    return {n.name: float(node_flops(n, shapes)) for n in model.graph if n.op_type in HEAVY}


def apply_quantization(model: ir.Model, samples: Sequence[Mapping[str, Any]],
                       options: PrecisionOptions) -> QuantReport:
    """Quantize `model` in place and predict its error on `samples` (see the module docstring)."""
    from trtc.precision.subgraphs import complete_body_types, ensure_unique_names

    fmt = quant_format(options)
    opset = model.opset_imports.get("", 1)
    # Q/DQ of fp16/bf16 values (the typed rest) are opset 19's; the ops of a model of opset 18 or
    # newer keep their meaning up to 23 (require_opset), older ones are not raised.
    needed = max(FORMATS[fmt][3], 19 if options.target in ("fp16", "bf16") else 0)
    if opset < needed and opset < 18:
        flags = f"--{options.quantize or 'int4-weights'}" + ("" if options.target == "fp32" else f" --{options.target}")
        raise TrtcError(f"{flags} needs opset {needed} (its Q/DQ types and per-channel scales); the model is "
                        f"opset {opset}",
                        hint="export the model at opset 18 or newer")
    require_opset(model, needed)
    ensure_unique_names(model)
    complete_body_types(model)
    obs = observe(model, samples)
    reference = obs.outputs
    split = split_attentions(model, obs.shapes)
    smoothed = smooth(model, samples) if fmt != "int4" else []
    if split or any("alpha" in entry for entry in smoothed):
        obs = observe(model, samples)  # the split attentions' values, the smoothed activations
    placement = place(model, obs, options)
    flops = heavy_flops(model, obs)
    methods = resolve_methods(placement, options)
    stats = collect(model, samples, [t.value for t in placement.tensors.values() if not t.is_weight])
    amax = {name: stats[name].range(method, fmt) for name, method in methods.items()}
    counts = insert_qdq(model, placement, amax, fmt)
    from trtc.passes import PASSES, PassContext

    PASSES["dead-code"].fn(model, PassContext())  # the float originals of the quantized weights
    fp32_nodes, low_nodes, islands = dict(placement.kept), len(placement.quantized), 0
    if options.target in ("fp16", "bf16"):
        fp32_nodes, islands, typed_counts = _type_rest(model, samples, options)
        counts.update(typed_counts)
    predicted, contributions = predict_quantized(model, samples, reference, obs.first, set(placement.quantized))
    total = sum(flops.values()) or 1.0
    share = sum(f for name, f in flops.items() if name in placement.quantized) / total
    record = {
        "format": fmt, "weights": f"{fmt}, symmetric, per output channel",
        "activations": "per tensor, symmetric" if fmt != "int4" else "not quantized (weight-only)",
        "methods": {f: str(DEFAULT_METHODS[f]) for f in FAMILIES}, "families": FAMILIES_DOC,
        "overrides": list(options.calib_methods), "flop_share": share, "split_attention": split,
        "smoothed": smoothed,
        "nodes": {name: {"op": op, "flops": flops.get(name, 0.0)} for name, op in placement.quantized.items()},
        "tensors": {name: {"family": placement_family(placement, name), "method": str(m), "amax": amax[name],
                           **stats[name].summary()} for name, m in methods.items()},
        "kept": placement.kept,
    }
    if fmt == "int4":
        record["note"] = ("block-wise int4 (AWQ/GPTQ groups) needs a newer TensorRT: TensorRT-RTX 1.7 refuses it "
                          "('Blockwise dequantization requires input type to be int8 or fp8e4m3 or fp4e2m1')")
    return QuantReport(target=target_name(options), fp32_nodes=fp32_nodes, low_nodes=low_nodes, flop_share=share,
                       islands=islands, counts=counts, predicted=predicted, contributions=contributions,
                       quantization=record)


def placement_family(placement: Placement, name: str) -> str:
    return next(t.family for t in placement.tensors.values() if t.value.name == name and not t.is_weight)


def _type_rest(model: ir.Model, samples: Sequence[Mapping[str, Any]],
               options: PrecisionOptions) -> tuple[dict[str, dict[str, str]], int, dict[str, int]]:
    """The precision pass's typing (fp16/bf16 with fp32 islands) of the quantized graph: Q/DQ
    follow their neighbours' type, scales included."""
    from trtc.passes import PASSES, PassContext
    from trtc.precision import _islands
    from trtc.precision import assign as assign_mod

    obs = observe(model, samples)
    # TensorRT-RTX 1.7 cannot build an int4 DequantizeLinear into fp16/bf16 (Myelin: "Could not infer
    # output types for operation: dequantize"): int4 weights dequantize in fp32 and are cast.
    options = dataclasses.replace(options, keep_fp32=(*options.keep_fp32, "*__int4*_dq"), rescale=False)
    decision = assign_mod.assign(model, RuleContext(obs, options))
    ops = {n.name: n.op_type for n in assign_mod.all_nodes(model)}
    fp32 = {name for name, c in decision.compute.items() if c == "fp32" and ops.get(name) not in QDQ}
    islands = _islands(model, fp32)
    counts = assign_mod.apply(model, decision, options.target, options.cast_io)
    _match_scale_types(model)
    PASSES["dead-code"].fn(model, PassContext())
    reasons = {name: {"op": ops[name], "reason": decision.reasons.get(name, "neighbours are fp32")}
               for name in sorted(fp32)}
    return reasons, islands, counts


def _match_scale_types(model: ir.Model) -> None:
    """Each Q/DQ's scale in the type of its float side (QuantizeLinear's input, DequantizeLinear's
    output): opset 23 types them apart, and onnxruntime then infers a DequantizeLinear's output
    from its scale; TensorRT wants them equal."""
    from trtc.ir.rewrite import add_constant

    for node in model.graph:
        if node.op_type not in QDQ:
            continue
        want = (node.inputs[0] if node.op_type == "QuantizeLinear" else node.outputs[0]).dtype
        scale = node.inputs[1]
        if scale.dtype == want or scale.const_value is None or want not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        name = f"{scale.name}__{want.name.lower()}"
        converted = model.graph.initializers.get(name) or add_constant(
            model.graph, ir.tensor(scale.const_value.numpy().astype(want.numpy())), name)
        node.replace_input_with(1, converted)


def predict_quantized(model: ir.Model, samples: Sequence[Mapping[str, Any]],
                      reference: Sequence[Mapping[str, Any]], fp32_values: Mapping[str, np.ndarray],
                      quantized: set[str], top: int = 10) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per output, the worst error metrics over the samples of the quantized model (Q/DQ as ONNX
    defines them, fp16/bf16 storage rounded) against the fp32 reference; and the `top` nodes, of
    those quantized or stored in fp16/bf16, that add the most relative error on the first sample."""
    from trtc.precision import simulate_errors

    predicted, errors = simulate_errors(model, samples, reference, fp32_values, "quantization: the prediction")
    low = {n.name for n in model.graph if any(v.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
                                              for v in n.outputs)}
    return predicted, contributions(model, errors, quantized | low, top)


def _source(value: ir.Value) -> ir.Value:
    """The value a Q/DQ pair or a Cast reads, back to the model's own value."""
    while (producer := value.producer()) is not None and producer.op_type in (*QDQ, "Cast") \
            and producer.inputs and producer.inputs[0] is not None:
        value = producer.inputs[0]
    return value


def contributions(model: ir.Model, errors: Mapping[str, float | None], changed: set[str],
                  top: int) -> list[dict[str, Any]]:
    """Per node of `changed` (quantized or low precision; Q/DQ and casts belong to the node they
    feed): the relative error of its output less the worst of its inputs' (each input traced back
    through its Q/DQ and casts to the model's own value), largest first."""
    gains = []
    for node in model.graph:
        if node.name not in changed or node.op_type in (*QDQ, "Cast"):
            continue
        outs = [errors.get(v.name) for v in node.outputs]
        outs = [e for e in outs if e is not None]
        if not outs:
            continue
        ins = [errors.get(s.name) for s in (_source(v) for v in node.inputs if v is not None) if s.const_value is None]
        out_err, in_err = max(outs), max((e for e in ins if e is not None), default=0.0)
        if not np.isfinite(out_err):
            gain = 0.0 if not np.isfinite(in_err) else float("inf")
        else:
            gain = out_err - in_err
        if gain > 0:
            gains.append({"node": node.name, "op": node.op_type, "relative_error": out_err, "added": gain})
    gains.sort(key=lambda g: -g["added"])
    return gains[:top]


FP8_TARGETS = ("sm89", "sm120", "sm121")  # TensorRT-RTX refuses FP8 Q/DQ for the others


def check_targets(options: PrecisionOptions | None, typed: Mapping[str, Any] | None, targets: Sequence[str]) -> None:
    """FP8 (asked for, or the artifact's typing) with a target that has none: one line naming them."""
    fp8 = str((typed or {}).get("target", "")).startswith("fp8") or (
        not typed and options is not None and options.quantize == "fp8")
    old = [t for t in targets if t not in FP8_TARGETS]
    if fp8 and old:
        raise TrtcError(f"FP8 needs sm89 or newer: target(s) {', '.join(old)} have no FP8 "
                        f"(TensorRT-RTX refuses its Q/DQ there)", where="--target",
                        hint="build --fp8 for --target sm89,sm120 only, or quantize with --int8")
