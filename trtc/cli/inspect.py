"""`trtc inspect`: what an .onnx, .trtir or .plan holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trtc.cli.options import echo_json, json_option, support_text


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--graph", is_flag=True, help="Print the graph, one line per node (.onnx/.trtir).")
@click.option("--precision", is_flag=True,
              help="List the nodes kept in fp32 and why (of an engine: the counts its sidecar keeps).")
@click.option("--support", is_flag=True, help="List the nodes TensorRT lowering does not support yet (.onnx/.trtir).")
@json_option
def inspect(artifact: Path, graph: bool, precision: bool, support: bool, as_json: bool) -> None:
    """Inputs, outputs, ops, parameters, opsets, metadata of an .onnx, .trtir or .plan; a
    Triton model repository (a folder) is checked against the artifacts it serves.

    An .onnx is shown as the file is, then as parsing makes it. An engine without its
    sidecar shows what can be read without a GPU. A repository's every problem is listed,
    exit 1 when there is one."""
    from trtc.inspect import is_engine

    if artifact.is_dir():
        _show_repository(artifact, graph=graph, precision=precision, support=support, as_json=as_json)
        return
    show = _show_engine if is_engine(artifact) else _show_model
    show(artifact, graph=graph, precision=precision, support=support, as_json=as_json)


def _echo(info: Any, text: Callable[[Any], str], as_json: bool) -> None:
    echo_json(info) if as_json else click.echo(text(info))


def _show_engine(path: Path, *, graph: bool, precision: bool, support: bool, as_json: bool) -> None:
    from trtc import inspect as inspect_mod
    from trtc.runtime.sidecar import read_sidecar, sidecar_path, sidecar_text

    # An engine from trtexec (or copied without its .json) has no sidecar: it is still inspected.
    sidecar = read_sidecar(path) if sidecar_path(path).is_file() else None
    inspect_mod.refuse_model_flags(sidecar, str(path), support=support, graph=graph)
    if precision:
        _echo(inspect_mod.plan_precision(sidecar, str(path)), inspect_mod.plan_precision_text, as_json)
    elif sidecar is None:
        _echo(inspect_mod.bare_plan_summary(path), inspect_mod.format_bare_plan, as_json)
    else:
        _echo(sidecar, sidecar_text, as_json)


def _show_model(path: Path, *, graph: bool, precision: bool, support: bool, as_json: bool) -> None:
    from trtc import inspect as inspect_mod
    from trtc.errors import TrtcError
    from trtc.loading import artifact_kind, open_model

    if support:
        from trtc.pipeline import support as support_report  # the converter registry: only --support needs it

        # What `trtc build` would lower: an .onnx is optimized first, as build does.
        _echo(support_report(open_model(path)), support_text, as_json)
        return
    if precision:
        report = open_model(path).meta.get("precision")
        if report is None:
            raise TrtcError("the artifact has no precision decisions", where=str(path),
                            hint="create them with `trtc optimize --fp16`")
        _echo(report, inspect_mod.precision_text, as_json)
        return
    file_info = inspect_mod.onnx_file_summary(path) if artifact_kind(path) == "onnx" else None
    try:
        loaded = open_model(path)
    except TrtcError:
        # What the file holds is worth seeing most when parsing refuses it.
        if file_info is not None and not graph:
            _echo({"file": file_info}, inspect_mod.format_onnx, as_json)
        raise
    info = inspect_mod.summary(loaded)
    if graph and not as_json:
        click.echo(inspect_mod.graph_text(loaded.model))
        return
    if graph:
        info["graph"] = inspect_mod.graph_text(loaded.model).splitlines()
    if file_info is None:
        _echo(info, inspect_mod.format_summary, as_json)
    else:
        _echo({"file": file_info, "parsed": info}, inspect_mod.format_onnx, as_json)


def _show_repository(repo: Path, *, graph: bool, precision: bool, support: bool, as_json: bool) -> None:
    from trtc.errors import CheckFailed, TrtcError
    from trtc.serve.check import check_repository

    flags = [flag for flag, given in (("--graph", graph), ("--precision", precision), ("--support", support)) if given]
    if flags:
        raise TrtcError(f"{', '.join(flags)} applies to a model file, not a repository", where=str(repo),
                        hint="inspect REPO/MODEL/1/model.plan (or the .trtir) for that")
    models = check_repository(repo)
    failed = sorted(name for name, result in models.items() if result["problems"])
    if as_json:
        echo_json({"repository": str(repo), "models": models, "ok": not failed})
    else:
        for name, result in models.items():
            state = f"{len(result['problems'])} problem(s)" if result["problems"] else "ok"
            click.echo(f"{name} ({result['backend'] or '?'}): {state}")
            for problem in result["problems"]:
                click.echo(f"  {problem}")
            if result["note"]:
                click.echo(f"  note: {result['note']}")
    if failed:
        raise CheckFailed(f"{sum(len(models[n]['problems']) for n in failed)} problem(s) in {', '.join(failed)}",
                          where=str(repo))
