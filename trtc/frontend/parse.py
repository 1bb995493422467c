"""`trtc parse`: ONNX file -> checked, canonical, shape-inferred IR."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.fileio import file_sha256
from trtc.frontend.canonicalize import canonicalize, upgrade_opset
from trtc.frontend.canonicalize.contrib import rewrite_contrib_ops
from trtc.frontend.canonicalize.negative_dims import unknown_negative_dims
from trtc.frontend.canonicalize.opset import default_opset
from trtc.frontend.freeze import FreezeValue, freeze_fingerprints, freeze_inputs
from trtc.frontend.node_rules import check_node_rules
from trtc.frontend.shapes import infer_shapes
from trtc.frontend.typecheck import check_types
from trtc.ir import Artifact, all_initializers, onnx_load
from trtc.ir.weightless import mark_weightless, weightless_record


def _absolute_weight_paths(model: ir.Model, model_dir: Path) -> None:
    """Point external weights at absolute paths so the IR no longer depends on the cwd."""
    for value in all_initializers(model.graph):
        t = value.const_value
        if isinstance(t, ir.ExternalTensor):
            value.const_value = ir.ExternalTensor(
                os.path.realpath(model_dir / t.location), offset=t.offset, length=t.length,
                dtype=t.dtype, shape=t.shape, name=t.name,
            )


def parse_input_hash(source_sha: str, frozen: Mapping[str, str]) -> str:
    """The parse stage's input identity: the source file's SHA-256, combined with the frozen inputs'
    fingerprints when there are any."""
    if not frozen:
        return source_sha
    return hashlib.sha256(json.dumps([source_sha, frozen], sort_keys=True).encode()).hexdigest()


def parse_onnx(path: str | os.PathLike, freeze: Mapping[str, FreezeValue] | None = None, *,
               weightless: bool = False) -> Artifact:
    """Load, check, canonicalize and shape-infer an ONNX model. Weights stay on disk.

    Weights embedded in the .onnx stay in the file too: every proto-level step runs on a skeleton
    that points at their bytes (see `onnx_load.read_model_skeleton`), and the IR holds them as
    read-only views of one memory map of the file, never as copies.

    `freeze` maps graph input names to values (array, .npy path or literal) that make them constants.
    `weightless` (`--weightless`) takes a weight-stripped model: the main graph's initializers without data
    become `WeightlessTensor`s, listed in the metadata's "weightless" (see trtc/ir/weightless.py)."""
    path = Path(path)
    frozen = freeze_fingerprints(freeze or {})
    if not path.is_file():
        raise TrtcError("file not found", where=str(path))
    # The source's SHA-256 (its identity for caching) reads every byte of an embedded-weight model:
    # a third of parsing a 338 MB one. Reading and hashing release the GIL, so it runs beside the rest.
    with ThreadPoolExecutor(max_workers=1) as pool:
        source_sha = pool.submit(file_sha256, path)
        try:
            artifact = _parse(path, freeze, frozen, weightless)
        except BaseException:
            source_sha.cancel()
            raise
        artifact.meta["source"]["sha256"] = source_sha.result()
    artifact.meta["input_hash"] = parse_input_hash(artifact.meta["source"]["sha256"], frozen)
    return artifact


def _parse(path: Path, freeze: Mapping[str, FreezeValue] | None, frozen: dict[str, str], weightless: bool
           ) -> Artifact:
    """`parse_onnx` but for the source's hashes, which the caller fills in."""
    proto, embedded = onnx_load.read_model_skeleton(path)
    onnx_load.check_opsets(proto, path)
    source_opset = default_opset(proto)
    proto, contrib = rewrite_contrib_ops(proto, str(path))  # onnxruntime's contrib ops: standard ONNX from here
    onnx_load.check_ops(proto, path)
    onnx_load.check_external_data(proto, path, embedded)
    stripped = onnx_load.check_tensor_data(proto, path, weightless=weightless)
    onnx_load.check_structure(proto, path)
    negative = unknown_negative_dims(proto)  # before anything reads a declared shape
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    check_types(proto, path)
    proto, upgrade_note = upgrade_opset(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise TrtcError(f"malformed graph: {str(exc).splitlines()[0]}", where=str(path),
                        hint="re-export the model") from None
    del proto
    mark_weightless(model, stripped)  # before anything reads a weight: theirs raise WeightMissing
    embedded.restore(model)  # before the paths are made absolute: it matches the skeleton's entries
    _absolute_weight_paths(model, path.parent)
    freeze_inputs(model, freeze or {}, where=f"{path}: --freeze")
    rewrites = contrib | canonicalize(model)
    if negative:
        rewrites["unknown_negative_dims"] = negative
    shape_warnings: list[str] = []
    unknown = infer_shapes(model, shape_warnings)
    check_node_rules(model, str(path))
    meta: dict[str, Any] = {
        "stage": "parse",
        "source": {"path": str(path.resolve()), "sha256": None, "format": "onnx"},
        "input_hash": None,
        "parse": {
            "source_opset": source_opset,
            "opset": default_opset_of(model),
            "opset_note": upgrade_note,
            "canonicalized": rewrites,
            "unknown_shapes": unknown,
            "frozen": frozen,
            "shape_warnings": shape_warnings,
        },
    }
    if stripped:
        meta["weightless"] = weightless_record(model)
    return Artifact(model=model, meta=meta)


def default_opset_of(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
