"""`trtc export`: an artifact in another format."""

from __future__ import annotations

import time
from pathlib import Path

import click

from trtc.cli.options import echo_json, json_option


@click.group()
def export() -> None:
    """Write an artifact in another format."""


@export.command("onnx")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .onnx file to write (weights over 2 GB go to OUTPUT.data beside it).")
@json_option
def export_onnx(artifact: Path, output: Path, as_json: bool) -> None:
    """A plain ONNX model (external data beside it when weights pass 2 GB)."""
    from trtc.ir.onnx_export import PROTO_LIMIT, export_onnx_file
    from trtc.ir.walk import weight_bytes
    from trtc.loading import open_model

    start = time.perf_counter()
    loaded = open_model(artifact)
    export_onnx_file(loaded.model, output)
    # The writer puts weights in OUTPUT.data only past protobuf's limit; asking the same question
    # (rather than whether the file exists) ignores a stale one left by an earlier, larger export.
    data = output.with_name(f"{output.name}.data") if weight_bytes(loaded.model.graph) >= PROTO_LIMIT else None
    info = {
        "output": str(output),
        "bytes": output.stat().st_size,
        "external_data": str(data) if data else None,
        "external_data_bytes": data.stat().st_size if data else 0,
        "nodes": len(loaded.model.graph),
        "opsets": {domain or "ai.onnx": version for domain, version in loaded.model.opset_imports.items()},
        "inputs": [value.name for value in loaded.model.graph.inputs],
        "outputs": [value.name for value in loaded.model.graph.outputs],
        "seconds": round(time.perf_counter() - start, 3),
    }
    if as_json:
        echo_json(info)
        return
    size = info["bytes"] + info["external_data_bytes"]
    click.echo(f"wrote {output}: {info['nodes']} nodes, {size / 2**20:.1f} MiB in {info['seconds']:.2f}s")
