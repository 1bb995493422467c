"""The engine plan is written once (issue 15): the build's child writes it (fsynced) to a temporary file beside
the output, which becomes the output by rename; the engine cache keeps the plan the build wrote into it and
the output is a hard link to that entry (a streamed copy where no link can be made). The parent never reads
the plan back into memory; nothing temporary remains after a success or a failure."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

import trtc.fileio as fileio  # noqa: E402
import trtc.lower.isolate as isolate  # noqa: E402
from trtc.errors import TrtcError  # noqa: E402
from trtc.fileio import current_umask, file_sha256  # noqa: E402
from trtc.pipeline import BuildOptions, build, open_model  # noqa: E402

MLP_PROFILE = {"x": ((1, 16), (4, 16), (8, 16))}


@pytest.fixture()
def child_files(monkeypatch) -> list[tuple[Path, int]]:
    """Each temporary plan file the parent makes for the child, with its inode."""
    made: list[tuple[Path, int]] = []
    temporary = isolate._temporary

    def recorded(output):
        path = temporary(output)
        made.append((path, path.stat().st_ino))
        return path

    monkeypatch.setattr(isolate, "_temporary", recorded)
    return made


@pytest.fixture()
def no_plan_reads(monkeypatch) -> None:
    """Reading a whole plan into this process fails the test."""
    read_bytes = Path.read_bytes

    def guarded(self: Path) -> bytes:
        assert not self.name.endswith((".plan", ".tmp")), f"the parent read {self} into memory"
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)


def leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for folder in folders for p in folder.iterdir() if p.name.endswith(".tmp"))


def whole(plan: Path) -> bool:
    """The plan is the one its sidecar describes."""
    side = json.loads(Path(f"{plan}.json").read_text())
    return plan.stat().st_size == side["plan_bytes"] and file_sha256(plan) == side["plan_sha256"]


def test_the_output_is_the_file_the_child_wrote(mlp, tmp_path, child_files, no_plan_reads):
    out = tmp_path / "mlp.plan"
    result = build(open_model(mlp / "mlp.onnx"), out, BuildOptions(profiles=[MLP_PROFILE]), cache=False)
    ((temporary, inode),) = child_files
    assert temporary.parent == tmp_path and temporary.name.startswith(f".mlp.plan.{os.getpid()}.")
    assert out.stat().st_ino == inode and out.stat().st_nlink == 1  # renamed, not written again
    assert result.plan_file == out and result.data is None and whole(out)
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    assert sorted(os.listdir(tmp_path)) == ["mlp.plan", "mlp.plan.json"]


def test_the_cache_keeps_the_childs_file_and_the_output_links_it(mlp, tmp_path, child_files, no_plan_reads):
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    first = build(open_model(mlp / "mlp.onnx"), out / "a.plan", BuildOptions(profiles=[MLP_PROFILE]),
                  cache_dir=cache)
    ((temporary, inode),) = child_files
    (entry,) = cache.glob("*.plan")
    assert temporary.parent == cache and entry.stat().st_ino == inode == (out / "a.plan").stat().st_ino
    second = build(open_model(mlp / "mlp.onnx"), out / "b.plan", BuildOptions(profiles=[MLP_PROFILE]),
                   cache_dir=cache)
    assert (first.cached, second.cached) == (False, True) and len(child_files) == 1
    assert (out / "b.plan").stat().st_ino == inode and entry.stat().st_nlink == 3
    assert whole(out / "a.plan") and whole(out / "b.plan")
    assert leftovers(cache, out) == []


def test_a_cache_hit_on_its_own_output_leaves_nothing_behind(mlp, tmp_path):
    out = tmp_path / "mlp.plan"
    for cached in (False, True):
        result = build(open_model(mlp / "mlp.onnx"), out, BuildOptions(profiles=[MLP_PROFILE]),
                       cache_dir=tmp_path / "cache")
        assert result.cached is cached and whole(out)
    assert leftovers(tmp_path, tmp_path / "cache") == []


def test_where_no_link_can_be_made_the_output_is_a_copy(mlp, tmp_path, monkeypatch):
    def refused(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fileio.os, "link", refused)
    cache = tmp_path / "cache"
    build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]), cache_dir=cache)
    (entry,) = cache.glob("*.plan")
    assert entry.stat().st_ino != (tmp_path / "mlp.plan").stat().st_ino and whole(tmp_path / "mlp.plan")
    assert (tmp_path / "mlp.plan").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert leftovers(tmp_path, cache) == []


def test_writing_the_output_again_leaves_the_linked_cache_entry_alone(mlp, tmp_path):
    """The output and the entry share their bytes; every later write of either name is a rename."""
    cache, out = tmp_path / "cache", tmp_path / "mlp.plan"
    build(open_model(mlp / "mlp.onnx"), out, BuildOptions(profiles=[MLP_PROFILE]), cache_dir=cache)
    (entry,) = cache.glob("*.plan")
    sha = file_sha256(entry)
    for isolated in (True, False):  # another engine to the same output, without the cache
        build(open_model(mlp / "mlp.onnx"), out, BuildOptions(profiles=[{"x": ((1, 16), (2, 16), (2, 16))}],
                                                              isolate=isolated), cache=False)
        assert whole(out) and file_sha256(entry) == sha and entry.stat().st_nlink == 1
    assert leftovers(tmp_path, cache) == []


def test_an_in_process_build_writes_the_output_once(mlp, tmp_path, no_plan_reads):
    out = tmp_path / "mlp.plan"
    result = build(open_model(mlp / "mlp.onnx"), out, BuildOptions(profiles=[MLP_PROFILE], isolate=False),
                   cache=False)
    assert result.plan_file == out and result.data is None and whole(out)
    assert sorted(os.listdir(tmp_path)) == ["mlp.plan", "mlp.plan.json"]


@pytest.mark.parametrize("isolated", [True, False], ids=["child", "in-process"])
def test_a_failed_build_leaves_no_file(mlp, tmp_path, isolated):
    options = BuildOptions(profiles=[{"nope": ((1, 16), (4, 16), (8, 16))}], isolate=isolated)
    with pytest.raises(TrtcError):
        build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", options, cache_dir=tmp_path / "cache")
    assert sorted(os.listdir(tmp_path)) == ["cache"] and leftovers(tmp_path / "cache") == []


def test_a_missing_output_folder_is_said_before_the_build(mlp, tmp_path, child_files):
    with pytest.raises(TrtcError) as caught:
        build(open_model(mlp / "mlp.onnx"), tmp_path / "no" / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]),
              cache=False)
    assert caught.value.one_line() == f"{tmp_path / 'no' / 'mlp.plan'}: output folder does not exist; create it first"
    assert child_files == []


def test_a_killed_builds_temporary_is_removed_by_the_next_build(mlp, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".mlp.plan.{int(gone.stdout)}.abc123.tmp"  # as a build killed with -9 leaves it
    stale.write_bytes(b"half a plan")
    build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]), cache=False)
    assert sorted(os.listdir(tmp_path)) == ["mlp.plan", "mlp.plan.json"]


def test_the_result_still_gives_the_plans_bytes(mlp, tmp_path):
    """`BuildResult.plan` for callers that want the engine in memory: read from the file it is in."""
    result = build(open_model(mlp / "mlp.onnx"), tmp_path / "mlp.plan", BuildOptions(profiles=[MLP_PROFILE]),
                   cache=False)
    assert result.plan == (tmp_path / "mlp.plan").read_bytes()
