"""onnxruntime's contrib ops -> standard ONNX, before anything checks the model.

    SimplifiedLayerNormalization(x, scale)               -->  RMSNormalization(x, scale)
    com.microsoft.SkipSimplifiedLayerNormalization(...)  -->  Add(x, skip[, bias]), RMSNormalization
    com.microsoft.GroupQueryAttention(packed qkv, ...)   -->  Split, RotaryEmbedding, Concat(past, new),
                                                              Attention (opset 23)

onnxruntime-genai's exports write these (`SimplifiedLayerNormalization` in the default domain, where no
ONNX opset defines it). Each rule (one file per op, `@contrib_rule`) rewrites one node in place; they run on
the proto as read, before the op check, the type check and the opset upgrade, so those see standard ONNX
only (and the CPU reference runs the result), while any other custom-domain op is still refused by the op
check. A node a rule cannot rewrite exactly is refused in one line naming it and what is not handled.
The default-domain opset is raised to 23 (its ops only gained types since 18, see `require_opset`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.rewrite import add_constant, require_opset

CONTRIB_OPSET = 23  # RMSNormalization, RotaryEmbedding, Attention
GQA_OPSET = 24  # TensorScatter: GroupQueryAttention writes a row's new keys at its own length
MIN_SOURCE_OPSET = 18
ContribRule = Callable[[ir.Graph, ir.Node], None]
CONTRIB_RULES: dict[tuple[str, str], ContribRule] = {}


def contrib_rule(domain: str, op_type: str) -> Callable[[ContribRule], ContribRule]:
    """Register the rewrite of one contrib op (`domain` "" for onnxruntime's default-domain ones)."""
    def register(fn: ContribRule) -> ContribRule:
        CONTRIB_RULES[(domain, op_type)] = fn
        return fn
    return register


def refuse(node: ir.Node, what: str) -> TrtcError:
    """The one-line refusal of a contrib node the rewrite does not handle exactly."""
    return TrtcError(f"node {node.name!r} ({node.domain + '.' if node.domain else ''}{node.op_type}): {what}",
                     hint="trtc rewrites only the forms onnxruntime-genai writes")


def check_attributes(node: ir.Node, handled: dict[str, object]) -> None:
    """Refuse an attribute not in `handled`, or one whose value differs from the handled one (None: any)."""
    for name, attr in node.attributes.items():
        if name not in handled:
            raise refuse(node, f"attribute {name}={attr.value!r} is not handled")
        want = handled[name]
        if want is not None and attr.value != want:
            raise refuse(node, f"{name}={attr.value!r} is not handled (only {want!r})")


class Builder:
    """New nodes inserted before `anchor`, their outputs named after it."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node):
        self.graph, self.anchor, self.count = graph, anchor, 0
        self.prefix = anchor.name or anchor.op_type

    def __call__(self, op_type: str, inputs: Sequence[ir.Value | None], attributes=None, outputs: int = 1):
        self.count += 1
        name = f"{self.prefix}/{op_type}_{self.count}"
        node = ir.node(op_type, list(inputs), attributes or {}, name=name, num_outputs=outputs)
        for i, value in enumerate(node.outputs):
            value.name = f"{name}/output_{i}"
        self.graph.insert_before(self.anchor, node)
        return node.outputs[0] if outputs == 1 else list(node.outputs)

    def const(self, array, label: str) -> ir.Value:
        return add_constant(self.graph, np.asarray(array), f"{self.prefix}/{label}")


def optional(values: Sequence[ir.Value | None], index: int) -> ir.Value | None:
    """An optional input or output: None when absent or given the empty name."""
    if index >= len(values) or values[index] is None or not values[index].name:
        return None
    return values[index]


def used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def take_outputs(node: ir.Node, new: Sequence[ir.Value | None]) -> None:
    """Move every reader (and graph-output name) of `node`'s outputs to `new`, then remove `node`."""
    graph = node.graph
    for old, value in zip(node.outputs, new):
        if not used(old):
            continue
        if value.type is None:
            value.type, value.shape = old.type, old.shape
        if old.is_graph_output():
            name, old.name = old.name, None
            value.name = name
        old.replace_all_uses_with(value, replace_graph_outputs=True)
    graph.remove(node, safe=True)


def inv_std_var(build: Builder, x: ir.Value, axis: int, epsilon: float) -> ir.Value:
    """1 / sqrt(mean(x^2 over axes [axis, rank)) + epsilon) in float32, reduced axes kept (onnxruntime's
    optional inv_std_var output)."""
    xf = build("Cast", [x], {"to": ir.DataType.FLOAT})
    rank = build("Size", [build("Shape", [xf])])
    axes = build("Range", [build.const(np.array(axis, np.int64), "axis") if axis >= 0 else
                           build("Add", [rank, build.const(np.array(axis, np.int64), "axis")]),
                           rank, build.const(np.array(1, np.int64), "one")])
    mean = build("ReduceMean", [build("Mul", [xf, xf]), axes], {"keepdims": 1})
    eps = build.const(np.array(epsilon, np.float32), "epsilon")
    return build("Reciprocal", [build("Sqrt", [build("Add", [mean, eps])])])


PADDING_KEY = "trtc.padding"  # model metadata: which side shorter prompts are padded on


def rewrite_contrib_ops(proto: onnx.ModelProto, where: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The model with every registered contrib op rewritten; unchanged (and no copy) when it has none.
    `where` (the file) goes into a refusal."""
    wanted = {(n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in proto.graph.node}
    if not wanted & set(CONTRIB_RULES):
        return proto, {}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_SOURCE_OPSET:
        raise TrtcError(f"onnxruntime contrib ops in a model of opset {opset}: only opset >= "
                        f"{MIN_SOURCE_OPSET} is rewritten", where=where, hint="re-export it at a newer opset")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # what the checks after this would refuse, in their words
        raise TrtcError(f"malformed graph: {str(exc).splitlines()[0]}", where=where,
                        hint="re-export the model") from None
    counts: dict[str, int] = {}
    for node in list(model.graph):
        rule = CONTRIB_RULES.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        if rule is not None:
            try:
                rule(model.graph, node)
            except TrtcError as exc:
                raise TrtcError(exc.message, where=where, hint=exc.hint) from None
            except Exception as exc:  # a malformed node (an attribute of the wrong type, a missing input)
                raise TrtcError(refuse(node, f"malformed: {str(exc).splitlines()[0] if str(exc) else exc!r}").message,
                                where=where, hint="re-export the model") from None
            counts[f"contrib_{node.op_type}"] = counts.get(f"contrib_{node.op_type}", 0) + 1
    opset = GQA_OPSET if "contrib_GroupQueryAttention" in counts else CONTRIB_OPSET
    require_opset(model, opset)
    if "contrib_GroupQueryAttention" in counts:
        # GQA reads a row's length off its mask's sum: rows are padded on the right. The generate
        # loop reads this (trtc.llm.decoder) where the op that said so is gone.
        model.metadata_props[PADDING_KEY] = "right"
    for domain in [d for d in model.opset_imports if d not in ("", "ai.onnx")]:
        if not any(n.domain == domain for n in model.graph):
            del model.opset_imports[domain]
            model.graph.opset_imports.pop(domain, None)
    model.ir_version = max(model.ir_version or 0, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", opset)]))
    rewritten = ir.serde.serialize_model(model)
    typed = [vi for vi in rewritten.graph.value_info if vi.HasField("type")]  # the new values get theirs later
    del rewritten.graph.value_info[:]
    rewritten.graph.value_info.extend(typed)
    return rewritten, counts


# Import the rule modules so their decorators run.
from trtc.frontend.canonicalize import (  # noqa: E402,F401
    group_query_attention,
    simplified_layer_norm,
    skip_simplified_layer_norm,
)
