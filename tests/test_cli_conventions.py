"""What a trtexec/polygraphy user expects of the command line: help without heavy imports, a bare
`trtc` that shows the usage, `--json` on every command with errors as JSON objects (same exit
codes), and `-o` marked required where it is."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import onnx
import pytest
from onnx import TensorProto, helper

from trtc.cli import COMMANDS, cli

from corpus import run_trtc

HEAVY = ("onnx", "onnx_ir", "numpy", "ml_dtypes", "onnxruntime", "tensorrt_rtx", "tensorrt", "sympy")

# Every command path whose help is asked for: the group (its help loads every command), each
# command, export's subcommand.
HELP_PATHS = [(), *((name,) for name in COMMANDS), ("export", "onnx")]


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(("trtc", *p)))
def test_help_imports_nothing_heavy(path):
    # A fresh interpreter: this process has imported onnx and numpy already.
    script = textwrap.dedent(f"""
        import sys
        from trtc.cli import cli
        code = cli.main([*{list(path)!r}, "--help"], prog_name="trtc", standalone_mode=False)
        assert code == 0, code
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        assert not heavy, f"--help imported {{heavy}}"
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: trtc" in proc.stdout


def test_every_command_is_listed_and_loads():
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        assert cli.get_command(ctx, name).name == name


@pytest.mark.parametrize("group", [(), ("export",)], ids=["trtc", "trtc export"])
def test_bare_group_prints_the_usage_and_exits_0(group):
    proc = run_trtc(*group)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: {' '.join(('trtc', *group))} ") and "Commands:" in proc.stdout
    assert proc.stderr == ""


def _json_error(proc, exit_code: int) -> dict:
    """The error under --json: one JSON object on stdout, nothing on stderr, the usual exit code."""
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert proc.stderr == ""
    error = json.loads(proc.stdout)
    assert {"error", "where", "hint", "exit_code"} <= error.keys()
    assert error["exit_code"] == exit_code
    return error


def test_user_error_as_json(tmp_path):
    missing = tmp_path / "missing.onnx"
    error = _json_error(run_trtc("inspect", missing, "--json"), 2)
    assert error["where"] == str(missing) and "not found" in error["error"]
    # Without --json: the one line on stderr, as before.
    proc = run_trtc("inspect", missing)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"trtc: error: {missing}: ") and proc.stderr.count("\n") == 1


def test_usage_error_as_json():
    error = _json_error(run_trtc("optimize", "--no-such-flag", "--json"), 2)
    assert "--no-such-flag" in error["error"]
    assert error["where"] == "trtc optimize" and error["hint"] == "see 'trtc optimize --help'"
    proc = run_trtc("optimize", "--no-such-flag")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("trtc: error: ") and "--no-such-flag" in proc.stderr


def _elementwise(path: Path, op: str) -> Path:
    graph = helper.make_graph([helper.make_node(op, ["x", "x"], ["y"], name=op.lower())], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_failed_check_as_json(tmp_path):
    add, mul = _elementwise(tmp_path / "add.onnx", "Add"), _elementwise(tmp_path / "mul.onnx", "Mul")
    error = _json_error(run_trtc("compare", add, mul, "--json"), 1)
    assert "outputs differ: y" in error["error"] and error["where"] == f"{add} vs {mul}"
    # The comparison printed before the check failed is part of the one object.
    assert error["outputs"]["y"]["match"] is False
    proc = run_trtc("compare", add, mul)
    assert proc.returncode == 1 and "y: MISMATCH" in proc.stdout
    assert proc.stderr.startswith("trtc: error: ") and proc.stderr.count("\n") == 1


def test_export_onnx_json(tmp_path):
    model = _elementwise(tmp_path / "add.onnx", "Add")
    assert run_trtc("parse", model, "-o", tmp_path / "add.trtir").returncode == 0
    out = tmp_path / "back.onnx"
    proc = run_trtc("export", "onnx", tmp_path / "add.trtir", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["output"] == str(out) and info["bytes"] == out.stat().st_size
    assert info["nodes"] == 1 and info["inputs"] == ["x"] and info["outputs"] == ["y"]
    assert info["external_data"] is None and info["opsets"]["ai.onnx"] >= 17
    text = run_trtc("export", "onnx", tmp_path / "add.trtir", "-o", out).stdout
    assert text.startswith(f"wrote {out}: 1 nodes")


def test_list_passes_json():
    proc = run_trtc("optimize", "--list-passes", "--json")
    assert proc.returncode == 0, proc.stderr
    passes = json.loads(proc.stdout)
    assert passes and all(p.keys() == {"name", "default", "description", "order"} for p in passes)
    assert [p["order"] for p in passes] == sorted(p["order"] for p in passes)  # pipeline order
    assert {p["name"] for p in passes} >= {"fold-constants", "dead-code"}
    # The text listing names the same passes, in the same order.
    text = run_trtc("optimize", "--list-passes").stdout
    assert [line.split()[0] for line in text.splitlines()] == [p["name"] for p in passes]


def _output_options() -> dict[str, click.Option]:
    """Each command's -o option, by command path."""
    found = {}
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        leaves = ([(f"{name} {sub}", c) for sub, c in command.commands.items()]
                  if isinstance(command, click.Group) else [(name, command)])
        for path, leaf in leaves:
            for param in leaf.params:
                if isinstance(param, click.Option) and "-o" in param.opts:
                    found[path] = (leaf, param)
    return found


def test_output_is_shown_required_where_it_is():
    found = _output_options()
    assert {"parse", "optimize", "build", "compile", "export onnx"} <= found.keys()
    for path, (leaf, param) in found.items():
        _, help_text = param.get_help_record(click.Context(leaf))
        if path == "build":  # -o may be left out with --dry-run, and the help says so
            assert not param.required and "required unless --dry-run" in help_text
        else:
            assert param.required and "[required]" in help_text, path
