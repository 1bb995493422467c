"""Constant-condition If inlining in the optimizer: `y = If(c)` -> the nodes of the branch `c` selects.

    c = Equal(Shape(x)[0], 1)  --fold-->  c: initializer true  --this pass-->  then-branch nodes, y renamed

The parse-time canonical rule (trtc/frontend/canonicalize/inline_if.py, where the rewrite is
written once) inlines the Ifs whose condition is constant from the start or after `--freeze`;
this pass inlines those whose condition only folding (constants, shapes) makes constant, so
the dead branch never reaches the support check or the build.
"""

from __future__ import annotations

import onnx_ir as ir

from trtc.frontend.canonicalize.inline_if import inline_constant_ifs
from trtc.passes.registry import PassContext, register_pass


# Order 35: after fold-constants (20) and fold-shapes (30), so a condition they make constant
# is inlined in the same iteration, and before the fusions see the branch's nodes.
@register_pass("inline-constant-if", order=35)
def inline_constant_if(model: ir.Model, ctx: PassContext) -> dict[str, int]:
    """Inline If nodes whose condition is constant (after folding): the taken branch replaces them."""
    count = inline_constant_ifs(model)
    return {"if": count} if count else {}
