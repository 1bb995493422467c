"""Optimization profiles, written as trtexec users write them and checked against the model's
inputs before TensorRT sees them (a wrong name never silently falls back).

    --shapes NAME:MIN,OPT,MAX      a range (dims as 1x128)
    --shapes NAME:1x3x224x224      one shape: MIN = OPT = MAX, as in trtexec
    --min-shapes/--opt-shapes/--max-shapes NAME:DIMS[,NAME:DIMS...]   trtexec's three lists
    --profile 'A:MIN,OPT,MAX B:...'                                   a further profile

`NAME=...` is accepted wherever `NAME:...` is (the last separator splits, so `input:0` works).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.reference.feeds import parse_dims, split_named

Dims = tuple[int, ...]
Range = tuple[Dims, Dims, Dims]
Profile = dict[str, Range]


@dataclasses.dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile as given, with the option it came from (for error messages)."""

    ranges: Profile
    option: str


def parse_range(spec: str, option: str = "--shapes") -> tuple[str, Range]:
    """`input_ids:1x1,4x128,8x512` -> ('input_ids', ((1, 1), (4, 128), (8, 512)));
    `x:1x3x224x224` -> ('x', (s, s, s))."""
    where = f"{option} {spec}"
    name, text = split_named(spec, where, "NAME:MIN,OPT,MAX or NAME:DIMS (dims like 1x3x224x224)")
    parts = text.split(",")
    if len(parts) not in (1, 3):
        raise TrtcError("expected NAME:MIN,OPT,MAX or NAME:DIMS", where=where,
                        hint="e.g. --shapes input_ids:1x1,4x128,8x512 or --shapes image:1x3x224x224")
    lo, opt, hi = (parse_dims(p, where) for p in (parts * 3 if len(parts) == 1 else parts))
    if not len(lo) == len(opt) == len(hi):
        raise TrtcError("MIN, OPT and MAX have different ranks", where=where)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise TrtcError("needs MIN <= OPT <= MAX in every dim", where=where)
    return name, (lo, opt, hi)


def _trtexec_lists(min_shapes: Sequence[str], opt_shapes: Sequence[str], max_shapes: Sequence[str]) -> Profile:
    """trtexec's --minShapes/--optShapes/--maxShapes: each a comma-separated list of NAME:DIMS."""
    given: dict[str, dict[str, Dims]] = {}
    for option, values in (("--min-shapes", min_shapes), ("--opt-shapes", opt_shapes), ("--max-shapes", max_shapes)):
        given[option] = {}
        for value in values:
            # Split at commas that start a new NAME: (dims never hold ':' or '=').
            for item in re.split(r",(?=[^,:=]+[:=])", value):
                name, dims = split_named(item, f"{option} {value}", "NAME:DIMS")
                given[option][name] = parse_dims(dims, f"{option} {item}")
    names = list(dict.fromkeys(n for per in given.values() for n in per))
    problems = [f"{name!r} has no {option}" for name in names for option, per in given.items() if name not in per]
    if problems:
        raise TrtcError("; ".join(problems), where="--min-shapes/--opt-shapes/--max-shapes",
                        hint="give each input in all three lists, or use --shapes NAME:MIN,OPT,MAX")
    profile = {}
    for name in names:
        spec = ",".join("x".join(map(str, given[o][name])) for o in given)
        profile[name] = parse_range(f"{name}:{spec}", "--min/--opt/--max-shapes")[1]
    return profile


def parse_profiles(shapes: Sequence[str] = (), profile_groups: Sequence[str] = (), *,
                   min_shapes: Sequence[str] = (), opt_shapes: Sequence[str] = (),
                   max_shapes: Sequence[str] = ()) -> list[ProfileSpec]:
    """`--shapes` and the trtexec lists form the first profile; each `--profile "A:.. B:.."` adds one."""
    profiles = []
    first = dict(parse_range(s) for s in shapes)
    lists = _trtexec_lists(min_shapes, opt_shapes, max_shapes)
    both = sorted(set(first) & set(lists))
    if both:
        raise TrtcError(f"{', '.join(map(repr, both))} given by both --shapes and --min/--opt/--max-shapes",
                        where="--shapes", hint="give each input's range once")
    if first or lists:
        profiles.append(ProfileSpec({**first, **lists}, "--shapes"))
    for group in profile_groups:
        option = f"--profile {group!r}"
        specs = [s for s in group.replace(";", " ").split() if s]
        profiles.append(ProfileSpec(dict(parse_range(s, "--profile") for s in specs), option))
    return profiles


# Values offered for a symbolic dim with no range, by what its name says it is.
_SUGGESTED = (
    (("batch", "n"), (1, 4, 8)),
    (("seq", "len", "token", "time", "step", "frames", "length"), (1, 128, 512)),
    (("height", "width", "h", "w", "size"), (224, 224, 224)),
)


def _suggested_range(dim_name: str | None, axis: int, rank: int) -> tuple[int, int, int]:
    words = set(re.split(r"[^a-z]+", (dim_name or "").lower())) | {(dim_name or "").lower()}
    for keys, values in _SUGGESTED:
        if any(k in words or (len(k) > 2 and k in (dim_name or "").lower()) for k in keys):
            return values
    if axis == 0:
        return _SUGGESTED[0][1]
    if rank == 4 and axis >= 2:  # NCHW image
        return _SUGGESTED[2][1]
    return (1, 64, 256)


def suggest_shapes(value: ir.Value, chosen: dict[str, tuple[int, int, int]]) -> str:
    """A concrete `--shapes NAME:MIN,OPT,MAX` for an input, from its declared dims; a symbolic dim
    shared by several inputs gets the same values in each (`chosen` remembers them)."""
    dims = value.shape.dims
    per_dim = []
    for axis, d in enumerate(dims):
        if isinstance(d, int):
            per_dim.append((d, d, d))
        else:
            key = d.value or f"{value.name}:{axis}"
            per_dim.append(chosen.setdefault(key, _suggested_range(d.value, axis, len(dims))))
    return f"{value.name}:" + ",".join("x".join(str(p[i]) for p in per_dim) for i in range(3))


def _check_range(name: str, dims: Sequence, rng: Range, option: str) -> list[str]:
    lo, opt, hi = rng
    if len(lo) != len(dims):
        return [f"{option}: input {name!r} has rank {len(dims)} but the range has rank {len(lo)}"]
    return [f"{option}: input {name!r} dim {axis} is fixed to {d} by the model, the range says "
            f"{lo[axis]},{opt[axis]},{hi[axis]}"
            for axis, d in enumerate(dims) if isinstance(d, int) and not lo[axis] == opt[axis] == hi[axis] == d]


def profile_ranges(profile: ProfileSpec | Mapping[str, Range]) -> Profile:
    return dict(profile.ranges if isinstance(profile, ProfileSpec) else profile)


def resolve_profiles(model: ir.Model, given: Sequence[ProfileSpec | Mapping[str, Range]], where: str) -> list[Profile]:
    """Complete and check the profiles against the model's inputs.

    Static dims come from the IR; every symbolic dim needs a range; names must exist. Every
    problem is listed at once, each missing range with a concrete `--shapes` to start from.
    A model without symbolic dims needs no profile.
    """
    given = [g if isinstance(g, ProfileSpec) else ProfileSpec(dict(g), "--shapes" if i == 0 else f"profile {i}")
             for i, g in enumerate(given)]
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    dynamic = {n: v for n, v in inputs.items()
               if v.shape is not None and any(not isinstance(d, int) for d in v.shape.dims)}
    problems = []
    for spec in given:
        unknown = sorted(set(spec.ranges) - set(inputs))
        if unknown:
            problems.append(f"{spec.option}: no input named {', '.join(map(repr, unknown))} "
                            f"(the model's inputs: {', '.join(inputs)})")
    if not dynamic:
        if problems:
            raise TrtcError("; ".join(problems), where=where)
        return []
    specs = list(given) or [ProfileSpec({}, "--shapes")]
    chosen: dict[str, tuple[int, int, int]] = {}
    missing = [name for spec in specs for name in dynamic if name not in spec.ranges]
    for spec in specs:
        for name, value in dynamic.items():
            if name in spec.ranges:
                problems += _check_range(name, value.shape.dims, spec.ranges[name], spec.option)
    if missing:
        names = list(dict.fromkeys(missing))
        suggestion = " ".join(f"--shapes {suggest_shapes(dynamic[n], chosen)}" for n in names)
        problems.append(f"no range for the dynamic input(s) {', '.join(map(repr, names))}"
                        + (f" in {', '.join(sorted({s.option for s in specs if set(names) - set(s.ranges)}))}"
                           if given else "")
                        + f"; give MIN,OPT,MAX for each, e.g. {suggestion}")
    if problems:
        raise TrtcError("; ".join(problems), where=where)
    profiles = []
    for spec in specs:
        profile = dict(spec.ranges)
        for name in profile:
            if name not in dynamic:  # static inputs: the model's shape, whatever was written
                profile[name] = (tuple(inputs[name].shape.dims),) * 3
        profiles.append(profile)
    return profiles


def opt_shapes(profiles: Sequence[ProfileSpec | Mapping[str, Range]]) -> dict[str, Dims]:
    """Each input's OPT shape in the first profile: the shape calibration and checks use."""
    return {name: rng[1] for name, rng in profile_ranges(profiles[0]).items()} if profiles else {}
