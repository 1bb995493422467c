"""A `trtc serve` killed outright (SIGKILL, a crash) runs no stop: its tritonserver must not outlive it
(the server gets SIGTERM when it dies and ends its Python-backend stubs), and what it leaves behind (its
scratch folder and log, the stubs' shared-memory regions, named with its pid) goes with the next start,
while what a live process uses stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import (  # noqa: E402  (skips this module too where tritonclient or psutil is missing)
    FREE_PORT_ARGS,
    FREE_PORTS,
    X,
    add_model,
    end,
    first_line,
    http_infer,
    psutil,
    serve_command,
    stub_regions,
)

from trtc.serve.server import start_server  # noqa: E402

# How long a server and its stubs may outlive the command killed under them: Triton waits its exit
# timeout (3 s) for open connections, the stubs notice within a second that it is gone.
GONE_WITHIN_S = 15


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "add1")
    return repo


def of_run(name: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line holds `name`, a scratch folder's name, unique to one
    run: the server (its --backend-directory is in the folder) and its stubs (their region is named after it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if name in " ".join(process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def wait_gone(name: str, timeout: float = GONE_WITHIN_S) -> list[str]:
    """Command lines of the run's processes still alive after `timeout` seconds (none, at best as soon as
    they are gone)."""
    deadline = time.monotonic() + timeout
    while (left := of_run(name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [" ".join(p.cmdline()) for p in left if p.is_running()]


def read_facts(process: subprocess.Popen) -> tuple[dict, Path]:
    """The facts `trtc serve --json` printed once answering, and its server's scratch folder (its
    temporary log is the folder's name with .log), named with the command's pid."""
    line = first_line(process)
    assert line, process.communicate(timeout=30)
    facts = json.loads(line)
    scratch = Path(facts["log"]).with_suffix("")
    assert scratch.name.startswith(f"trtc-triton-{process.pid}-") and scratch.is_dir(), scratch
    return facts, scratch


@pytest.mark.slow
def test_a_killed_command_leaves_no_server_running_and_the_next_start_sweeps_its_files(triton, repo):
    process = serve_command(str(repo), *FREE_PORT_ARGS, "--json")
    server_pid = None
    try:
        facts, scratch = read_facts(process)
        server_pid = facts["pid"]
        np.testing.assert_array_equal(http_infer(facts["http"]), X + 1)
        names = {p.name() for p in of_run(scratch.name)}
        assert {"tritonserver", "triton_python_backend_stub"} <= names, names
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert not wait_gone(scratch.name)
        assert scratch.is_dir() and Path(facts["log"]).is_file()  # no stop ran: they are left
    finally:
        end(process, server_pid)  # its stubs stay in the server's group
    with start_server(repo, **FREE_PORTS) as server:
        assert server.models == ("add1",)
        assert not scratch.exists() and not Path(facts["log"]).exists()
        assert not list(Path("/dev/shm").glob(f"{scratch.name}_*"))


@pytest.mark.slow
def test_the_regions_of_a_killed_server_go_with_the_next_start_and_a_live_ones_stay(triton, repo):
    with start_server(repo, **FREE_PORTS) as live:  # this process lives on: nothing of it is swept
        live_regions = stub_regions(live.pid)
        process = serve_command(str(repo), *FREE_PORT_ARGS, "--json")
        server_pid = None
        try:
            facts, scratch = read_facts(process)
            server_pid = facts["pid"]
            regions = stub_regions(facts["pid"])
            # The command and its server's whole group at once (the OOM killer, a `kill -9` of them all):
            # stubs killed outright never free their regions.
            os.kill(process.pid, signal.SIGKILL)
            os.killpg(facts["pid"], signal.SIGKILL)
            process.wait(timeout=10)
            assert not wait_gone(scratch.name)
        finally:
            end(process, server_pid)  # its stubs stay in the server's group
        assert regions and all(r.exists() for r in regions)
        with start_server(repo, **FREE_PORTS) as following:
            assert following.models == ("add1",)
            assert not any(r.exists() for r in regions) and not scratch.exists()
            assert all(r.exists() for r in live_regions)
            np.testing.assert_array_equal(http_infer(live.http_url), X + 1)
            assert all(r.exists() for r in stub_regions(following.pid))
