"""`trtc run` as library calls: the CPU reference for .onnx/.trtir, the GPU for engines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError
from trtc.loading import open_model
from trtc.reference.feeds import make_feeds, model_inputs, validate_feeds
from trtc.reference.runner import ReferenceRunner, summarize, time_runs
from trtc.runtime.sidecar import read_sidecar, sidecar_inputs


def run_reference_file(path: Path, *, inputs: Sequence[str] = (), seed: int = 0, ranges: Sequence[str] = (),
                       shapes: Sequence[str] = (), warmup: int = 0, iterations: int = 0) -> dict[str, Any]:
    loaded = open_model(path)
    specs = model_inputs(loaded.model)
    feeds = make_feeds(specs, inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
    validate_feeds(specs, feeds, where=str(path))
    runner = ReferenceRunner(loaded.model)
    try:
        outputs = runner.run(feeds)
        timing = time_runs(runner.run, feeds, warmup, iterations) if iterations else None
    finally:
        runner.close()
    return {"artifact": str(path), "backend": runner.backend, "fallback_reason": runner.fallback_reason,
            "inputs": {k: summarize(v) for k, v in feeds.items()},
            "outputs": {k: summarize(v) for k, v in outputs.items()}, "latency": timing, "_arrays": outputs}


def run_engine_file(path: Path, *, inputs: Sequence[str] = (), seed: int = 0, ranges: Sequence[str] = (),
                    shapes: Sequence[str] = (), warmup: int = 0, iterations: int = 0, duration: float | None = None,
                    cuda_graph: bool = False, include_transfers: bool = False,
                    runtime_cache: Path | None = None) -> dict[str, Any]:
    """Validate the inputs against the sidecar, then (only then) touch the GPU."""
    from trtc.lower.backend import load_backend
    from trtc.runtime.engine import EngineRunner, no_gpu_reason, validate_engine_feeds

    sidecar = read_sidecar(path)
    feeds = make_feeds(sidecar_inputs(sidecar), inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
    validate_engine_feeds(sidecar, feeds, where=str(path))
    reason = no_gpu_reason()
    if reason is not None:
        trtir = Path(sidecar["source"]["path"]).with_suffix(".trtir").name if sidecar.get("source") else "model.trtir"
        raise TrtcError(f"cannot run a TensorRT engine here: {reason}", where=str(path),
                        hint=f"run the CPU reference instead: trtc run {trtir}")
    with EngineRunner(path, sidecar, load_backend(sidecar["backend"]), runtime_cache) as runner:
        outputs = runner.run(feeds)
        timing = None
        if iterations or duration:
            timing = runner.benchmark(feeds, warmup=warmup, iterations=iterations or None, duration=duration,
                                      cuda_graph=cuda_graph, include_transfers=include_transfers)
        info = dict(runner.info)
    return {"artifact": str(path), "backend": f"{sidecar['backend']} engine on {info.get('device', 'GPU')}",
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
            "outputs": {k: summarize(v) for k, v in outputs.items()}, "latency": timing, "profile": runner.profile,
            "_arrays": outputs}
