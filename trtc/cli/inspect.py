"""`trtc inspect`: what an .onnx, .trtir or .plan holds."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import echo_json, json_option, support_text


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--graph", is_flag=True, help="Print the graph, one line per node.")
@click.option("--precision", is_flag=True, help="List the nodes kept in fp32 and why.")
@click.option("--support", is_flag=True, help="List the nodes TensorRT lowering does not support yet.")
@json_option
def inspect(artifact: Path, graph: bool, precision: bool, support: bool, as_json: bool) -> None:
    """Inputs, outputs, ops, parameters, opsets, metadata of an .onnx, .trtir or .plan."""
    from trtc import inspect as inspect_mod
    from trtc.errors import TrtcError
    from trtc.loading import open_model
    from trtc.lower.api import support_report
    from trtc.precision.api import precision_table
    from trtc.runtime.sidecar import PLAN_SUFFIXES, read_sidecar, sidecar_text

    if artifact.suffix in PLAN_SUFFIXES:
        sidecar = read_sidecar(artifact)
        echo_json(sidecar) if as_json else click.echo(sidecar_text(sidecar))
        return
    loaded = open_model(artifact)
    if support:
        report = support_report(loaded)
        echo_json(report) if as_json else click.echo(support_text(report))
        return
    info = inspect_mod.summary(loaded)
    if precision:
        report = loaded.meta.get("precision")
        if report is None:
            raise TrtcError("the artifact has no precision decisions", where=str(artifact),
                            hint="create them with `trtc optimize --fp16`")
        if as_json:
            echo_json(report)
        else:
            click.echo(precision_table(report))
        return
    if as_json:
        if graph:
            info["graph"] = inspect_mod.graph_text(loaded.model).splitlines()
        echo_json(info)
        return
    click.echo(inspect_mod.graph_text(loaded.model) if graph else inspect_mod.format_summary(info))
