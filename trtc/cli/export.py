"""`trtc export`: an artifact in another format."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def export() -> None:
    """Write an artifact in another format."""


@export.command("onnx")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def export_onnx(artifact: Path, output: Path) -> None:
    """A plain ONNX model (external data beside it when weights pass 2 GB)."""
    from trtc.ir.onnx_export import export_onnx_file
    from trtc.loading import open_model

    loaded = open_model(artifact)
    export_onnx_file(loaded.model, output)
    click.echo(f"wrote {output}")
