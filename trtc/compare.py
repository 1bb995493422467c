"""`trtc compare A B`: run two artifacts on the same inputs and compare every output.

.onnx and .trtir run on the CPU reference; a .trtir typed for fp16/bf16 runs through the
precision simulation (so `compare model.onnx model.fp16.trtir` predicts the engine's error
without a GPU); a .plan runs on the GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import CheckFailed, TrtcError
from trtc.ir.weightless import refuse_unrefitted, refuse_weightless
from trtc.loading import open_model
from trtc.reference.feeds import (
    FeedOptions,
    Feeds,
    TensorSpec,
    frozen_inputs,
    frozen_text,
    load_feeds,
    model_inputs,
    model_outputs,
)
from trtc.reference.metrics import abs_errors, error_metrics
from trtc.reference.runner import InputRejected, ReferenceFailed, ReferenceRunner
from trtc.runtime.sidecar import PLAN_SUFFIXES, read_sidecar, sidecar_inputs


@dataclasses.dataclass
class Executable:
    """Something that maps feeds to outputs, with the inputs it expects and how it runs;
    `precision` is the fp16/bf16 target it is typed for (None: fp32), which sets default tolerances;
    `frozen` the inputs made constants when it was parsed (`frozen_inputs`); `fallback` says, once
    it has run, why it ran on onnx.reference (None: it did not)."""

    path: Path
    inputs: list[TensorSpec]
    run: Callable[[Mapping[str, Any]], dict[str, Any]]
    how: str
    close: Callable[[], None] = lambda: None
    outputs: list[str] = dataclasses.field(default_factory=list)
    precision: str | None = None
    frozen: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
    fallback: Callable[[], str | None] = lambda: None

    def runs_on(self) -> str:
        """`CPU reference`, or `CPU reference on onnx.reference (why)` after a fallback: said, not hidden."""
        reason = self.fallback()
        return f"{self.how} on onnx.reference ({reason})" if reason else self.how


def executable_for(path: str | Path) -> Executable:
    path = Path(path)
    if path.suffix in PLAN_SUFFIXES:
        return _engine_executable(path)
    artifact = open_model(path)
    refuse_weightless(artifact.model, str(path), "run it on the CPU reference")
    inputs = model_inputs(artifact.model)
    precision = artifact.meta.get("precision")
    model, how = artifact.model, "CPU reference"
    if precision:
        from trtc.precision.simulate import simulation_model

        model, how = simulation_model(artifact.model), f"CPU simulation of {precision['target']}"
    runner = ReferenceRunner(model)
    wanted = {s.name: s.dtype for s in runner.inputs}

    def run(feeds):
        # The simulation may take other dtypes than the typed model declares: the same values, its types.
        converted = {k: np.asarray(v, dtype=wanted.get(k) or np.asarray(v).dtype) for k, v in feeds.items()}
        try:
            return runner.run(converted)
        except InputRejected as exc:
            raise exc.located(str(path)) from None
        except ReferenceFailed as exc:
            raise ReferenceFailed(exc.message, where=str(path), hint=exc.hint) from None

    return Executable(path, inputs, run, how, runner.close, [s.name for s in model_outputs(artifact.model)],
                      precision["target"] if precision else None, frozen_inputs(artifact.model, artifact.meta),
                      lambda: runner.fallback_reason)


def _engine_executable(path: Path) -> Executable:
    from trtc.lower.backend import load_backend
    from trtc.runtime.engine import EngineRunner, no_gpu_reason

    sidecar = read_sidecar(path)
    refuse_unrefitted(sidecar, str(path))
    reason = no_gpu_reason()
    if reason is not None:
        raise TrtcError(f"cannot run a TensorRT engine here: {reason}", where=str(path),
                        hint="compare the .trtir it was built from instead (CPU reference / simulation)")
    runner = EngineRunner(path, sidecar, load_backend(sidecar["backend"]))
    return Executable(path, sidecar_inputs(sidecar), runner.run, f"{sidecar['backend']} engine", runner.close,
                      [o["name"] for o in sidecar["outputs"]], engine_precision(sidecar))


def engine_shapes(executables: Sequence[Executable]) -> dict[str, tuple[int, ...]]:
    """The OPT shapes of the first profile of each engine among `executables`: the shapes its
    dynamic inputs are generated at unless `--shape` says otherwise."""
    from trtc.runtime.api import engine_opt_shapes

    shapes: dict[str, tuple[int, ...]] = {}
    for ex in executables:
        if ex.path.suffix in PLAN_SUFFIXES:
            shapes = {**engine_opt_shapes(read_sidecar(ex.path), {}), **shapes}
    return shapes


def engine_precision(sidecar: Mapping[str, Any]) -> str | None:
    """The fp16/bf16 target an engine was built for, from its sidecar (None: fp32)."""
    return (sidecar.get("precision") or {}).get("target")


# ---------------------------------------------------------------- tolerances

# Default (atol, rtol) by the format an output is computed in: loose enough for the rounding a
# whole network accumulates in that format (fp16 keeps 11 significant bits, bf16 8), tight
# enough to catch a wrong result. fp32 keeps compare's old defaults; integers must be exact.
DEFAULT_TOLERANCES = {"float32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


def default_tolerance(dtype: np.dtype, precision: str | None) -> tuple[float, float, str]:
    """(atol, rtol, why) for an output of `dtype` computed by an artifact typed for `precision`:
    integers exact; fp16/bf16 values or artifacts their format's; else fp32's."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return 0.0, 0.0, f"exact for {dtype}"
    if dtype.name == "bfloat16" or precision == "bf16":
        return (*DEFAULT_TOLERANCES["bf16"], "for bf16")
    if dtype == np.float16 or precision == "fp16":
        return (*DEFAULT_TOLERANCES["fp16"], "for fp16")
    return (*DEFAULT_TOLERANCES["float32"], f"for {dtype if dtype.kind == 'f' else 'float32'}")


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """`--atol/--rtol`: an overall value and per-output values; what is not given comes from
    `default_tolerance`."""

    atol: float | None = None
    rtol: float | None = None
    atol_by_output: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rtol_by_output: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_cli(cls, atol: Sequence[str] = (), rtol: Sequence[str] = ()) -> Tolerances:
        """From `--atol 1e-3 --atol logits=1e-2` style strings; every malformed one named at once."""
        problems: list[str] = []
        a, a_by = _parse_tolerance(atol, "--atol", problems)
        r, r_by = _parse_tolerance(rtol, "--rtol", problems)
        if problems:
            raise TrtcError("; ".join(problems), hint="write X or NAME=X, e.g. --atol 1e-3 --atol logits=1e-2")
        return cls(a, r, a_by, r_by)

    @property
    def given(self) -> bool:
        return bool(self.atol is not None or self.rtol is not None or self.atol_by_output or self.rtol_by_output)

    def check_names(self, outputs: Sequence[str], where: str) -> None:
        unknown = sorted((set(self.atol_by_output) | set(self.rtol_by_output)) - set(outputs))
        if unknown:
            raise TrtcError(f"--atol/--rtol name no compared output: {', '.join(map(repr, unknown))}", where=where,
                            hint="compared outputs: " + ", ".join(outputs))

    def for_output(self, name: str, dtype: np.dtype, precision: str | None) -> tuple[float, float, str]:
        """(atol, rtol, why): given values first, defaults for the rest (`why` says which)."""
        atol, rtol, why = default_tolerance(dtype, precision)
        given_atol = self.atol_by_output.get(name, self.atol)
        given_rtol = self.rtol_by_output.get(name, self.rtol)
        if given_atol is None and given_rtol is None:
            return atol, rtol, why
        if given_atol is None or given_rtol is None:
            why = f"as given ({'atol' if given_atol is None else 'rtol'}: default {why})"
        else:
            why = "as given"
        return (atol if given_atol is None else given_atol), (rtol if given_rtol is None else given_rtol), why


def _parse_tolerance(values: Sequence[str], option: str, problems: list[str]) -> tuple[float | None,
                                                                                        dict[str, float]]:
    overall, per_output = None, {}
    for text in values:
        name, sep, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            problems.append(f"{option} {text}: not a number: {number!r}")
            continue
        if not value >= 0:  # negative, or NaN (which no error is ever within)
            problems.append(f"{option} {text}: a tolerance is a number >= 0")
        elif sep:
            per_output[name] = value
        else:
            overall = value
    return overall, per_output


# ---------------------------------------------------------------- comparing


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Metrics of `a` against the reference `b` (trtc.reference.metrics) and the share of elements
    beyond atol + rtol x |b| (numpy's allclose rule)."""
    if a.shape != b.shape:
        return {"match": False, "reason": f"shape {a.shape} vs {b.shape}"}
    diff = abs_errors(b, a)
    with np.errstate(invalid="ignore"):
        beyond = ~(diff <= atol + rtol * np.abs(np.asarray(b, dtype=np.float64).ravel()))
    metrics = error_metrics(b, a)
    return {"match": not beyond.any(), **metrics, "beyond_tolerance": float(beyond.mean()) if diff.size else 0.0}


def compare_outputs(got: Mapping[str, Any], want: Mapping[str, Any], tolerances: Tolerances,
                    precision: str | None) -> dict[str, dict[str, Any]]:
    """Each output of `want` (the reference) against `got`, with its tolerance and why that one."""
    results = {}
    for name, reference in want.items():
        reference, value = np.asarray(reference), got[name]
        if not isinstance(value, np.ndarray):
            results[name] = {"match": False, "reason": f"not a tensor ({type(value).__name__})"}
            continue
        # The coarser of the two dtypes decides (an fp16 engine output against float32 values).
        dtype = value.dtype if value.dtype.kind == "f" and value.dtype.itemsize < reference.dtype.itemsize \
            else reference.dtype
        atol, rtol, why = tolerances.for_output(name, dtype, precision)
        results[name] = {"atol": atol, "rtol": rtol, "tolerance": why, **compare_arrays(value, reference, atol, rtol)}
    return results


@dataclasses.dataclass
class PairFeeds:
    """What two artifacts are compared on: `arrays` (every input either has, by name; each side
    is fed the ones it has), what the files held (`given`: expected outputs, generated inputs) and
    `notes` on inputs only one side has (`sr: fed to B only: 16000, the value A was frozen with`)."""

    given: Feeds
    arrays: dict[str, Any]
    notes: list[str]


def pair_feeds(a: Executable, b: Executable, options: FeedOptions) -> PairFeeds:
    """The inputs for comparing A with B. An input both have gets the same array; an input one
    side froze when parsed is fed to the other side with the frozen value (or must be given with
    that value); any other input only one side has must be given: generated data for one side
    alone would compare two different computations."""
    names = {"A": {s.name for s in a.inputs}, "B": {s.name for s in b.inputs}}
    specs = b.inputs + [s for s in a.inputs if s.name not in names["B"]]
    by_name = {s.name: s for s in specs}
    # Inputs a side froze and the other still has: the value comes from the frozen side where it
    # is known and fits; else (a .npy folded away) the user gives it, like any one-sided input.
    frozen_in = {name: side for side, ex, other in (("A", a, "B"), ("B", b, "A"))
                 for name in ex.frozen if name in names[other] and name not in names[side]}
    values = {name: (a if side == "A" else b).frozen[name] for name, side in frozen_in.items()}
    known = {name: array for name, value in values.items()
             if (array := _frozen_array(value, by_name[name])) is not None}
    given = load_feeds([s for s in specs if s.name not in known], options,
                       outputs=list(dict.fromkeys(b.outputs + a.outputs)),
                       frozen={name: values[name] for name in known})
    arrays: dict[str, Any] = {**given.arrays, **known}
    notes, problems = [], []
    for name in known:
        given.unused.pop(name, None)  # it feeds the side that has the input
        side = frozen_in[name]
        notes.append(f"{name}: fed to {'B' if side == 'A' else 'A'} only: {frozen_text(values[name])}, "
                     f"the value {side} was frozen with")
    generated = {g.name for g in given.generated}
    for name in sorted((names["A"] ^ names["B"]) - set(known)):
        only, other = ("A", "B") if name in names["A"] else ("B", "A")
        if name not in generated:
            notes.append(f"{name}: fed to {only} only ({other} has no such input)")
        elif name in frozen_in:
            problems.append(f"input {name!r} of {only} was frozen in {other} ({frozen_text(values[name])}): give "
                            f"{only} the same value with --input {name}=FILE.npy")
        else:
            problems.append(f"input {name!r} is an input of {only} only ({other} has no such input, nor froze it): "
                            f"give it with --input {name}=FILE.npy rather than data made up for one side")
    if problems:
        raise TrtcError("; ".join(problems), where=f"{a.path} vs {b.path}")
    return PairFeeds(given, arrays, notes)


def _frozen_array(value: np.ndarray | None, spec: TensorSpec) -> np.ndarray | None:
    """The frozen `value` as the other side's input `spec` takes it (dtype, declared shape); None
    when it is unknown or does not fit."""
    if value is None or spec.dtype is None:
        return None
    array = np.asarray(value).astype(spec.dtype)
    if spec.shape is not None and all(isinstance(d, int) for d in spec.shape):
        if array.size != int(np.prod(spec.shape, dtype=np.int64)):
            return None
        array = array.reshape(tuple(int(d) for d in spec.shape))
    return array


def _own(ex: Executable, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """The feeds `ex` has inputs for: each side of a comparison gets its own."""
    names = {s.name for s in ex.inputs}
    return {k: v for k, v in feeds.items() if k in names}


def compare(a: Executable, b: Executable, feeds: Mapping[str, Any], tolerances: Tolerances) -> dict[str, Any]:
    """Run both on `feeds`, each on the inputs it has; B is the reference. Every output both
    have is compared, with default tolerances for the coarser precision of the two."""
    out_a, out_b = a.run(_own(a, feeds)), b.run(_own(b, feeds))
    common = [n for n in out_b if n in out_a]
    if not common:
        raise TrtcError("the two artifacts have no output name in common",
                        hint=f"{a.path}: {', '.join(out_a)}; {b.path}: {', '.join(out_b)}")
    tolerances.check_names(common, f"{a.path} vs {b.path}")
    results = compare_outputs(out_a, {n: out_b[n] for n in common}, tolerances, a.precision or b.precision)
    return {"a": {"path": str(a.path), "runs_on": a.runs_on()}, "b": {"path": str(b.path), "runs_on": b.runs_on()},
            "outputs": results, "match": all(r["match"] for r in results.values())}


def compare_with_stored(a: Executable, feeds: Mapping[str, Any], expected: Mapping[str, np.ndarray],
                        stored: str, tolerances: Tolerances) -> dict[str, Any]:
    """Run `a` on `feeds` and compare with the `expected` outputs read from `stored` (the reference)."""
    outputs = a.run(_own(a, feeds))
    tolerances.check_names(list(expected), f"{a.path} vs {stored}")
    results = compare_outputs(outputs, expected, tolerances, a.precision)
    return {"a": {"path": str(a.path), "runs_on": a.runs_on()}, "b": {"path": stored, "runs_on": "stored outputs"},
            "outputs": results, "match": all(r["match"] for r in results.values())}


def result_text(result: Mapping[str, Any]) -> str:
    """`match (max abs .., ..., tolerance atol .. rtol .. for fp16)` for one compared output."""
    status = "match" if result["match"] else "MISMATCH"
    if "reason" in result:
        return f"{status} ({result['reason']})"
    return (f"{status} (max abs {result['max_abs_error']:.3g}, max error / range {result['max_rel_error']:.3g}, "
            f"mean abs {result['mean_abs_error']:.3g}, cosine {result['cosine']:.6f}, "
            f"{result['beyond_tolerance']:.2%} beyond tolerance atol {result['atol']:g} rtol {result['rtol']:g} "
            f"{result['tolerance']})")


def _why(result: Mapping[str, Any]) -> str:
    if "reason" in result:
        return result["reason"]
    return (f"{result['beyond_tolerance']:.2%} of elements beyond atol {result['atol']:g} + rtol {result['rtol']:g}, "
            f"max abs error {result['max_abs_error']:.3g}")


def raise_on_mismatch(report: Mapping[str, Any]) -> None:
    """Exit code 1, naming every output that differs."""
    bad = [f"{name} ({_why(r)})" for name, r in report["outputs"].items() if not r["match"]]
    if bad:
        raise CheckFailed(f"outputs differ: {'; '.join(bad)}", where=f"{report['a']['path']} vs {report['b']['path']}")
