"""Weights a weight-stripped model leaves out (`--weightless`).

`polygraphy surgeon weight-strip` writes a model whose large initializers keep their type and dims but no
data, marked with doc_string "TRT_WEIGHTLESS" (the model's doc_string says so too); the engine built from it
is refittable and stripped of those weights, which are refitted on the device from the full model. trtc takes
such a model only when asked (`--weightless`): each data-less initializer of the main graph becomes a
`WeightlessTensor`, which is serialized as it came (a data-less TensorProto) and raises `WeightMissing` on any
read of its values, so that no pass, no CPU run and no lowering ever computes with values the model does not
hold. Readers that can do without the values (the passes' `const_array`, the lowering's `const`) see no
constant there; the lowering makes each one a named, refittable constant (`LowerCtx.refittable`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
import onnx_ir as ir

from trtc.errors import TrtcError

MARKER = "TRT_WEIGHTLESS"  # polygraphy's doc_string for a stripped initializer ("TRT_WEIGHTLESS/" + sparsity)
OPTION = "--weightless"


class WeightMissing(TrtcError):
    """Something tried to read the values of a weight the model does not hold."""


class WeightlessTensor(ir.TensorProtoTensor):
    """An initializer with a type and dims but no data: its size is known, its values are not."""

    __slots__ = ()

    def _missing(self) -> WeightMissing:
        return WeightMissing(f"the values of weight {self.name!r} are not in the model (weight-stripped, parsed "
                             f"with {OPTION}) and cannot be read", hint=WITH_WEIGHTS_HINT)

    def numpy(self):
        raise self._missing()

    def tobytes(self) -> bytes:
        raise self._missing()

    def tofile(self, file) -> None:
        raise self._missing()

    def __array__(self, dtype: Any = None, copy: Any = None):
        raise self._missing()

    def __dlpack__(self, *, stream: Any = None):
        raise self._missing()


WITH_WEIGHTS_HINT = ("a weight-stripped model only builds into a refittable engine; give the model with its "
                     "weights to run, compare or calibrate it")


def weightless_tensor(proto: onnx.TensorProto) -> WeightlessTensor:
    """The IR's tensor for a data-less initializer, marked as polygraphy marks one (kept as the file has it
    when marked already)."""
    if MARKER not in proto.doc_string:
        proto.doc_string = f"{MARKER}/"
    return WeightlessTensor(proto)


def is_weightless(tensor: object) -> bool:
    return isinstance(tensor, WeightlessTensor)


def has_no_data(proto: onnx.TensorProto) -> bool:
    """A tensor that declares elements but holds none: no raw_data, no typed values, no external data."""
    if proto.data_location == onnx.TensorProto.EXTERNAL or proto.HasField("raw_data"):
        return False
    typed = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    elements = 1
    for d in proto.dims:
        elements *= d
    return elements > 0 and not any(len(getattr(proto, field)) for field in typed)


def mark_weightless(model: ir.Model, names: Iterable[str]) -> None:
    """Make the main graph's initializers named in `names` `WeightlessTensor`s (in place)."""
    for name in names:
        value = model.graph.initializers[name]
        value.const_value = weightless_tensor(ir.serde.serialize_tensor(value.const_value))


def weightless_values(model: ir.Model) -> list[ir.Value]:
    """The main graph's initializers that hold no data, in the graph's order."""
    return [v for v in model.graph.initializers.values() if is_weightless(v.const_value)]


def weightless_record(model: ir.Model) -> list[dict[str, Any]]:
    """What an artifact's metadata and an engine's sidecar say of the missing weights: name, type, shape."""
    return [{"name": v.name, "dtype": v.const_value.dtype.name.lower(), "shape": [int(d) for d in v.const_value.shape]}
            for v in weightless_values(model)]


def names_text(names: list[str], shown: int = 8) -> str:
    """'a', 'b' and 3 more: the names of missing weights in one line."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def refuse_weightless(model: ir.Model, where: str, doing: str) -> None:
    """One line naming every missing weight, for `doing` (run, compare...) that needs their values."""
    names = [v.name for v in weightless_values(model)]
    if names:
        raise WeightMissing(f"cannot {doing}: the model holds no values for {len(names)} weight(s) "
                            f"({names_text(names)}; weight-stripped, parsed with {OPTION})", where=where,
                            hint=WITH_WEIGHTS_HINT)


def refuse_unrefitted(sidecar: dict[str, Any], where: str) -> None:
    """One line for an engine whose sidecar says it needs refitting (built from a weight-stripped model): trtc
    does not refit, and the plan computes nothing meaningful until it is refitted."""
    refit = sidecar.get("refit") or {}
    if refit.get("needed"):
        names = [w["name"] for w in refit.get("weights", [])]
        raise TrtcError(f"the engine is stripped of {len(names)} weight(s) ({names_text(names)}) and must be refitted "
                        "with them before it runs", where=where,
                        hint="refit it with TensorRT's Refitter (set_named_weights by these names) from the full "
                             "model's weights, or build the full model")
