"""Rules of ops that ONNX's type and shape inference does not check and its runtimes rely on, checked
at parse with the node named, once shapes are inferred (onnxruntime crashes on some of them, or blames
the inputs; TensorRT fails inside the build):

- the condition of If, and the trip count and condition of Loop, hold exactly one element;
- a Loop's body takes and gives as many values as the node has inputs and outputs (ONNX checks
  If's and Scan's subgraphs, not Loop's);
- Conv's bias is 1-D with one value per output channel (ConvTranspose's too), Gemm's C broadcasts to
  its [M, N] result, Reshape's shape is 1-D;
- a convolution or pooling window fits in its padded input (onnxruntime and ONNX's inference size a
  [1]-wide input under a 2-wide window as 1, TensorRT as 0);
- a Loop must be able to finish: one whose condition never turns false and whose trip count is absent
  (ONNX's `for (;;)`) or beyond any run (more than 2**31 - 1 iterations, TensorRT's limit too) would
  hang `trtc run` and every later stage that executes it.

A Loop's condition never turns false when it starts true (no input, or a constant true) and the body
hands it back unchanged: its condition output is its condition input, an Identity of it, or a
constant true. Any other body (`i < n`, a data-dependent test) may stop early and is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.walk import all_graphs

TRIP_LIMIT = 2**31 - 1


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    try:
        return np.asarray(value.const_value.numpy())
    except Exception:  # a tensor numpy cannot hold is not a condition or a count we can read
        return None


def _static_dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape.dims):
        return None
    return list(value.shape.dims)


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _one_element(node: ir.Node, indexes: dict[int, str]) -> str | None:
    for index, role in indexes.items():
        dims = _static_dims(_input(node, index))
        if dims is not None and math.prod(dims) != 1:
            return f"its {role} {node.inputs[index].name!r} must hold exactly one element, it is {dims}"
    return None


def _always_true(value: ir.Value | None) -> bool:
    """An absent condition, or a constant whose only element is true."""
    if value is None:
        return True
    array = _constant(value)
    return array is not None and array.size == 1 and bool(array.reshape(-1)[0])


def _never_stops(body: ir.Graph) -> bool:
    """The body's condition output is its condition input (as is or through Identity) or constant true."""
    if len(body.inputs) < 2 or not body.outputs:
        return False
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    producer = cond_out.producer()
    if cond_out is cond_in:
        return True
    if producer is not None:
        return producer.op_type == "Identity" and list(producer.inputs) == [cond_in]
    return cond_out.const_value is not None and _always_true(cond_out)


def _endless(node: ir.Node) -> str | None:
    body = node.attributes.get("body")
    if body is None or body.type != ir.AttributeType.GRAPH or not _never_stops(body.value):
        return None
    if not _always_true(_input(node, 1)):
        return None
    if _input(node, 0) is None:
        return "it would not finish: its condition never turns false and it has no trip count"
    trips = _constant(_input(node, 0))
    if trips is not None and trips.size == 1 and int(trips.reshape(-1)[0]) > TRIP_LIMIT:
        return (f"it would not finish: its condition never turns false and its trip count is "
                f"{int(trips.reshape(-1)[0])} (more iterations than the {TRIP_LIMIT} a run may take)")
    return None


def _graph(node: ir.Node, name: str) -> ir.Graph | None:
    attr = node.attributes.get(name)
    return attr.value if attr is not None and attr.type == ir.AttributeType.GRAPH else None


def _arity(node: ir.Node, name: str, inputs: int, outputs: int) -> str | None:
    """Why subgraph `name` does not take `inputs` values and give `outputs`, or None."""
    graph = _graph(node, name)
    if graph is None:
        return None
    if len(graph.inputs) != inputs:
        return f"its {name} takes {len(graph.inputs)} inputs, the node gives it {inputs}"
    if len(graph.outputs) != outputs:
        return f"its {name} gives {len(graph.outputs)} outputs, the node needs {outputs}"
    return None


def _loop(node: ir.Node) -> str | None:
    # body(iteration, condition, carried...) -> (condition, carried..., scan outputs...)
    return (_arity(node, "body", len(node.inputs), 1 + len(node.outputs))
            or _one_element(node, {0: "trip count", 1: "condition"}) or _endless(node))


def _if(node: ir.Node) -> str | None:
    return _one_element(node, {0: "condition"})


def _reshape(node: ir.Node) -> str | None:
    shape = _input(node, 1)
    if shape is not None and shape.shape is not None and shape.shape.rank() != 1:
        return f"its shape {shape.name!r} must be 1-D, it is {list(shape.shape.dims)}"
    return None


def _attribute_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.value if attr is not None and isinstance(attr.value, int) else default


def _dims(value: ir.Value | None) -> list[int | None] | None:
    """The dims of a value of known rank, None for each one not a number."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape.dims]


def _gemm_bias(node: ir.Node) -> str | None:
    a, b, c = (_dims(_input(node, i)) for i in range(3))
    if a is None or b is None or c is None or len(a) != 2 or len(b) != 2:
        return None
    rows = a[1] if _attribute_int(node, "transA", 0) else a[0]
    cols = b[0] if _attribute_int(node, "transB", 0) else b[1]
    if len(c) > 2 or any(d is not None and want is not None and d not in (1, want)
                         for d, want in zip(reversed(c), (cols, rows))):
        result = ", ".join("?" if d is None else str(d) for d in (rows, cols))
        return f"its C {node.inputs[2].name!r} of shape {c} does not broadcast to its result [{result}]"
    return None


def _conv_bias(node: ir.Node) -> str | None:
    bias, weight = _static_dims(_input(node, 2)), _static_dims(_input(node, 1))
    if bias is None or weight is None or len(weight) < 2:
        return None
    group = node.attributes.get("group")
    groups = group.value if group is not None and isinstance(group.value, int) else 1
    channels = weight[0] if node.op_type == "Conv" else weight[1] * groups
    if bias != [channels]:
        return (f"its bias {node.inputs[2].name!r} must be 1-D with one value per output channel ({channels}), "
                f"it is {bias}")
    return None


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    value = attr.value if attr is not None else None
    return list(value) if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value) else None


def _window_fits(node: ir.Node) -> str | None:
    x = _dims(_input(node, 0))
    kernel = _ints(node, "kernel_shape")
    if kernel is None and node.op_type == "Conv":
        weight = _dims(_input(node, 1))
        kernel = weight[2:] if weight is not None else None
    auto_pad = node.attributes.get("auto_pad")
    if x is None or not kernel or None in kernel or len(x) != len(kernel) + 2 or (
            auto_pad is not None and auto_pad.value not in ("NOTSET", b"NOTSET")):
        return None
    rank = len(kernel)
    pads = _ints(node, "pads") or [0] * 2 * rank
    dilations = _ints(node, "dilations") or [1] * rank
    if len(pads) != 2 * rank or len(dilations) != rank:
        return None
    for axis, (size, k, d) in enumerate(zip(x[2:], kernel, dilations)):
        padded, window = None if size is None else size + pads[axis] + pads[rank + axis], (k - 1) * d + 1
        if padded is not None and padded < window:
            return f"its window ({window}) is larger than its padded input ({padded}) on axis {axis + 2}"
    return None


RULES: dict[str, Callable[[ir.Node], str | None]] = {
    "Loop": _loop, "If": _if, "Conv": lambda n: _conv_bias(n) or _window_fits(n), "ConvTranspose": _conv_bias,
    "Gemm": _gemm_bias, "Reshape": _reshape, "MaxPool": _window_fits, "AveragePool": _window_fits,
    "LpPool": _window_fits}


def check_node_rules(model: ir.Model, where: str) -> None:
    """Refuse the first node that breaks a rule of its op (see the module docstring)."""
    for graph in all_graphs(model.graph):
        for node in graph:
            rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is not None and (why := rule(node)):
                raise TrtcError(f"node {node.name!r} ({node.op_type}): {why}", where=where,
                                hint="the model breaks the op's rules; fix the exporter or re-export it")
