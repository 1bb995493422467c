"""The engine build in a child process, so that a crash inside TensorRT does not take the user's process
down without a word (TensorRT-RTX 1.7's builder segfaults on an fp32 Attention fed through a widening Cast
of K: see `ops/attention.widened_from_low_precision`, which keeps trtc from emitting that network).

The child is forked and does the TensorRT work, lowering and `build_serialized_network`, on the IR it
inherits as it is in memory: weights stay read-only views of their memory-mapped files (or the parent's
arrays), shared copy-on-write; nothing is pickled or saved for it. It writes the plan (fsynced) to a temporary
file beside the engine's destination, named as `fileio.atomic_path` names its temporaries, which the parent
renames into place: the plan is written once and never passes through the parent's memory (a 2.4 GB engine
read back and written again cost 2.4 GB of each). The rest comes through a pipe: progress lines (the parent shows them),
then the sidecar and layer listing, or the exception it raised (a TrtcError comes back as it was). Where it
is (the stage, the last layer added) it keeps in a page of memory shared with the parent, which outlives
it: a child killed by a signal (SIGSEGV, SIGABRT, SIGKILL from the out-of-memory killer) becomes one
TrtcError naming the signal, the stage and that layer. The parent does everything else: the engine cache
and its locks, the rename of the plan, the sidecar.

Fork, not spawn: a spawned interpreter imports trtc, onnx_ir and TensorRT again (0.9 s on 2 cores) and
needs the IR as a file (an optimized model's new weights saved first); a fork costs about 10 ms. A forked
child cannot use CUDA that its parent initialized, so where the CUDA driver is loaded into this process (a
library user who ran an engine before building; the CLI never does) or where there is no fork (Windows),
the build runs in this process, as it does with `--no-isolate` or TRTC_NO_ISOLATE=1 (for a debugger).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import mmap
import os
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Mapping
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.fileio import atomic_path, publish, remove_stale_temporaries
from trtc.lower.backend import Backend
from trtc.lower.build import BuildOptions, BuildResult, build_engine
from trtc.memory import release_memory

NO_ISOLATE_VAR = "TRTC_NO_ISOLATE"
Progress = Callable[[str], None] | None


def run_build(model: ir.Model, meta: Mapping[str, Any], backend: Backend, options: BuildOptions, *,
              where: str = "", progress: Progress = None, output: Path | None = None) -> BuildResult:
    """`build_engine` in a forked child (the module docstring), or in this process where `in_process_reason`
    gives one. With `output`, the plan is written there once, atomically (the result's `plan_file`); without,
    it comes back in memory (`data`)."""
    release_memory()
    reason = in_process_reason(options)
    if reason is None:
        return _isolated_build(model, meta, backend, options, where, progress, output)
    logging.getLogger("trtc").debug("building in this process: %s", reason)
    if output is None:
        return build_engine(model, meta, backend, options, where=where, progress=progress)
    with atomic_path(output) as tmp:  # TensorRT's memory straight to the file: no copy of the plan in Python
        result = build_engine(model, meta, backend, options, where=where, progress=progress, plan_file=tmp)
    result.plan_file = Path(output)
    return result


def in_process_reason(options: BuildOptions) -> str | None:
    """Why the build runs in this process, or None: it runs in a child."""
    if not options.isolate:
        return "--no-isolate"
    if os.environ.get(NO_ISOLATE_VAR, "") not in ("", "0"):
        return f"{NO_ISOLATE_VAR} is set"
    if not hasattr(os, "fork"):
        return "this platform has no fork"
    if _cuda_loaded():
        return "the CUDA driver is loaded in this process (a forked child could not use it)"
    return None


def _cuda_loaded() -> bool:
    try:
        return "libcuda.so" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


class Record:
    """Where the child is: the stage, the node being lowered and the last one whose layers were added, in a
    page of anonymous shared memory (a fork's writes are its parent's reads) that survives the child."""

    SIZE = 4096

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, self.SIZE)  # MAP_SHARED
        self.current = self.last = "\0"

    def watch(self, stage: str, name: str, op: str) -> None:
        """`build_engine`'s watch, in the child: a few microseconds per event."""
        entry = f"{name[:500]}\0{op[:100]}"
        if stage == "lowering":
            self.current = entry
        elif stage == "added":
            self.last = entry
        data = f"{stage}\0{self.current}\0{self.last}".encode()
        self.page[4:4 + len(data)] = data
        self.page[:4] = len(data).to_bytes(4, "little")

    def read(self) -> tuple[str, str, str, str, str]:
        """stage, node being lowered and its op, last layer added and its op ('' where none)."""
        size = int.from_bytes(self.page[:4], "little")
        fields = self.page[4:4 + size].decode(errors="replace").split("\0") if size else []
        return tuple((fields + [""] * 5)[:5])  # type: ignore[return-value]


def crash_error(signum: int, record: Record, where: str) -> TrtcError:
    """The one line for a child killed by signal `signum`, from what `record` holds."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    stage, node, op, last, last_op = record.read()
    doing = {"building": "building", "lowering": f"lowering node {node!r} ({op})"}.get(stage, "starting")
    added = f"the last layer added was {last} ({last_op})" if last else "no layer was added yet"
    hint = ("the out-of-memory killer sends SIGKILL: free memory, or build with smaller profiles"
            if signum == signal.SIGKILL else
            "the build ran in a child process; rerun with --no-isolate (or TRTC_NO_ISOLATE=1) under a debugger, "
            "or report it with the model")
    return TrtcError(f"TensorRT crashed ({name}) while {doing}; {added}", where=where or None, hint=hint)


def _isolated_build(model: ir.Model, meta: Mapping[str, Any], backend: Backend, options: BuildOptions, where: str,
                    progress: Progress, output: Path | None) -> BuildResult:
    plan_path = _temporary(output)
    reader, writer = Pipe(duplex=False)
    record = Record()
    pid = None
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of forking a process with threads (OpenBLAS's, onnxruntime's idle pools): the
            # child takes no lock of theirs; malloc's, the import lock and logging's are reset at fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                _child(model, meta, backend, options, where, progress is not None, plan_path, (reader, writer),
                       record)
            finally:
                os._exit(1)
        writer.close()
        outcome: dict[str, Any] = {}
        status = _wait(pid, reader, progress, outcome)
        pid = None  # reaped
        if "done" in outcome:  # whatever happened after it sent its result
            sidecar, layers = outcome["done"]
            return _received(plan_path, output, sidecar, layers, where)
        if "raised" in outcome:
            exc, text = outcome["raised"]
            if not isinstance(exc, TrtcError) and hasattr(exc, "add_note"):
                exc.add_note(f"raised in the build's child process:\n{text}")
            raise exc
        if os.WIFSIGNALED(status):
            raise crash_error(os.WTERMSIG(status), record, where)
        raise TrtcError(f"the build's child process exited with code {os.waitstatus_to_exitcode(status)} and no "
                        "result", where=where or None, hint="rerun with --no-isolate to see where it stopped")
    finally:
        if pid:  # this process was interrupted (Ctrl-C): the child goes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        reader.close()
        writer.close()
        record.page.close()
        with contextlib.suppress(FileNotFoundError):
            plan_path.unlink()


def _received(plan_path: Path, output: Path | None, sidecar: dict[str, Any], layers: Any, where: str
              ) -> BuildResult:
    """The child's result: its plan file renamed to `output`, or (without one) read into memory."""
    size = plan_path.stat().st_size
    if size != sidecar["plan_bytes"]:  # a stat, not a hash: the child computed the hash from the bytes it wrote
        raise TrtcError(f"the build's child process wrote {size} of the plan's {sidecar['plan_bytes']} bytes",
                        where=where or None, hint="rerun with --no-isolate to see where it stopped")
    if output is None:
        return BuildResult(sidecar, cached=False, layers=layers, data=plan_path.read_bytes())
    publish(plan_path, output)
    return BuildResult(sidecar, cached=False, layers=layers, plan_file=Path(output))


def _temporary(output: Path | None) -> Path:
    """An empty file for the child's plan beside `output`, named as `fileio.atomic_path` names its temporaries
    (this process's pid in it: one a killed build left is removed here, or by the next write to `output`);
    without `output`, in the temp folder."""
    if output is None:
        folder, name = None, "trtc-build"
    else:
        folder, name = Path(output).resolve().parent, Path(output).name
        if not folder.is_dir():
            raise TrtcError("output folder does not exist", where=str(output), hint="create it first")
        remove_stale_temporaries(folder, name)
    try:
        fd, path = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise TrtcError(f"cannot create a temporary file for the engine ({exc.strerror})",
                        where=str(output or tempfile.gettempdir())) from None
    os.close(fd)
    return Path(path)


def _wait(pid: int, reader: Connection, progress: Progress, outcome: dict[str, Any]) -> int:
    """Show the child's progress lines and keep its result (`outcome`) until it has gone; its wait status."""

    def handle(message: tuple) -> None:
        if message[0] == "progress":
            if progress is not None:
                progress(message[1])
        else:
            outcome[message[0]] = message[1:]

    while True:
        if reader.poll(0.2):
            try:
                handle(reader.recv())
                continue
            except EOFError:  # its end closed: it has exited, or is exiting
                return os.waitpid(pid, 0)[1]
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # gone, though another process may hold a copy of its end of the pipe
            with contextlib.suppress(EOFError):
                while reader.poll(0):
                    handle(reader.recv())
            return status


def _child(model: ir.Model, meta: Mapping[str, Any], backend: Backend, options: BuildOptions, where: str,
           show_progress: bool, plan_path: Path, pipe: tuple[Connection, Connection], record: Record) -> NoReturn:
    """The forked child: build, write the plan, send the result (or the exception), and exit at once (none
    of the parent's cleanup, atexit handlers or test fixtures run here)."""
    reader, writer = pipe
    reader.close()
    faulthandler.disable()  # a crash is the parent's one line, not a Python stack as well
    parent = os.getppid()
    with contextlib.suppress(Exception):  # go when the parent goes (Linux): no orphan build holding memory
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    try:
        send = (lambda text: writer.send(("progress", text))) if show_progress else None
        result = build_engine(model, meta, backend, options, where=where, progress=send, watch=record.watch,
                              plan_file=plan_path)
        writer.send(("done", result.sidecar, result.layers))
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the parent)
        text = traceback.format_exc()
        try:
            writer.send(("raised", exc, text))
        except Exception:  # an exception that does not pickle
            writer.send(("raised", RuntimeError(f"{type(exc).__name__}: {exc}"), text))
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)
