"""`trtc run` as library calls: the CPU reference for .onnx/.trtir, the GPU for engines."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtc.errors import TrtcError
from trtc.ir.weightless import refuse_unrefitted, refuse_weightless
from trtc.loading import open_model
from trtc.reference.feeds import (
    FeedOptions,
    frozen_inputs,
    load_feeds,
    memory_limit,
    model_inputs,
    model_outputs,
    validate_feeds,
)
from trtc.reference.runner import InputRejected, ReferenceRunner, summarize, time_runs
from trtc.runtime.sidecar import read_sidecar, sidecar_inputs, verify_plan_bytes

if TYPE_CHECKING:
    from trtc.reference.feeds import GeneratedInput

# Each report also holds, for the caller to pop: "_arrays" (the outputs by name) and "_feeds" (the
# reference.feeds.Feeds it ran on: expected outputs an .npz held, the inputs that were generated).


def run_reference_file(path: Path, feeds: FeedOptions | None = None, *, warmup: int = 0,
                       iterations: int = 0) -> dict[str, Any]:
    """Run an .onnx/.trtir on the CPU reference. The report's `backend` says which executor ran
    it and `fallback_reason` why not onnxruntime; an input onnxruntime refuses is an error
    (never a reason to fall back), located at `path`, naming the inputs that were generated."""
    loaded = open_model(path)
    refuse_weightless(loaded.model, str(path), "run it on the CPU reference")
    specs = model_inputs(loaded.model)
    given = load_feeds(specs, feeds, outputs=[s.name for s in model_outputs(loaded.model)],
                       frozen=frozen_inputs(loaded.model, loaded.meta))
    arrays = given.arrays
    validate_feeds(specs, arrays, where=str(path))
    runner = ReferenceRunner(loaded.model, max_memory=memory_limit(feeds))
    try:
        outputs = runner.run(arrays)
        # Checked once above: the timed runs measure the model, not the feed checks.
        timing = time_runs(lambda f: runner.run(f, validate=False), arrays, warmup, iterations) if iterations else None
    except InputRejected as exc:
        raise exc.located(str(path), generated_hint(given.generated)) from None
    except TrtcError as exc:
        raise TrtcError(exc.message, where=str(path), hint=exc.hint) from None
    finally:
        runner.close()
    precision = loaded.meta.get("precision")
    return {"artifact": str(path), "backend": runner.backend, "fallback_reason": runner.fallback_reason,
            "precision": precision["target"] if precision else None,
            "generated": [g.as_dict() for g in given.generated], "unused": given.unused,
            "inputs": {k: summarize(v) for k, v in arrays.items()},
            "outputs": {k: summarize(v) for k, v in outputs.items()}, "latency": timing, "_arrays": outputs,
            "_feeds": given}


def generated_hint(generated: Sequence[GeneratedInput]) -> str | None:
    """For an error on inputs trtc made up: which they were, and how to give better ones."""
    if not generated:
        return None
    return (f"generated: {', '.join(g.describe() for g in generated)}; give real inputs with --input, "
            "other sizes with --shape, value ranges with --range")


def engine_opt_shapes(sidecar: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`shapes` (`--shape`) over the OPT shapes of the engine's first profile: what a dynamic
    input is generated at unless the user says otherwise (as calibration does for build)."""
    profiles = sidecar.get("profiles") or []
    opt = {name: tuple(int(d) for d in ranges[1]) for name, ranges in (profiles[0] if profiles else {}).items()}
    return {**opt, **shapes}


def run_engine_file(path: Path, feeds: FeedOptions | None = None, *, warmup: int = 0, iterations: int = 0,
                    duration: float | None = None,
                    cuda_graph: bool = False, include_transfers: bool = False,
                    runtime_cache: Path | None = None, trust_plan: bool = False) -> dict[str, Any]:
    """Validate the plan's bytes and the inputs against the sidecar, then (only then) touch the GPU."""
    from trtc.lower.backend import load_backend
    from trtc.runtime.engine import EngineRunner, no_gpu_reason, validate_engine_feeds

    sidecar = read_sidecar(path)
    refuse_unrefitted(sidecar, str(path))
    verify_plan_bytes(path.read_bytes(), sidecar, str(path), trust=trust_plan)
    feeds = feeds or FeedOptions()
    feeds = dataclasses.replace(feeds, shapes=engine_opt_shapes(sidecar, feeds.shapes))
    given = load_feeds(sidecar_inputs(sidecar), feeds, outputs=[o["name"] for o in sidecar["outputs"]])
    arrays = given.arrays
    validate_engine_feeds(sidecar, arrays, where=str(path))
    reason = no_gpu_reason()
    if reason is not None:
        # The model the engine was built from, as recorded (a guessed name would point at no file).
        source = (sidecar.get("source") or {}).get("path") or "MODEL.onnx"
        raise TrtcError(f"cannot run a TensorRT engine here: {reason}", where=str(path),
                        hint=f"run the CPU reference instead: trtc run {source}")
    with EngineRunner(path, sidecar, load_backend(sidecar["backend"]), runtime_cache, trust_plan=trust_plan) as runner:
        outputs = runner.run(arrays)
        timing = None
        if iterations or duration:
            timing = runner.benchmark(arrays, warmup=warmup, iterations=iterations or None, duration=duration,
                                      cuda_graph=cuda_graph, include_transfers=include_transfers)
        info = dict(runner.info)
    return {"artifact": str(path), "backend": f"{sidecar['backend']} engine on {info.get('device', 'GPU')}",
            "precision": (sidecar.get("precision") or {}).get("target"),
            "generated": [g.as_dict() for g in given.generated], "unused": given.unused,
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
            "outputs": {k: summarize(v) for k, v in outputs.items()}, "latency": timing, "profile": runner.profile,
            "_arrays": outputs, "_feeds": given}
