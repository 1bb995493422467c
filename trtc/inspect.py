"""`trtc inspect`: what an artifact holds, as a dict (for --json) and as text."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.ir import Artifact, all_graphs, all_initializers
from trtc.reference.feeds import model_inputs, model_outputs


def summary(artifact: Artifact) -> dict[str, Any]:
    """Inputs/outputs, node count, op histogram, parameters, opsets, metadata and hash."""
    model = artifact.model
    ops: collections.Counter[str] = collections.Counter()
    nodes = 0
    for graph in all_graphs(model.graph):
        for node in graph:
            nodes += 1
            ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
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
        "nodes": nodes,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": int(params),
        "parameter_bytes": int(param_bytes),
        "opsets": {d or "ai.onnx": v for d, v in model.opset_imports.items()},
        "metadata": artifact.meta,
    }


def _spec_dict(spec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": str(spec.dtype) if spec.dtype is not None else None,
            "shape": list(spec.shape) if spec.shape is not None else None}


def format_summary(info: dict[str, Any]) -> str:
    meta = info["metadata"]
    lines = [f"artifact: {info['path']}"]
    if meta.get("stage"):
        lines.append(f"stage: {meta['stage']} (trtc {meta.get('trtc_version', '?')}, "
                     f"format {meta.get('format_version', '-')})")
    if meta.get("content_hash"):
        lines.append(f"content hash: {meta['content_hash']}")
    if meta.get("source"):
        lines.append(f"source: {meta['source']['path']} (sha256 {meta['source']['sha256'][:16]}...)")
    lines.append("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for s in info[kind]:
            dims = "?" if s["shape"] is None else "x".join("?" if d is None else str(d) for d in s["shape"])
            lines.append(f"  {s['name']}: {s['dtype']}[{dims}]")
    lines.append(f"nodes: {info['nodes']}")
    lines.append(f"parameters: {info['parameters']:,} ({info['parameter_bytes'] / 2**20:.1f} MiB)")
    lines.append("ops: " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))
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
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        attrs = ", ".join(_attr_text(a) for a in node.attributes.values())
        types = ", ".join(_type_text(v) for v in node.outputs)
        lines.append(f"{outs} = {op}({ins})" + (f" {{{attrs}}}" if attrs else "") + f" : {types}")
    return "\n".join(lines)
