"""Reading an ONNX file safely: refuse what is not ONNX, unknown ops and domains,
opsets newer than we know, and external data that is missing or escapes the
model's folder. Weights are never read here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from trtc.errors import TrtcError

# Domains whose ops have ONNX schemas (so the CPU reference can run them).
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training"}


def read_model_proto(path: Path) -> onnx.ModelProto:
    """Parse the protobuf of an ONNX file without loading external data."""
    if not path.is_file():
        raise TrtcError("file not found", where=str(path))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise TrtcError(
            f"not a valid ONNX model (protobuf could not be decoded: {str(exc).splitlines()[0]})",
            where=str(path), hint="the file is truncated or not ONNX; re-export it",
        ) from None
    if not proto.HasField("graph") or not proto.opset_import or proto.ir_version <= 0:
        raise TrtcError(
            "not an ONNX model (no graph, opset or IR version in the protobuf)",
            where=str(path), hint="the file is truncated or not ONNX; re-export it",
        )
    return proto


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _subgraphs(g)


def iter_tensor_protos(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers and tensor attributes, subgraphs included."""
    for graph in _subgraphs(proto.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def iter_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _subgraphs(proto.graph):
        yield from graph.node


def check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise TrtcError(
                f"opset {opset.version} is newer than the installed onnx {onnx.__version__} "
                f"knows (up to {newest})",
                where=str(path), hint=f"upgrade onnx or re-export at opset <= {newest}",
            )


def check_ops(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse nodes whose domain or op has no schema, listing all of them at once."""
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 1))
    local = {(f.domain, f.name) for f in proto.functions}
    problems = []
    for node in iter_nodes(proto):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (node.domain, node.op_type) in local:
            continue
        where = f"node {node.name or '<unnamed>'!r} (op {node.op_type}"
        where += f", domain {domain!r})" if domain else ")"
        if domain not in KNOWN_DOMAINS:
            problems.append(f"{where}: unknown op domain {domain!r}")
            continue
        version = opsets.get(domain)
        if version is None:
            problems.append(f"{where}: domain {domain!r} has no opset_import entry")
            continue
        try:
            onnx.defs.get_schema(node.op_type, version, domain)
        except onnx.defs.SchemaError:
            problems.append(f"{where}: no such op in {domain or 'ai.onnx'} opset {version}")
    if problems:
        raise TrtcError(
            f"{len(problems)} unsupported node(s): " + "; ".join(problems),
            where=str(path), hint="replace them with standard ONNX ops or a model-local function",
        )


# Checker complaints about models that onnxruntime runs and exporters write every day:
# a graph input/output declared without a shape (shape inference supplies it).
BENIGN_CHECKER_ERRORS = ("Field 'shape' of 'type' is required but missing",)


def check_structure(path: Path) -> None:
    """ONNX's own checker (graph structure, schemas, types), without reading weights."""
    try:
        # Given the path, the checker resolves external data beside the model, not the cwd.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        if first.startswith(BENIGN_CHECKER_ERRORS):
            return
        raise TrtcError(f"invalid ONNX model: {first}", where=str(path),
                        hint="the file is truncated or was exported incorrectly; re-export it") from None


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that is missing, truncated, or escapes the model's folder."""
    base = os.path.realpath(path.parent)
    problems = []
    for tensor in iter_tensor_protos(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        what = f"tensor {tensor.name!r}: external data {location!r}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            problems.append(f"{what} is not a plain relative path inside the model's folder")
            continue
        real = os.path.realpath(os.path.join(path.parent, location))
        if os.path.commonpath([base, real]) != base:
            problems.append(f"{what} resolves outside the model's folder (symlink?)")
            continue
        if not os.path.isfile(real):
            problems.append(f"{what} is missing")
            continue
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > os.path.getsize(real):
            problems.append(f"{what} is shorter than offset+length ({end} bytes)")
    if problems:
        raise TrtcError(
            f"{len(problems)} bad external-data reference(s): " + "; ".join(problems),
            where=str(path), hint="keep the weight files beside the model, as exported",
        )
