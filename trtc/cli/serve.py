"""`trtc serve`: the real Triton Inference Server on a model repository, or on one artifact."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trtc.cli.export import triton_options
from trtc.cli.options import json_option


@click.command()
@click.argument("source", metavar="REPO|ARTIFACT", type=click.Path(path_type=Path))
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="HTTP/REST port (0: a free one).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="gRPC port (0: a free one).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="Prometheus metrics port (0: a free one).")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep the server's log here (default: a temporary file, removed when it stops).")
@triton_options
@json_option
@click.pass_context
def serve(ctx: click.Context, source: Path, http_port: int, grpc_port: int, metrics_port: int,
          log_file: Path | None, as_json: bool, **export_flags: Any) -> None:
    """Run Triton on a model repository, or on an artifact (.onnx, .trtir, .plan, an onnxruntime-genai
    folder) exported into a temporary one with the `trtc export triton` options below (an LLM decoder
    streams its tokens, a response each); Ctrl-C (or SIGTERM) stops it.

    The server is the tritonserver of PyPI's nvidia-pytriton, installed on first use into an
    environment of its own (it needs numpy<2). It has Triton's Python backend only: models for its
    TensorRT or ONNX Runtime backends are refused before it starts (export them with --backend
    python, or serve them in NGC's Triton container)."""
    from trtc.serve.server import start_server

    def progress(text: str) -> None:
        click.echo(f"trtc: {text}", err=True)

    with contextlib.ExitStack() as stack:
        repo, exported = _repository(ctx, source, export_flags, stack)
        server = stack.enter_context(start_server(repo, http_port=http_port, grpc_port=grpc_port,
                                                  metrics_port=metrics_port, log_path=log_file, progress=progress))
        facts = server.describe()
        if exported is not None:
            facts = {"artifact": str(source), **facts, "export": exported}
        _serve_until_signal(server, lambda: _announce(facts, as_json))
        if not as_json:
            click.echo("trtc: stopped", err=True)


def _repository(ctx: click.Context, source: Path, export_flags: dict[str, Any],
                stack: contextlib.ExitStack) -> tuple[Path, dict[str, Any] | None]:
    """The repository to serve: `source` itself, or a temporary one holding the artifact exported
    (removed after the server stops); and the export's report for an artifact."""
    from trtc.errors import TrtcError
    from trtc.llm.genai import CONFIG_NAME as GENAI_CONFIG

    if source.is_dir() and not (source / GENAI_CONFIG).is_file():
        given = [p.opts[0] for p in ctx.command.params
                 if p.name in export_flags and ctx.get_parameter_source(p.name) != click.core.ParameterSource.DEFAULT]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise TrtcError(f"{', '.join(given)} {verb} to an artifact served through a temporary repository, "
                            f"not to a model repository", where=str(source),
                            hint="drop them, or give the artifact (.onnx, .trtir, .plan) instead")
        return source, None
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    suffixes = (".onnx", ".trtir", *PLAN_SUFFIXES)
    if not source.exists():
        raise TrtcError("no such file or folder", where=str(source))
    if source.suffix not in suffixes and not source.is_dir():
        raise TrtcError(f"neither a model repository (a folder) nor an artifact ({', '.join(suffixes)}, an "
                        f"onnxruntime-genai folder)", where=str(source))
    import tempfile

    from trtc.cli.export import to_triton_options
    from trtc.serve.environment import BACKENDS
    from trtc.serve.export import export_triton
    from trtc.serve.server import owned_prefix

    # Named with this process's pid: if it is killed, the next start removes what it leaves.
    repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=owned_prefix("serve"))))
    report = export_triton(source, repo, to_triton_options(export_flags))
    if report["backend"] not in BACKENDS:
        raise TrtcError(f"exported for Triton's '{report['backend']}' backend, which the nvidia-pytriton server "
                        f"trtc runs lacks", where=str(source),
                        hint="add --backend python (trtc's runtime serves it), or write a repository with `trtc "
                             "export triton` and serve it in NGC's Triton container (nvcr.io/nvidia/tritonserver)")
    return repo, report


def _announce(facts: dict[str, Any], as_json: bool) -> None:
    """Where the server listens, once it is ready: a line, or one JSON object on one line (a reader
    of a long-running command's stdout reads a line, not a document that ends when it exits)."""
    if as_json:
        # Under --json trtc.cli.main holds stdout back to merge a late error into the report; this
        # object is for the server's users now, so it goes to the real stdout at once.
        out = sys.__stdout__ if isinstance(sys.stdout, io.StringIO) and sys.__stdout__ else sys.stdout
        out.write(json.dumps(facts, default=str) + "\n")
        out.flush()
        return
    models = facts["models"]
    what = f"{len(models)} model{'s' if len(models) != 1 else ''} ({', '.join(models)})"
    click.echo(f"serving {what} at http://{facts['http']} (HTTP), {facts['grpc']} (gRPC), metrics at "
               f"{facts['metrics']}; Ctrl-C stops it")
    exported = facts.get("export") or {}
    if exported.get("llm"):
        name = exported["model"]
        prompt = '"text_input": "..."' if exported["llm"].get("tokenizer") else '"input_ids": [...]'
        body = f'{{{prompt}, "max_tokens": N}}'
        click.echo(f"{name} streams a response per generated token: a gRPC stream (decoupled), or POST {body} "
                   f"to http://{facts['http']}/v2/models/{name}/generate_stream")


class _Stop(Exception):
    """A stop signal arrived."""


def _serve_until_signal(server: Any, announce: Callable[[], None]) -> None:
    """Announce the server, then block until SIGINT, SIGTERM or SIGHUP (and stop the server) or until
    the server exits on its own (then ServerFailed with its reason). The handlers are in place before
    the announcement, so a reader who signals as soon as it reads the line gets an orderly stop; a
    second signal while stopping is ignored, so it cannot cut the stop short and leave a server behind."""
    import signal

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(_signum: int, _frame: Any) -> None:
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop

    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    stopped = False
    try:
        announce()
        server.wait()
    except _Stop:
        stopped = True
    finally:
        for sig in stop_signals:  # from here on nothing may interrupt the stop
            signal.signal(sig, signal.SIG_IGN)
        try:
            failure = None if stopped else server.failure()
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if failure is not None:
        raise failure
