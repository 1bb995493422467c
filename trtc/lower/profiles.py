"""Optimization profiles: `--shapes NAME:MIN,OPT,MAX` (dims as 1x128), checked against the
model's inputs before TensorRT sees them (a wrong name never silently falls back)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from trtc.errors import TrtcError

Dims = tuple[int, ...]
Profile = dict[str, tuple[Dims, Dims, Dims]]


def _dims(text: str, where: str) -> Dims:
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError:
        raise TrtcError(f"bad dims {text!r}", where=where, hint="write dims like 1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise TrtcError(f"negative dim in {text!r}", where=where)
    return dims


def parse_shape_spec(spec: str, option: str = "--shapes") -> tuple[str, tuple[Dims, Dims, Dims]]:
    """`input_ids:1x1,4x128,8x512` -> ('input_ids', ((1,1), (4,128), (8,512)))."""
    where = f"{option} {spec}"
    name, sep, ranges = spec.rpartition(":")
    parts = ranges.split(",")
    if not sep or not name or len(parts) != 3:
        raise TrtcError("expected NAME:MIN,OPT,MAX", where=where, hint="e.g. --shapes input_ids:1x1,4x128,8x512")
    lo, opt, hi = (_dims(p, where) for p in parts)
    if not len(lo) == len(opt) == len(hi):
        raise TrtcError("MIN, OPT and MAX have different ranks", where=where)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise TrtcError("needs MIN <= OPT <= MAX in every dim", where=where)
    return name, (lo, opt, hi)


def parse_profiles(shapes: Sequence[str], profile_groups: Sequence[str]) -> list[dict[str, tuple[Dims, Dims, Dims]]]:
    """`--shapes` (repeatable) is the first profile; each `--profile "A:..;B:.."` adds one."""
    profiles = []
    if shapes:
        profiles.append(dict(parse_shape_spec(s) for s in shapes))
    for group in profile_groups:
        specs = [s for s in group.replace(";", " ").split() if s]
        profiles.append(dict(parse_shape_spec(s, "--profile") for s in specs))
    return profiles


def resolve_profiles(model: ir.Model, given: Sequence[Profile], where: str) -> list[Profile]:
    """Complete and check the profiles against the model's inputs.

    Static dims come from the IR; every symbolic dim needs a range; names must exist.
    A model without symbolic dims needs no profile.
    """
    inputs = {v.name: v for v in model.graph.inputs}
    dynamic = {n: v for n, v in inputs.items()
               if v.shape is not None and any(not isinstance(d, int) for d in v.shape.dims)}
    for profile in given:
        unknown = sorted(set(profile) - set(inputs))
        if unknown:
            raise TrtcError(f"no input named {', '.join(map(repr, unknown))}", where="--shapes",
                            hint="the model's inputs are: " + ", ".join(inputs))
    if not dynamic:
        return []
    profiles = [dict(p) for p in given] or [{}]
    for index, profile in enumerate(profiles):
        for name, value in dynamic.items():
            dims = value.shape.dims
            if name not in profile:
                sym = next(d for d in dims if not isinstance(d, int))
                example = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
                raise TrtcError(
                    f"input {name!r} has symbolic dim {sym.value or '?'!r} (axis {dims.index(sym)}) without a range"
                    + (f" in profile {index}" if len(profiles) > 1 else ""), where=where,
                    hint=f"give one with --shapes {name}:{example.replace('N', '1')},{example},{example}"
                    " (MIN,OPT,MAX)")
            lo, opt, hi = profile[name]
            if len(lo) != len(dims):
                raise TrtcError(f"input {name!r} has rank {len(dims)} but the range has rank {len(lo)}",
                                where="--shapes")
            for axis, d in enumerate(dims):
                if isinstance(d, int) and not lo[axis] == opt[axis] == hi[axis] == d:
                    raise TrtcError(f"input {name!r} dim {axis} is fixed to {d} by the model, the range says "
                                    f"{lo[axis]},{opt[axis]},{hi[axis]}", where="--shapes")
        for name in profile:
            if name not in dynamic:  # static inputs: the model's shape, whatever was written
                profile[name] = (tuple(inputs[name].shape.dims),) * 3
    return profiles
