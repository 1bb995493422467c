"""Model inputs: what a model expects (`TensorSpec`), reading and generating feeds,
and validating them before anything runs. Shared by the CPU reference and engine runs."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
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


def frozen_inputs(model: ir.Model, meta: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """Graph inputs made constants by `--freeze` when the artifact was parsed, with their values
    where still known: the initializer when folding kept it, else a literal as written (`16000`,
    1-D); None for a value given as a .npy file and folded away (only its hash is recorded)."""
    frozen = ((meta.get("parse") or {}).get("frozen")) or {}
    values: dict[str, np.ndarray | None] = {}
    for name, fingerprint in frozen.items():
        initializer = model.graph.initializers.get(name)
        if initializer is not None and initializer.const_value is not None:
            values[name] = initializer.const_value.numpy()
            continue
        values[name] = None
        if isinstance(fingerprint, str) and "sha256:" not in fingerprint:
            tokens = fingerprint.split(",")
            try:
                values[name] = np.array([t.lower() == "true" if t.lower() in ("true", "false") else float(t)
                                         for t in tokens])
            except ValueError:
                pass
    return values


def frozen_matches(value: np.ndarray | None, array: Any) -> bool | None:
    """Whether `array` holds the value an input was frozen with (None: the value is unknown)."""
    if value is None:
        return None
    given = np.ravel(np.asarray(array))
    return given.shape == np.ravel(value).shape and bool(np.all(given.astype(np.float64)
                                                                == np.ravel(value).astype(np.float64)))


def frozen_text(value: np.ndarray | None) -> str:
    """`16000`, `[0, 1]` or `a value from a .npy file`: what a frozen input holds, for messages."""
    if value is None:
        return "a value from a .npy file"
    flat = np.ravel(value)
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in flat[:8].tolist()]
    return items[0] if flat.size == 1 else f"[{', '.join(items)}{', ...' if flat.size > 8 else ''}]"


# ---------------------------------------------------------------- reading and generating


def parse_dims(text: str, where: str) -> tuple[int, ...]:
    """`1x3x224x224` -> (1, 3, 224, 224): the one dims syntax of every shape option."""
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError:
        raise TrtcError(f"bad dims {text!r}", where=where, hint="write dims like 1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise TrtcError(f"negative dim in {text!r}", where=where)
    return dims


def split_named(arg: str, option: str, form: str = "NAME=VALUE") -> tuple[str, str]:
    """`NAME=VALUE` or `NAME:VALUE` (the last `=`, else the last `:`, so names like `input:0` work)."""
    sep = "=" if "=" in arg else ":"
    name, found, value = arg.rpartition(sep)
    if not found or not name or not value:
        raise TrtcError(f"expected {form}, got {arg!r}", where=option)
    return name, value


def parse_shapes(args: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape NAME=1x128` (or NAME:1x128) options."""
    return {n: parse_dims(v, f"--shape {a}") for a in args for n, v in [split_named(a, "--shape", "NAME=1x128")]}


def parse_ranges(args: Sequence[str]) -> dict[str, tuple[float, float]]:
    """`--range NAME=LOW:HIGH` options (HIGH exclusive for integers)."""
    out = {}
    for arg in args:
        name, _, text = arg.partition("=")
        if not name or not text:
            raise TrtcError(f"expected NAME=LOW:HIGH, got {arg!r}", where="--range")
        m = re.fullmatch(r"\s*(-?[\d.eE+-]+)\s*:\s*(-?[\d.eE+-]+)\s*", text)
        if not m or float(m[1]) >= float(m[2]):
            raise TrtcError(f"bad range {text!r}", where=f"--range {arg}",
                            hint="write LOW:HIGH with LOW < HIGH, e.g. input_ids=0:50257")
        out[name] = (float(m[1]), float(m[2]))
    return out


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, option: str) -> int:
    """Bytes from `8G`, `512M`, `1.5g`, `4096`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)i?[bB]?\s*", text)
    if not m or float(m[1]) <= 0:
        raise TrtcError(f"expected a size such as 8G, 512M or 4096, got {text!r}", where=option)
    return int(float(m[1]) * _SIZE_UNITS[m[2].lower()])


def memory_limit(options: FeedOptions | None = None) -> int:
    """What inputs may take: `--max-memory`, else $TRTC_MAX_MEMORY, else half the machine's RAM."""
    if options is not None and options.max_memory is not None:
        return options.max_memory
    if os.environ.get("TRTC_MAX_MEMORY"):
        return parse_size(os.environ["TRTC_MAX_MEMORY"], "TRTC_MAX_MEMORY")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def oversized_values(model: ir.Model, limit: int) -> list[str]:
    """The main graph's values whose static size (their inferred dims, all numbers) is above `limit` bytes, as
    `'steps' float32[2130706435, 2, 3] (47.6 GiB)`: a run would allocate them (a Loop's scan output over a
    huge trip count, an Expand to a huge shape) or take hours to fill them."""
    found = []
    for value in [*(out for node in model.graph for out in node.outputs), *model.graph.outputs]:
        shape, dtype = value.shape, value.dtype
        if shape is None or dtype is None or dtype == ir.DataType.STRING \
                or not all(isinstance(d, int) for d in shape.dims):
            continue  # strings: their size is their contents'
        nbytes = math.prod(shape.dims) * max(dtype.bitwidth, 8) // 8
        if nbytes > limit:
            found.append(f"{value.name!r} {dtype.name.lower()}[{', '.join(map(str, shape.dims))}] ({_gib(nbytes)})")
    return list(dict.fromkeys(found))


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.4g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.4g} MiB"


def _declared_arrays(path: Path) -> list[tuple[str, int]]:
    """(name, bytes) of each array an .npy/.npz declares in its headers, read without its data."""
    def header_bytes(f) -> int:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return math.prod(shape) * dtype.itemsize

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            out = []
            for info in archive.infolist():
                with archive.open(info) as member:
                    out.append((info.filename.removesuffix(".npy"), header_bytes(member)))
            return out
    with open(path, "rb") as f:
        return [(path.name, header_bytes(f))]


def _load_array_file(path: Path, option: str, limit: int | None = None) -> dict[str, np.ndarray] | np.ndarray:
    if not path.is_file():
        raise TrtcError("input file not found", where=f"{option} {path}")
    try:
        if limit is not None:  # a header may declare more than the file holds: checked before any allocation
            declared = _declared_arrays(path)
            if sum(n for _, n in declared) > limit:
                big = ", ".join(f"{name} {_gib(n)}" for name, n in declared if n > limit // 8) or "its arrays"
                raise TrtcError(f"its arrays would take {_gib(sum(n for _, n in declared))} ({big}), above the "
                                f"{_gib(limit)} inputs may take (raise it with --max-memory or TRTC_MAX_MEMORY if "
                                "the machine has the memory)", where=str(path))
        data = np.load(path, allow_pickle=False)  # never unpickle user files
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:  # an .npz's members are read here: their errors are the file's too
                return {k: data[k] for k in data.files}
        return data
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # not an array file, or a cut-off one
        raise TrtcError(f"cannot read as .npy/.npz without pickle ({exc})", where=str(path)) from None


@dataclasses.dataclass(frozen=True)
class FileArray:
    """One array an `--input` gives: the name it is for and where it came from (for messages)."""

    name: str
    array: np.ndarray
    source: str


def read_files(args: Sequence[str], specs: Sequence[TensorSpec],
               limit: int | None = None) -> tuple[list[FileArray], list[str]]:
    """Every array of `--input x.npy` (single-input models), `--input NAME=x.npy` and
    `--input all.npz`, in order, and the problems met (unreadable files, unnamed arrays), so
    the caller can report them together with its own."""
    arrays: list[FileArray] = []
    problems: list[str] = []
    for arg in args:
        name, _, file = arg.rpartition("=") if "=" in arg else ("", "", arg)
        try:
            data = _load_array_file(Path(file), "--input", limit)
        except TrtcError as exc:  # said with the other problems, located by the file alone
            problems.append(f"{file}: {exc.message}")
            continue
        if isinstance(data, dict):
            if name:
                problems.append(f"{arg}: an .npz holds named arrays; pass it without NAME=")
            arrays += [FileArray(key, value, file) for key, value in data.items()]
        elif name:
            arrays.append(FileArray(name, data, f"--input {arg}"))
        elif len(specs) == 1:
            arrays.append(FileArray(specs[0].name, data, file))
        else:
            problems.append(f"{file}: the model has {len(specs)} inputs; name the one this file is for "
                            f"with --input NAME={file}")
    return arrays, problems


def read_inputs(args: Sequence[str], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """`--input x.npy` (single-input models), `--input NAME=x.npy`, `--input all.npz`: the arrays
    by name, as given (no check against the model beyond naming unnamed files)."""
    arrays, problems = read_files(args, specs)
    if problems:
        raise TrtcError("; ".join(problems), where="--input")
    return {a.name: a.array for a in arrays}


def batch_symbols(specs: Sequence[TensorSpec]) -> set[str]:
    """Symbols that are the leading dim of some input of rank >= 2: a batch, which 1 sizes
    sensibly wherever else the symbol appears (silero's state[2, batch, 128])."""
    return {s.shape[0] for s in specs if s.shape is not None and len(s.shape) >= 2 and isinstance(s.shape[0], str)}


def _is_batch_dim(spec: TensorSpec, axis: int, batch: set[str]) -> bool:
    """Whether a symbolic (or unknown) dim may default to 1: the leading dim of an input of
    rank >= 2, or a symbol that is one. Any other free dim (an image's height, a sequence's
    length, a rank-1 waveform) cannot: 1 gives a degenerate input (a 1x1 image, one token)
    that either breaks the model (a 3x3 convolution, a reflect pad) or proves nothing."""
    assert spec.shape is not None
    dim = spec.shape[axis]
    return (axis == 0 and len(spec.shape) >= 2) or (isinstance(dim, str) and dim in batch)


def _example_size(spec: TensorSpec) -> int:
    """A plausible size for a free dim in the example `--shape` of an error: spatial for a float
    input of rank >= 3 (images, feature maps), a sequence length otherwise."""
    return 224 if spec.dtype is not None and spec.dtype.kind == "f" and spec.shape is not None \
        and len(spec.shape) >= 3 else 128


def bind_dims(spec: TensorSpec, shape: Sequence[int], dim_values: dict[str, int]) -> None:
    """Record the sizes `shape` gives `spec`'s symbolic dims (first binding wins)."""
    if spec.shape is not None and len(spec.shape) == len(shape):
        for d, v in zip(spec.shape, shape):
            if isinstance(d, str):
                dim_values.setdefault(d, int(v))


def resolve_shape(spec: TensorSpec, shapes: Mapping[str, tuple[int, ...]], dim_values: dict[str, int],
                  batch: set[str] | None = None) -> tuple[int, ...]:
    """Concrete shape for a generated input: `--shape`, else symbolic dims bound by other
    inputs, else 1 for a batch dim (`_is_batch_dim`). A free dim of another kind is a TrtcError
    asking for `--shape` with an example (`unsized_problem` words it)."""
    if spec.name in shapes:
        shape = shapes[spec.name]
        if spec.shape is not None:
            _check_rank_and_dims(spec, shape, "--shape")
            bind_dims(spec, shape, dim_values)
        return shape
    if spec.shape is None:
        raise TrtcError(f"input {spec.name!r} has no known shape",
                        where="--shape", hint=f"give one with --shape {spec.name}=1x...")
    problem = unsized_problem(spec, dim_values, batch or set())
    if problem:
        raise TrtcError(problem)
    return _sized(spec, dim_values, batch or set())


def _sized(spec: TensorSpec, dim_values: dict[str, int], batch: set[str],
           example: dict[int, int] | None = None) -> tuple[int, ...]:
    """`spec`'s shape with bound symbols, 1 for batch dims and `example` sizes for the rest by
    axis; symbols newly sized are bound, so later inputs sharing them agree."""
    assert spec.shape is not None
    dims = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int):
            dims.append(d)
            continue
        if isinstance(d, str) and d in dim_values:
            dims.append(dim_values[d])
            continue
        size = 1 if _is_batch_dim(spec, axis, batch) else (example or {}).get(axis, 1)
        if isinstance(d, str):
            dim_values[d] = size
        dims.append(size)
    return tuple(dims)


def unsized_problem(spec: TensorSpec, dim_values: dict[str, int], batch: set[str]) -> str | None:
    """What is wrong when `spec` has free dims that are no batch, with a concrete `--shape`
    example built from its declared dims (and binds the example's sizes, so that an input
    sharing a symbol with it needs no example of its own); None when it can be sized."""
    if spec.shape is None:
        return None
    free = [axis for axis, d in enumerate(spec.shape)
            if not isinstance(d, int) and not (isinstance(d, str) and d in dim_values)
            and not _is_batch_dim(spec, axis, batch)]
    if not free:
        return None
    names = ", ".join(f"{axis} ({d})" if isinstance(d, str) else str(axis)
                      for axis, d in ((a, spec.shape[a]) for a in free))
    example = _sized(spec, dim_values, batch, {axis: _example_size(spec) for axis in free})
    declared = ", ".join("?" if d is None else str(d) for d in spec.shape)
    return (f"input {spec.name!r} ({spec.dtype}[{declared}]) has free dim(s) {names} that trtc will not "
            f"guess (1 would make a degenerate input): give its shape, e.g. "
            f"--shape {spec.name}={'x'.join(map(str, example))}")


def is_parameter_scalar(spec: TensorSpec) -> bool:
    """An integer or boolean input of rank 0 that indexes no table: a parameter of the model (a
    sample rate, a count, a step, a flag), not data. A made-up 0/1 takes a branch or sizes a
    tensor the real value would not (silero VAD's `sr` picks its If branch), so trtc does not
    make it up unless asked (`--range`, `--generate`)."""
    return spec.shape == () and spec.dtype is not None and spec.index_bound is None \
        and (spec.dtype == np.bool_ or np.issubdtype(spec.dtype, np.integer))


def generation_range(spec: TensorSpec, value_range: tuple[float, float] | None) -> tuple[str, float, float]:
    """What generated data is drawn from: (distribution, low, high), high exclusive: `--range`, else
    [0, table rows) or [0, 2) for integers, [-1, 1) for floats."""
    if spec.dtype == np.bool_:
        return "booleans", 0, 2
    if np.issubdtype(spec.dtype, np.integer):
        low, high = value_range or (0, spec.index_bound or 2)
        return "integers", int(low), int(high)
    low, high = value_range or (-1.0, 1.0)
    return "uniform", low, high


def generate_input(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator,
                   value_range: tuple[float, float] | None) -> np.ndarray:
    """Seeded random data: floats uniform in [-1, 1), integers in [0, table rows) or [0, 2)."""
    _, low, high = generation_range(spec, value_range)
    if spec.dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(spec.dtype, np.integer):
        return rng.integers(int(low), int(high), size=shape).astype(spec.dtype)
    return rng.uniform(low, high, size=shape).astype(spec.dtype)


@dataclasses.dataclass(frozen=True)
class GeneratedInput:
    """An input trtc made up (the user is told about every one): what, how and from which seed."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    distribution: str  # uniform (floats), integers, booleans
    low: float
    high: float
    seed: int

    def describe(self) -> str:
        """`x float32[1x3x224x224] uniform [-1, 1) seed 0`."""
        dims = "x".join(map(str, self.shape))
        values = "" if self.distribution == "booleans" else f" [{self.low:g}, {self.high:g})"
        return f"{self.name} {self.dtype}[{dims}] {self.distribution}{values} seed {self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "distribution": self.distribution, "low": self.low, "high": self.high, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class FeedOptions:
    """How a command gets its inputs, parsed once: files (`--input`), and seeded random data shaped
    by `shapes` (symbolic dims) and bounded by `ranges` for every input when no file is given, or
    else only for the inputs named in `generate` (no input is made up unless asked for)."""

    files: tuple[str, ...] = ()
    seed: int = 0
    ranges: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    generate: tuple[str, ...] = ()
    max_memory: int | None = None  # bytes the inputs may take; None: memory_limit()'s default

    @classmethod
    def from_cli(cls, inputs: Sequence[str] = (), seed: int = 0, ranges: Sequence[str] = (),
                 shapes: Sequence[str] = (), generate: Sequence[str] = (),
                 max_memory: str | None = None) -> FeedOptions:
        """From the `--input/--seed/--range/--shape/--generate/--max-memory` strings; every malformed
        one is an error here."""
        return cls(tuple(inputs), seed, parse_ranges(ranges), parse_shapes(shapes), tuple(generate),
                   parse_size(max_memory, "--max-memory") if max_memory is not None else None)

    def with_seed(self, seed: int) -> FeedOptions:
        return dataclasses.replace(self, seed=seed)

    def record(self) -> dict[str, Any]:
        """What identifies these feeds (file contents, not paths), for a stage that used them.
        `generate` is not part of it: the files decide which inputs it may name (any other set fails)."""
        from trtc.fileio import file_sha256

        return {"files": [file_sha256(Path(f.rpartition("=")[2] if "=" in f else f)) for f in self.files],
                "seed": self.seed, "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
                "shapes": {k: list(v) for k, v in sorted(self.shapes.items())}}


@dataclasses.dataclass
class Feeds:
    """What a run is given: `arrays` by input name, the `expected` outputs an .npz held (golden
    values, with the files they came from) and every input that was `generated`."""

    arrays: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    expected_from: tuple[str, ...] = ()
    generated: list[GeneratedInput] = dataclasses.field(default_factory=list)
    # Arrays of the files that feed nothing, by name, with why (an input frozen when parsed).
    unused: dict[str, str] = dataclasses.field(default_factory=dict)


def _names(names: Sequence[str]) -> str:
    return ", ".join(map(repr, names))


def load_feeds(specs: Sequence[TensorSpec], options: FeedOptions | None = None,
               outputs: Sequence[str] | None = None,
               frozen: Mapping[str, np.ndarray | None] | None = None) -> Feeds:
    """Inputs from files, and generated data where asked for: every input when no file is given,
    else those in `options.generate`. Arrays named after one of `outputs` are expected values
    (None: the outputs are unknown here, so such a name is no more than an unknown input).
    Arrays named after a `frozen` input (`frozen_inputs`: a saved run of the model before
    `--freeze`) feed nothing: said in `Feeds.unused`, and an error when they hold another value
    than the one frozen, since outputs stored beside them would then be of another computation.
    Generated data must make sense: a free dim that is no batch and an integer scalar (a
    parameter) are not made up (`unsized_problem`, `is_parameter_scalar`).
    Every problem (unknown, repeated or missing names, unreadable files, bad options) is found
    before one TrtcError lists them all."""
    options = options or FeedOptions()
    names = [s.name for s in specs]
    output_names = list(outputs or ())
    frozen = {k: v for k, v in (frozen or {}).items() if k not in names}
    limit = memory_limit(options)
    given, problems = read_files(options.files, specs, limit)
    unused: dict[str, str] = {}
    for entry in [e for e in given if e.name in frozen]:
        given.remove(entry)
        value = frozen[entry.name]
        if frozen_matches(value, entry.array) is False:
            problems.append(f"{entry.name!r} (from {entry.source}) is {frozen_text(entry.array)} but the model "
                            f"was parsed with --freeze {entry.name}={frozen_text(value)}")
        else:
            unused[entry.name] = (f"frozen when parsed: {frozen_text(value)}"
                                  + ("" if value is None else ", the same value"))
    unread = bool(problems)  # then what the files lack is unknown: no "missing" guesses
    for option, asked in (("--shape", options.shapes), ("--range", options.ranges), ("--generate", options.generate)):
        unknown = [n for n in asked if n not in names]
        if unknown:
            problems.append(f"{option}: no input named {_names(unknown)}")

    sources: dict[str, list[str]] = {}
    for entry in given:
        sources.setdefault(entry.name, []).append(entry.source)
    repeated = [f"{name!r} ({' and '.join(where)})" for name, where in sources.items() if len(where) > 1]
    if repeated:
        problems.append(f"given more than once: {', '.join(repeated)}")
    unknown = [n for n in sources if n not in names and n not in output_names]
    if unknown:
        files = ", ".join(dict.fromkeys(s for n in unknown for s in sources[n]))
        problems.append(f"unknown input name(s) {_names(unknown)} (from {files})"
                        + (": neither an input nor an output of the model" if outputs is not None else ""))
    both = [n for n in options.generate if n in sources]
    if both:
        problems.append(f"{_names(both)} both given by --input and asked for with --generate")

    arrays = {e.name: e.array for e in given if e.name in names}
    wanted = set(names) if not options.files else set(options.generate)
    # Inputs without a tensor type cannot be made up; validation names them when they are missing.
    missing = [s.name for s in specs if s.name not in arrays and s.name not in wanted and s.dtype is not None
               and not unread]
    if missing:
        problems.append(f"missing input(s) {_names(missing)}: --input gives no data for them")
    if problems:
        outputs_text = f" (outputs: {', '.join(output_names)})" if output_names else ""
        hint = f"the model's inputs are: {', '.join(names)}{outputs_text}"
        if missing:
            hint += ("; give them with --input NAME=file.npy, or generate them with "
                     + " ".join(f"--generate {n}" for n in missing))
        raise TrtcError("; ".join(problems), where="--input" if options.files else None, hint=hint)

    # Symbolic dims bound by what the user gave (files, then --shape), whichever input comes
    # first in the model: a --shape of the last input sizes the batch of the first one too.
    dim_values: dict[str, int] = {}
    for spec in specs:
        if spec.name in arrays:
            bind_dims(spec, np.shape(arrays[spec.name]), dim_values)
    for spec in specs:
        if spec.name not in arrays and spec.name in options.shapes and spec.dtype is not None:
            resolve_shape(spec, options.shapes, dim_values)  # checks it against the model, binds its dims
    to_make = [s for s in specs if s.name not in arrays and s.name in wanted and s.dtype is not None]
    batch = batch_symbols(specs)
    problems = []
    for spec in to_make:
        if spec.name in options.shapes:
            continue
        if spec.shape is None:
            problems.append(f"input {spec.name!r} has no declared shape: give one, e.g. --shape {spec.name}=1x...")
        elif (problem := unsized_problem(spec, dim_values, batch)) is not None:
            problems.append(problem)
        if is_parameter_scalar(spec) and spec.name not in options.ranges and spec.name not in options.generate:
            problems.append(
                f"input {spec.name!r} ({spec.dtype} scalar) is a parameter of the model (a rate, a count, a flag) "
                f"whose value trtc will not make up: give it with --input {spec.name}=FILE.npy, draw it with "
                f"--range {spec.name}=LOW:HIGH, or freeze it when parsing (trtc parse MODEL --freeze "
                f"{spec.name}=VALUE)")
    shapes = {} if problems else {spec.name: resolve_shape(spec, options.shapes, dim_values, batch) for spec in to_make}
    # Generated arrays are drawn in float64/int64 first: that is the peak, checked before any allocation.
    needed = {name: math.prod(shape) * 8 for name, shape in shapes.items()}
    if sum(needed.values()) > limit:
        listed = ", ".join(f"{name} {'x'.join(map(str, shapes[name]))} ({_gib(n)})" for name, n in needed.items())
        problems.append(f"generating {listed} would take {_gib(sum(needed.values()))}, above the {_gib(limit)} "
                        "inputs may take; give smaller --shape values, or raise --max-memory (TRTC_MAX_MEMORY)")
    if problems:
        raise TrtcError("; ".join(problems), where="--input" if options.files else None)
    rng = np.random.default_rng(options.seed)
    generated = []
    for spec in to_make:  # in the model's order, one generator: the same seed gives the same data
        shape = shapes[spec.name]
        value_range = options.ranges.get(spec.name)
        arrays[spec.name] = generate_input(spec, shape, rng, value_range)
        generated.append(GeneratedInput(spec.name, str(spec.dtype), tuple(int(d) for d in shape),
                                        *generation_range(spec, value_range), options.seed))
    expected = {e.name: e.array for e in given if e.name in output_names}
    expected_from = tuple(dict.fromkeys(e.source for e in given if e.name in output_names))
    return Feeds(arrays, expected, expected_from, generated, unused)


def make_feeds(specs: Sequence[TensorSpec], options: FeedOptions | None = None) -> dict[str, np.ndarray]:
    """The input arrays of `load_feeds` (for callers that neither compare with expected outputs
    nor say what was generated: calibration, verification)."""
    return load_feeds(specs, options).arrays


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


def calibration_samples(specs: Sequence[TensorSpec], files: Sequence[str], count: int,
                        feeds: FeedOptions | None = None,
                        output_names: Sequence[str] = (),
                        frozen: Mapping[str, np.ndarray | None] | None = None) -> list[dict[str, np.ndarray]]:
    """One feed dict per `--calib` .npz file, or `count` samples made as `feeds` says (the
    files it names, seeded random data for the rest; seeds `feeds.seed + i`). Arrays named after
    the model's outputs (`output_names`: a saved run, like the corpus's .npz files) are skipped, and
    so are arrays named after an input `frozen` when parsed (`frozen_inputs`), when they hold the
    frozen value (another value is an error: a sample of another computation)."""
    frozen = {k: v for k, v in (frozen or {}).items() if k not in {s.name for s in specs}}
    if files:
        samples = []
        for file in files:
            data = _load_array_file(Path(file), "--calib")
            if not isinstance(data, dict):
                raise TrtcError("calibration data must be an .npz keyed by input name", where=f"--calib {file}")
            data = {k: v for k, v in data.items() if k not in output_names or k in {s.name for s in specs}}
            for name in [k for k in data if k in frozen]:
                if frozen_matches(frozen[name], data.pop(name)) is False:
                    raise TrtcError(f"{name!r} is not the value the model was parsed with (--freeze "
                                    f"{name}={frozen_text(frozen[name])})", where=f"--calib {file}")
            validate_feeds(specs, data, where=f"--calib {file}")
            samples.append(data)
        return samples
    feeds = feeds or FeedOptions()
    if feeds.files:  # the given inputs are the calibration sample (stored outputs in them are not inputs)
        return [load_feeds(specs, feeds, output_names, frozen).arrays]
    return [make_feeds(specs, feeds.with_seed(feeds.seed + i)) for i in range(count)]
