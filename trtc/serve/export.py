"""`trtc export triton`: a Triton model repository entry from a trtc artifact.

REPO/NAME/config.pbtxt and REPO/NAME/VERSION/ holding
- `--backend tensorrt` (an engine's default): model.plan and its sidecar model.plan.json;
- `--backend python`: model.py (trtc/serve/python_model.py, the same file for every model), the
  artifact it runs and trtc.json saying which, with the signature the config was written from.
  An engine comes with the .trtir it was built from where that is still on disk (same hash), so
  the model runs on the CPU reference where no GPU is.

The config is written from the artifact, parsed back with Triton's schema and checked against
the artifact before anything is written; the model folder appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtc import __version__
from trtc.errors import TrtcError
from trtc.fileio import current_umask, file_sha256
from trtc.ir.artifact import read_header
from trtc.ir.weightless import refuse_unrefitted, refuse_weightless
from trtc.serve.check import MODEL_SPEC, check_config
from trtc.serve.config import TritonExportOptions, decide_batching, model_config
from trtc.serve.schema import CONFIG_NAME, config_text, parse_config
from trtc.serve.signature import Signature, artifact_signature

PYTHON_MODEL = Path(__file__).with_name("python_model.py")


def model_name(artifact: Path) -> str:
    """A Triton model name from a file name: letters, digits, '_', '-' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", artifact.stem) or "model"


def place_file(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (an engine or weights are not copied needlessly), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _reference_source(plan: Path, sidecar: dict[str, Any]) -> Path | None:
    """The model an engine was built from, when it is still on disk unchanged."""
    source = sidecar.get("source") or {}
    path = Path(source["path"]) if source.get("path") else None
    if path is None or not path.is_file() or file_sha256(path) != source.get("sha256"):
        return None
    return path


def _write_model_artifact(src: Path, dst: Path) -> None:
    """`src` (.onnx or .trtir) as a .trtir at `dst`: parsed once here, not at every server start."""
    from trtc.loading import artifact_kind, open_model

    if artifact_kind(src) == "trtir":
        place_file(src, dst)
        return
    from trtc.ir import save_artifact

    artifact = open_model(src)
    save_artifact(artifact.model, dst, artifact.meta)


def _spec(signature: Signature, files: dict[str, str | None], max_batch: int, artifact: Path) -> dict[str, Any]:
    def tensors(items):
        return [{k: v for k, v in dataclasses.asdict(t).items() if v not in (None, (), False)} for t in items]

    return {"format": "trtc-triton-model", "trtc_version": __version__, "kind": signature.kind,
            "source": {"path": str(artifact.resolve()), "sha256": file_sha256(artifact)}, **files,
            "max_batch_size": max_batch, "inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs),
            "profiles": [{n: [list(d) for d in r] for n, r in p.items()} for p in signature.profiles]}


def _fill_version(version_dir: Path, artifact: Path, signature: Signature, backend: str, max_batch: int) -> list[str]:
    """Write the version folder; return notes for the report."""
    from trtc.runtime.sidecar import read_sidecar, sidecar_path

    notes = []
    files: dict[str, str | None] = {"engine": None, "reference": None}
    if signature.kind == "plan":
        place_file(artifact, version_dir / "model.plan")
        place_file(sidecar_path(artifact), version_dir / "model.plan.json")
        files["engine"] = "model.plan"
        if backend == "python":
            source = _reference_source(artifact, read_sidecar(artifact))
            if source is None:
                notes.append("the model the engine was built from is not on disk unchanged: this model runs on a "
                             "GPU only (no CPU reference to fall back to)")
            else:
                _write_model_artifact(source, version_dir / "model.trtir")
                files["reference"] = "model.trtir"
    else:
        _write_model_artifact(artifact, version_dir / "model.trtir")
        files["reference"] = "model.trtir"
    if backend == "python":
        shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
        spec = _spec(signature, files, max_batch, artifact)
        (version_dir / MODEL_SPEC).write_text(json.dumps(spec, indent=1) + "\n")
    return notes


def write_model_dir(repo: Path, name: str, config_text: str, version: int,
                    fill: Callable[[Path], list[str]]) -> tuple[Path, list[str]]:
    """REPO/NAME holding config.pbtxt and the version folder `fill` writes (it returns notes for the
    report), made in a staging folder beside it and renamed into place: whole or not at all."""
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / CONFIG_NAME).write_text(config_text)
        version_dir = staging / str(version)
        version_dir.mkdir()
        notes = fill(version_dir)
        os.chmod(staging, 0o777 & ~current_umask())
        target = repo / name
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            target.rename(old / name)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target, notes


def _refuse_unservable(artifact: Path) -> None:
    """An engine that must be refitted first, or a weight-stripped model (no values to run): one line, before
    anything is written (served, either would answer with what it was built from: zeros)."""
    if artifact.suffix == ".plan":
        from trtc.runtime.sidecar import read_sidecar

        refuse_unrefitted(read_sidecar(artifact), str(artifact))
    elif artifact.suffix == ".trtir" and read_header(artifact).get("weightless"):
        from trtc.ir import load_artifact

        refuse_weightless(load_artifact(artifact).model, str(artifact), "serve it")


def export_triton(artifact: Path, repo: Path, options: TritonExportOptions | None = None) -> dict[str, Any]:
    """Write REPO/NAME for `artifact`; the report says what was written and what was decided. A
    decoder trtc's generation loop drives (trtc.serve.llm_export) becomes a decoupled model that
    streams its tokens, unless options.llm is False."""
    options = options or TritonExportOptions()
    artifact = Path(artifact)
    if options.version < 1:
        raise TrtcError(f"version {options.version}: Triton's versions start at 1", where="--version")
    if options.instances < 1:
        raise TrtcError(f"{options.instances} instances", where="--instances", hint="give 1 or more")
    name = options.name or model_name(artifact)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise TrtcError(f"{name!r} is not a usable model name", where="--name",
                        hint="letters, digits, '_', '-' and '.'")
    from trtc.serve.llm_export import export_llm, find_decoder

    decoder, why_not = find_decoder(artifact, options.llm)
    if decoder is not None:
        return export_llm(decoder, repo, name, options)
    not_llm = [why_not] if why_not else []
    if options.tokenizer is not None:
        raise TrtcError("a tokenizer serves an LLM decoder's text, and this model is not one it serves"
                        + (f" ({why_not})" if why_not else ""), where="--tokenizer", hint="drop --tokenizer")
    _refuse_unservable(artifact)
    try:
        signature = artifact_signature(artifact, options.profiles)
    except TrtcError as exc:
        if why_not:  # a decoder refused as one: say why beside the tensor model's own error
            raise TrtcError(exc.message, where=exc.where, hint="; ".join(filter(None, [exc.hint, why_not]))) from None
        raise
    batching = decide_batching(signature, options)
    config = model_config(signature, name, options, batching)
    text = config_text(config)
    problems = check_config(parse_config(text, f"{name}/{CONFIG_NAME}"), signature)
    if problems:  # the writer and the checks disagree: a trtc bug, said before anything is written
        raise TrtcError(f"the config written for {name} fails its own check: {'; '.join(problems)}",
                        where=str(artifact), hint="please report this")
    backend = options.backend_for(signature.kind)
    target, notes = write_model_dir(repo, name, text, options.version, lambda version_dir: _fill_version(
        version_dir, artifact, signature, backend, batching.max_batch))
    if batching.reason and batching.reason != "--max-batch 0":
        notes.insert(0, f"batching off: {batching.reason}")
    notes[:0] = not_llm
    return {"model": name, "path": str(target), "backend": backend, "version": options.version, "llm": None,
            "max_batch_size": batching.max_batch, "preferred_batch_size": list(batching.preferred),
            "instance_groups": len(config.instance_group), "profiles": len(signature.profiles),
            "inputs": [t.describe() for t in signature.inputs], "outputs": [t.describe() for t in signature.outputs],
            "files": sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()),
            "config": text, "notes": notes}
