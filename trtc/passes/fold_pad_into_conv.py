"""Zero padding in front of a convolution -> the convolution's own pads.

    y = Conv(Pad(x, pads) {mode=constant, value 0}) {pads=p}   ->   y = Conv(x) {pads=p + spatial pads}

TorchScript exports of "same"-padded depthwise blocks (MobileNet) write the padding as a
separate Pad; TensorRT pads inside the convolution for free.
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.ir.rewrite import const_array, const_scalar, is_op, only_user, producer_of, remove_if_dead
from trtc.passes.registry import PassContext, register_pass


def _spatial_pads(pad: ir.Node, rank: int) -> list[int] | None:
    """The Pad's [begin..., end...] over the spatial axes, when it pads only them, with zeros, constantly."""
    if pad.attributes.get_string("mode", "constant") != "constant":
        return None
    pads = const_array(pad.inputs[1]) if len(pad.inputs) > 1 else None
    if pads is None or len(pads) != 2 * rank:
        return None
    if len(pad.inputs) > 2 and pad.inputs[2] is not None and const_scalar(pad.inputs[2]) != 0:
        return None
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return None  # an axes input: rare; left alone rather than decoded
    begin, end = [int(p) for p in pads[:rank]], [int(p) for p in pads[rank:]]
    if any(begin[:2]) or any(end[:2]) or min(begin + end) < 0:
        return None
    return begin[2:] + end[2:]


@register_pass("fold-pad-into-conv", order=41)
def fold_pad_into_conv(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Fold a zero Pad over the spatial axes into the Conv that reads it."""
    count = 0
    for conv in list(model.graph):
        if not is_op(conv, "Conv") or conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            continue
        pad = producer_of(conv.inputs[0], "Pad")
        x = pad.inputs[0] if pad is not None else None
        if pad is None or only_user(pad.outputs[0]) is not conv or x.shape is None:
            continue
        extra = _spatial_pads(pad, len(x.shape))
        if extra is None:
            continue
        spatial = len(x.shape) - 2
        old = list(conv.attributes.get_ints("pads", [0] * (2 * spatial)))
        conv.attributes["pads"] = ir.AttrInt64s("pads", [a + b for a, b in zip(old, extra)])
        conv.replace_input_with(0, x)
        remove_if_dead(model.graph, [pad])
        count += 1
    return {"pad": count} if count else {}
