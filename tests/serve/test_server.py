"""`trtc serve` and trtc.serve.server run the real Triton server (nvidia-pytriton's tritonserver) on a
hand-written Python-backend repository and are queried with the real clients over HTTP and gRPC.
Stopping, by the library or by SIGINT/SIGTERM to the command, leaves no process of the server's
group behind; what the server cannot run is refused in one line before anything starts, and a
server that fails to start says why in one line, with Triton's own reason."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus import one_error_line, trtc_in_process  # noqa: E402

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[serve]')")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install -e '.[serve]')")
psutil = pytest.importorskip("psutil", reason="psutil is not installed (pip install -e '.[test]')")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from trtc.errors import TrtcError  # noqa: E402
from trtc.serve import server as server_module  # noqa: E402
from trtc.serve.environment import TritonUnavailable, triton_install  # noqa: E402
from trtc.serve.server import start_server  # noqa: E402

FREE_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
FREE_PORT_ARGS = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

# y = x + 1; imports trtc from trtc's own environment as the model.py files trtc exports do.
MODEL_PY = """import os
import site

for _site_dir in filter(None, os.environ.get("TRTC_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import trtc  # noqa: F401  (from trtc's environment, while numpy<2 comes from the server's)

        assert int(np.__version__.split(".")[0]) < 2, np.__version__

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x + 1).astype(np.float32))]))
        return responses
"""


def add_model(repo: Path, name: str, code: str = MODEL_PY) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(code)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "add1")
    return repo


X = np.arange(12, dtype=np.float32).reshape(3, 4)


def http_infer(url: str, x: np.ndarray = X) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("add1", [tensor]).as_numpy("y")


def grpc_infer(url: str, x: np.ndarray = X) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("add1", [tensor]).as_numpy("y")


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def assert_all_gone(processes: list[psutil.Process], pgid: int) -> None:
    _, alive = psutil.wait_procs(processes, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    assert not group_members(pgid)


def stub_regions(server_pid: int) -> list[Path]:
    """The shared-memory regions of the Python-backend stubs the server started (the second argument
    of a stub's command line), named with trtc's prefix."""
    stubs = psutil.Process(server_pid).children(recursive=True)
    assert stubs, "the server started no backend stub"
    regions = [Path("/dev/shm") / stub.cmdline()[2] for stub in stubs]
    assert all(r.name.startswith("trtc-triton-") for r in regions), regions
    return regions


def serving(repo: Path) -> list[str]:
    """Command lines of live processes (a server, its stubs) working on `repo`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(repo) in cmdline and "triton" in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_library_serves_http_and_grpc_and_stops_everything(triton, repo):
    with start_server(repo, **FREE_PORTS) as server:
        assert server.models == ("add1",)
        for url in (server.http_url, server.grpc_url, server.metrics_url):
            assert url.startswith(("127.0.0.1:", "http://127.0.0.1:"))
        assert httpclient.InferenceServerClient(server.http_url).is_server_ready()
        np.testing.assert_array_equal(http_infer(server.http_url), X + 1)
        np.testing.assert_array_equal(grpc_infer(server.grpc_url), X + 1)
        single = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(http_infer(server.http_url, single), single + 1)
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        regions = stub_regions(server.pid)
        assert regions and all(r.exists() for r in regions)
        log = server.log_path
        assert "successfully loaded 'add1'" in log.read_text()
    # The clients above still hold connections, so Triton spends its exit timeout on them and ends its
    # stubs without letting them free their shared memory: stop() removes it.
    assert_all_gone(processes, server.pid)
    assert not any(r.exists() for r in regions)
    assert not log.exists()  # a temporary log goes with a server stopped on purpose
    server.stop()  # idempotent


def serve_command(*args: str) -> subprocess.Popen:
    """`python -m trtc serve ARGS` in a session of its own (so a failed test can end it and the server)."""
    return subprocess.Popen([sys.executable, "-m", "trtc", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def first_line(process: subprocess.Popen, timeout: float = 120) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"`trtc serve` printed nothing in {timeout} s")


def end(process: subprocess.Popen, server_pid: int | None) -> None:
    """Make sure neither the command nor its server outlives a failed test."""
    for pid in filter(None, [process.pid if process.poll() is None else None, server_pid]):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal, as_json", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["sigint-text", "sigterm-json"])
def test_command_serves_until_signalled(triton, repo, stop_signal, as_json):
    process = serve_command(str(repo), *FREE_PORT_ARGS, *(["--json"] if as_json else []))
    server_pid = None
    try:
        line = first_line(process)
        assert line, process.communicate(timeout=30)
        if as_json:
            facts = json.loads(line)
            assert facts["models"] == ["add1"] and facts["repository"] == str(repo)
            http, grpc, server_pid = facts["http"], facts["grpc"], facts["pid"]
        else:
            assert line.startswith("serving 1 model (add1) at http://127.0.0.1:") and "Ctrl-C stops it" in line
            http = line.split("http://")[1].split(" ")[0]
            grpc = line.split("(HTTP), ")[1].split(" ")[0]
        np.testing.assert_array_equal(http_infer(http), X + 1)
        np.testing.assert_array_equal(grpc_infer(grpc), X + 1)
        processes = psutil.Process(process.pid).children(recursive=True)
        (server,) = [p for p in processes if p.name() == "tritonserver"]
        assert server_pid in (None, server.pid)
        server_pid = server.pid
        assert any("triton_python_backend_stub" in " ".join(p.cmdline()) for p in processes)

        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out == "" and "Traceback" not in err
        assert_all_gone(processes, server_pid)
    finally:
        end(process, server_pid)


@pytest.mark.slow
def test_command_says_when_the_server_dies(triton, repo):
    process = serve_command(str(repo), *FREE_PORT_ARGS)
    server_pid = None
    try:
        assert first_line(process).startswith("serving 1 model")
        (server,) = [p for p in psutil.Process(process.pid).children() if p.name() == "tritonserver"]
        server_pid = server.pid
        os.killpg(server_pid, signal.SIGKILL)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trtc: error: "), err
        assert "Triton stopped on its own (signal 9)" in lines[0] and "the server's log: " in lines[0]
        Path(lines[0].split("the server's log: ")[1]).unlink()  # kept for the user to read
    finally:
        end(process, server_pid)


def test_backends_it_lacks_are_refused_before_anything_starts(repo, tmp_path, monkeypatch, capsys):
    def no_launch(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(server_module.subprocess, "Popen", no_launch)
    mixed = tmp_path / "mixed"
    add_model(mixed, "add1")
    (mixed / "resnet" / "1").mkdir(parents=True)
    (mixed / "resnet" / "config.pbtxt").write_text('name: "resnet"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n')
    (mixed / "auto").mkdir()  # no config.pbtxt: left to Triton's auto-complete
    one_error_line(trtc_in_process(capsys, "serve", mixed), f"{mixed / 'resnet'}: needs Triton's 'tensorrt' backend",
                   "nvcr.io/nvidia/tritonserver", "trtc export triton --backend python")

    (mixed / "det").mkdir()
    (mixed / "det" / "config.pbtxt").write_text('name: "det"\nbackend: "onnxruntime"\n')
    line = one_error_line(trtc_in_process(capsys, "serve", mixed), f"{mixed / 'det'} needs 'onnxruntime'",
                          f"{mixed / 'resnet'} needs 'tensorrt'", "nvcr.io/nvidia/tritonserver")
    assert "add1" not in line and "auto" not in line

    code, out, _ = trtc_in_process(capsys, "serve", mixed, "--json")
    assert code == 2 and "resnet" in json.loads(out)["error"]


def test_what_is_not_a_repository_is_refused(repo, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(trtc_in_process(capsys, "serve", empty), f"{empty}: the model repository holds no models")
    one_error_line(trtc_in_process(capsys, "serve", tmp_path / "missing"), "no such file or folder")
    (tmp_path / "notes.txt").write_text("")
    one_error_line(trtc_in_process(capsys, "serve", tmp_path / "notes.txt"), "neither a model repository")
    one_error_line(trtc_in_process(capsys, "serve", repo, "--name", "m", "--max-batch", "4"),
                   "--name, --max-batch apply to an artifact")
    bad = tmp_path / "bad"
    (bad / "m").mkdir(parents=True)
    (bad / "m" / "config.pbtxt").write_text("name: 'm' backnd: 'python'\n")
    one_error_line(trtc_in_process(capsys, "serve", bad), f"{bad / 'm' / 'config.pbtxt'}: not a valid Triton")


@pytest.mark.slow
def test_a_taken_port_gets_the_servers_reason(triton, repo):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TrtcError) as failed:
            start_server(repo, **{**FREE_PORTS, "grpc_port": port})
    message = str(failed.value)
    assert "\n" not in message
    assert f"Triton did not start (exit code 1): failed to start GRPC service: Unavailable - Socket " \
           f"'0.0.0.0:{port}' already in use" in message
    log = Path(message.split("the server's log: ")[1])
    assert "already in use" in log.read_text()
    log.unlink()
    assert not serving(repo)


def test_a_model_that_fails_to_load_gets_pythons_error(triton, tmp_path):
    add_model(tmp_path, "broken", "import no_such_module_here\n")
    start = time.monotonic()
    with pytest.raises(TrtcError) as failed:
        start_server(tmp_path, **FREE_PORTS)
    message = str(failed.value)
    assert "\n" not in message and time.monotonic() - start < 60
    assert "failed to load 'broken' version 1: Internal: ModuleNotFoundError: No module named " \
           "'no_such_module_here'" in message
    Path(message.split("the server's log: ")[1]).unlink()
    assert not serving(tmp_path)


def test_no_index_is_one_line_naming_what_to_install(tmp_path, monkeypatch):
    from trtc.serve import environment

    monkeypatch.setattr(environment, "_own_environment", lambda: None)
    monkeypatch.setenv("TRTC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    with pytest.raises(TritonUnavailable) as failed:
        triton_install()
    message = str(failed.value)
    assert "\n" not in message
    assert "could not install nvidia-pytriton==0.7.0 numpy==1.26.4 for Triton's environment (ERROR: No matching " \
           "distribution found for nvidia-pytriton==0.7.0)" in message
    target = environment.environment_dir()
    assert f"make it by hand: {sys.executable} -m venv {target} && {target}/bin/pip install " in message
    assert [p.name for p in target.parent.iterdir()] == [f"{target.name}.lock"]  # no half-made environment


PROVISION = """
import sys
from trtc.serve.environment import TritonUnavailable, triton_install
try:
    print(triton_install(progress=lambda text: print("progress:", text)).server)
except TritonUnavailable as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.slow
def test_two_processes_provision_one_environment(triton, tmp_path):
    if triton.env_python == Path(sys.executable):
        pytest.skip("trtc's own environment has pytriton with numpy<2: nothing is provisioned")
    env = {**os.environ, "TRTC_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", PROVISION], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    if any(run.returncode == 3 for run in runs):
        pytest.skip(f"PyPI cannot be reached: {outputs}")
    assert [run.returncode for run in runs] == [0, 0], outputs
    servers = {out.strip().splitlines()[-1] for out in outputs}
    (server,) = servers
    assert server.startswith(str(tmp_path / "triton")) and Path(server).is_file()
    assert sum("progress: setting up Triton's environment (once)" in out for out in outputs) == 1
    (made,) = [p for p in (tmp_path / "triton").iterdir() if not p.name.endswith(".lock")]  # no staging left
    assert Path(server).is_relative_to(made)


def test_not_ready_in_time_is_one_line_and_leaves_nothing(triton, repo):
    with pytest.raises(TrtcError) as failed:
        start_server(repo, **FREE_PORTS, ready_timeout=0.2)
    message = str(failed.value)
    assert "\n" not in message and "Triton was not ready after 0.2 s (its log ends with: " in message
    Path(message.split("the server's log: ")[1]).unlink()
    assert not serving(repo)


@pytest.mark.slow
def test_command_serves_an_artifact_through_a_temporary_repository(triton, mlp):
    import onnxruntime

    model = mlp / "mlp.onnx"
    process = serve_command(str(model), "--shapes", "x:1x16,4x16,8x16", *FREE_PORT_ARGS, "--json")
    server_pid = None
    try:
        line = first_line(process)
        assert line, process.communicate(timeout=30)
        facts = json.loads(line)
        server_pid = facts["pid"]
        assert facts["artifact"] == str(model) and facts["models"] == ["mlp"]
        assert facts["export"]["backend"] == "python" and facts["export"]["max_batch_size"] == 8
        x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
        client = httpclient.InferenceServerClient(facts["http"])
        tensor = httpclient.InferInput("x", [3, 16], "FP32")
        tensor.set_data_from_numpy(x)
        (expected,) = onnxruntime.InferenceSession(str(model)).run(None, {"x": x})
        np.testing.assert_allclose(client.infer("mlp", [tensor]).as_numpy("y"), expected, rtol=1e-5, atol=1e-6)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert not Path(facts["repository"]).exists()  # the temporary repository goes with the server
        assert not group_members(server_pid)
    finally:
        end(process, server_pid)


def test_an_engine_for_tritons_tensorrt_backend_is_refused(mlp, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")
    plan = tmp_path / "mlp.plan"
    code, _, err = trtc_in_process(capsys, "build", mlp / "mlp.onnx", "-o", plan, "--no-cache",
                                   "--shapes", "x:1x16,4x16,8x16")
    assert code == 0, err
    one_error_line(trtc_in_process(capsys, "serve", plan),
                   f"{plan}: exported for Triton's 'tensorrt' backend, which the nvidia-pytriton server",
                   "add --backend python", "nvcr.io/nvidia/tritonserver")
