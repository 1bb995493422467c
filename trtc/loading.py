"""Opening any artifact trtc accepts, by its kind: `.onnx` (parsed on the fly) or `.trtir`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.frontend.freeze import FreezeValue
from trtc.ir import Artifact, load_artifact
from trtc.ir.artifact import MAGIC


def artifact_kind(path: Path) -> str:
    """'trtir' or 'onnx', from the file's first bytes (extensions lie)."""
    if not path.is_file():
        raise TrtcError("file not found", where=str(path))
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    return "trtir" if head == MAGIC else "onnx"


def open_model(path: str | os.PathLike, freeze: Mapping[str, FreezeValue] | None = None, *,
               weightless: bool = False) -> Artifact:
    """An IR model from a `.trtir` artifact or an ONNX file (checked and canonicalized, the inputs
    named in `freeze` made constants; with `weightless`, a weight-stripped one taken: `parse_onnx`). A .trtir
    records whether it was parsed so."""
    path = Path(path)
    if artifact_kind(path) == "trtir":
        if freeze:
            raise TrtcError("--freeze applies to .onnx models; this artifact is already parsed", where=str(path),
                            hint="freeze the inputs when parsing: trtc parse MODEL.onnx --freeze NAME=VALUES")
        return load_artifact(path)
    artifact = parse_onnx(path, freeze, weightless=weightless)
    artifact.path = path
    return artifact
