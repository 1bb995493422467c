"""A fork server for CLI calls: imports trtc (and what its commands import) once, then answers each
request with a fresh forked child that runs `trtc.cli.main(args)` as `python -m trtc ARGS` would.

A child is a separate process, so a signal, a hang or an exit code is seen as from a subprocess,
and an exception escaping `main` is printed as Python prints it (`Traceback ...`, exit 1). It saves
each call the 1-2 s of interpreter start and imports that would otherwise dominate a fuzz run.

Protocol: one JSON request per line on stdin ({"args", "cwd", "env", "stdout", "stderr", "timeout"}),
one JSON answer per line on stdout ({"status": waitpid status, "timed_out", "seconds"}).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import time
import traceback

# What the commands import inside their functions: loaded before the first fork.
PRELOAD = ["trtc.cli", "trtc.cli.commands", "trtc.cli.run", "trtc.cli.options", "trtc.frontend.parse",
           "trtc.pipeline", "trtc.reference.runner", "trtc.lower.build", "onnxruntime", "onnx.reference",
           "onnx.version_converter", "onnx.inliner"]


def _exit_code(code: object) -> int:
    """What the interpreter makes of SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict, answers: int) -> None:
    os.setpgid(0, 0)
    os.close(answers)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.update(request.get("env", {}))
        sys.argv = ["trtc", *request["args"]]
        from trtc.cli import main

        main(request["args"])
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _call(request: dict, answers: int) -> dict:
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(request, answers)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], request["timeout"])
    finally:
        os.close(pidfd)
    timed_out = not ready
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    return {"status": status, "timed_out": timed_out, "seconds": time.perf_counter() - started}


def serve() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    answers = os.dup(1)
    os.dup2(2, 1)  # the server's own stray prints must not corrupt the answers
    for line in sys.stdin:
        answer = json.dumps(_call(json.loads(line), answers)) + "\n"
        os.write(answers, answer.encode())


if __name__ == "__main__":
    serve()
