"""IR -> TensorRT network definition: inputs, one converter per node, outputs, and the
check that every TensorRT tensor has the dtype and shape the IR inferred.

Layer names and metadata are set here, in one place: every layer a converter adds for
node N is named N (or N/k for the k-th of several) and carries `onnx:OP:N` as metadata,
so engine layers map back to ONNX nodes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.lower import ops  # noqa: F401  (registers the converters)
from trtc.lower.backend import Backend
from trtc.lower.context import LowerCtx, RecordingLogger, first_error, held_array, trt_dtype
from trtc.lower.legalize import legalize_types
from trtc.lower.registry import find_converter, unsupported_nodes

# Told where the lowering is: ("lowering", layer name, op) before a node's layers are added, ("added", name,
# op) after; `build_engine` adds ("building", "", "") once the network is whole (the isolated build's record).
Watch = Callable[[str, str, str], None]


@dataclasses.dataclass
class Lowered:
    builder: object
    network: object
    ctx: LowerCtx
    logger: object
    carried: dict[str, ir.DataType]  # graph inputs/outputs carried in another type: the model's type


def dims_of(value: ir.Value) -> tuple[int, ...]:
    """TensorRT dims: static sizes, -1 for symbolic ones."""
    return tuple(d if isinstance(d, int) else -1 for d in value.shape.dims)


def check_supported(model: ir.Model, backend: Backend, where: str) -> None:
    """Refuse, before any layer is added, what `inspect --support` reports: the same checks."""
    problems = unsupported_nodes(model, backend.name)
    if problems:
        listed = "; ".join(f"{p['node']} ({p['op']}): {p['reason']}" for p in problems)
        raise TrtcError(f"{len(problems)} node(s) cannot be lowered to TensorRT: {listed}", where=where,
                        hint="see `trtc build --dry-run` for the full report")


def lower(model: ir.Model, backend: Backend, where: str = "", watch: Watch | None = None) -> Lowered:
    """Build the TensorRT network for `model` (main graph; its types are legalized in place); `watch`
    is told each node's layer name and op before and after its layers are added."""
    check_supported(model, backend, where)
    carried = legalize_types(model)
    trt = backend.trt
    logger = RecordingLogger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(backend.network_flags())
    ctx = LowerCtx(backend, network, logger)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    for value in model.graph.inputs:
        if value.shape is None:
            raise TrtcError(f"input {value.name!r} has an unknown shape", where=where,
                            hint="re-export the model with input shapes")
        ctx.tensors[value] = network.add_input(value.name, trt_dtype(trt, value.dtype), dims_of(value))
    names: set[str] = set()
    for index, node in enumerate(model.graph):
        name = _unique_name(node, index, names)
        if watch is not None:
            watch("lowering", name, node.op_type)
        _lower_node(ctx, node, find_converter(node, opset), where, name)
        if watch is not None:
            watch("added", name, node.op_type)
    for value in model.graph.outputs:
        tensor = ctx.tensor(value)
        if tensor.is_network_input or tensor.is_network_output:
            # A tensor can be one output only, and never an input: copy it.
            tensor = ctx.check(network.add_identity(tensor)).get_output(0)
        tensor.name = value.name
        network.mark_output(tensor)
    check_agreement(model, ctx, where)
    return Lowered(builder, network, ctx, logger, carried)


def _unique_name(node: ir.Node, index: int, seen: set[str]) -> str:
    """The node's name, or op#index for unnamed (or repeated) ones: TensorRT needs unique layer names."""
    name = node.name if node.name and node.name not in seen else f"{node.name or node.op_type}#{index}"
    seen.add(name)
    return name


def _lower_node(ctx: LowerCtx, node: ir.Node, conv, where: str, name: str) -> None:
    ctx.begin(node)
    first = ctx.network.num_layers
    try:
        outputs = conv.fn(ctx, node)
    except TrtcError as exc:
        raise TrtcError(f"node {node.name!r} ({node.op_type}): {exc.message}", where=where) from None
    except Exception as exc:  # TensorRT's bindings raise ValueError/TypeError/RuntimeError
        text = str(exc).strip()
        reason = ctx.tensorrt_error() or (text.splitlines()[0] if text else type(exc).__name__)
        raise TrtcError(f"internal error lowering node {node.name!r} ({node.op_type}): {reason}", where=where,
                        hint="please report it with the model") from exc
    added = ctx.network.num_layers - first
    for k in range(added):
        layer = ctx.network.get_layer(first + k)
        layer.name = name if added == 1 else f"{name}/{k}"
        layer.metadata = f"onnx:{node.op_type}:{node.name}"
    for value, tensor in zip(node.outputs, outputs, strict=False):
        if tensor is not None and value.name:
            ctx.bind(value, tensor)


def _same_dtype(trt, tensor, value: ir.Value) -> bool:
    return tensor.dtype == trt_dtype(trt, value.dtype)


def check_agreement(model: ir.Model, ctx: LowerCtx, where: str) -> None:
    """Every lowered value's TensorRT dtype and shape agree with the IR's inference."""
    trt = ctx.trt
    for node in model.graph:
        for value in node.outputs:
            tensor = ctx.tensors.get(value)
            if tensor is None and value in ctx.known and isinstance(value.type, ir.TensorType):
                _check_known(node, value, ctx.known[value], where)
                continue
            if tensor is None or not isinstance(value.type, ir.TensorType):
                continue
            if not _same_dtype(trt, tensor, value):
                raise TrtcError(
                    f"internal error: node {node.name!r} ({node.op_type}) output {value.name!r} is "
                    f"{tensor.dtype} in TensorRT but {value.dtype.name} in the IR", where=where)
            if value.shape is None:
                continue
            got, want = _trt_shape(ctx, node, value, tensor, where), dims_of(value)
            if len(got) != len(want) or any(w >= 0 and g >= 0 and g != w for g, w in zip(got, want)):
                raise TrtcError(
                    f"internal error: node {node.name!r} ({node.op_type}) output {value.name!r} has shape "
                    f"{got} in TensorRT but {want} in the IR", where=where)


def _trt_shape(ctx: LowerCtx, node: ir.Node, value: ir.Value, tensor, where: str) -> tuple[int, ...]:
    """The tensor's shape as TensorRT computes it; one line with TensorRT's reason where it cannot (an
    error in the network it logged, e.g. a reshape to a shape of the wrong rank)."""
    try:
        return tuple(tensor.shape)
    except RuntimeError:
        reason = first_error(ctx.logger.errors) or "no reason logged"
        raise TrtcError(f"node {node.name!r} ({node.op_type}): TensorRT cannot compute the shape of its output "
                        f"{value.name!r}: {reason}", where=where) from None


def _check_known(node: ir.Node, value: ir.Value, data, where: str) -> None:
    """A value computed while building has the IR's type and shape (as `check_agreement` checks tensors):
    the type TensorRT holds its data in is the one it holds the IR type in."""
    if held_array(data).dtype != held_array(np.zeros(0, value.dtype.numpy())).dtype:
        raise TrtcError(f"internal error: node {node.name!r} ({node.op_type}) output {value.name!r} is "
                        f"{data.dtype} while building but {value.dtype.name} in the IR", where=where)
    want = dims_of(value) if value.shape is not None else None
    if want is not None and (len(want) != data.ndim or any(w >= 0 and w != g for g, w in zip(data.shape, want))):
        raise TrtcError(f"internal error: node {node.name!r} ({node.op_type}) output {value.name!r} has shape "
                        f"{data.shape} while building but {want} in the IR", where=where)


def build_failure(lowered: Lowered, messages: list[str], where: str) -> TrtcError:
    """The error for a build TensorRT refused: its first message, with the ONNX node of the first layer
    it names (layer names are node names, see `_lower_node`)."""
    reason = first_error(messages) or "no reason logged"
    node = _named_node(lowered.network, reason)
    return TrtcError(f"TensorRT could not build the engine: {f'{node}: ' if node else ''}{reason}", where=where)


def _named_node(network, message: str) -> str | None:
    """`node 'N' (Op)` for the layer named first (longest name at a place) in `message`, or None."""
    found: tuple[int, int, object] | None = None
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if not layer.name or not layer.metadata.startswith("onnx:"):
            continue
        match = re.search(rf"(?<![\w./]){re.escape(layer.name)}(?![\w./])", message)
        if match and (found is None or (match.start(), -len(layer.name)) < found[:2]):
            found = (match.start(), -len(layer.name), layer)
    if found is None:
        return None
    _, op, name = found[2].metadata.split(":", 2)
    return f"node {name!r} ({op})"
