"""`trtc build` as a library call: any artifact in, engine + sidecar out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trtc import __version__
from trtc.ir import Artifact
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, BuildResult, cached_build, default_cache_dir, write_plan
from trtc.lower.registry import unsupported_nodes
from trtc.passes.pipeline import optimize, optimized_meta


def derived_hash(base: str, record: Any) -> str:
    """The identity of a model made in memory from `base` by a deterministic stage: the
    stage's inputs (and the files it read), not its output bytes, which are never written."""
    blob = json.dumps({"base": base, "record": record, "trtc": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def calibration_file_hashes(precision_opts: Mapping[str, Any], calib_kwargs: Mapping[str, Any]) -> list[str]:
    """SHA-256 of every calibration/input file (--calib, --input; NAME=path allowed): a stage that
    observed them is reused only while their contents are the same."""
    from trtc.frontend.parse import file_sha256

    paths = list(precision_opts.get("calib") or ()) + list(calib_kwargs.get("inputs") or ())
    return [file_sha256(Path(p.rpartition("=")[2])) for p in paths]


def prepare_for_build(artifact: Artifact, precision_opts: Mapping[str, Any] | None, *,
                      calib_kwargs: Mapping[str, Any] | None = None,
                      progress: Callable[[str], None] | None = None) -> Artifact:
    """An ONNX file goes through the default pipeline first; --fp16/--bf16 type an untyped IR."""
    meta = artifact.meta
    if meta.get("content_hash") is None:  # parsed on the fly from an ONNX file
        report = optimize(artifact.model, progress=progress)
        artifact.meta = meta = optimized_meta(meta, report, {"passes": "default"})
        meta["content_hash"] = derived_hash(meta["input_hash"], "parse+optimize(default)")  # frozen values included
    wants_precision = precision_opts and (precision_opts.get("fp16") or precision_opts.get("bf16"))
    if wants_precision and not meta.get("precision"):
        from trtc.precision.api import run_precision

        calib_kwargs = dict(calib_kwargs or {})
        if progress:
            progress("precision: observing calibration data")
        meta["precision"] = run_precision(artifact, precision_opts, **calib_kwargs)
        meta["content_hash"] = derived_hash(meta["content_hash"], {
            "precision": {k: v for k, v in precision_opts.items() if k != "calib"},
            "calibration": {**{k: v for k, v in calib_kwargs.items() if k != "inputs"},
                            "files": calibration_file_hashes(precision_opts, calib_kwargs)},
        })
    return artifact


def build_artifact(artifact: Artifact, output: Path, options: BuildOptions, *, cache: bool = True,
                   cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> BuildResult:
    backend = load_backend(options.backend)
    where = str(artifact.path or "")
    result = cached_build(artifact.model, artifact.meta, backend, options,
                          cache_dir=(cache_dir or default_cache_dir()) if cache else None, where=where,
                          progress=progress)
    write_plan(result, output)
    return result


def support_report(artifact: Artifact) -> dict[str, Any]:
    """What `--dry-run` / `inspect --support` print: every node that cannot be lowered."""
    nodes = len(artifact.model.graph)  # before types TensorRT lacks are carried (which adds nodes)
    problems = unsupported_nodes(artifact.model)
    return {"nodes": nodes, "unsupported": problems, "supported": not problems}
