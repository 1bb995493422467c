"""Building a TensorRT engine from the IR: profiles, targets, build config, progress,
the sidecar that describes the plan, and the content-addressed engine cache."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

from trtc import __version__
from trtc.errors import TrtcError
from trtc.fileio import NO_SPACE, file_sha256, place_file, write_atomic
from trtc.ir.walk import all_graphs
from trtc.ir.weightless import weightless_record, weightless_values
from trtc.lower.backend import Backend
from trtc.lower.layers import layer_listing, layer_type_counts
from trtc.lower.network import Watch, build_failure, dims_of, lower
from trtc.lower.profiles import Profile, ProfileSpec, profile_ranges, resolve_profiles
from trtc.memory import drop_file_pages

SIDECAR_VERSION = 1


@dataclasses.dataclass
class BuildOptions:
    backend: str = "auto"
    targets: tuple[str, ...] = ()
    workspace_mb: int | None = None
    opt_level: int | None = None
    timing_cache: str | None = None
    strip_weights: bool = False
    # The optimization profiles as given (`parse_profiles`); plain {name: (min, opt, max)} dicts work too.
    profiles: list[ProfileSpec | Profile] = dataclasses.field(default_factory=list)
    # Values (not shapes) of int inputs TensorRT treats as shape tensors: name -> (min, opt, max).
    shape_inputs: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=dict)
    # Keep the per-layer listing of the network (`layers.layer_listing`) in BuildResult.layers; not part of
    # the engine's key, but a cached engine has no network to list, so the engine is built again.
    list_layers: bool = False
    # Build in a child process (`isolate.py`), so that a crash inside TensorRT is one line and not the end of
    # this process; not part of the engine's key. Off with --no-isolate or TRTC_NO_ISOLATE=1 (for a debugger).
    isolate: bool = True

    def key_fields(self) -> dict[str, Any]:
        """The options that change the engine (the timing cache only changes build time)."""
        return {"targets": list(self.targets), "workspace_mb": self.workspace_mb, "opt_level": self.opt_level,
                "strip_weights": self.strip_weights,
                "shape_inputs": {k: [list(d) for d in v] for k, v in sorted(self.shape_inputs.items())},
                "profiles": [{k: [list(d) for d in v] for k, v in sorted(profile_ranges(p).items())}
                             for p in self.profiles]}


def cache_key(content_hash: str, options: BuildOptions, backend: Backend) -> str:
    blob = json.dumps({"ir": content_hash, "options": options.key_fields(), "backend": backend.name,
                       "backend_version": backend.version, "trtc": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRTC_CACHE_DIR", Path.home() / ".cache" / "trtc" / "engines"))


# TensorRT's optimization profiles hold 32-bit dims (a larger one wraps negative and is refused).
MAX_PROFILE_DIM = 2**31 - 1


def _set_shape(trt_profile, name: str, shapes: tuple, where: str) -> None:
    """An input's MIN/OPT/MAX on a profile; a dim TensorRT cannot hold, or shapes it refuses, in one line."""
    text = " / ".join("x".join(map(str, shape)) for shape in shapes)
    big = sorted({d for shape in shapes for d in shape if d > MAX_PROFILE_DIM})
    if big:
        raise TrtcError(f"input {name!r}: dim {big[0]} is above TensorRT's limit of {MAX_PROFILE_DIM} "
                        f"(profile {text})", where=where,
                        hint="declare the input with a smaller size, or give a profile within it with --shapes")
    try:
        trt_profile.set_shape(name, *shapes)
    except RuntimeError as exc:  # TensorRT's own check of the three shapes
        raise TrtcError(f"input {name!r}: TensorRT refuses the profile {text} ({exc})", where=where,
                        hint="give MIN <= OPT <= MAX of the input's rank with --shapes NAME:MIN,OPT,MAX") from None


def _progress_monitor(trt, report: Callable[[str], None] | None, phase_done: Callable[[], None]):
    """TensorRT's progress as lines for `report` (None: none), and `phase_done` called as each phase ends."""
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, tuple[str, int]] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.phases[phase_name] = (parent_phase or "", num_steps)
            if report is not None:
                report(f"{phase_name} (0/{num_steps})")

        def step_complete(self, phase_name, step):
            total = self.phases.get(phase_name, ("", 0))[1]
            if report is not None:
                report(f"{phase_name} ({step + 1}/{total})")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.phases.pop(phase_name, None)
            phase_done()

    return Monitor()


@dataclasses.dataclass
class BuildResult:
    """An engine built or found in the cache: its sidecar, and its plan in memory (`data`, from `build_engine`
    called without a file) or on disk (`plan_file`, where it was written once: the output or the cache entry)."""

    sidecar: dict[str, Any]
    cached: bool
    layers: list[dict[str, Any]] | None = None  # the network's layers before the build, when asked for
    data: bytes | None = None
    plan_file: Path | None = None

    @property
    def plan(self) -> bytes:
        """The plan's bytes, read from `plan_file` where it is on disk (the whole engine in memory: for callers
        that want it there; trtc's own writes link or rename the file instead)."""
        if self.data is not None:
            return self.data
        if self.plan_file is None:
            raise ValueError("this build result holds no plan")
        return self.plan_file.read_bytes()


def _io_entry(value: ir.Value, carried: Mapping[str, ir.DataType]) -> dict[str, Any]:
    """The model's type; `engine_dtype` when the engine carries it in another (see legalize.py)."""
    entry = {"name": value.name, "dtype": carried.get(value.name, value.dtype).name.lower(),
             "shape": list(dims_of(value))}
    symbols = [None if isinstance(d, int) else d.value for d in value.shape.dims]
    if any(symbols):  # which dynamic dims are one dim: `export triton` finds the batch dim by its name
        entry["dim_names"] = symbols
    if value.name in carried:
        entry["engine_dtype"] = value.dtype.name.lower()
    return entry


def build_engine(model: ir.Model, meta: Mapping[str, Any], backend: Backend, options: BuildOptions,
                 *, where: str = "", progress: Callable[[str], None] | None = None,
                 watch: Watch | None = None, plan_file: Path | None = None) -> BuildResult:
    """Lower `model` and build a serialized engine with its sidecar, in this process (`options.isolate`
    is `cached_build`'s); `watch` is told each layer added, then ("building", "", ""). With `plan_file`,
    the plan is written there from TensorRT's memory (no copy of it in this process) and not returned."""
    start = time.perf_counter()
    profiles = resolve_profiles(model, options.profiles, where)
    lowered = lower(model, backend, where, watch)
    if watch is not None:
        watch("building", "", "")
    trt = backend.trt
    config = lowered.builder.create_builder_config()
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    refit = refit_weights(model, lowered.network, options, where)
    if refit:
        set_refit_flags(config, trt)
    timing_cache = None
    if options.timing_cache:
        if not backend.has_timing_cache:
            raise TrtcError("TensorRT-RTX has no timing cache (it would force a GPU query and its kernels are "
                            "compiled at run time instead)", where="--timing-cache",
                            hint="drop --timing-cache; `trtc run --runtime-cache PATH` keeps RTX's JIT kernels")
        timing_cache = _load_timing_cache(config, options.timing_cache)
    targets = backend.set_targets(config, options.targets)
    shape_tensors = [lowered.network.get_input(i).name for i in range(lowered.network.num_inputs)
                     if lowered.network.get_input(i).is_shape_tensor]
    missing = [n for n in shape_tensors if n not in options.shape_inputs]
    if missing:
        raise TrtcError(f"input(s) {', '.join(map(repr, missing))} set output shapes (TensorRT shape tensors) and "
                        "need value ranges", where=where,
                        hint=f"give them with --shape-input {missing[0]}:MIN,OPT,MAX (values as 1x2x3)")
    for profile in profiles or ([{}] if shape_tensors else []):
        trt_profile = lowered.builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            _set_shape(trt_profile, name, (lo, opt, hi), where)
        for name in shape_tensors:
            trt_profile.set_shape_input(name, *options.shape_inputs[name])
        config.add_optimization_profile(trt_profile)
    # TensorRT copies the weights as it builds: the file pages they were read from go as each phase ends (a big
    # model's fp16 weights would stay resident beside TensorRT's copies and the plan).
    weights = [v.const_value for g in all_graphs(model.graph) for v in g.initializers.values()]
    config.progress_monitor = _progress_monitor(trt, progress, lambda: drop_file_pages(weights))
    logged = len(lowered.logger.errors)
    listing = layer_listing(lowered.network) if options.list_layers else None  # before the builder runs
    plan = lowered.builder.build_serialized_network(lowered.network, config)
    if plan is None:
        errors = lowered.logger.errors[logged:]
        if refit or options.strip_weights:
            _check_refit_built(backend, errors, where)
        raise build_failure(lowered, errors, where)
    if timing_cache is not None:
        write_atomic(Path(options.timing_cache), bytes(config.get_timing_cache().serialize()))
    view = memoryview(plan)
    precision = meta.get("precision")
    sidecar = {
        "format": "trtc-plan", "sidecar_version": SIDECAR_VERSION, "trtc_version": __version__,
        "backend": backend.name, "backend_version": backend.version, "targets": targets,
        "inputs": [_io_entry(v, lowered.carried) for v in model.graph.inputs],
        "outputs": [_io_entry(v, lowered.carried) for v in model.graph.outputs],
        "profiles": [{k: [list(d) for d in v] for k, v in p.items()} for p in profiles],
        "precision": None if precision is None else {
            "target": precision["target"], "flop_share": precision["flop_share"],
            "fp32_nodes": len(precision["fp32_nodes"]), "predicted": precision["predicted"]},
        "ir_content_hash": meta.get("content_hash"), "source": meta.get("source"),
        "build_options": options.key_fields(), "network_layers": lowered.network.num_layers,
        "layer_types": layer_type_counts(lowered.network),
        "plan_bytes": view.nbytes, "plan_sha256": hashlib.sha256(view).hexdigest(),
        "build_seconds": round(time.perf_counter() - start, 3),
        "warnings": lowered.logger.warnings[-20:],
    }
    if refit:
        sidecar["refit"] = {"needed": True, "weights": refit, "flags": list(REFIT_FLAGS)}
    if plan_file is not None:
        _write_plan_file(plan_file, view)
        return BuildResult(sidecar, cached=False, layers=listing, plan_file=plan_file)
    return BuildResult(sidecar, cached=False, layers=listing, data=bytes(view))


# A weight-stripped model's engine: only the weights it lacks are refittable (marked by `LowerCtx.refittable`),
# and stripped from the plan. Not REFIT_IDENTICAL (--strip-weights): that lets TensorRT assume the refitted values
# are the ones built with, which here are zeros standing in for the real ones. Not REFIT: it would make every
# weight refittable and strip the ones the model has too, which trtc does not name for a refit.
REFIT_FLAGS = ("REFIT_INDIVIDUAL", "STRIP_PLAN")


def refit_weights(model: ir.Model, network, options: BuildOptions, where: str) -> list[dict[str, Any]]:
    """The weights the model leaves out (`--weightless`) that the network holds as refittable constants: what the
    plan will be refitted with (name, type, shape), in the graph's order; [] for a model with all its weights."""
    names = {v.name for v in weightless_values(model) if network.are_weights_marked_refittable(v.name)}
    if names and options.strip_weights:
        raise TrtcError("--strip-weights builds a plan refitted with the weights it was built with, and this model "
                        "holds no values for some of them (weight-stripped)", where="--strip-weights",
                        hint="drop --strip-weights: the plan of a --weightless model is stripped of the weights it "
                             "lacks, to be refitted with them")
    return [entry for entry in weightless_record(model) if entry["name"] in names]


def set_refit_flags(config, trt) -> None:
    """`REFIT_FLAGS` on a builder config."""
    for flag in REFIT_FLAGS:
        config.set_flag(getattr(trt.BuilderFlag, flag))


def _check_refit_built(backend: Backend, errors: list[str], where: str) -> None:
    """A refittable build that failed in TensorRT-RTX's code generator for want of CUDA: one line saying so.
    (TensorRT-RTX 1.7 builds plain engines without a GPU but compiles a refittable one's graph with CUDA; checked
    on a machine without one: MyelinCheckException, CHECK(status == CUDA_SUCCESS).)"""
    if not any("CUDA_SUCCESS" in e for e in errors):
        return
    raise TrtcError(f"{backend.name} {backend.version} cannot build a refittable, weight-stripped engine on a "
                    "machine without an NVIDIA GPU (its code generator needs CUDA for one)", where=where,
                    hint="build it where there is a GPU and its driver (the plan still runs on every target), or give "
                         "the model with its weights")


def _write_plan_file(path: Path, plan: memoryview) -> None:
    """The plan from TensorRT's memory to `path`, fsynced (it becomes the engine by a rename, not a copy)."""
    try:
        with open(path, "wb") as f:
            f.write(plan)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise TrtcError(f"no space to write the engine ({exc.strerror}); nothing was written", where=str(path.parent),
                        hint="free space on that device or write elsewhere") from None


def _load_timing_cache(config, path: str):
    data = Path(path).read_bytes() if Path(path).exists() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def write_plan(result: BuildResult, output: Path) -> Path:
    """model.plan and model.plan.json beside it, each written atomically; a plan already in a file is linked
    there (or is there already: the build wrote it in place), not written again."""
    if result.plan_file is None:
        write_atomic(output, result.plan)
    elif Path(result.plan_file) != Path(output):
        place_file(result.plan_file, output)
        result.plan_file = output
    sidecar = Path(f"{output}.json")
    write_atomic(sidecar, sidecar_text(result.sidecar))
    return sidecar


def sidecar_text(sidecar: Mapping[str, Any]) -> bytes:
    """A sidecar as it is written: indented, sorted JSON."""
    return (json.dumps(sidecar, indent=1, sort_keys=True) + "\n").encode()


def cached_build(model: ir.Model, meta: Mapping[str, Any], backend: Backend, options: BuildOptions, *,
                 cache_dir: Path | None, where: str = "", progress: Callable[[str], None] | None = None,
                 output: Path | None = None) -> BuildResult:
    """`build_engine`, reusing an engine built before from the same IR, options and backend; in a child
    process unless `options.isolate` is off (`isolate.run_build`). The plan is written once: into the cache
    entry (then linked to `output`, or copied where it cannot be linked), else straight to `output`; the
    result's `plan_file` is `output` (its sidecar is the caller's to write, `write_plan`).

    One build per key: a lock file per entry makes concurrent builds of one engine (CI jobs sharing
    a home directory) wait for the first and reuse its engine. An entry is used only when its plan's
    SHA-256 is the one its sidecar records; a truncated or mismatched entry is rebuilt, and said."""
    from trtc.lower.isolate import run_build

    content_hash = meta.get("content_hash")
    if cache_dir is None or not content_hash or options.list_layers:
        return run_build(model, meta, backend, options, where=where, progress=progress, output=output)
    key = cache_key(content_hash, options, backend)
    plan_path, side_path = cache_dir / f"{key}.plan", cache_dir / f"{key}.json"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtcError(f"cannot create the engine cache ({exc.strerror})", where=str(cache_dir),
                        hint="give another --cache-dir, or --no-cache") from None
    with _entry_lock(cache_dir / f"{key}.lock"):
        result = _cached_entry(plan_path, side_path)
        if result is None:
            result = run_build(model, meta, backend, options, where=where, progress=progress, output=plan_path)
            write_atomic(side_path, sidecar_text(result.sidecar))
        if output is not None:  # under the lock: the entry linked is the one its sidecar describes
            place_file(plan_path, output)
            result.plan_file = output
        return result


@contextlib.contextmanager
def _entry_lock(path: Path):
    """An exclusive lock on one cache entry (released by the OS if the process dies)."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached_entry(plan_path: Path, side_path: Path) -> BuildResult | None:
    """The entry when it is whole: the sidecar parses and the plan's SHA-256 (read in chunks, never whole in
    memory) is the one it records."""
    if not (plan_path.exists() and side_path.exists()):
        return None
    try:
        sidecar = json.loads(side_path.read_text())
        recorded = sidecar["plan_sha256"]
    except (ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None and recorded == file_sha256(plan_path):
        return BuildResult(sidecar, cached=True, plan_file=plan_path)
    logging.getLogger("trtc").warning("engine cache entry %s does not match its record (truncated or changed); "
                                      "rebuilding it", plan_path.name)
    return None
