"""Reading an ONNX file safely: refuse what is not ONNX, unknown ops and domains,
opsets newer than we know, and external data that is missing or escapes the
model's folder. Weights are never read here.

Weights embedded in the protobuf (the usual case below 2 GB) are not loaded either:
`read_model_skeleton` finds their bytes in a memory map of the file and gives back a
*skeleton*, the model with each large embedded tensor turned into an external-data
reference to its own bytes in the .onnx file. Every proto-level step (checker, version
converter, inliner, shape inference) then copies kilobytes instead of the weights, and
`EmbeddedWeights.restore` puts the weights into the IR as read-only numpy views of the map.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from trtc.errors import TrtcError
from trtc.ir.walk import all_graphs
from trtc.ir.weightless import OPTION as WEIGHTLESS_OPTION
from trtc.ir.weightless import has_no_data

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
    _check_model_proto(proto, path)
    return proto


def _check_model_proto(proto: onnx.ModelProto, path: Path) -> None:
    """A protobuf that decodes is not yet a model: it needs a graph, an IR version and opset imports.
    Bytes that are not ONNX often decode into a message with none of them."""
    missing = [what for what, present in (("graph", proto.HasField("graph")), ("IR version", proto.ir_version > 0),
                                          ("opset_import", bool(proto.opset_import))) if not present]
    if len(missing) == 3 or not proto.HasField("graph"):
        raise TrtcError(f"not an ONNX model (no {', no '.join(missing)} in the protobuf)",
                        where=str(path), hint="the file is truncated or not ONNX; re-export it")
    if proto.ir_version <= 0:
        raise TrtcError(f"invalid ONNX model: ir_version is {proto.ir_version}, it must be positive",
                        where=str(path), hint=_BROKEN_RULES)
    if not proto.opset_import:
        raise TrtcError("invalid ONNX model: no opset_import: the model does not say which opset its ops "
                        "follow", where=str(path), hint=_BROKEN_RULES)
    check_text(proto, path)


# The hint of a model that decodes but breaks ONNX's rules (the exporter's fault, not a short read).
_BROKEN_RULES = "the model breaks ONNX's rules; fix the exporter or re-export it"


def _bad_text(message, where: str) -> Iterator[tuple[str, bytes]]:
    """(field path, bytes) of every string field under `message` that is not UTF-8 (protobuf gives
    those as bytes; ONNX's strings are UTF-8 and every reader after this one decodes them)."""
    for field, value in message.ListFields():
        items = enumerate(value) if field.is_repeated else [(None, value)]
        for index, item in items:
            at = f"{where}.{field.name}" + ("" if index is None else f"[{index}]")
            if field.type == field.TYPE_MESSAGE:
                yield from _bad_text(item, at)
            elif field.type == field.TYPE_STRING and isinstance(item, bytes):
                yield at, item


def check_text(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse names and other text fields that are not UTF-8, every one named (first of all: the
    other checks read names)."""
    bad = list(_bad_text(proto, "model"))
    if bad:
        shown = "; ".join(f"{at} {value[:40]!r}" for at, value in bad[:4]) + ("; ..." if len(bad) > 4 else "")
        raise TrtcError(f"invalid ONNX model: {len(bad)} text field(s) that are not UTF-8: {shown}",
                        where=str(path), hint="the file is damaged or was exported incorrectly; re-export it")


# Embedded tensors of at least this many bytes stay in the file (memory-mapped views); smaller
# ones (shape operands, axes, scalars: what the version converter and shape inference read
# the values of) stay inline in the skeleton, so those steps see exactly what the file holds.
LIFT_BYTES = 4096

# Protobuf wire types, and the fields the skeleton walk descends into (onnx.proto numbers).
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR = range(5)
_CHILDREN = {
    _MODEL: {7: _GRAPH},  # ModelProto.graph
    _GRAPH: {1: _NODE, 5: _TENSOR},  # GraphProto.node, .initializer
    _NODE: {5: _ATTRIBUTE},  # NodeProto.attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH},  # AttributeProto.t, .g, .tensors, .graphs
}
# TensorProto fields that hold (or locate) data besides raw_data (9): float_data, int32_data,
# string_data, int64_data, double_data, uint64_data, external_data. A tensor with any of them, or
# with data_location (14) EXTERNAL, is left as it is. (onnx.save writes data_location DEFAULT.)
_OTHER_DATA_FIELDS = {4, 5, 6, 7, 10, 11, 13}


class _Malformed(Exception):
    """The bytes are not the protobuf the walk expects; the caller falls back to onnx.load."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the protobuf message in buf[start:end]: (field start, field number, wire type,
    value, end). `value` is the number of a varint, the payload's start of a length-delimited field
    (whose payload ends at `end`), else 0. _Malformed for groups or a field past the message."""
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos, end)
        wire, value = tag & 7, 0
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LEN:
            length, value = _varint(buf, pos, end)
            pos = value + length
        else:  # groups (deprecated, never in ONNX) or garbage
            raise _Malformed
        if pos > end:
            raise _Malformed
        yield field_start, tag >> 3, wire, value, pos


def _len_field(field: int, body: bytes) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(body)) + body


def _liftable_dtype(data_type: int) -> ir.DataType | None:
    """The dtype when a raw tensor of it can be a numpy view of the file: whole bytes per element,
    a numpy (or ml_dtypes) type, and a little-endian machine (raw_data is little endian)."""
    if sys.byteorder != "little":
        return None
    try:
        dtype = ir.DataType(data_type)
        if dtype in (ir.DataType.UNDEFINED, ir.DataType.STRING) or dtype.bitwidth % 8:
            return None
        dtype.numpy()
    except (ValueError, TypeError, NotImplementedError):
        return None
    return dtype


class EmbeddedWeights:
    """The large embedded tensors of one .onnx file, as spans of a read-only memory map of it.

    In the skeleton each one is an external-data entry whose location is the file's own name and
    whose offset/length are its raw_data bytes in the file; `restore` swaps the IR's tensors for
    those entries back to views of the map (one map, one descriptor, for the whole file)."""

    def __init__(self, path: Path, mapped: mmap.mmap | None, identity: tuple[int, int, int, int] | None = None):
        self.path = path
        self.location = path.name
        self._map = mapped
        self._realpath = os.path.realpath(path)
        self._identity = identity  # the mapped file's (device, inode, size, mtime)
        self.spans: dict[int, int] = {}  # file offset of a lifted raw_data -> its length

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def nbytes(self) -> int:
        return sum(self.spans.values())

    def is_lifted(self, location: str, offset: int | None, length: int | None) -> bool:
        """Whether an external-data entry is one the skeleton made for an embedded tensor."""
        return location == self.location and offset in self.spans and length == self.spans[offset]

    def view(self, tensor: ir.ExternalTensor) -> FileViewTensor:
        """The embedded tensor behind a skeleton entry, as a read-only view of the file's bytes."""
        shape = tensor.shape.numpy()
        array = np.frombuffer(self._map, dtype=tensor.dtype.numpy(), count=math.prod(shape),
                              offset=tensor.offset).reshape(shape)
        return FileViewTensor(array, tensor.dtype, path=self._realpath, offset=tensor.offset,
                              identity=self._identity, name=tensor.name, doc_string=tensor.doc_string)

    def _restored(self, tensor: object) -> ir.TensorProtocol | None:
        """The view for a skeleton entry; None for any other tensor."""
        if isinstance(tensor, ir.ExternalTensor) and self.is_lifted(str(tensor.location), tensor.offset,
                                                                    tensor.length):
            return self.view(tensor)
        return None

    def restore(self, model: ir.Model) -> int:
        """Replace the skeleton's entries in `model` (initializers and tensor attributes, every
        graph) by views of the file; returns how many were replaced."""
        if not self.spans:
            return 0
        count = 0
        for graph in all_graphs(model.graph):
            for value in graph.initializers.values():
                if (view := self._restored(value.const_value)) is not None:
                    value.const_value = view
                    count += 1
            for node in graph:
                for name, attr in list(node.attributes.items()):
                    if attr.type == ir.AttributeType.TENSOR and (view := self._restored(attr.value)) is not None:
                        node.attributes[name] = ir.Attr(name, ir.AttributeType.TENSOR, view, doc_string=attr.doc_string)
                        count += 1
                    elif attr.type == ir.AttributeType.TENSORS:
                        views = [self._restored(t) for t in attr.value]
                        if any(v is not None for v in views):
                            tensors = [t if v is None else v for t, v in zip(attr.value, views)]
                            node.attributes[name] = ir.Attr(name, ir.AttributeType.TENSORS, tensors,
                                                            doc_string=attr.doc_string)
                            count += sum(v is not None for v in views)
        return count


# `FileViewTensor.tofile` copies through a buffer of this size.
_COPY_CHUNK = 16 << 20


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FileViewTensor(ir.Tensor):
    """A weight embedded in an .onnx file: a read-only numpy view of the file's memory map, never a
    copy. `path`/`offset` say where its bytes are, so a proto made for shape inference can point
    there instead of copying them, and `tofile` can read them from the file."""

    __slots__ = ("_identity", "offset", "path")

    def __init__(self, array: np.ndarray, dtype: ir.DataType, *, path: str, offset: int,
                 identity: tuple[int, int, int, int] | None = None, name: str | None = None,
                 doc_string: str | None = None):
        super().__init__(array, dtype, name=name, doc_string=doc_string)
        self.path = path
        self.offset = offset
        self._identity = identity  # the mapped file's (device, inode, size, mtime)

    def external_reference(self) -> ir.ExternalTensor:
        """The same bytes as an external-data tensor (absolute path) for a proto without weights."""
        return ir.ExternalTensor(self.path, offset=self.offset, length=self.nbytes, dtype=self.dtype,
                                 shape=self.shape, name=self.name)

    def is_current(self) -> bool:
        """Whether the file at `path` is still the one mapped (not replaced or rewritten since)."""
        try:
            return self._identity is not None and _identity(os.stat(self.path)) == self._identity
        except OSError:
            return False

    def tofile(self, file) -> None:
        """Write the tensor's bytes (the file's raw_data, little endian, as ONNX stores them).

        Read from the file through a bounded buffer rather than from the map: touching every mapped
        page would add the whole weight to this process's resident memory (saving the artifact of a
        338 MB model: 450 MB peak instead of 150 MB). When the file is no longer the one mapped
        (replaced or rewritten since), the map's bytes are written instead."""
        if not self._copy_from_file(file):
            # Bytes: a buffer of an ml_dtypes type (bfloat16, float8) cannot be exported as such.
            file.write(memoryview(self.numpy().reshape(-1).view(np.uint8)))

    def _copy_from_file(self, file) -> bool:
        """Copy the bytes from the file itself when it is still the one mapped; whether it did.
        Checked before the first byte is written, so a False leaves `file` untouched."""
        try:
            source = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            if self._identity is None or _identity(os.fstat(source)) != self._identity:
                return False
            buffer = memoryview(bytearray(min(self.nbytes, _COPY_CHUNK)))
            done = 0
            while done < self.nbytes:
                n = os.preadv(source, [buffer[: min(len(buffer), self.nbytes - done)]], self.offset + done)
                if n <= 0:  # cannot happen to an unchanged file; the map would fault the same way
                    raise TrtcError(f"{self.path} ends before the weight {self.name!r}", where=self.path)
                file.write(buffer[:n])
                done += n
            return True
        finally:
            os.close(source)


class _Skeleton:
    """One walk over a mapped .onnx: the bytes of its skeleton, and the spans it lifted."""

    def __init__(self, buf: memoryview, weights: EmbeddedWeights):
        self.buf = buf
        self.weights = weights
        self.location = weights.location.encode()

    def message(self, start: int, end: int, kind: int) -> list | None:
        """New body of the message in buf[start:end] when something inside it was lifted, as a list
        of pieces to join; None when it stays as it is (copied as one slice by the caller)."""
        buf, children = self.buf, _CHILDREN[kind]
        pieces: list = []
        copied = start
        for field_start, field, wire, body, pos in _fields(buf, start, end):
            child = children.get(field) if wire == _LEN else None
            # Only a message at least as large as a lifted tensor can hold one.
            if child is not None and pos - body >= LIFT_BYTES:
                new = self.tensor(body, pos) if child == _TENSOR else self.message(body, pos, child)
                if new is not None:
                    pieces.append(buf[copied:field_start])
                    pieces.append(_len_field(field, b"".join(new)))
                    copied = pos
        if copied == start:
            return None
        pieces.append(buf[copied:end])
        return pieces

    def tensor(self, start: int, end: int) -> list | None:
        """A TensorProto with its raw_data replaced by an external-data entry pointing at those bytes
        in the file, when it is a plain, well-formed embedded tensor; else None."""
        buf = self.buf
        dims: list[int] = []
        data_type = 0
        raw: list[tuple[int, int, int]] = []  # (field start, payload start, payload end)
        other = False
        for field_start, field, wire, value, pos in _fields(buf, start, end):
            if wire == _VARINT:
                if field == 1:
                    dims.append(value)
                elif field == 2:
                    data_type = value
                elif field == 14 and value != onnx.TensorProto.DEFAULT:
                    other = True
            elif wire == _LEN:
                if field == 1:  # packed dims
                    body = value
                    while body < pos:
                        dim, body = _varint(buf, body, pos)
                        dims.append(dim)
                elif field == 9:
                    raw.append((field_start, value, pos))
            if field in _OTHER_DATA_FIELDS:
                other = True
        if other or len(raw) != 1:
            return None
        dtype = _liftable_dtype(data_type)
        field_start, body, body_end = raw[0]
        length = body_end - body
        # Dims are int64 on the wire (a negative one reads as >= 2**63 and never matches).
        if dtype is None or length < LIFT_BYTES or math.prod(dims) * dtype.itemsize != length:
            return None
        self.weights.spans[body] = length
        entries = b"".join(
            _len_field(13, _len_field(1, key) + _len_field(2, value))  # TensorProto.external_data
            for key, value in ((b"location", self.location), (b"offset", str(body).encode()),
                               (b"length", str(length).encode())))
        # Appended after the tensor's own fields: a data_location DEFAULT already there is
        # overridden, as protobuf keeps the last value of a singular field.
        location = _encode_varint(14 << 3 | _VARINT) + _encode_varint(onnx.TensorProto.EXTERNAL)
        return [buf[start:field_start], buf[body_end:end], entries, location]


def read_model_skeleton(path: Path) -> tuple[onnx.ModelProto, EmbeddedWeights]:
    """The model of an ONNX file with its large embedded weights left in the file (see the module
    docstring), and those weights. External data is not loaded either. A file the walk cannot
    follow is read whole by `read_model_proto`, which also gives the errors for bad files."""
    if not path.is_file():
        raise TrtcError("file not found", where=str(path))
    mapped = None
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            if stat.st_size >= LIFT_BYTES:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        mapped = None
    if mapped is None:
        return read_model_proto(path), EmbeddedWeights(path, None)
    weights = EmbeddedWeights(path, mapped, _identity(stat))
    data = _skeleton_bytes(mapped, weights)
    proto = None
    if data is not None:
        try:
            proto = onnx.ModelProto.FromString(data)
        except (DecodeError, RuntimeError, ValueError):
            proto = None
    if proto is None:  # nothing to lift, or not a protobuf the walk follows: the file as it is
        mapped.close()
        return read_model_proto(path), EmbeddedWeights(path, None)
    _check_model_proto(proto, path)
    return proto, weights


def _skeleton_bytes(mapped: mmap.mmap, weights: EmbeddedWeights) -> bytes | None:
    """The skeleton's protobuf bytes; None when nothing was lifted or the walk failed. Every slice
    of the map is released before returning, so the map can be closed (views hold the map itself)."""
    buf = memoryview(mapped)
    try:
        pieces = _Skeleton(buf, weights).message(0, len(buf), _MODEL)
        return None if pieces is None else b"".join(pieces)
    except _Malformed:
        weights.spans.clear()
        return None
    finally:
        pieces = None
        buf.release()


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




def outer_outputs_through_identity(graph: onnx.GraphProto) -> None:
    """A subgraph output that is a value of an enclosing graph (an If branch returning `x` as is): the
    checker wants outputs made in the subgraph, onnxruntime refuses them, ONNX's reference and trtc
    run them. In the checker's stand-in such an output comes out of an Identity of the outer value; so
    do a weight of the subgraph and a value returned twice, which ONNX's If inference leaves untyped."""
    made = {vi.name for vi in graph.input} | {name for node in graph.node for name in node.output}
    returned: set[str] = set()
    for index, output in enumerate(graph.output):
        if output.name and (output.name not in made or output.name in returned):
            graph.node.append(onnx.helper.make_node("Identity", [output.name], [f"{output.name}.trtc_out{index}"]))
            output.name = graph.node[-1].output[0]
        returned.add(output.name)


def check_structure(proto: onnx.ModelProto, path: Path) -> None:
    """ONNX's own checker (graph structure, schemas, types), without reading weights.

    It checks a copy of `proto` (a skeleton: kilobytes) in which every external tensor is an empty
    stand-in: given a proto, the checker would look for external files from the cwd, and given the
    path it would read every embedded weight. `check_external_data` checks those files instead."""
    check_graph_names(proto, path)
    check_value_types(proto, path)
    check_dtype_attributes(proto, path)
    stand_in = onnx.ModelProto()
    stand_in.CopyFrom(proto)
    for graph in _subgraphs(stand_in.graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    tensors.extend(attr.tensors)
        for tensor in tensors:
            external = tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.HasField("raw_data")
            if external or has_no_data(tensor):  # no data: a weight-stripped model's (check_tensor_data let it be)
                # Zero elements and no data is a valid tensor; the checker reads no shapes from it
                # (no full check), so the node checks are the same as on the real one.
                del tensor.external_data[:]
                tensor.ClearField("data_location")
                del tensor.dims[:]
                tensor.dims.append(0)
    for graph in list(_subgraphs(stand_in.graph))[1:]:
        outer_outputs_through_identity(graph)
    for info in [*stand_in.graph.input, *stand_in.graph.output]:
        # A main-graph input or output declared without a shape is a model onnxruntime runs and exporters
        # write every day (inference supplies the shape), but the checker stops at it ("Field 'shape' of
        # 'type' is required but missing") and would check nothing after it: it gets a stand-in shape.
        if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape"):
            info.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(stand_in)
    except onnx.checker.ValidationError as exc:
        # The checker's words, all of them: some name the node on the lines after the first
        # ("... however input 'h' of node: \nname: relu OpType: Relu\n is not output of any previous nodes.").
        words = " ".join(str(exc).split())
        raise TrtcError(f"invalid ONNX model: {words}", where=str(path), hint=_BROKEN_RULES) from None
    check_unique_names(proto, path)


def _labelled_graphs(graph: onnx.GraphProto, label: str = "the main graph") -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph with where it sits: 'the main graph', 'attribute body of node 'loop' (Loop)'."""
    yield label, graph
    for node in graph.node:
        owner = f"node {node.name!r} ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for index, sub in enumerate(subs):
                which = attr.name if attr.type == onnx.AttributeProto.GRAPH else f"{attr.name}[{index}]"
                yield from _labelled_graphs(sub, f"attribute {which} of {owner}")


def check_graph_names(proto: onnx.ModelProto, path: Path) -> None:
    """The checker's rule that every graph has a name, said with the graph it found unnamed."""
    for label, graph in _labelled_graphs(proto.graph):
        if not graph.name:
            raise TrtcError(f"invalid ONNX model: Field 'name' of 'graph' is required to be non-empty: {label}",
                            where=str(path), hint=_BROKEN_RULES)


# The element types a declared type may have: ONNX's data types but UNDEFINED (0), which readers
# after this one (shape inference among them) refuse as "Invalid tensor data type 0".
_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def _unknown_elem_types(type_proto: onnx.TypeProto) -> Iterator[int]:
    """The element types in a (possibly nested: sequence, optional, map) type that ONNX does not define."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        if elem not in _DATA_TYPES:
            yield elem
    elif kind in ("sequence_type", "optional_type"):
        yield from _unknown_elem_types(getattr(type_proto, kind).elem_type)
    elif kind == "map_type":
        if type_proto.map_type.key_type not in _DATA_TYPES:
            yield type_proto.map_type.key_type
        yield from _unknown_elem_types(type_proto.map_type.value_type)


_INT64_MAX = 2**63 - 1


def _declared_dims(info: onnx.ValueInfoProto) -> list[int]:
    """The fixed dims of a declared tensor shape (symbolic ones left out)."""
    if not info.type.HasField("tensor_type"):
        return []
    return [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]


def check_value_types(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse declared types whose element type is no ONNX data type (elem_type 1000), or whose shape
    holds more elements than 64 bits count (every size computed from it overflows): the checker lets
    them through and every later reader fails on them."""
    for label, graph in _labelled_graphs(proto.graph):
        for kind, infos in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
            for info in infos:
                unknown = next(_unknown_elem_types(info.type), None)
                if unknown is not None:
                    what = "no element type (0, UNDEFINED)" if unknown == 0 else f"an unknown element type ({unknown})"
                    raise TrtcError(f"invalid ONNX model: {kind} {info.name!r} of {label} has {what}",
                                    where=str(path), hint=_BROKEN_RULES)
                if (dims := _declared_dims(info)) and math.prod(d for d in dims if d > 0) > _INT64_MAX:
                    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                             for d in info.type.tensor_type.shape.dim]
                    raise TrtcError(f"invalid ONNX model: {kind} {info.name!r} of {label} is declared "
                                    f"[{', '.join(map(str, shape))}]: more elements than a 64-bit count holds",
                                    where=str(path), hint=_BROKEN_RULES)


# Attributes of ONNX ops whose value is a data type (Cast's `to`, EyeLike's `dtype`, ...), and those of
# them where 0 means "not given" (QuantizeLinear's `output_dtype`; LayerNormalization's `stash_type`,
# which ONNX's inference does not read).
DTYPE_ATTRIBUTES = {"to", "dtype", "output_dtype", "output_datatype", "stash_type"}
_ZERO_IS_UNSET = {"output_dtype", "stash_type"}


def check_dtype_attributes(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a data-type attribute that names no data type (Cast to=0): the checker does not look at
    attribute values, and ONNX's inference fails on them without naming the node."""
    for label, graph in _labelled_graphs(proto.graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            for attr in node.attribute:
                if attr.name not in DTYPE_ATTRIBUTES or attr.type != onnx.AttributeProto.INT:
                    continue
                if attr.i not in _DATA_TYPES and not (attr.i == 0 and attr.name in _ZERO_IS_UNSET):
                    who = f"node {node.name!r} ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"
                    raise TrtcError(f"invalid ONNX model: {who} in {label}: attribute {attr.name!r} is {attr.i}, "
                                    "not an ONNX data type", where=str(path), hint=_BROKEN_RULES)


def check_unique_names(proto: onnx.ModelProto, path: Path) -> None:
    """ONNX's namespaces (IR.md, "Names Within a Graph") that its checker does not enforce: node names
    and value_info entries are unique within a graph. (Values written twice, inputs and initializers
    are the checker's.) Nodes without a name are many and fine."""
    for label, graph in _labelled_graphs(proto.graph):
        for what, names in (("nodes are named", [n.name for n in graph.node if n.name]),
                            ("value_info entries describe", [vi.name for vi in graph.value_info])):
            seen: set[str] = set()
            twice = next((name for name in names if name in seen or seen.add(name)), None)
            if twice is not None:
                raise TrtcError(f"invalid ONNX model: {names.count(twice)} {what} {twice!r} in {label}; "
                                "names must be unique within a graph",
                                where=str(path), hint=_BROKEN_RULES)


# TensorProto's typed data fields, by the field each data type stores its values in, and how many
# entries one element takes there (onnx.proto: complex values are two, 4-bit values are packed two to
# an int32 entry, 2-bit four). Types not listed here have no typed field: raw_data or external only.
_TYPED_FIELDS = {"float_data": (1,), "double_data": (11,), "int64_data": (7,), "uint64_data": (12, 13),
                 "string_data": (8,),
                 "int32_data": (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26)}


def _typed_entries(data_type: int, elements: int) -> int:
    if data_type in (14, 15):  # complex64/128 in float_data/double_data
        return 2 * elements
    if data_type == onnx.TensorProto.STRING:
        return elements
    bits = ir.DataType(data_type).bitwidth
    return -(-elements * bits // 8) if bits < 8 else elements  # sub-byte types: packed bytes, one per entry


def _described(tensor: onnx.TensorProto, dtype: ir.DataType) -> str:
    return f"{dtype.name.lower()}{list(tensor.dims)}"


def _tensor_data_problem(tensor: onnx.TensorProto, model_dir: Path) -> str | None:
    """What is wrong with a tensor's data against its dims and type, or None."""
    what = f"tensor {tensor.name!r}"
    if any(d < 0 for d in tensor.dims):
        return f"{what} has a negative dim ({list(tensor.dims)})"
    elements = math.prod(tensor.dims)
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return f"{what} has an unknown data type ({tensor.data_type})"
    if dtype == ir.DataType.UNDEFINED:
        return f"{what} has no data type"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        if dtype == ir.DataType.STRING:
            return f"{what}: string tensors cannot be external data"
        need = -(-elements * dtype.bitwidth // 8)
        try:
            length = int(info["length"]) if "length" in info else None
            offset = int(info.get("offset", 0))
        except ValueError:
            return f"{what}: external data offset/length are not numbers"
        if length is None and info.get("location"):
            real = model_dir / info["location"]
            length = real.stat().st_size - offset if real.is_file() else None
        if length is not None and length != need:
            return f"{what}: {_described(tensor, dtype)} needs {need} bytes, its external data holds {length}"
        return None
    if tensor.HasField("raw_data"):
        if dtype == ir.DataType.STRING:
            return f"{what}: a string tensor with raw_data"
        need = -(-elements * dtype.bitwidth // 8)
        if len(tensor.raw_data) != need:
            return f"{what}: {_described(tensor, dtype)} needs {need} bytes, raw_data holds {len(tensor.raw_data)}"
        return None
    typed = [(field, len(getattr(tensor, field))) for field in _TYPED_FIELDS if len(getattr(tensor, field))]
    if not typed:
        if elements == 0:
            return None
        return f"{what}: {_described(tensor, dtype)} holds no data (a weight-stripped model?)"
    field, count = typed[0]
    if len(typed) > 1 or tensor.data_type not in _TYPED_FIELDS[field]:
        return f"{what}: {dtype.name.lower()} values in {', '.join(f for f, _ in typed)}"
    need = _typed_entries(tensor.data_type, elements)
    if count != need:
        return f"{what}: {_described(tensor, dtype)} needs {need} {field} entries, it holds {count}"
    return None


def check_tensor_data(proto: onnx.ModelProto, path: Path, *, weightless: bool = False) -> list[str]:
    """Refuse tensors whose data does not match their dims and type (too few or too many bytes, none
    at all), every one named at once: read as declared, they would be garbage or a read past a buffer.
    With `weightless` (`--weightless`), the main graph's initializers that hold no data at all are a
    weight-stripped model's and pass; their names are returned. Wrongly sized data is refused all the same."""
    stripped = [t for t in proto.graph.initializer if weightless and has_no_data(t)]
    skipped = {id(t) for t in stripped}
    problems = [p for t in iter_tensor_protos(proto)
                if id(t) not in skipped and (p := _tensor_data_problem(t, path.parent))]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        hint = "the file is truncated, stripped of its weights or exported incorrectly; re-export it"
        if not weightless and any(p.endswith("(a weight-stripped model?)") for p in problems):
            hint = (f"give the model with its weights, or parse it with {WEIGHTLESS_OPTION} to build a refittable "
                    "engine that gets them later")
        raise TrtcError(f"{len(problems)} tensor(s) whose data does not match their dims: {shown}", where=str(path),
                        hint=hint)
    return [t.name for t in stripped]


def _span(info: dict[str, str]) -> tuple[int, int] | None:
    """(offset, length) of an external-data entry (0 where not given); None unless both are numbers >= 0."""
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
    except ValueError:
        return None
    return (offset, length) if offset >= 0 and length >= 0 else None


def _lifted(embedded: EmbeddedWeights, info: dict[str, str]) -> bool:
    try:
        return embedded.is_lifted(info.get("location", ""), int(info.get("offset", -1)), int(info.get("length", -1)))
    except ValueError:
        return False


def check_external_data(proto: onnx.ModelProto, path: Path, embedded: EmbeddedWeights | None = None) -> None:
    """Refuse external data that is missing, truncated, or escapes the model's folder. The entries
    a skeleton made for `embedded` weights point into the model file itself and pass."""
    base = os.path.realpath(path.parent)
    problems = []
    for tensor in iter_tensor_protos(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if embedded is not None and _lifted(embedded, info):
            continue
        what = f"tensor {tensor.name!r}: external data {location!r}"
        if not location or "\0" in location or os.path.isabs(location) or ".." in Path(location).parts:
            problems.append(f"{what} is not a plain relative path inside the model's folder")
            continue
        span = _span(info)
        if span is None:
            problems.append(f"{what}: offset {info.get('offset')!r} or length {info.get('length')!r} is not "
                            "a number of bytes")
            continue
        real = os.path.realpath(os.path.join(path.parent, location))
        if os.path.commonpath([base, real]) != base:
            problems.append(f"{what} resolves outside the model's folder (symlink?)")
            continue
        if not os.path.isfile(real):
            problems.append(f"{what} is missing")
            continue
        end = span[0] + span[1]
        if end > os.path.getsize(real):
            problems.append(f"{what} is shorter than offset+length ({end} bytes)")
    if problems:
        raise TrtcError(
            f"{len(problems)} bad external-data reference(s): " + "; ".join(problems),
            where=str(path), hint="keep the weight files beside the model, as exported",
        )
