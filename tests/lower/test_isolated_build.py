"""The engine build in a child process (`trtc/lower/isolate.py`): a crash inside TensorRT is one line
naming the signal, the stage and the last layer added (exit 2), leaves no engine, temporary file or cache
entry, and the next build succeeds; a TrtcError raised in the child comes back as it was; progress lines
reach the parent; `--no-isolate` / TRTC_NO_ISOLATE=1 build in this process.

The crash is TensorRT-RTX 1.7's own: its builder segfaults on an fp32 Attention whose K is widened from
fp16, which trtc never emits (`widened_from_low_precision` sends such an Attention to the decomposition).
The tests switch that check off in this process; the forked child inherits the switch, so the segfault
happens there. Never run these with isolation off: the crash would take the test run down."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_attention_fp16 import widened_attention  # noqa: E402

import trtc.lower.isolate as isolate  # noqa: E402
import trtc.lower.network as network  # noqa: E402
import trtc.lower.ops.attention as attention  # noqa: E402
from trtc.errors import TrtcError  # noqa: E402
from trtc.pipeline import BuildOptions, build, compile_model, open_model  # noqa: E402

MLP_PROFILE = {"x": ((1, 16), (4, 16), (8, 16))}
CRASH = ("TensorRT crashed (SIGSEGV) while building; the last layer added was attention (Attention); the build "
         "ran in a child process; rerun with --no-isolate (or TRTC_NO_ISOLATE=1) under a debugger, or report it "
         "with the model")


@pytest.fixture()
def widened_k(tmp_path, monkeypatch) -> Path:
    """A folder with k.onnx, whose build segfaults TensorRT-RTX while `widened_from_low_precision` is off."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(widened_attention("K"), folder / "k.onnx")
    monkeypatch.setattr(attention, "widened_from_low_precision", lambda node: False)
    return folder


def test_a_tensorrt_crash_is_one_line_and_the_next_build_succeeds(widened_k, tmp_path, monkeypatch):
    model, cache, out = widened_k / "k.onnx", tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    with pytest.raises(TrtcError) as caught:
        build(open_model(model), out / "k.plan", BuildOptions(), cache_dir=cache)
    assert caught.value.exit_code == 2 and caught.value.where == str(model)
    assert caught.value.one_line() == f"{model}: {CRASH}"
    assert sorted(os.listdir(out)) == []  # no engine, no sidecar, no temporary plan
    assert [p.suffix for p in cache.iterdir()] == [".lock"]  # the cache entry was not written
    monkeypatch.undo()  # trtc's own lowering again: the Attention is decomposed, and builds
    result = build(open_model(model), out / "k.plan", BuildOptions(), cache_dir=cache)
    assert result.cached is False and (out / "k.plan").stat().st_size == result.sidecar["plan_bytes"]
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".lock", ".plan"]
    assert sorted(os.listdir(out)) == ["k.plan", "k.plan.json"]


def test_the_cli_says_the_crash_in_one_line_and_exits_2(widened_k, tmp_path, capsys):
    from trtc.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["build", str(widened_k / "k.onnx"), "-o", str(tmp_path / "k.plan"), "--no-cache"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"trtc: error: {widened_k / 'k.onnx'}: {CRASH}"
    assert not (tmp_path / "k.plan").exists()


def test_compile_survives_the_crash_and_writes_no_engine(widened_k, tmp_path):
    with pytest.raises(TrtcError, match=r"TensorRT crashed \(SIGSEGV\) while building"):
        compile_model(widened_k / "k.onnx", tmp_path / "out", cache=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["k.opt.trtir", "k.trtir"]


def test_a_kill_while_lowering_names_the_node_and_the_last_layer_added(mlp, tmp_path, monkeypatch):
    """SIGKILL (the out-of-memory killer's signal) inside the lowering of node 'fc2', in the child only."""
    lower_node = network._lower_node

    def killed_at_fc2(ctx, node, *args):
        lower_node(ctx, node, *args)
        if node.name == "fc2":
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(network, "_lower_node", killed_at_fc2)
    with pytest.raises(TrtcError) as caught:
        build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]), cache=False)
    assert caught.value.message == ("TensorRT crashed (SIGKILL) while lowering node 'fc2' (MatMul); the last layer "
                                    "added was relu (Relu)")
    assert caught.value.hint.startswith("the out-of-memory killer sends SIGKILL")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("isolate_build", [True, False], ids=["child", "in-process"])
def test_a_trtc_error_in_the_child_comes_back_unchanged(mlp, tmp_path, isolate_build):
    options = BuildOptions(profiles=[MLP_PROFILE], timing_cache=str(tmp_path / "t.cache"), isolate=isolate_build)
    with pytest.raises(TrtcError) as caught:
        build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", options, cache=False)
    assert type(caught.value) is TrtcError and caught.value.as_json() == {
        "error": "TensorRT-RTX has no timing cache (it would force a GPU query and its kernels are compiled at run "
                 "time instead)", "where": "--timing-cache", "exit_code": 2,
        "hint": "drop --timing-cache; `trtc run --runtime-cache PATH` keeps RTX's JIT kernels"}
    assert os.listdir(tmp_path) == []


def test_another_exception_in_the_child_comes_back_with_its_traceback(mlp, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(network, "check_agreement", broken)
    with pytest.raises(ValueError, match="a bug") as caught:
        build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]), cache=False)
    assert "raised in the build's child process" in caught.value.__notes__[0]
    assert "in broken" in caught.value.__notes__[0]


def test_progress_lines_reach_the_parent(mlp, tmp_path):
    lines: list[str] = []
    build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]), cache=False,
          progress=lines.append)
    assert any(line.startswith("Building engine (") for line in lines), lines  # TensorRT's, sent by the child
    assert sorted(os.listdir(tmp_path)) == ["mlp.plan", "mlp.plan.json"]


@pytest.mark.parametrize(("isolate_build", "env", "in_child"), [(True, None, True), (False, None, False),
                                                               (True, "1", False), (True, "0", True)],
                         ids=["default", "--no-isolate", "TRTC_NO_ISOLATE=1", "TRTC_NO_ISOLATE=0"])
def test_where_the_build_runs(mlp, tmp_path, monkeypatch, isolate_build, env, in_child):
    if env is None:
        monkeypatch.delenv(isolate.NO_ISOLATE_VAR, raising=False)
    else:
        monkeypatch.setenv(isolate.NO_ISOLATE_VAR, env)
    pids = tmp_path / "pids"
    build_engine = isolate.build_engine

    def recorded(*args, **kwargs):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return build_engine(*args, **kwargs)

    monkeypatch.setattr(isolate, "build_engine", recorded)
    result = build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan",
                   BuildOptions(profiles=[MLP_PROFILE], isolate=isolate_build), cache=False)
    assert result.sidecar["network_layers"] >= 4
    assert (int(pids.read_text()) != os.getpid()) is in_child


def test_no_isolate_flag_reaches_the_build_options():
    from trtc.cli.commands import build as build_command

    ctx = build_command.make_context("build", ["m.onnx", "-o", "m.plan", "--no-isolate"])
    from trtc.cli.options import to_build_options

    assert to_build_options(dict(ctx.params)).isolate is False
    ctx = build_command.make_context("build", ["m.onnx", "-o", "m.plan"])
    assert to_build_options(dict(ctx.params)).isolate is True
