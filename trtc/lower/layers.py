"""What a lowered network is made of, before the build: one entry per layer (`trtc build --dump-layers`),
per-type counts (the sidecar's `layer_types`) and the layers nothing reads (which lowering must not
make: TensorRT's network API cannot remove a layer once added, so a dead one inflates the network the
builder is given and every count that compares trtc with TensorRT's own ONNX parser)."""

from __future__ import annotations

from collections import Counter
from typing import Any

# TensorRT's type names as numpy (and the sidecar) spell them.
DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "FP8": "float8e4m3fn"}


def _type_name(layer) -> str:
    return layer.type.name


def _dtype_name(tensor) -> str:
    name = tensor.dtype.name
    return DTYPE_NAMES.get(name, name.lower())


def _origin(layer) -> tuple[str, str]:
    """(ONNX op, node name) from the layer's `onnx:OP:node` metadata (`network._lower_node`), or ("", "")."""
    metadata = layer.metadata or ""
    if not metadata.startswith("onnx:"):
        return "", ""
    _, op, node = metadata.split(":", 2)
    return op, node


def _dims(tensor) -> list[int]:
    try:
        return [int(d) for d in tensor.shape]
    except (TypeError, ValueError):  # a shape TensorRT cannot give before the build (inside loops)
        return []


def layer_listing(network) -> list[dict[str, Any]]:
    """Every layer of `network` in order: index, type, name, the ONNX node it lowers (op and name), the
    layers its inputs come from (index, or the input's name for a network input) and its outputs' names,
    dtypes and shapes (-1: known at run time)."""
    producers: dict[str, int] = {}
    entries = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        op, node = _origin(layer)
        inputs: list[int | str | None] = []
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            inputs.append(None if tensor is None else producers.get(tensor.name, tensor.name))
        outputs = []
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            producers[tensor.name] = index
            outputs.append({"name": tensor.name, "dtype": _dtype_name(tensor), "shape": _dims(tensor)})
        entries.append({"index": index, "type": _type_name(layer), "name": layer.name, "op": op, "node": node,
                        "inputs": inputs, "outputs": outputs})
    return entries


def layer_type_counts(network) -> dict[str, int]:
    """How many layers of each TensorRT layer type, most frequent first."""
    counts = Counter(_type_name(network.get_layer(i)) for i in range(network.num_layers))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def dead_layers(network) -> list[int]:
    """Indices of the layers no other layer reads and that give no network output."""
    read: set[str] = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:
                read.add(tensor.name)
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    dead = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        names = {layer.get_output(j).name for j in range(layer.num_outputs)}
        if layer.num_outputs and not names & (read | outputs):
            dead.append(index)
    return dead


def format_listing(entries: list[dict[str, Any]]) -> str:
    """The listing as text, one line a layer: index, type, name, node, then each output's dtype and shape."""
    lines = []
    for e in entries:
        origin = f"{e['op']}:{e['node']}" if e["op"] else "-"
        outs = ", ".join(f"{o['dtype']}[{'x'.join(map(str, o['shape']))}]" for o in e["outputs"])
        ins = ",".join("-" if i is None else str(i) for i in e["inputs"])
        lines.append(f"{e['index']:5} {e['type']:16} {e['name']:40} {origin:40} ({ins}) -> {outs}")
    return "\n".join(lines)


def write_listing(entries: list[dict[str, Any]], path: str) -> None:
    """`trtc build --dump-layers FILE`: the listing as JSON in FILE (written atomically)."""
    import json
    from pathlib import Path

    from trtc.fileio import write_atomic

    write_atomic(Path(path), (json.dumps(entries, indent=1) + "\n").encode())
