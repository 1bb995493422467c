"""The real Triton Inference Server, run on a model repository.

`start_server` checks the repository before anything starts (every config.pbtxt parsed with
Triton's schema; models needing a backend this Triton lacks refused in one line), launches
tritonserver in a process group of its own with its log in a file, and returns once the server
answers ready on HTTP — or raises with the server's own reason taken from its log. `stop()` ends
the whole group (the server and the Python-backend stubs it started), so nothing is left running.

A trtc process that dies without stopping its server (SIGKILL, a crash) leaves nothing running either:
on Linux the server (started from the main thread) gets SIGTERM when it does, and stops its stubs. What
it leaves behind (the scratch folder, the stubs' shared-memory regions) is named with its pid, and the
next start removes it.

The nvidia-pytriton server has the Python backend alone: TensorRT plans and ONNX models served by
Triton's own backends need NGC's Triton container.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from trtc.errors import TrtcError
from trtc.serve.environment import BACKENDS, Progress, make_backend_dir, server_environment, triton_install
from trtc.serve.schema import CONFIG_NAME, model_backend, read_config

# Seconds tritonserver waits for in-flight requests when stopped (its default of 30 would make every
# Ctrl-C a half-minute wait); stop() allows this plus a margin before killing the group.
EXIT_TIMEOUT_S = 3
STOP_MARGIN_S = 7
# How many times a start whose automatically picked port was taken meanwhile is tried again.
PORT_RETRIES = 3
# prctl's option for the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
# What a trtc process names with its pid ("trtc-triton-<pid>-..."): its servers' scratch folders and the
# stubs' shared-memory regions, and `trtc serve`'s temporary repository (see owned_prefix).
_OWNED = re.compile(r"^trtc-(?:triton|serve)-(\d+)-")


class ServerFailed(TrtcError):
    """The server stopped on its own after it was ready (a crash, a signal from elsewhere)."""

    exit_code = 1


class TritonServer:
    """A running tritonserver and what it serves. A context manager: leaving it stops the server."""

    def __init__(self, process: subprocess.Popen, *, ports: dict[str, int], log_path: Path, temp_log: bool,
                 scratch: Path, shm_prefix: str, repo: Path):
        self._process = process
        self._ports = ports
        self._log_path = log_path
        self._temp_log = temp_log
        self._scratch = scratch
        self._shm_prefix = shm_prefix
        self.repo = repo
        self._models: tuple[str, ...] = ()
        self._stopped = False
        self._keep_log = False
        self._signalled = False
        atexit.register(self.stop)

    @property
    def http_url(self) -> str:
        """host:port of the HTTP/REST endpoint, as tritonclient.http wants it."""
        return f"127.0.0.1:{self._ports['http']}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint, as tritonclient.grpc wants it."""
        return f"127.0.0.1:{self._ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus metrics page."""
        return f"http://127.0.0.1:{self._ports['metrics']}/metrics"

    @property
    def models(self) -> tuple[str, ...]:
        """Names of the models the server has loaded (ready), sorted."""
        return self._models

    @property
    def pid(self) -> int:
        """The server's process id (also its process group's: the stubs it starts belong to it)."""
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr)."""
        return self._log_path

    def describe(self) -> dict[str, object]:
        """The facts `trtc serve` prints: where it listens, what it serves."""
        return {"repository": str(self.repo), "models": list(self.models), "http": self.http_url,
                "grpc": self.grpc_url, "metrics": self.metrics_url, "pid": self.pid, "log": str(self.log_path)}

    def poll(self) -> int | None:
        """The server's exit code, None while it runs."""
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits (subprocess.TimeoutExpired after `timeout` seconds); its exit code."""
        return self._process.wait(timeout)

    def failure(self) -> ServerFailed:
        """The error to raise when the server stopped on its own: its exit and the reason from its log."""
        code = self._process.poll()
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return ServerFailed(f"Triton stopped on its own ({how}): {log_reason(self._log_path)}",
                            where=str(self.repo), hint=f"the server's log: {self._log_path}")

    def stop(self) -> None:
        """Stop the server and everything it started: SIGINT to its process group (Triton unloads the
        models and exits within EXIT_TIMEOUT_S), SIGKILL to the group after a margin or once the server
        is gone (a stub left behind). Removes the temporary files; the log stays when the server had
        stopped on its own, for the reason it holds. Calling it again does nothing, and completes a stop
        that was interrupted (every step may run twice)."""
        if self._stopped:
            return
        died_alone = self._process.poll() is not None and not self._signalled
        if self._process.poll() is None:
            self._signalled = True
            _signal_group(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(EXIT_TIMEOUT_S + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                _signal_group(self._process.pid, signal.SIGKILL)
                self._process.wait()
        _signal_group(self._process.pid, signal.SIGKILL)
        _remove_shared_memory(self._shm_prefix)
        shutil.rmtree(self._scratch, ignore_errors=True)
        if self._temp_log and not (died_alone or self._keep_log):
            self._log_path.unlink(missing_ok=True)
        self._stopped = True
        atexit.unregister(self.stop)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_server(repo: Path, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 log_path: Path | None = None, ready_timeout: float = 120, progress: Progress | None = None
                 ) -> TritonServer:
    """Start tritonserver on the model repository `repo` and return it once it answers ready.

    A port of 0 means a free one. Before launching, the repository's configs are read with Triton's
    schema and models needing a backend this Triton lacks are refused (all of them in one line). The
    server's stdout and stderr go to `log_path` (a temporary file when None). If it exits or is not
    ready within `ready_timeout` seconds, TrtcError with the reason the server logged."""
    shown = Path(repo)
    repo = shown.resolve()
    models = check_repository(shown)
    install = triton_install(progress)
    sweep_leftovers()
    auto = {"http": http_port == 0, "grpc": grpc_port == 0, "metrics": metrics_port == 0}
    for attempt in range(PORT_RETRIES + 1):
        ports = _pick_ports({"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
        scratch = Path(tempfile.mkdtemp(prefix=owned_prefix("triton")))
        backends = make_backend_dir(install, scratch)
        shm_prefix = f"{scratch.name}_"  # unique while the folder exists: the stop (or a sweep) removes both
        temp_log = log_path is None
        log = scratch.with_suffix(".log") if temp_log else Path(log_path)
        try:
            out = open(log, "wb")
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise TrtcError(f"cannot write the server's log ({exc.strerror})", where=str(log)) from None
        with out:
            process = subprocess.Popen(
                [str(install.server), f"--model-repository={repo}", f"--backend-directory={backends}",
                 f"--http-port={ports['http']}", f"--grpc-port={ports['grpc']}",
                 f"--metrics-port={ports['metrics']}", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
                 f"--backend-config=python,shm-region-prefix-name={shm_prefix}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=server_environment(install),
                start_new_session=True, preexec_fn=_die_with_this_process())
        server = TritonServer(process, ports=ports, log_path=log, temp_log=temp_log, scratch=scratch,
                              shm_prefix=shm_prefix, repo=shown)
        try:
            server._models = _wait_ready(server, ports, ready_timeout) or models
            return server
        except _NotReady as exc:
            server._keep_log = True
            server.stop()
            retry = attempt < PORT_RETRIES and any(auto[name] for name in exc.ports_in_use)
            if not retry:
                raise TrtcError(str(exc), where=str(shown), hint=f"the server's log: {log}") from None
            log.unlink(missing_ok=True)
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


def check_repository(repo: Path) -> list[str]:
    """The model names of a repository (its folders), after refusing in one line what this Triton
    cannot load: models whose config.pbtxt names a backend it lacks. A folder without config.pbtxt
    is left to Triton, which may complete the config from the model file."""
    if not repo.exists():
        raise TrtcError("no such folder", where=str(repo))
    if not repo.is_dir():
        raise TrtcError("not a model repository (a folder of model folders)", where=str(repo))
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    if not models:
        raise TrtcError("the model repository holds no models", where=str(repo),
                        hint="a model is a folder holding config.pbtxt and a version folder (1/); "
                             "`trtc export triton` writes one")
    lacking = {}
    for name in models:
        config = repo / name / CONFIG_NAME
        if config.is_file():
            backend = model_backend(read_config(config))
            if backend and backend not in BACKENDS:
                lacking[name] = backend
    if lacking:
        _refuse(repo, lacking)
    return models


def _refuse(repo: Path, lacking: dict[str, str]) -> None:
    ways_out = ("serve {it} in NGC's Triton container (nvcr.io/nvidia/tritonserver) or export {it} with "
                "`trtc export triton --backend python`")
    if len(lacking) == 1:
        (name, backend), = lacking.items()
        raise TrtcError(f"needs Triton's '{backend}' backend, which the nvidia-pytriton server trtc runs lacks",
                        where=str(repo / name), hint=ways_out.format(it="it"))
    needs = ", ".join(f"{repo / name} needs '{backend}'" for name, backend in lacking.items())
    raise TrtcError(f"{needs}: Triton backends the nvidia-pytriton server trtc runs lacks (it has only "
                    f"{', '.join(sorted(BACKENDS))})", hint=ways_out.format(it="them"))


class _NotReady(Exception):
    def __init__(self, message: str, ports_in_use: tuple[str, ...] = ()):
        super().__init__(message)
        self.ports_in_use = ports_in_use


def _wait_ready(server: TritonServer, ports: dict[str, int], timeout: float) -> tuple[str, ...]:
    """Poll until the server is ready; the names of its ready models. Ready means /v2/health/ready
    answers 200 (every model loaded) and the metrics service, which Triton starts last, answers too:
    a taken metrics port ends a server that already answered ready."""
    base = f"http://127.0.0.1:{ports['http']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        if _get(f"{base}/v2/health/ready") == 200 and _metrics_up(ports["metrics"]):
            if server.poll() is None:
                return _ready_models(base)
        time.sleep(0.1)
    code = server.poll()
    reason = log_reason(server.log_path)
    in_use = tuple(name for name, port in ports.items() if re.search(rf":{port}'? already in use", _text(server)))
    if code is None:
        raise _NotReady(f"Triton was not ready after {timeout:g} s ({reason})")
    return_code = f"signal {-code}" if code < 0 else f"exit code {code}"
    raise _NotReady(f"Triton did not start ({return_code}): {reason}", in_use)


def _metrics_up(port: int) -> bool:
    # Not the log's "Started Metrics Service": Triton prints it before finding the port taken.
    return _get(f"http://127.0.0.1:{port}/metrics") == 200


def _ready_models(base: str) -> tuple[str, ...]:
    request = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            index = json.loads(response.read())
    except (OSError, ValueError):
        return ()
    return tuple(sorted({m["name"] for m in index if m.get("state") == "READY"}))


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _text(server: TritonServer) -> str:
    try:
        return server.log_path.read_text(errors="replace")
    except OSError:
        return ""


# A glog line: severity, date, time, thread, file:line] message (Triton quotes the message).
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]\s*(.*)$")
# A model's own failure ("failed to load 'm' version 1: ...", "failed to load model 'm': ...", "Poll failed
# for model directory 'm': ..."), not the summary that follows ("creating server: ... failed to load all models").
_MODEL_FAILED = re.compile(r"failed to load (model )?'|^Poll failed for model")
# Error lines every CPU-only start prints, which explain nothing.
_HARMLESS = ("CudaDriverHelper has not been initialized",)


def log_reason(log_path: Path) -> str:
    """The server's own reason for failing, from its log, as one line: the models that failed to load,
    else a service that failed to start (a port in use), else its last error line, else its last line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = []
    for line in lines:
        match = _GLOG.match(line)
        if match and match.group(1) in "EF":
            message = _unquote(match.group(2))
            if not any(h in message for h in _HARMLESS):
                errors.append(message)
        elif line.startswith("error: "):
            errors.append(line[len("error: "):].strip())
    loading = [m for m in errors if _MODEL_FAILED.search(m)]
    starting = [m for m in errors if m.startswith("failed to start")]
    chosen = loading or starting or errors[-1:]
    if not chosen:
        tail = [line.strip() for line in lines if line.strip() and not line.startswith(("+", "|"))]
        if not tail:
            return "its log is empty"
        match = _GLOG.match(tail[-1])
        return f"its log ends with: {_unquote(match.group(2)) if match else tail[-1]}"
    return "; ".join(dict.fromkeys(chosen))


def _unquote(message: str) -> str:
    """A glog message as Triton writes it ("quoted", \\n escaped): its first line, without the traceback."""
    message = message.strip()
    if len(message) >= 2 and message[0] == message[-1] == '"':
        message = message[1:-1]
    message = message.replace('\\"', '"')
    return message.split("\\n")[0].strip()


def _pick_ports(wanted: dict[str, int]) -> dict[str, int]:
    """The ports to use: those given, and a free one (distinct) for each 0."""
    ports, holders = dict(wanted), []
    try:
        for name, port in wanted.items():
            if port == 0:
                holder = socket.socket()
                holder.bind(("", 0))
                holders.append(holder)
                ports[name] = holder.getsockname()[1]
    finally:
        for holder in holders:
            holder.close()
    return ports


def _remove_shared_memory(prefix: str) -> None:
    """Unlink the Python backend's shared-memory regions of one server (named with its own prefix). A
    server stopped while clients hold connections spends its exit timeout waiting for them and then
    exits without unloading its models, so the stubs never free their regions (1 MiB each in /dev/shm)."""
    with contextlib.suppress(OSError):
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)


def owned_prefix(kind: str) -> str:
    """The name prefix of a temporary file or folder of this process ("triton": a server's scratch folder,
    "serve": `trtc serve`'s repository): it holds the pid, so that a later start can tell what a killed
    process left behind from what a live one uses (sweep_leftovers)."""
    return f"trtc-{kind}-{os.getpid()}-"


def sweep_leftovers() -> None:
    """Remove what trtc processes that died without stopping their server (SIGKILL, a crash) left behind:
    scratch folders and temporary repositories (with the temporary log beside them) and shared-memory
    regions whose owner's pid is not alive. A log kept on purpose for its reason stays: its folder is gone."""
    for place in (Path(tempfile.gettempdir()), Path("/dev/shm")):
        with contextlib.suppress(OSError):
            for path in place.glob("trtc-*"):
                owner = _OWNED.match(path.name)
                if owner and not path.name.endswith(".log") and not _alive(int(owner.group(1))):
                    _remove_leftover(path)


def _remove_leftover(path: Path) -> None:
    # Another start may sweep the same leftover at the same time: what is gone already is fine.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.with_suffix(".log").unlink(missing_ok=True)
        _remove_shared_memory(f"{path.name}_")
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not: it is dead, only not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _die_with_this_process() -> Callable[[], None] | None:
    """The server's preexec_fn on Linux: it gets SIGTERM when this process dies without stopping it
    (prctl's PR_SET_PDEATHSIG), and Triton ends its stubs on SIGTERM. The signal follows the thread that
    forked rather than the process, so a start from another thread (which may end before the server
    should) goes without; so do other systems."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    # Looked up now: between fork and exec the child must not load a library (another thread of this
    # process may have held the loader's lock at the fork).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes, prctl.restype = [ctypes.c_int, ctypes.c_ulong], ctypes.c_int
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # this process died before the prctl: nothing would signal the server
            os._exit(1)

    return die_with_parent


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
