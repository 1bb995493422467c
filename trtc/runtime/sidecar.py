"""The `model.plan.json` sidecar: what an engine takes and gives, how and from what it was
built. Written by `trtc build`; read by `trtc inspect` and `trtc run` before any GPU work."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtc.errors import TrtcError

if TYPE_CHECKING:  # numpy and onnx_ir are imported where dtypes are read: `inspect X.plan` needs neither
    import numpy as np

    from trtc.reference.feeds import TensorSpec

PLAN_SUFFIXES = (".plan", ".engine")


@dataclasses.dataclass(frozen=True)
class EngineTensorSpec:
    """An input or output as the sidecar records it: -1 for a dynamic dim."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{dims_text(self.shape)}]"


def sidecar_dtype(name: str) -> np.dtype:
    """numpy dtype of a sidecar dtype name ("float", "float16", "int64": onnx_ir names lower-cased)."""
    import onnx_ir as ir

    from trtc.reference.feeds import numpy_dtype

    try:
        return numpy_dtype(ir.DataType[name.upper()])
    except (KeyError, TypeError, ValueError):
        raise TrtcError(f"unknown dtype {name!r} in the engine sidecar") from None


def sidecar_specs(entries: Sequence[Mapping[str, Any]]) -> list[EngineTensorSpec]:
    """The sidecar's `inputs` or `outputs` list as specs."""
    return [EngineTensorSpec(e["name"], sidecar_dtype(e["dtype"]), tuple(int(d) for d in e["shape"])) for e in entries]


def sidecar_inputs(sidecar: Mapping[str, Any]) -> list[TensorSpec]:
    """An engine's inputs as feeds are made for them (-1 dims are dynamic: None)."""
    from trtc.reference.feeds import TensorSpec

    return [TensorSpec(s.name, s.dtype, tuple(d if d >= 0 else None for d in s.shape))
            for s in sidecar_specs(sidecar["inputs"])]


def sidecar_path(plan: str | Path) -> Path:
    """Where `trtc build` writes an engine's sidecar: `model.plan.json` beside `model.plan`."""
    return Path(f"{plan}.json")


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    """The sidecar of `plan`, checked to be one; TrtcError when the engine or its sidecar is missing or bad."""
    plan = Path(plan)
    side = sidecar_path(plan)
    if not plan.is_file():
        raise TrtcError("engine file not found", where=str(plan))
    if not side.is_file():
        raise TrtcError(f"no sidecar {side.name} beside the engine", where=str(plan),
                        hint="engines built by trtc have one; rebuild with `trtc build` "
                             "(`trtc inspect` shows what the engine file itself tells)")
    try:
        data = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise TrtcError(f"sidecar is not valid JSON ({exc.msg})", where=str(side)) from None
    if not isinstance(data, dict) or data.get("format") != "trtc-plan":
        raise TrtcError("not a trtc engine sidecar", where=str(side))
    return data


def verify_plan_bytes(data: bytes, sidecar: Mapping[str, Any], where: str, *, trust: bool = False) -> None:
    """Deserializing a plan runs TensorRT's parser on its bytes: only bytes whose SHA-256 is the one
    the sidecar records (the engine trtc built) are deserialized, unless the user trusts the plan."""
    import hashlib

    if trust:
        return
    recorded = sidecar.get("plan_sha256")
    if recorded is None:
        raise TrtcError("the sidecar records no SHA-256 of the engine (built by an older trtc, or elsewhere)",
                        where=where, hint="rebuild it with `trtc build`, or pass --trust-plan if you trust the file")
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise TrtcError(f"the engine's bytes differ from those its sidecar records (SHA-256 {actual[:12]}..., "
                        f"recorded {recorded[:12]}...): changed, truncated or from elsewhere", where=where,
                        hint="rebuild it with `trtc build`, or pass --trust-plan if you trust the file")


def dims_text(dims: Sequence[int]) -> str:
    """1x?x128: -1 dims shown as ?."""
    return "x".join("?" if d < 0 else str(d) for d in dims)


def _io_line(entry: Mapping[str, Any]) -> str:
    carried = f" (carried as {entry['engine_dtype']})" if entry.get("engine_dtype") else ""
    return f"  {entry['name']}: {entry['dtype']}[{dims_text(entry['shape'])}]{carried}"


def _precision_line(precision: Mapping[str, Any] | None) -> str:
    if not precision:
        return "precision: fp32"
    return (f"precision: {precision['target']}, {precision['flop_share']:.1%} of FLOPs, "
            f"{precision['fp32_nodes']} nodes fp32")


def sidecar_text(data: Mapping[str, Any]) -> str:
    """`trtc inspect model.plan`: the engine as its sidecar describes it."""
    lines = [f"engine: {data['backend']} {data['backend_version']}, targets "
             f"{','.join(data['targets']) or 'default'}, built by trtc {data['trtc_version']}",
             f"plan: {data['plan_bytes'] / 2**20:.1f} MiB, {data['network_layers']} network layers, "
             f"built in {data['build_seconds']:.1f}s", "inputs:"]
    lines += [_io_line(t) for t in data["inputs"]]
    lines.append("outputs:")
    lines += [_io_line(t) for t in data["outputs"]]
    for i, profile in enumerate(data["profiles"]):
        ranges = (f"{name} {dims_text(lo)}..{dims_text(hi)} (opt {dims_text(opt)})"
                  for name, (lo, opt, hi) in profile.items())
        lines.append(f"profile {i}: " + "; ".join(ranges))
    lines.append(_precision_line(data.get("precision")))
    refit = data.get("refit") or {}
    if refit.get("needed"):  # built from a weight-stripped model (--weightless)
        weights = refit.get("weights", [])
        lines.append(f"refit: needed before it runs, {len(weights)} weight(s) stripped "
                     f"({', '.join(w['name'] for w in weights[:6])}{', ...' if len(weights) > 6 else ''})")
    lines.append(f"IR content hash: {data.get('ir_content_hash')}")
    source = data.get("source")
    if source and source.get("path"):
        lines.append(f"source: {source['path']}")
    return "\n".join(lines)
