"""The opset < 13 Softmax as the version converter writes it -> one Softmax.

    y = Reshape(Softmax(Flatten(x) {axis=k}) {axis=-1}, shape(x))   ->   y = Softmax(x) {axis=a}

Before opset 13, Softmax normalized over all axes from k on; the converter keeps that meaning
with Flatten/Reshape. When only one of those axes (a) is longer than 1 — classifier heads of
shape [N, C, 1, 1] — it is a plain Softmax over that axis.
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.ir.rewrite import const_array, is_op, only_user, producer_of, replace_with
from trtc.passes.registry import PassContext, register_pass


def _single_long_axis(x: ir.Value, first: int) -> int | None:
    if x.shape is None or not all(isinstance(d, int) for d in x.shape.dims):
        return None
    long_axes = [i for i, d in enumerate(x.shape.dims) if i >= first and d != 1]
    return long_axes[0] if len(long_axes) == 1 else None


@register_pass("legacy-softmax", order=12)
def simplify_legacy_softmax(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Flatten -> Softmax -> Reshape back (the pre-opset-13 form) -> Softmax over the one long axis."""
    count = 0
    for reshape in list(model.graph):
        if not is_op(reshape, "Reshape"):
            continue
        softmax = producer_of(reshape.inputs[0], "Softmax", "LogSoftmax")
        flatten = producer_of(softmax.inputs[0], "Flatten") if softmax is not None else None
        if flatten is None or only_user(softmax.outputs[0]) is not reshape:
            continue
        if only_user(flatten.outputs[0]) is not softmax:
            continue
        x = flatten.inputs[0]
        target = const_array(reshape.inputs[1])
        if x.shape is None or target is None or softmax.attributes.get_int("axis", -1) not in (-1, 1):
            continue
        rank = len(x.shape)
        first = flatten.attributes.get_int("axis", 1) % rank if rank else 0
        axis = _single_long_axis(x, first)
        if axis is None or [int(d) for d in target] != list(x.shape.dims):
            continue
        new = ir.node(softmax.op_type, [x], {"axis": axis}, name=softmax.name)
        replace_with(model.graph, reshape, [new], [reshape.outputs[0]], [new.outputs[0]],
                     dead=[reshape, softmax, flatten])
        count += 1
    return {"softmax": count} if count else {}
