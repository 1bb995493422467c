"""Dims of IR values, and when two of them are provably equal."""

from __future__ import annotations

import onnx_ir as ir

Dim = int | ir.SymbolicDim


def dims(value: ir.Value | None) -> tuple[Dim, ...] | None:
    """The value's dims (ints and symbols), or None when its shape is unknown."""
    return tuple(value.shape) if value is not None and value.shape is not None else None


def same_dim(a: Dim, b: Dim) -> bool:
    """Provably equal: equal ints, or the same named symbol. Two unknown dims are not equal
    (careful: onnx-ir's `SymbolicDim(None) == SymbolicDim(None)` is True)."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    return isinstance(a, ir.SymbolicDim) and isinstance(b, ir.SymbolicDim) and a.value is not None \
        and a.value == b.value
