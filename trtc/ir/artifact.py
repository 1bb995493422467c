"""The `.trtir` artifact: one file holding an IR model, its weights and its metadata.

Layout (all integers little endian; see docs/artifact.md):

    MAGIC (8 bytes)
    weights blob            every weight the artifact owns, each 64-byte aligned
    model proto             ONNX ModelProto; weights are external-data entries whose
                            location is SELF (offset into this file) or the absolute
                            path of a referenced data file (e.g. the source model's)
    header                  UTF-8 JSON: format version, trtc version, stage, hashes...
    u64 header length
    MAGIC (8 bytes)

The trailer-at-the-end layout lets us stream weights out before knowing the
graph's size. Weights of the source model's external data files are referenced,
not copied: parsing a 5 GB model writes a file of a few hundred KB.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from trtc import __version__
from trtc.errors import TrtcError
from trtc.fileio import atomic_writer
from trtc.ir.splat import SplatTensor
from trtc.ir.walk import all_initializers
from trtc.ir.weightless import has_no_data, is_weightless, weightless_record, weightless_tensor

MAGIC = b"TRTIR\x00\r\n"
FORMAT_VERSION = 1
SELF = "@self"  # external-data location meaning "the blob of this artifact"
SPLAT = "@splat/"  # location prefix of a splat tensor: index into the header's "splats"
ALIGN = 64
FINGERPRINT_BYTES = 1 << 20  # bytes read from each end of a referenced file


@dataclasses.dataclass
class Artifact:
    """An IR model with the metadata of the artifact it was read from or will be written to."""

    model: ir.Model
    meta: dict[str, Any]
    path: Path | None = None


def _fingerprint(path: str) -> dict[str, Any]:
    """Identify a referenced data file without reading all of it.

    Hashing every byte of a multi-GB weight file would dominate `trtc parse`; the
    size, mtime and the first and last MiB catch replaced or rewritten files.
    """
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if st.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


def _is_reference(tensor: ir.TensorProtocol, artifact_files: dict[str, bool]) -> bool:
    """True for weights left in a source model's data file (referenced, not copied).

    Weights inside a .trtir (this one or another) are copied: artifacts never chain,
    so deleting an intermediate artifact cannot break a later one.
    """
    if not isinstance(tensor, ir.ExternalTensor):
        return False
    path = os.path.realpath(tensor.path)
    if path not in artifact_files:
        with open(path, "rb") as f:
            artifact_files[path] = f.read(len(MAGIC)) == MAGIC
    return not artifact_files[path]


def _copy_external(tensor: ir.ExternalTensor, out, h) -> None:
    """Stream an external tensor's bytes into `out` without mapping them into memory."""
    with open(tensor.path, "rb") as src:
        src.seek(tensor.offset or 0)
        remaining = tensor.length if tensor.length is not None else tensor.nbytes
        buf = bytearray(min(remaining, 16 << 20) or 1)
        view = memoryview(buf)
        while remaining:
            n = src.readinto(view[: min(remaining, len(buf))])
            if not n:
                raise TrtcError(f"external data ends early ({remaining} bytes missing)", where=tensor.path)
            out.write(view[:n])
            h.update(view[:n])
            remaining -= n


class _HashingWriter:
    """A file-like `write` that also feeds the blob's hash."""

    def __init__(self, out, h):
        self.out, self.h = out, h

    def write(self, data) -> int:
        self.h.update(data)
        return self.out.write(data)


def _write_blob(model: ir.Model, out):
    """Write owned weights to `out`; return the SELF tensors to swap in and the blob hash."""
    h = hashlib.sha256()
    start = out.tell()
    artifact_files: dict[str, bool] = {}
    swapped: dict[ir.Value, ir.TensorProtocol] = {}
    references: dict[str, dict[str, Any]] = {}
    splats: list[dict[str, Any]] = []
    for value in all_initializers(model.graph):
        tensor = value.const_value
        if is_weightless(tensor):  # stays inline as it came, without data: its declaration is its identity
            h.update(f"weightless:{value.name}:{tensor.dtype.name}:{list(tensor.shape.numpy())}".encode())
            continue
        if tensor is None or tensor.nbytes == 0:
            continue  # empty tensors stay inline in the proto (nothing to map)
        if isinstance(tensor, SplatTensor):
            # One element and a shape: stored in the header, materialized by whoever needs bytes.
            h.update(f"splat:{tensor.value.tobytes().hex()}:{list(tensor.shape.numpy())}".encode())
            splats.append({"value": tensor.value.tobytes().hex(), "dtype": int(tensor.dtype),
                           "shape": [int(d) for d in tensor.shape.numpy()]})
            swapped[value] = ir.ExternalTensor(f"{SPLAT}{len(splats) - 1}", offset=0, length=tensor.nbytes,
                                               dtype=tensor.dtype, shape=tensor.shape, name=value.name)
            continue
        if _is_reference(tensor, artifact_files):
            path = os.path.abspath(tensor.path)
            if path not in references:
                references[path] = _fingerprint(path)
            continue
        pad = -(out.tell() - start) % ALIGN
        out.write(b"\0" * pad)
        h.update(b"\0" * pad)
        offset = out.tell() - start
        if isinstance(tensor, ir.ExternalTensor):
            _copy_external(tensor, out, h)
        else:
            tensor.tofile(_HashingWriter(out, h))  # lazy tensors (splats) stream in chunks
        swapped[value] = ir.ExternalTensor(
            SELF,
            offset=offset,
            length=tensor.nbytes,
            dtype=tensor.dtype,
            shape=tensor.shape,
            name=value.name,
        )
    return swapped, h.hexdigest(), sorted(references.values(), key=lambda r: r["path"]), splats


def _serialize(model: ir.Model, swapped: dict[ir.Value, ir.TensorProtocol]) -> bytes:
    """Serialize the graph with owned weights replaced by SELF references."""
    originals = {v: v.const_value for v in swapped}
    try:
        for value, tensor in swapped.items():
            value.const_value = tensor
        return ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    finally:
        for value, tensor in originals.items():
            value.const_value = tensor


def content_hash(proto_sha: str, blob_sha: str, references: list[dict[str, Any]]) -> str:
    """The artifact's identity: graph, owned weights and the fingerprints of referenced files."""
    h = hashlib.sha256()
    h.update(proto_sha.encode())
    h.update(blob_sha.encode())
    for ref in references:
        h.update(json.dumps(ref, sort_keys=True).encode())
    return h.hexdigest()


class _CountingSink:
    """Where `_write_blob` writes when only the hashes are wanted: counts bytes, keeps none."""

    def __init__(self):
        self.position = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.position += n
        return n

    def tell(self) -> int:
        return self.position


def model_content_hash(model: ir.Model) -> str:
    """The content hash `save_artifact` would record for `model`, computed without writing it:
    a model made in memory (e.g. `trtc build model.onnx`) and the same model saved by a stage
    (`trtc compile`) have one identity, so they share one cached engine."""
    swapped, blob_sha, references, _ = _write_blob(model, _CountingSink())
    proto_sha = hashlib.sha256(_serialize(model, swapped)).hexdigest()
    return content_hash(proto_sha, blob_sha, references)


def save_artifact(model: ir.Model, path: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any]:
    """Write `model` to `path` atomically; return the full header that was written.

    `meta` carries the stage-specific fields (stage, source, input_hash, ...);
    format, versions, offsets and hashes are filled in here.
    """
    path = Path(path)
    meta = _with_weightless(model, meta)
    with atomic_writer(path) as out:
        out.write(MAGIC)
        swapped, blob_sha, references, splats = _write_blob(model, out)
        blob_end = out.tell()
        proto = _serialize(model, swapped)
        out.write(proto)
        proto_sha = hashlib.sha256(proto).hexdigest()
        header = {
            "format": "trtir",
            "format_version": FORMAT_VERSION,
            "trtc_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **meta,
            "content_hash": content_hash(proto_sha, blob_sha, references),
            "blob": {"offset": len(MAGIC), "length": blob_end - len(MAGIC), "sha256": blob_sha},
            "proto": {"offset": blob_end, "length": len(proto), "sha256": proto_sha},
            "references": references,
            "splats": splats,
        }
        data = json.dumps(header, indent=1, sort_keys=True).encode()
        out.write(data)
        out.write(struct.pack("<Q", len(data)))
        out.write(MAGIC)
    return header


def _with_weightless(model: ir.Model, meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with "weightless" listing the weights the model holds no values for as it is now (a pass may have
    removed some), or without the entry where it holds all of them."""
    meta = {k: v for k, v in meta.items() if k != "weightless"}
    missing = weightless_record(model)
    return {**meta, "weightless": missing} if missing else meta


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate only the header of a `.trtir` file (cheap: no graph, no weights)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
            if size < 2 * len(MAGIC) + 8 or head != MAGIC:
                raise TrtcError("not a .trtir artifact (bad magic)", where=str(path),
                                hint="produce one with `trtc parse MODEL.onnx -o MODEL.trtir`")
            f.seek(size - len(MAGIC) - 8)
            (hlen,) = struct.unpack("<Q", f.read(8))
            if f.read(len(MAGIC)) != MAGIC or hlen > size:
                raise TrtcError("truncated or corrupt .trtir artifact", where=str(path),
                                hint="re-create it with the stage that produced it")
            f.seek(size - len(MAGIC) - 8 - hlen)
            header = json.loads(f.read(hlen))
    except FileNotFoundError:
        raise TrtcError("file not found", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TrtcError("corrupt .trtir header", where=str(path)) from None
    if header.get("format") != "trtir" or header.get("format_version") != FORMAT_VERSION:
        raise TrtcError(
            f"unsupported .trtir format version {header.get('format_version')!r} "
            f"(this trtc reads version {FORMAT_VERSION})",
            where=str(path), hint="re-create the artifact with this trtc version",
        )
    return header


def _check_reference(ref: dict[str, Any], artifact: Path) -> None:
    try:
        st = os.stat(ref["path"])
    except FileNotFoundError:
        raise TrtcError(
            f"referenced weight file {ref['path']} is missing", where=str(artifact),
            hint="restore it or re-run `trtc parse` on the model",
        ) from None
    changed = st.st_size != ref["size"] or (
        st.st_mtime_ns != ref["mtime_ns"]
        and _fingerprint(ref["path"])["sha256_ends"] != ref["sha256_ends"]
    )
    if changed:
        raise TrtcError(
            f"referenced weight file {ref['path']} changed since the artifact was written",
            where=str(artifact), hint="re-run `trtc parse` on the model",
        )


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read a `.trtir` file. Weights stay on disk: they are memory-mapped when first used."""
    path = Path(path)
    header = read_header(path)
    for ref in header.get("references", []):
        _check_reference(ref, path)
    with open(path, "rb") as f:
        f.seek(header["proto"]["offset"])
        data = f.read(header["proto"]["length"])
    if hashlib.sha256(data).hexdigest() != header["proto"]["sha256"]:
        raise TrtcError("graph does not match its recorded hash (corrupt file)", where=str(path))
    proto = onnx.ModelProto.FromString(data)
    model = ir.serde.deserialize_model(proto)
    blob_offset = header["blob"]["offset"]
    abspath = str(path.resolve())
    splats = header.get("splats", [])
    for value in all_initializers(model.graph):
        t = value.const_value
        if isinstance(t, ir.ExternalTensor) and str(t.location).startswith(SPLAT):
            entry = splats[int(str(t.location)[len(SPLAT):])]
            dtype = ir.DataType(entry["dtype"])
            element = np.frombuffer(bytes.fromhex(entry["value"]), dtype=dtype.numpy())[0]
            value.const_value = SplatTensor(element, tuple(entry["shape"]), dtype, name=t.name)
        elif isinstance(t, ir.TensorProtoTensor) and has_no_data(t.raw):  # written by `_write_blob` as it came
            value.const_value = weightless_tensor(t.raw)
        elif isinstance(t, ir.ExternalTensor) and t.location == SELF:
            value.const_value = ir.ExternalTensor(
                abspath, offset=blob_offset + t.offset, length=t.length,
                dtype=t.dtype, shape=t.shape, name=t.name,
            )
    return Artifact(model=model, meta=header, path=path)
