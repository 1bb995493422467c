"""The converter registry: one small converter per ONNX op, registered by decorator with
the opset range it covers and its constraints as data.

Constraints are checked from the IR alone (no TensorRT needed), so `trtc build --dry-run`
and `trtc inspect --support` report exactly what the builder would refuse: the lowering runs the
same checks (`unsupported_nodes`) before it adds a layer, and a converter raises no refusal of its
own that a constraint could have found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import onnx_ir as ir

from trtc.ir.weightless import is_weightless
from trtc.lower.backend import auto_backend
from trtc.lower.expand import expand_ops
from trtc.lower.legalize import carry_issues, legalize_types
from trtc.lower.legalize_qdq import legalize_quantized


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A condition a node must meet; `check(node)` returns the reason it fails, or None. With
    `on_backend`, it is `check(node, backend)`, given the backend that builds ("tensorrt" or
    "tensorrt-rtx"), for what only one of them can build."""

    describe: str
    check: Callable[..., str | None]
    on_backend: bool = False

    def reason(self, node: ir.Node, backend: str) -> str | None:
        return self.check(node, backend) if self.on_backend else self.check(node)


@dataclasses.dataclass(frozen=True)
class Converter:
    op_type: str
    domain: str
    since: int
    until: int | None
    fn: Callable[..., Any]
    constraints: tuple[Constraint, ...]

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


CONVERTERS: dict[tuple[str, str], list[Converter]] = {}


def converter(op_types: str | Iterable[str], *, since: int = 1, until: int | None = None,
              constraints: Sequence[Constraint] = (), domain: str = "") -> Callable:
    """Register `fn(ctx, node) -> list of TensorRT tensors (one per node output)`."""
    names = [op_types] if isinstance(op_types, str) else list(op_types)

    def decorate(fn):
        for name in names:
            CONVERTERS.setdefault((domain, name), []).append(
                Converter(name, domain, since, until, fn, tuple(constraints)))
        return fn

    return decorate


def load_converters() -> dict[tuple[str, str], list[Converter]]:
    """The registry with every converter module imported (they need no TensorRT to register)."""
    import trtc.lower.ops  # noqa: F401

    return CONVERTERS


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def find_converter(node: ir.Node, opset: int) -> Converter | None:
    for conv in CONVERTERS.get((_domain(node), node.op_type), []):
        if conv.covers(opset):
            return conv
    return None


def support_issue(node: ir.Node, opset: int, backend: str | None = None) -> str | None:
    """Why `node` cannot be lowered by `backend` (default: the one `--backend auto` builds with), or
    None when it can."""
    candidates = CONVERTERS.get((_domain(node), node.op_type))
    if not candidates:
        return "no converter for this op yet"
    conv = find_converter(node, opset)
    if conv is None:
        ranges = ", ".join(f"{c.since}-{c.until or 'latest'}" for c in candidates)
        return f"converter covers opsets {ranges}, the model uses {opset}"
    backend = backend or auto_backend()
    for constraint in conv.constraints:
        reason = constraint.reason(node, backend)
        if reason is not None:
            return reason
    return None


def unsupported_nodes(model: ir.Model, backend: str | None = None) -> list[dict[str, str]]:
    """Every node of the main graph `backend` (default: `--backend auto`'s) cannot lower, with the
    reason. Ops TensorRT's layers lack are expanded (`trtc.lower.expand`) and values of types it lacks
    carried in types it has (`trtc.lower.legalize`) first, in place."""
    load_converters()
    backend = backend or auto_backend()
    expand_ops(model)
    legalize_quantized(model)  # uint8/asymmetric Q/DQ and int32-bias DQ into what TensorRT runs
    carry = carry_issues(model)
    if not carry:
        legalize_types(model)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    out = []
    for node in model.graph:
        reason = carry.get(node) or support_issue(node, opset, backend)
        if reason is not None:
            out.append({"node": node.name or "<unnamed>", "op": node.op_type, "reason": reason})
    return out


# ---------------------------------------------------------------- common constraints


def constant_input(index: int, what: str = "") -> Constraint:
    """Input `index` (when present) must be a constant."""
    label = what or f"input {index}"

    def check(node: ir.Node) -> str | None:
        if index < len(node.inputs) and node.inputs[index] is not None:
            value = node.inputs[index]
            if value.is_graph_input():
                return f"{label} ({value.name!r}) must be a constant: give its value with --freeze {value.name}=VALUES"
            if value.const_value is None:
                return f"{label} ({value.name!r}) must be a constant"
            if is_weightless(value.const_value):
                return f"{label} ({value.name!r}) must be a constant; the model holds no values for it (--weightless)"
        return None

    return Constraint(f"{label} constant", check)


def attribute_in(name: str, allowed: Iterable[Any], default: Any) -> Constraint:
    allowed = tuple(allowed)

    def check(node: ir.Node) -> str | None:
        attr = node.attributes.get(name)
        value = default if attr is None else attr.value
        if isinstance(value, bytes):
            value = value.decode()
        if value not in allowed:
            return f"attribute {name}={value!r} not supported (supported: {', '.join(map(str, allowed))})"
        return None

    return Constraint(f"{name} in {allowed}", check)


def known_rank(index: int = 0) -> Constraint:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and value.shape is None:
            return f"input {value.name!r} has an unknown rank"
        return None

    return Constraint(f"input {index} rank known", check)


SUPPORTED_DTYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.INT32,
                    ir.DataType.INT64, ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.BOOL,
                    ir.DataType.DOUBLE, ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4}


def tensor_types() -> Constraint:
    """Every input and output has a type TensorRT has (DOUBLE is lowered as FLOAT)."""

    def check(node: ir.Node) -> str | None:
        for value in [*node.inputs, *node.outputs]:
            if value is None or value.name == "":  # an absent optional input/output
                continue
            if not isinstance(value.type, ir.TensorType):
                return f"{value.name!r} is not a tensor (sequences/maps/optionals are not supported)"
            if value.dtype not in SUPPORTED_DTYPES:
                return f"{value.name!r} has type {value.dtype.name}, which TensorRT does not support"
        return None

    return Constraint("tensor types TensorRT supports", check)
