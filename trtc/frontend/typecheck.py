"""ONNX's type and shape inference as a check: a node whose inputs break its op's rules (MatMul of
[B, 32] by [5, 4], Add of float and int64, Unsqueeze at axis 2**40, negative pads) is refused at parse,
in ONNX's words and with the node, instead of surfacing later as the CPU reference's internal error
or a TensorRT failure.

It runs on the proto as the file gives it (local functions inlined), strict, with types checked, and
without what the file declares beyond its inputs and weights (value_info, output types): trtc corrects
wrong declarations with a warning (see shapes.py), so only the graph's own computation is judged. Weights in
external data count by their type and shape (their values are not read).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import onnx

from trtc.errors import TrtcError
from trtc.frontend.shapes import _take_declarations
from trtc.ir.onnx_load import outer_outputs_through_identity

# One node's complaint in ONNX's report: "(op_type:MatMul, node name: fc2): [ShapeInferenceError] ...".
_NODE_ERROR = re.compile(r"\(op_type:(?P<op>[^,)]*)(?:, node name: (?P<name>[^)]*))?\): (?P<words>.*)")
_NESTED = "Inference error(s): "


def _as_inputs(graph: onnx.GraphProto) -> None:
    """Make `graph`'s external initializers inputs of the same type and shape: inference reads no value."""
    kept, listed = [], {vi.name for vi in graph.input}
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            kept.append(tensor)
        elif tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _subgraph_ops(graph: onnx.GraphProto) -> set[tuple[str, str]]:
    """(op_type, name) of the nodes that hold subgraphs, in `graph` and below."""
    found = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            if subs:
                found.add((node.op_type, node.name))
            for sub in subs:
                found |= _subgraph_ops(sub)
    return found


def _node(op: str, name: str | None) -> str:
    return f"node {name!r} ({op})" if name else f"an unnamed {op} node"


@dataclasses.dataclass(frozen=True)
class NodeError:
    where: str  # "node 'fc2' (MatMul)", "node 'body_add' (Add) in node 'loop' (Loop)"
    op: str  # the op of the node that complains (the innermost one)
    words: str  # ONNX's

    def __str__(self) -> str:
        return f"{self.where}: {self.words}"


def _innermost(match: re.Match, holders: set[tuple[str, str]]) -> NodeError | None:
    """One complaint, followed into the subgraph it came from; None for one from inside the function
    body of an ONNX op (MeanVarianceNormalization's in onnx 1.23): ONNX's own."""
    where, words = _node(match["op"], match["name"]), match["words"]
    while _NESTED in words:
        inner = _NODE_ERROR.match(words.split(_NESTED, 1)[1])
        if (match["op"], match["name"] or "") not in holders or inner is None:
            return None
        where, words, match = f"{_node(inner['op'], inner['name'])} in {where}", inner["words"], inner
    return NodeError(where, match["op"], words)


def node_errors(report: str, holders: set[tuple[str, str]]) -> list[NodeError]:
    """Each complaint of ONNX's report that names a node of the model; `holders` are the (op, name) of
    its nodes with subgraphs."""
    errors = []
    for line in report.splitlines():
        line = line.strip().removeprefix("[ShapeInferenceError] ").removeprefix(_NESTED)
        if (match := _NODE_ERROR.match(line)) and (found := _innermost(match, holders)):
            errors.append(found)
    return errors


# "B has inconsistent type tensor(int64)": the types bound to one of the op's type variables differ.
_INCONSISTENT = re.compile(r"(\w+) has inconsistent type ")
# "data typestr: T, has unsupported type: tensor(bool)": a type outside the op's list.
_UNSUPPORTED = re.compile(r"has unsupported type: (\S+)")


def _the_models_fault(error: NodeError, opset: int) -> bool:
    """Whether a complaint is about the model, not ONNX disagreeing with itself. Not the model's:
    - a numeric or bool type outside the op's list at the model's opset (ReduceMax of bool before
      opset 20): TensorRT may take it where ONNX's schema and onnxruntime do not; the build's support
      check decides (a string, a sequence or a map where the op takes none is the model's fault);
    - an inconsistent type on an output: ONNX's inference giving an output another type than its
      schema binds (RMSNormalization's Y gets X's type in onnx 1.23, the schema says the scale's)."""
    if (unsupported := _UNSUPPORTED.search(error.words)) is not None:
        kind = unsupported[1]
        return not kind.startswith("tensor(") or kind == "tensor(string)"
    if (match := _INCONSISTENT.search(error.words)) is None:
        return True
    try:
        outputs = {o.name for o in onnx.defs.get_schema(error.op, opset).outputs}
    except onnx.defs.SchemaError:
        return False
    return match[1] not in outputs


def _inference_errors(judged: onnx.ModelProto, check_type: bool) -> list[NodeError]:
    try:
        onnx.shape_inference.infer_shapes(judged, check_type=check_type, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        return node_errors(str(exc), _subgraph_ops(judged.graph))
    return []


def check_types(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a graph ONNX's inference finds ill-typed or ill-shaped (see the module docstring).

    With types checked ONNX stops at the first type error; when that one is not the model's fault
    (`_the_models_fault`), the shapes are judged again without the type check."""
    judged = onnx.ModelProto()
    judged.CopyFrom(proto)
    _take_declarations(judged)
    for depth, graph in enumerate(_graphs(judged.graph)):
        for output in graph.output:  # an output naming an input or a weight: its type is theirs
            output.ClearField("type")
        del graph.value_info[:]  # those about a weight too: its dims are the truth
        _as_inputs(graph)
        if depth:  # ONNX's If inference types a branch output that is an outer value as unknown
            outer_outputs_through_identity(graph)
    opset = next((o.version for o in judged.opset_import if o.domain in ("", "ai.onnx")), 1)
    found = _inference_errors(judged, check_type=True)
    errors = [e for e in found if _the_models_fault(e, opset)]
    if found and not errors:
        errors = [e for e in _inference_errors(judged, check_type=False) if _the_models_fault(e, opset)]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise TrtcError(f"invalid ONNX model: {errors[0]}{more}", where=str(path),
                        hint="ONNX's type and shape inference refuses it; fix the exporter or re-export it")


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _graphs(sub)
