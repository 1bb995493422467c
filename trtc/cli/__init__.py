"""The `trtc` command line: thin click commands over the library API.

Start-up matters (`trtc --help` should answer in a blink), so this module imports only click
and the stdlib, and each command's module is imported when that command is asked for: `trtc run`
never pays for the imports of `trtc optimize`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from typing import Any, NoReturn

import click

# The parent package is imported already (it holds only the version), so this costs nothing.
from trtc import __version__

# Command name -> (module, attribute). The modules themselves keep their heavy imports inside the
# command functions, so importing one for its help costs only click.
COMMANDS: dict[str, tuple[str, str]] = {
    "parse": ("trtc.cli.commands", "parse"),
    "optimize": ("trtc.cli.commands", "optimize"),
    "build": ("trtc.cli.commands", "build"),
    "run": ("trtc.cli.run", "run"),
    "compare": ("trtc.cli.compare", "compare"),
    "compile": ("trtc.cli.commands", "compile_cmd"),
    "inspect": ("trtc.cli.inspect", "inspect"),
    "export": ("trtc.cli.export", "export"),
    "serve": ("trtc.cli.serve", "serve"),
    "generate": ("trtc.cli.generate", "generate"),
    "debug": ("trtc.cli.debug", "debug"),
}


# click >= 8.2 raises this for a group given no subcommand (`trtc export`); click 8.1 printed the
# group's help and exited 0, which is what it means here too (as a bare `trtc` does).
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())

# ctx.meta key (shared by every context of one invocation): whether --json is among the arguments.
# Eager callbacks (`optimize --list-passes`) run before --json is processed and read it here.
JSON_MODE = "trtc.json"


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[JSON_MODE] = _json_requested(args)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trtc")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """trtc: compile ONNX models into TensorRT engines, checked against a CPU reference."""
    if ctx.invoked_subcommand is None:
        # A bare `trtc` is a request for directions, not a mistake: the help, exit 0.
        click.echo(ctx.get_help())


def _json_requested(args: list[str]) -> bool:
    # Tokens after `--` are arguments (a file may be called --json), not options.
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _usage_error_json(exc: click.ClickException) -> dict[str, Any]:
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else None
    hint = f"see '{where} --help'" if where else None
    return {"error": exc.format_message(), "where": where, "hint": hint, "exit_code": 2}


def _exit_json(error: dict[str, Any], printed: str) -> NoReturn:
    """One JSON document on stdout even when the command printed its report before failing
    (`compare` prints the comparison, `build --dry-run` the support report, then CheckFailed):
    the error's keys join that report, so readers of the report find it where they always did."""
    if printed.strip():
        try:
            report = json.loads(printed)
        except ValueError:
            error["output"] = printed
        else:
            if isinstance(report, dict) and not report.keys() & error.keys():
                error = {**report, **error}
            else:
                error["report"] = report
    click.echo(json.dumps(error, indent=2, default=str))
    sys.exit(error["exit_code"])


def _main_json(args: list[str]) -> None:
    from trtc.errors import TrtcError

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli.main(args, prog_name="trtc", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:
        printed.write(exc.ctx.get_help() + "\n")
        code = 0
    except TrtcError as exc:
        _exit_json(exc.as_json(), printed.getvalue())
    except click.exceptions.Abort:
        _exit_json({"error": "aborted", "where": None, "hint": None, "exit_code": 130}, printed.getvalue())
    except click.ClickException as exc:
        _exit_json(_usage_error_json(exc), printed.getvalue())
    sys.stdout.write(printed.getvalue())
    sys.exit(code if isinstance(code, int) else 0)


def main(args: list[str] | None = None) -> None:
    """Entry point. User errors are one line on stderr and exit code 2 (1 for failed checks); with
    `--json` anywhere among the options they are a JSON object on stdout with the same exit code."""
    args = sys.argv[1:] if args is None else list(args)
    if _json_requested(args):
        _main_json(args)
    from trtc.errors import TrtcError

    try:
        code = cli.main(args, prog_name="trtc", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:
        click.echo(exc.ctx.get_help())
        code = 0
    except TrtcError as exc:
        click.echo(f"trtc: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("trtc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"trtc: error: {exc.format_message()}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
