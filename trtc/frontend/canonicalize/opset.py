"""Opset upgrade: `Squeeze(x) {axes=[0]}` at opset 11 -> `Squeeze(x, axes)` at opset 18, etc.

ONNX's version converter carries each op across the versions where its form or
semantics changed, so the canonical forms come from one audited table rather
than a rule per op here.
"""

from __future__ import annotations

import onnx
import onnx.version_converter

# Opset 18 is the first where every Reduce* op takes axes as an input.
CANONICAL_OPSET = 18


def default_opset(proto: onnx.ModelProto) -> int:
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 0


def upgrade_opset(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Return the model at opset >= CANONICAL_OPSET, or unchanged with the reason it could not be.

    A model whose ops the converter cannot carry keeps its opset: it stays runnable,
    and later stages accept both forms of the few ops concerned.
    """
    current = default_opset(proto)
    if current >= CANONICAL_OPSET:
        return proto, None
    try:
        upgraded = onnx.version_converter.convert_version(proto, CANONICAL_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors/ValueErrors
        return proto, f"kept opset {current}: {str(exc).splitlines()[0]}"
    # Old models (IR < 4) list every initializer as an input; the new opset needs a new IR.
    upgraded.ir_version = max(upgraded.ir_version, onnx.helper.find_min_ir_version_for(
        list(upgraded.opset_import), ignore_unknown=True))
    return upgraded, None
