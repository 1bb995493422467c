"""Power-of-two activation rescaling, so that activations beyond fp16's range can still be
stored in fp16.

A chain of positively homogeneous ops (Conv/Gemm/MatMul with constant weights, Relu,
pooling, reshapes, Add/Concat of such values) computes f(k*x) = k*f(x) for k > 0 once
its biases are scaled along. So the graph can store every activation v as v / 2^e(v):
each linear op's constant weights are multiplied by 2^(e_in - e_out) and its bias by
2^-e_out, with e_out chosen from the magnitude observed on calibration data; a Mul by
2^e restores the true values wherever they leave the chain (a graph output or an op that
is not homogeneous: Softmax, LRN, Sigmoid...). Scaling by powers of two is exact in fp32,
so the fp32 model computes the same numbers; in fp16 it moves activations of 1e6..1e27
(seen in the light_* zoo models with synthetic weights) into range. For the same reason the
rescaled graph's observation follows from the original one (`Rescaling.scaled`,
`observe.scaled_observation`) without running it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from trtc.ir.rewrite import add_constant, const_array, is_op
from trtc.ir.splat import map_elements
from trtc.ir.walk import has_subgraphs
from trtc.precision.observe import Observation
from trtc.precision.rules import feeds_exponential_op
from trtc.precision.subgraphs import captured_uses

LINEAR = {"Conv", "Gemm", "MatMul"}
# f(k x) = k f(x) for k > 0, one activation input (index 0), constant or no other inputs.
HOMOGENEOUS = {"Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
               "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Dropout", "Slice", "Gather", "Split"}
JOINS = {"Add", "Sum", "Concat", "Max"}


def _exponent(peak: float, target: float) -> int:
    return max(0, math.ceil(math.log2(peak / target))) if peak > target else 0


def _scaled(value: ir.Value, factor: float, graph: ir.Graph, name: str) -> ir.Value:
    return add_constant(graph, map_elements(value.const_value,
                                            lambda data: (data.astype(np.float64) * factor).astype(data.dtype)), name)


def _mul(graph: ir.Graph, value: ir.Value, exponent: int, before: ir.Node, name: str) -> ir.Value:
    """value * 2^exponent, inserted before `before`."""
    factor = add_constant(graph, np.array(2.0**exponent, dtype=value.dtype.numpy()), f"{name}__scale")
    node = ir.node("Mul", [value, factor], name=f"{name}__rescale")
    node.outputs[0].type, node.outputs[0].shape = value.type, value.shape
    graph.insert_before(before, node)
    return node.outputs[0]


def _linear_ok(node: ir.Node) -> bool:
    if is_op(node, "Conv"):
        return const_array(node.inputs[1]) is not None and (len(node.inputs) < 3 or node.inputs[2] is None
                                                            or const_array(node.inputs[2]) is not None)
    if is_op(node, "Gemm"):
        return (const_array(node.inputs[1]) is not None and node.attributes.get_float("alpha", 1.0) > 0
                and (len(node.inputs) < 3 or node.inputs[2] is None or const_array(node.inputs[2]) is not None))
    return is_op(node, "MatMul") and const_array(node.inputs[1]) is not None


@dataclasses.dataclass
class Rescaling:
    weights: int  # how many weights were rescaled
    # Per value of the rescaled graph that stores other numbers than the value of that name did:
    # (the name of the value it stores, e) — it holds that value times 2^-e.
    scaled: dict[str, tuple[str, int]]


def rescale_activations(model: ir.Model, obs: Observation, target: float) -> Rescaling:
    """Rescale where a homogeneous chain exceeds `target`."""
    graph = model.graph
    if not any(is_op(n, *LINEAR) and _linear_ok(n) and obs.magnitude(n.outputs[0]) > target for n in graph):
        return Rescaling(0, {})
    exponent: dict[ir.Value, int] = {}
    copies: dict[ir.Value, tuple[str, int]] = {}  # the Mul outputs inserted: (value scaled, e)
    rescaled = 0
    for node in list(graph):
        if has_subgraphs(node):
            # Bodies read outer values by name, not as node inputs: a rescaled one is restored to
            # its true values before the node, and its readers inside move to the restored copy.
            for value, uses in captured_uses(node).items():
                if exponent.get(value, 0):
                    restored = _mul(graph, value, exponent[value], node, f"{node.name}.{value.name}")
                    for user, index in uses:
                        user.replace_input_with(index, restored)
                    copies[restored] = (value.name, 0)
        ins = [exponent.get(v, 0) if v is not None else 0 for v in node.inputs]
        if is_op(node, *LINEAR) and _linear_ok(node) and (ins[0] or obs.magnitude(node.outputs[0]) > target):
            # Logits stay at their true scale: their rounding error shows in exp() as absolute error,
            # which the precision rules judge from the true magnitude.
            e_in = ins[0]
            e_out = 0 if feeds_exponential_op(node) else _exponent(obs.magnitude(node.outputs[0]), target)
            node.replace_input_with(1, _scaled(node.inputs[1], 2.0 ** (e_in - e_out), graph, f"{node.name}.w_rescaled"))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                # Gemm's beta multiplies the bias as given: scaling C scales beta*C alike.
                node.replace_input_with(2, _scaled(node.inputs[2], 2.0**-e_out, graph, f"{node.name}.b_rescaled"))
            exponent[node.outputs[0]] = e_out
            rescaled += 1
            continue
        if not any(ins):
            continue
        if is_op(node, *HOMOGENEOUS) and all(e == 0 for e in ins[1:]):
            for out in node.outputs:
                exponent[out] = ins[0]
            continue
        if is_op(node, *JOINS):
            top = max(ins)
            for i, (value, e) in enumerate(zip(node.inputs, ins)):
                if value is None:
                    continue
                if const_array(value) is not None:  # a constant summand: store it at the same scale
                    node.replace_input_with(i, _scaled(value, 2.0**-top, graph, f"{node.name}.c{i}_rescaled"))
                elif e != top:
                    node.replace_input_with(i, _mul(graph, value, e - top, node, f"{node.name}.in{i}"))
                    copies[node.inputs[i]] = (value.name, top)
            exponent[node.outputs[0]] = top
            continue
        # Any other op sees the true values again.
        for i, (value, e) in enumerate(zip(node.inputs, ins)):
            if value is not None and e:
                node.replace_input_with(i, _mul(graph, value, e, node, f"{node.name}.in{i}"))
                copies[node.inputs[i]] = (value.name, 0)
    scaled = {value: (value.name, e) for value, e in exponent.items() if e} | copies  # names before renaming
    for i, value in enumerate(list(graph.outputs)):
        e = exponent.get(value, 0)
        if e:
            restore = ir.node("Mul", [value, add_constant(graph, np.array(2.0**e, dtype=value.dtype.numpy()),
                                                           f"{value.name}__scale")], name=f"{value.name}__rescale")
            name = value.name
            value.name = f"{name}__scaled"
            restore.outputs[0].name = name
            restore.outputs[0].type, restore.outputs[0].shape = value.type, value.shape
            graph.append(restore)
            graph.outputs[i] = restore.outputs[0]
    return Rescaling(rescaled, {value.name: origin for value, origin in scaled.items()})
