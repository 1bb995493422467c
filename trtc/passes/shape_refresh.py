"""Shape inference refresh: re-infer types and shapes after rewrites (symbolic dims kept)."""

from __future__ import annotations

import onnx_ir as ir

from trtc.frontend.shapes import infer_shapes
from trtc.passes.registry import PassContext, register_pass


@register_pass("infer-shapes", order=100)
def refresh_shapes(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Re-run shape inference so rewritten values carry types and shapes."""
    missing = sum(1 for n in model.graph for v in n.outputs if v.type is None or v.shape is None)
    if not missing:
        return {}
    unknown = infer_shapes(model)
    filled = missing - len(unknown)
    return {"values-filled": filled} if filled > 0 else {}
