"""Canonicalization: one form per op, so later stages never see variants.

Two steps. `upgrade_opset` lifts the default-domain opset to at least
`CANONICAL_OPSET` with ONNX's version converter, which rewrites the variant forms
(Upsample -> Resize; attribute forms of Squeeze/Unsqueeze/Split/Reduce*/Clip/Pad/
Slice -> input forms). Then the IR rules registered below with `@canonical_rule`
run once each, in registration order.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

CanonicalRule = Callable[[ir.Model], int]
RULES: dict[str, CanonicalRule] = {}


def canonical_rule(fn: CanonicalRule) -> CanonicalRule:
    """Register an IR rewrite that returns how many places it changed."""
    RULES[fn.__name__] = fn
    return fn


def canonicalize(model: ir.Model) -> dict[str, int]:
    """Run every canonical rule; return the count of rewrites per rule."""
    return {name: rule(model) for name, rule in RULES.items()}


# Import the rule modules so their decorators run.
from trtc.frontend.canonicalize import (  # noqa: E402,F401
    constants,
    dropout,
    initializer_inputs,
    inline_if,
)
from trtc.frontend.canonicalize.opset import CANONICAL_OPSET, upgrade_opset  # noqa: E402

__all__ = ["CANONICAL_OPSET", "RULES", "canonical_rule", "canonicalize", "upgrade_opset"]
