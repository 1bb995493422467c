"""The `trtc` command line: thin click commands over the library API."""

from __future__ import annotations

import sys

import click

from trtc import __version__
from trtc.cli.commands import build, compile_cmd, optimize, parse
from trtc.cli.compare import compare
from trtc.cli.export import export
from trtc.cli.inspect import inspect
from trtc.cli.run import run
from trtc.errors import TrtcError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trtc")
def cli() -> None:
    """trtc: compile ONNX models into TensorRT engines, checked against a CPU reference."""


for command in [parse, optimize, build, run, compare, compile_cmd, inspect, export]:
    cli.add_command(command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2 (1 for failed checks)."""
    try:
        cli.main(standalone_mode=False)
    except TrtcError as exc:
        click.echo(f"trtc: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("trtc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"trtc: error: {exc.format_message()}", err=True)
        sys.exit(2)
