"""`trtc build` as a library call: any artifact in, engine + sidecar out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError
from trtc.ir import Artifact
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, BuildResult, cached_build, default_cache_dir, write_plan
from trtc.lower.registry import unsupported_nodes


def build_artifact(artifact: Artifact, output: Path, options: BuildOptions, *, cache: bool = True,
                   cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> BuildResult:
    """The engine at `output` (written once: by the build, or linked from the engine cache) and its sidecar."""
    backend = load_backend(options.backend)
    where = str(artifact.path or "")
    if not output.resolve().parent.is_dir():  # said before the build, not after it
        raise TrtcError("output folder does not exist", where=str(output), hint="create it first")
    result = cached_build(artifact.model, artifact.meta, backend, options,
                          cache_dir=(cache_dir or default_cache_dir()) if cache else None, where=where,
                          progress=progress, output=output)
    if artifact.meta.get("llm"):  # the static KV cache's layout, its profiles by name
        result.sidecar["llm"] = artifact.meta["llm"]
    write_plan(result, output)
    return result


def support_report(artifact: Artifact, backend: str = "auto") -> dict[str, Any]:
    """What `--dry-run` / `inspect --support` print: every node that `backend` cannot lower, by the
    checks the lowering runs before it adds a layer (`trtc.lower.network.check_supported`)."""
    nodes = len(artifact.model.graph)  # before types TensorRT lacks are carried (which adds nodes)
    problems = unsupported_nodes(artifact.model, None if backend == "auto" else backend)
    return {"nodes": nodes, "unsupported": problems, "supported": not problems}
