"""`trtc inspect`: what an artifact holds, as a dict (for --json) and as text.

An `.onnx` is shown twice: the file as it is (read without its weights) and what `trtc parse`
makes of it. An engine is shown from its sidecar; one without a sidecar (from trtexec, or copied
without it) from what its bytes tell without a GPU.
"""

from __future__ import annotations

import collections
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.fileio import file_sha256
from trtc.ir import Artifact, all_graphs, all_initializers
from trtc.ir.onnx_load import iter_nodes, iter_tensor_protos, read_model_proto
from trtc.reference.feeds import model_inputs, model_outputs
from trtc.runtime.sidecar import PLAN_SUFFIXES, sidecar_path


def summary(artifact: Artifact) -> dict[str, Any]:
    """Inputs/outputs, node count, op histogram, parameters, opsets, metadata and hash."""
    model = artifact.model
    ops = _histogram(_op_key(node.domain, node.op_type) for graph in all_graphs(model.graph) for node in graph)
    params = param_bytes = 0
    for value in all_initializers(model.graph):
        t = value.const_value
        if t is not None:
            params += math.prod(t.shape.numpy())
            param_bytes += t.nbytes
    return {
        "path": str(artifact.path) if artifact.path else None,
        "inputs": [_spec_dict(s) for s in model_inputs(model)],
        "outputs": [_spec_dict(s) for s in model_outputs(model)],
        "nodes": sum(ops.values()),
        "ops": ops,
        "parameters": int(params),
        "parameter_bytes": int(param_bytes),
        "opsets": {d or "ai.onnx": v for d, v in model.opset_imports.items()},
        "metadata": artifact.meta,
    }


def _spec_dict(spec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": str(spec.dtype) if spec.dtype is not None else None,
            "shape": list(spec.shape) if spec.shape is not None else None}


def _shape_text(shape: Sequence[int | str | None] | None) -> str:
    """batchx3x224x224; ? for an unknown dim or rank."""
    return "?" if shape is None else "x".join("?" if d is None else str(d) for d in shape)


def _io_lines(info: Mapping[str, Any]) -> list[str]:
    lines = []
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        lines += [f"  {s['name']}: {s['dtype']}[{_shape_text(s['shape'])}]" for s in info[kind]]
    return lines


def _ops_text(ops: Mapping[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in ops.items())


def _op_key(domain: str, op_type: str) -> str:
    """Conv for the default domain, com.microsoft::Attention for others."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


def _histogram(ops: Iterable[str]) -> dict[str, int]:
    """Op counts, most frequent first (ties by name)."""
    return dict(sorted(collections.Counter(ops).items(), key=lambda kv: (-kv[1], kv[0])))


def format_summary(info: dict[str, Any]) -> str:
    """The summary of a parsed artifact (`summary`) as text."""
    meta = info["metadata"]
    lines = [f"artifact: {info['path']}"]
    if meta.get("stage"):
        # An .onnx parsed on the fly was never saved: no writer version or format to show.
        saved = f" (trtc {meta['trtc_version']}, format {meta.get('format_version', '-')})" \
            if meta.get("trtc_version") else ""
        lines.append(f"stage: {meta['stage']}{saved}")
    if meta.get("content_hash"):
        lines.append(f"content hash: {meta['content_hash']}")
    if meta.get("source"):
        lines.append(f"source: {meta['source']['path']} (sha256 {meta['source']['sha256'][:16]}...)")
    lines.append("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    lines += _io_lines(info)
    lines.append(f"nodes: {info['nodes']}")
    lines.append(f"parameters: {info['parameters']:,} ({info['parameter_bytes'] / 2**20:.1f} MiB)")
    lines.append("ops: " + _ops_text(info["ops"]))
    unknown = meta.get("parse", {}).get("unknown_shapes")
    if unknown:
        lines.append(f"values without inferred shape: {len(unknown)} (e.g. {', '.join(unknown[:5])})")
    return "\n".join(lines)


def dtype_name(dtype: ir.DataType) -> str:
    """numpy's name where numpy has the type (float32, int64), else ONNX's (bfloat16, float8e4m3fn)."""
    try:
        return np.dtype(dtype.numpy()).name
    except TypeError:
        return dtype.name.lower()


def _type_text(value: ir.Value | None) -> str:
    if value is None:
        return "-"
    dtype = dtype_name(value.type.dtype) if isinstance(value.type, ir.TensorType) else "?"
    if value.shape is None:
        return f"{dtype}[?]"
    dims = ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in value.shape.dims)
    return f"{dtype}[{dims}]"


def _attr_text(attr: ir.Attr) -> str:
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return f"{attr.name}=<graph>"
    if attr.type == ir.AttributeType.TENSOR:
        return f"{attr.name}=<tensor {attr.value.dtype.name.lower()}{list(attr.value.shape.numpy())}>"
    value = attr.value
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{attr.name}={value}"


def graph_text(model: ir.Model) -> str:
    """One line per node: `outputs = Op(inputs) {attrs} : types` (main graph)."""
    lines = []
    for node in model.graph:
        outs = ", ".join(v.name for v in node.outputs)
        ins = ", ".join(v.name if v is not None else "" for v in node.inputs)
        op = _op_key(node.domain, node.op_type)
        attrs = ", ".join(_attr_text(a) for a in node.attributes.values())
        types = ", ".join(_type_text(v) for v in node.outputs)
        lines.append(f"{outs} = {op}({ins})" + (f" {{{attrs}}}" if attrs else "") + f" : {types}")
    return "\n".join(lines)


# ---------------------------------------------------------------- an .onnx file as it is

PARSED_HEADING = "after parsing (trtc parse):"


def _declared_shape(tensor_type: onnx.TypeProto.Tensor) -> list[int | str | None] | None:
    """A declared shape: ints, symbolic names, None for a dim with neither; None without a shape."""
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def _declared(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """A graph input or output as the file declares it (dtype 'sequence', 'map'... for non-tensors)."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": kind.removesuffix("_type") if kind else None, "shape": None}
    tensor = value.type.tensor_type
    return {"name": value.name, "dtype": dtype_name(ir.DataType(tensor.elem_type)), "shape": _declared_shape(tensor)}


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from the proto alone (external data is not read)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        length = {e.key: e.value for e in tensor.external_data}.get("length")
        if length is not None:
            return int(length)
    elif tensor.raw_data:
        return len(tensor.raw_data)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(v) for v in tensor.string_data)
    try:
        return math.ceil(math.prod(tensor.dims) * ir.DataType(tensor.data_type).bitwidth / 8)
    except (TypeError, ValueError):  # a data type onnx_ir does not know: size unknown
        return 0


def _external_data(proto: onnx.ModelProto) -> dict[str, Any] | None:
    """Tensors whose data lives outside the .onnx, and the files they name; None when there are none."""
    files: collections.Counter[str] = collections.Counter()
    for tensor in iter_tensor_protos(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files[{e.key: e.value for e in tensor.external_data}.get("location", "?")] += 1
    return {"tensors": sum(files.values()), "files": sorted(files)} if files else None


def onnx_file_summary(path: Path) -> dict[str, Any]:
    """An .onnx as it is, read without its weights: versions, producer, declared inputs/outputs,
    every node (Constant nodes and subgraphs included), initializers and where their data is."""
    proto = read_model_proto(path)
    graph = proto.graph
    initializer_names = {t.name for t in graph.initializer}
    ops = _histogram(_op_key(n.domain, n.op_type) for n in iter_nodes(proto))
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "ir_version": proto.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "producer": {"name": proto.producer_name, "version": proto.producer_version},
        # Before IR 4 every initializer was listed as an input too: those are weights, not inputs.
        "inputs": [_declared(v) for v in graph.input if v.name not in initializer_names],
        "outputs": [_declared(v) for v in graph.output],
        "nodes": sum(ops.values()),
        "constant_nodes": ops.get("Constant", 0),
        "ops": ops,
        "local_functions": len(proto.functions),
        "initializers": len(graph.initializer),
        "initializer_bytes": sum(_tensor_bytes(t) for t in graph.initializer),
        "external_data": _external_data(proto),
    }


def size_text(n: int) -> str:
    """1,000 bytes, 21.6 KiB, 3.2 MiB, 1.5 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} bytes"


def _weights_text(external: Mapping[str, Any] | None) -> str:
    if external is None:
        return "weights inside the file"
    return f"external data: {external['tensors']} tensors in {', '.join(external['files'])}"


def format_onnx_file(info: Mapping[str, Any]) -> str:
    """The file half of `inspect model.onnx` (`onnx_file_summary`) as text."""
    producer = " ".join(v for v in info["producer"].values() if v) or "not recorded"
    lines = [f"file: {info['path']} ({size_text(info['file_bytes'])})",
             f"ir_version: {info['ir_version']}",
             "opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()),
             f"producer: {producer}"]
    lines += _io_lines(info)
    lines.append(f"nodes: {info['nodes']} ({info['constant_nodes']} Constant)")
    lines.append("ops: " + _ops_text(info["ops"]))
    if info["local_functions"]:
        lines.append(f"local functions: {info['local_functions']} (parsing inlines them)")
    lines.append(f"initializers: {info['initializers']} ({size_text(info['initializer_bytes'])}), "
                 + _weights_text(info["external_data"]))
    return "\n".join(lines)


def _parse_changes(meta: Mapping[str, Any]) -> list[str]:
    """What parsing changed: the opset (or why it was kept) and the canonical rewrites it made."""
    parse = meta.get("parse") or {}
    lines = []
    if parse.get("opset_note"):
        lines.append(f"opset: {parse['opset_note']}")
    elif parse.get("source_opset") and parse.get("opset") and parse["source_opset"] != parse["opset"]:
        lines.append(f"opset upgraded: {parse['source_opset']} -> {parse['opset']}")
    rewrites = {name: n for name, n in (parse.get("canonicalized") or {}).items() if n}
    if rewrites:
        lines.append("canonicalized: " + ", ".join(f"{name} {n}" for name, n in rewrites.items()))
    return lines


def format_onnx(view: Mapping[str, Any]) -> str:
    """`inspect model.onnx` ({"file": ..., "parsed": ...}): the file as it is, then, indented under a
    heading, what parsing makes of it (the file alone when parsing refused it)."""
    lines = [format_onnx_file(view["file"])]
    parsed = view.get("parsed")
    if parsed is not None:
        parsed_lines = format_summary(parsed).splitlines() + _parse_changes(parsed["metadata"])
        lines += [PARSED_HEADING, *(f"  {line}" for line in parsed_lines)]
    return "\n".join(lines)


# ---------------------------------------------------------------- precision decisions


def no_fp32_text(target: str) -> str:
    """The one line that replaces an empty table of fp32 nodes."""
    return f"no node kept in fp32: every float node runs in {target}"


def precision_text(report: Mapping[str, Any]) -> str:
    """`inspect --precision` of an IR: the summary, then the fp32 nodes with their reasons (one line
    when there are none, not an empty table)."""
    from trtc.precision.api import precision_summary_text, precision_table

    if report["fp32_nodes"] or "quantization" in report:  # a quantization's table lists its tensors too
        return precision_table(report)
    return precision_summary_text(report) + "\n" + no_fp32_text(report["target"])


def plan_precision(sidecar: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """The precision decisions an engine's sidecar records (counts only) and where the full list is."""
    if sidecar is None:
        raise TrtcError("an engine without a trtc sidecar records no precision decisions", where=where,
                        hint="inspect the .trtir it was built from: trtc inspect MODEL.opt.trtir --precision")
    precision = sidecar.get("precision")
    if not precision:
        raise TrtcError("the engine has no precision decisions: it was built in fp32", where=where,
                        hint="type the model with `trtc optimize --fp16` (or `trtc build --fp16`) first")
    source = (sidecar.get("source") or {}).get("path")
    pointer = {"command": "trtc inspect MODEL.opt.trtir --precision",
               "ir_content_hash": sidecar.get("ir_content_hash"), "source": source}
    return {**precision, "fp32_node_list": pointer if precision["fp32_nodes"] else None}


def plan_precision_text(info: Mapping[str, Any]) -> str:
    """`inspect model.plan --precision` as text."""
    lines = [f"{info['target']}: {info['flop_share']:.1%} of FLOPs, {info['fp32_nodes']} nodes kept fp32"]
    for name, m in (info.get("predicted") or {}).items():
        lines.append(f"  predicted {name}: max abs error {m['max_abs_error']:.3g}, relative to range "
                     f"{m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    if not info["fp32_nodes"]:
        lines.append(no_fp32_text(info["target"]))
        return "\n".join(lines)
    pointer = info["fp32_node_list"]
    lines.append(f"the sidecar keeps counts only; the fp32 nodes and why: {pointer['command']}")
    origin = [f"content hash {pointer['ir_content_hash'][:16]}" if pointer["ir_content_hash"] else "",
              f"made from {pointer['source']}" if pointer["source"] else ""]
    if any(origin):
        lines.append(f"  (the optimized IR the engine was built from: {', '.join(o for o in origin if o)})")
    return "\n".join(lines)


def refuse_model_flags(sidecar: Mapping[str, Any] | None, where: str, *, support: bool, graph: bool) -> None:
    """--support and --graph describe a model, not an engine: one-line error naming what to inspect."""
    flag = "--support" if support else "--graph" if graph else None
    if flag is None:
        return
    model = ((sidecar or {}).get("source") or {}).get("path") or "MODEL.trtir"
    raise TrtcError(f"{flag} applies to the model an engine is built from, not to the engine", where=where,
                    hint=f"use it on the .onnx or .trtir it was built from: trtc inspect {model} {flag}")


# ---------------------------------------------------------------- an engine without its sidecar
#
# What a TensorRT-RTX plan's first bytes hold, read off plans built here with TensorRT-RTX 1.7.1.116
# (fp32/fp16, one or two profiles, every --target alone and together, the default targets):
#   0x00  b"vtrt"                       0x10  u64: the plan's size in bytes
#   0x18  4 bytes: the version (1, 7, 1, 116)
#   0x20  u32: target bit mask, bit i = _RTX_TARGET_BITS[i]; 0x40 is set, with sm80..sm121, in
#         plans built without --target
#   0x40  the section table: entries (4-byte tag stored as a little-endian u32, so "ENGN" reads
#         "NGNE"; 4 zero bytes; u64 offset; u64 size) up to the first section's data: ENGN, then
#         WGHT (the weights, it seems: 0 bytes in a plan without any, about half as large in fp16).
# Nothing else is claimed. Deserializing needs CUDA: with no driver, Runtime.deserialize_cuda_engine
# returns None (cudaError 35 creating a stream) and get_engine_validity cannot read the device's
# compute capability, so `trtc inspect` reads the bytes only and says what needs a GPU.

RTX_PLAN_TAG = b"vtrt"
_HEADER_BYTES = 64  # tensorrt_rtx.Runtime.engine_header_size
_HEAD_READ = 4096
_RTX_TARGET_BITS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
_DEFAULT_TARGETS_BIT = 0x40
_SECTION_ENTRY = struct.Struct("<4s4xQQ")
GPU_NEEDED = "inputs, outputs and profiles need a GPU: deserializing the engine needs a CUDA device"


def _plan_sections(head: bytes, file_bytes: int) -> list[dict[str, Any]] | None:
    """The section table after the header, or None when it does not read as one."""
    sections: list[dict[str, Any]] = []
    pos, table_end = _HEADER_BYTES, None
    while table_end is None or pos < table_end:
        if pos + _SECTION_ENTRY.size > len(head):
            return None
        raw, offset, size = _SECTION_ENTRY.unpack_from(head, pos)
        tag = raw[::-1]
        pos += _SECTION_ENTRY.size
        if not (tag.isalpha() and tag.isupper()) or offset < pos or offset + size > file_bytes:
            return None
        sections.append({"tag": tag.decode(), "offset": offset, "bytes": size})
        table_end = offset if table_end is None else min(table_end, offset)
    return sections


def rtx_plan_header(head: bytes, file_bytes: int) -> dict[str, Any] | None:
    """What the first bytes of a TensorRT-RTX plan record (see above); None for anything else."""
    if len(head) < _HEADER_BYTES or head[:4] != RTX_PLAN_TAG:
        return None
    (recorded,) = struct.unpack_from("<Q", head, 0x10)
    (mask,) = struct.unpack_from("<I", head, 0x20)
    other = mask & ~((1 << len(_RTX_TARGET_BITS)) - 1) & ~_DEFAULT_TARGETS_BIT
    return {
        "format": "TensorRT-RTX plan",
        "version": ".".join(str(b) for b in head[0x18:0x1C]),
        "recorded_bytes": recorded,
        "targets": [name for i, name in enumerate(_RTX_TARGET_BITS) if mask >> i & 1],
        "default_targets_flag": bool(mask & _DEFAULT_TARGETS_BIT),
        "other_target_bits": hex(other) if other else None,
        "sections": _plan_sections(head, file_bytes),
    }


def _tag_text(tag: bytes) -> str:
    """The first 4 bytes, as text where they are printable ASCII, else hex."""
    return tag.decode("ascii") if tag.isascii() and tag.decode("ascii").isprintable() else tag.hex()


def _installed_rtx() -> str | None:
    """The installed TensorRT-RTX's version (package metadata: no import, no CUDA)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("tensorrt_rtx")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_engine(path: Path) -> bool:
    """An engine by its suffix (.plan, .engine) or, whatever its name, by a TensorRT-RTX plan's tag."""
    if path.suffix in PLAN_SUFFIXES:
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(RTX_PLAN_TAG)) == RTX_PLAN_TAG


def bare_plan_summary(path: Path) -> dict[str, Any]:
    """An engine without a trtc sidecar: what its bytes tell without a GPU, and what needs one."""
    if not path.is_file():
        raise TrtcError("engine file not found", where=str(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEAD_READ)
    return {
        "path": str(path),
        "sidecar": None,
        "file_bytes": size,
        "sha256": file_sha256(path),
        "tag": _tag_text(head[:4]),
        "header": rtx_plan_header(head, size),
        "installed_tensorrt_rtx": _installed_rtx(),
        "needs_gpu": {"what": ["inputs", "outputs", "profiles"],
                      "why": "deserializing the engine needs a CUDA device"},
    }


def _header_lines(info: Mapping[str, Any]) -> list[str]:
    header = info["header"]
    if header is None:
        return [f"header: starts with {info['tag']!r}, not a TensorRT-RTX plan ({RTX_PLAN_TAG.decode()!r}); "
                "trtc reads the header of TensorRT-RTX plans only"]
    installed = info["installed_tensorrt_rtx"] or "none"
    lines = [f"header: {header['format']} ({info['tag']!r}), built by TensorRT-RTX {header['version']} "
             f"(installed: {installed})"]
    if header["recorded_bytes"] != info["file_bytes"]:
        lines.append(f"size mismatch: the header records {header['recorded_bytes']:,} bytes, the file has "
                     f"{info['file_bytes']:,} (truncated or padded)")
    targets = ", ".join(header["targets"]) or "none recorded"
    if header["default_targets_flag"]:
        targets += " (and flag 0x40, seen in plans built for the default targets)"
    if header["other_target_bits"]:
        targets += f" (and unknown bits {header['other_target_bits']})"
    lines.append(f"targets: {targets}")
    if header["sections"]:
        lines.append("sections: " + ", ".join(f"{s['tag']} {size_text(s['bytes'])} at offset {s['offset']:,}"
                                              for s in header["sections"]))
    return lines


def format_bare_plan(info: Mapping[str, Any]) -> str:
    """`inspect model.plan` without a sidecar as text."""
    side = sidecar_path(info["path"]).name
    size = info["file_bytes"]
    lines = [f"engine: {info['path']} (no sidecar {side}: not built by trtc, or copied without it)",
             f"size: {size:,} bytes" + (f" ({size_text(size)})" if size >= 2**10 else ""),
             f"sha256: {info['sha256']}", *_header_lines(info), GPU_NEEDED]
    return "\n".join(lines)
