"""Model inputs: what a model expects (`TensorSpec`), reading and generating feeds,
and validating them before anything runs. Shared by the CPU reference and engine runs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError

Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """An input or output as the model declares it; `dtype` None for non-tensor types."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None
    # Values an integer input may take, when the graph says (e.g. rows of the table it indexes).
    index_bound: int | None = None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype if self.dtype is not None else 'non-tensor'}[{dims}]"


def numpy_dtype(dtype: ir.DataType) -> np.dtype:
    if dtype == ir.DataType.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype.numpy())


# Ops that pass integer ids through unchanged on their first input.
_ID_PASSTHROUGH = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity", "Expand"}


def _index_bound(value: ir.Value, depth: int = 4) -> int | None:
    """Rows of the table an integer input indexes through Gather (after reshapes), if it does."""
    for node, index in value.uses():
        if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
            table = node.inputs[0]
            axis = node.attributes.get_int("axis", 0)
            if table.shape is not None and isinstance(table.shape[axis], int):
                return table.shape[axis]
        elif node.op_type in _ID_PASSTHROUGH and index == 0 and depth > 0:
            if (bound := _index_bound(node.outputs[0], depth - 1)) is not None:
                return bound
    return None


def value_spec(value: ir.Value) -> TensorSpec:
    ttype = value.type
    if not isinstance(ttype, ir.TensorType):
        return TensorSpec(value.name, None, None)
    shape = None
    if value.shape is not None:
        shape = tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)
    return TensorSpec(value.name, numpy_dtype(ttype.dtype), shape, _index_bound(value))


def model_inputs(model: ir.Model) -> list[TensorSpec]:
    return [value_spec(v) for v in model.graph.inputs if not v.is_initializer()]


def model_outputs(model: ir.Model) -> list[TensorSpec]:
    return [value_spec(v) for v in model.graph.outputs]


# ---------------------------------------------------------------- reading and generating


def _parse_dims(text: str, option: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise TrtcError(f"bad shape {text!r}", where=option, hint="write dims as 1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise TrtcError(f"negative dim in {text!r}", where=option)
    return dims


def _split_named(arg: str, option: str) -> tuple[str, str]:
    if "=" not in arg:
        raise TrtcError(f"expected NAME=VALUE, got {arg!r}", where=option)
    name, _, value = arg.rpartition("=")
    return name, value


def parse_shapes(args: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape NAME=1x128` options."""
    return {n: _parse_dims(v, f"--shape {a}") for a in args for n, v in [_split_named(a, "--shape")]}


def parse_ranges(args: Sequence[str]) -> dict[str, tuple[float, float]]:
    """`--range NAME=LOW:HIGH` options (HIGH exclusive for integers)."""
    out = {}
    for arg in args:
        name, text = _split_named(arg, "--range")
        m = re.fullmatch(r"\s*(-?[\d.eE+-]+)\s*:\s*(-?[\d.eE+-]+)\s*", text)
        if not m or float(m[1]) >= float(m[2]):
            raise TrtcError(f"bad range {text!r}", where=f"--range {arg}",
                            hint="write LOW:HIGH with LOW < HIGH, e.g. input_ids=0:50257")
        out[name] = (float(m[1]), float(m[2]))
    return out


def _load_array_file(path: Path, option: str) -> dict[str, np.ndarray] | np.ndarray:
    if not path.is_file():
        raise TrtcError("input file not found", where=f"{option} {path}")
    try:
        data = np.load(path, allow_pickle=False)  # never unpickle user files
    except ValueError as exc:
        raise TrtcError(f"cannot read as .npy/.npz without pickle ({exc})", where=str(path)) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    return data


def read_inputs(args: Sequence[str], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """`--input x.npy` (single-input models), `--input NAME=x.npy`, `--input all.npz`."""
    feeds: dict[str, np.ndarray] = {}
    for arg in args:
        name, _, file = arg.rpartition("=") if "=" in arg else ("", "", arg)
        data = _load_array_file(Path(file), "--input")
        if isinstance(data, dict):
            if name:
                raise TrtcError("an .npz holds named arrays; pass it without NAME=", where=f"--input {arg}")
            feeds.update(data)
        elif name:
            feeds[name] = data
        elif len(specs) == 1:
            feeds[specs[0].name] = data
        else:
            raise TrtcError(
                f"the model has {len(specs)} inputs; name the one this file is for",
                where=f"--input {arg}", hint="write --input NAME=file.npy (inputs: "
                + ", ".join(s.name for s in specs) + ")",
            )
    return feeds


def resolve_shape(spec: TensorSpec, shapes: Mapping[str, tuple[int, ...]],
                  dim_values: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape for a generated input: `--shape`, else symbolic dims bound by
    earlier inputs, else 1."""
    if spec.name in shapes:
        shape = shapes[spec.name]
        if spec.shape is not None:
            _check_rank_and_dims(spec, shape, "--shape")
            for d, v in zip(spec.shape, shape):
                if isinstance(d, str):
                    dim_values.setdefault(d, v)
        return shape
    if spec.shape is None:
        raise TrtcError(f"input {spec.name!r} has no known shape",
                        where="--shape", hint=f"give one with --shape {spec.name}=1x...")
    return tuple(d if isinstance(d, int) else dim_values.setdefault(d, 1) if d else 1 for d in spec.shape)


def generate_input(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator,
                   value_range: tuple[float, float] | None) -> np.ndarray:
    """Seeded random data: floats uniform in [-1, 1), integers in [0, table rows) or [0, 2)."""
    dtype = spec.dtype
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        low, high = value_range or (0, spec.index_bound or 2)
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    low, high = value_range or (-1.0, 1.0)
    return rng.uniform(low, high, size=shape).astype(dtype)


def make_feeds(specs: Sequence[TensorSpec], *, inputs: Sequence[str] = (), seed: int = 0,
               ranges: Sequence[str] = (), shapes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Feeds from files, completed with generated data for the inputs not given."""
    feeds = read_inputs(inputs, specs)
    shape_map, range_map = parse_shapes(shapes), parse_ranges(ranges)
    names = {s.name for s in specs}
    for option, given in (("--shape", shape_map), ("--range", range_map)):
        for name in given:
            if name not in names:
                raise TrtcError(f"no input named {name!r}", where=option,
                                hint="inputs are: " + ", ".join(sorted(names)))
    dim_values: dict[str, int] = {}
    for spec in specs:  # symbolic dims bound by the inputs the user gave
        if spec.name in feeds and spec.shape is not None:
            for d, v in zip(spec.shape, np.shape(feeds[spec.name])):
                if isinstance(d, str):
                    dim_values.setdefault(d, v)
    rng = np.random.default_rng(seed)
    for spec in specs:
        if spec.name not in feeds and spec.dtype is not None:
            shape = resolve_shape(spec, shape_map, dim_values)
            feeds[spec.name] = generate_input(spec, shape, rng, range_map.get(spec.name))
    return feeds


# ---------------------------------------------------------------- validation


def _check_rank_and_dims(spec: TensorSpec, shape: Sequence[int], where: str) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise TrtcError(
            f"input {spec.name!r} has rank {len(shape)} but the model expects rank "
            f"{len(spec.shape)} ({spec.describe()})", where=where,
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want != got:
            raise TrtcError(
                f"input {spec.name!r} dim {axis} is {got} but the model fixes it to {want} "
                f"({spec.describe()})", where=where,
            )


def check_feed_names(names: Sequence[str], feeds: Mapping[str, Any], where: str, owner: str = "model") -> None:
    """Every feed names an input and every input has a feed; one line naming the offenders."""
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise TrtcError(f"unknown input name(s) {', '.join(map(repr, extra))}", where=where,
                        hint=f"the {owner}'s inputs are: " + ", ".join(names))
    missing = [n for n in names if n not in feeds]
    if missing:
        raise TrtcError(f"missing input(s) {', '.join(map(repr, missing))}", where=where,
                        hint=f"the {owner}'s inputs are: {', '.join(names)}; give them with --input NAME=file.npy "
                             "or let trtc generate them")


def check_feed_dtype(name: str, array: Any, dtype: np.dtype, where: str, owner: str = "model",
                     detail: str = "") -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = getattr(array, "dtype", type(array).__name__)
        raise TrtcError(f"input {name!r} has dtype {got} but the {owner} expects {dtype}{detail}",
                        where=where, hint=f"convert it, e.g. np.asarray(x, dtype='{dtype}')")


def validate_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray], where: str) -> None:
    """Names, dtypes, ranks and static dims; one line naming the first bad input."""
    check_feed_names([s.name for s in specs], feeds, where)
    for spec in specs:
        if spec.dtype is None:
            continue
        check_feed_dtype(spec.name, feeds[spec.name], spec.dtype, where)
        _check_rank_and_dims(spec, feeds[spec.name].shape, where)


def calibration_samples(specs: Sequence[TensorSpec], files: Sequence[str], count: int, *, seed: int = 0,
                        ranges: Sequence[str] = (), shapes: Sequence[str] = ()) -> list[dict[str, np.ndarray]]:
    """One feed dict per `--calib` .npz file, or `count` seeded random samples without files."""
    if files:
        samples = []
        for file in files:
            data = _load_array_file(Path(file), "--calib")
            if not isinstance(data, dict):
                raise TrtcError("calibration data must be an .npz keyed by input name", where=f"--calib {file}")
            validate_feeds(specs, data, where=f"--calib {file}")
            samples.append(data)
        return samples
    return [make_feeds(specs, seed=seed + i, ranges=ranges, shapes=shapes) for i in range(count)]
