"""What an artifact serves: its inputs and outputs as clients see them, and the shapes it takes.

An engine's comes from its sidecar (the model's types, the carried ones beside them, the
profiles); an `.onnx`/`.trtir`'s from the model and the `--shapes` ranges given as to `build`.
The batch dim is found here, once, for the config writer and the checks alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError
from trtc.lower.profiles import ProfileSpec, Range

BATCHING_OFF_MIN = 1  # Triton's batcher sends a batch of 1 whenever one request waits alone


@dataclasses.dataclass(frozen=True)
class ServedTensor:
    """An input or output: the model's dtype (numpy name), dims with -1 for dynamic ones, the
    dynamic dims' names where known, the type an engine carries it in when that differs, and
    whether a request may leave it out (an input marked `optional: true` in the config)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()
    engine_dtype: str | None = None
    optional: bool = False

    def describe(self) -> str:
        dims = "x".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]" + (" (optional)" if self.optional else "")


@dataclasses.dataclass(frozen=True)
class Signature:
    """An artifact as a server sees it. `profiles`: one dict per optimization profile, input name
    -> (MIN, OPT, MAX) dims; empty for a model without dynamic dims."""

    kind: str  # "plan", "trtir", "onnx", or "llm" (the decoupled LLM model: trtc.serve.llm_signature)
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]
    profiles: tuple[dict[str, Range], ...]

    def tensors(self) -> tuple[ServedTensor, ...]:
        return self.inputs + self.outputs

    def batch_reason(self) -> str | None:
        """None when every input and output leads with one dynamic dim (the batch), else why not."""
        if not self.inputs:
            return "the model has no inputs"
        for t in self.tensors():
            if not t.shape or t.shape[0] >= 0:
                return f"{t.name!r} has no dynamic leading dim ({t.describe()})"
        names = {t.dim_names[0] if t.dim_names else None for t in self.tensors()}
        if len(names) > 1 or None in names and any(t.dim_names for t in self.tensors()):
            listed = ", ".join(f"{t.name}: {t.dim_names[0] if t.dim_names else '?'}" for t in self.tensors())
            return f"the leading dims are not one dim ({listed})"
        return None

    def batch_ranges(self) -> list[tuple[int, int, int]]:
        """Each profile's (MIN, OPT, MAX) of the batch dim, over all inputs (the tightest)."""
        ranges = []
        for profile in self.profiles:
            lo = max(profile[t.name][0][0] for t in self.inputs)
            hi = min(profile[t.name][2][0] for t in self.inputs)
            opt = min(max(profile[t.name][1][0] for t in self.inputs), hi)
            ranges.append((lo, opt, hi))
        return ranges


def _tensor(entry: Mapping[str, Any]) -> ServedTensor:
    from trtc.runtime.sidecar import sidecar_dtype

    engine = entry.get("engine_dtype")
    return ServedTensor(entry["name"], sidecar_dtype(entry["dtype"]).name, tuple(int(d) for d in entry["shape"]),
                        tuple(entry.get("dim_names") or ()),
                        sidecar_dtype(engine).name if engine else None)


def plan_signature(sidecar: Mapping[str, Any]) -> Signature:
    """An engine's signature from its sidecar."""
    profiles = tuple({name: tuple(tuple(int(d) for d in dims) for dims in rng) for name, rng in p.items()}
                     for p in sidecar.get("profiles") or [])
    return Signature("plan", tuple(_tensor(e) for e in sidecar["inputs"]),
                     tuple(_tensor(e) for e in sidecar["outputs"]), profiles)


def _value_tensor(value) -> ServedTensor:
    from trtc.reference.feeds import numpy_dtype

    if value.type is None or value.shape is None or value.dtype is None:
        raise TrtcError(f"{value.name!r} is not a tensor of known rank; Triton declares every input and output "
                        "with a type and a rank", hint="give the model's inputs shapes when exporting it")
    dims = tuple(d if isinstance(d, int) else -1 for d in value.shape.dims)
    names = tuple(None if isinstance(d, int) else d.value for d in value.shape.dims)
    return ServedTensor(value.name, numpy_dtype(value.dtype).name, dims, names if any(names) else ())


def model_signature(model, kind: str, profiles: Sequence[ProfileSpec], where: str) -> Signature:
    """An `.onnx`/`.trtir`'s signature; dynamic inputs need ranges as `build` does (`--shapes`)."""
    from trtc.lower.profiles import resolve_profiles

    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    resolved = resolve_profiles(model, profiles, where)
    return Signature(kind, tuple(_value_tensor(v) for v in inputs),
                     tuple(_value_tensor(v) for v in model.graph.outputs),
                     tuple({n: tuple(map(tuple, r)) for n, r in p.items()} for p in resolved))


def artifact_signature(path: Path, profiles: Sequence[ProfileSpec] = ()) -> Signature:
    """The signature of a `.plan` (its sidecar) or an `.onnx`/`.trtir` (the model, ranges from `profiles`)."""
    from trtc.runtime.sidecar import PLAN_SUFFIXES, read_sidecar

    if path.suffix in PLAN_SUFFIXES:
        if profiles:
            raise TrtcError("an engine's shapes were fixed when it was built", where="--shapes",
                            hint="drop --shapes, or rebuild the engine with them")
        return plan_signature(read_sidecar(path))
    from trtc.loading import artifact_kind, open_model

    return model_signature(open_model(path).model, artifact_kind(path), profiles, str(path))
