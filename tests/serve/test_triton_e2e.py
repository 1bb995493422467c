"""Models exported by `trtc export triton` served by the real Triton server (nvidia-pytriton's
tritonserver, started by trtc.serve.server) and queried with the real client, tritonclient, over
HTTP and gRPC: answers equal the CPU reference and the corpus' expected outputs, concurrent
single-row requests are batched (Triton's statistics count fewer executions than requests),
malformed requests get errors while the server stays ready, and stopping leaves no process."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus import MODELS  # noqa: E402

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[serve]')")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install -e '.[serve]')")
psutil = pytest.importorskip("psutil", reason="psutil is not installed (pip install -e '.[test]')")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from trtc.errors import TrtcError  # noqa: E402
from trtc.lower.profiles import parse_profiles  # noqa: E402
from trtc.serve.config import TritonExportOptions  # noqa: E402
from trtc.serve.export import export_triton  # noqa: E402

# name -> (corpus file, input, output, --shapes for the batch range)
SERVED = {
    "mlp": ("mlp-ts-op17.onnx", "x", "y", "x:1x64,8x64,16x64"),
    "cnn": ("cnn_bn-ts-op17.onnx", "x", "logits", "x:1x3x40x48,4x3x40x48,8x3x40x48"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, on free ports, over a repository of two exported models."""
    from trtc.serve.environment import triton_install
    from trtc.serve.server import start_server

    for file, *_ in SERVED.values():
        if not (MODELS / file).is_file():
            pytest.skip(f"corpus model {MODELS / file} is missing (../shared/models)")
    try:
        triton_install()
    except TrtcError as exc:
        pytest.skip(f"no Triton server to run: {exc}")
    repo = tmp_path_factory.mktemp("repo")
    for name, (file, _, _, shapes) in SERVED.items():
        # A queue delay long enough that 64 requests sent at once meet in batches on a loaded machine.
        export_triton(MODELS / file, repo, TritonExportOptions(name=name, max_queue_delay_us=20000,
                                                               profiles=tuple(parse_profiles([shapes]))))
    with start_server(repo, http_port=0, grpc_port=0, metrics_port=0) as running:
        yield running


def reference(name: str, x: np.ndarray) -> np.ndarray:
    from trtc.loading import open_model
    from trtc.reference.runner import ReferenceRunner

    file, inp, out, _ = SERVED[name]
    return ReferenceRunner(open_model(MODELS / file).model).run({inp: x})[out]


def corpus_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    file, inp, out, _ = SERVED[name]
    data = np.load(MODELS / file.replace(".onnx", ".npz"))
    return data[inp], data[out]


def http_infer(url: str, name: str, x: np.ndarray, *, input_name: str | None = None, datatype: str = "FP32"):
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput(input_name or SERVED[name][1], list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor]).as_numpy(SERVED[name][2])


def grpc_infer(url: str, name: str, x: np.ndarray):
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(SERVED[name][1], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor]).as_numpy(SERVED[name][2])


@pytest.mark.parametrize("name", sorted(SERVED))
def test_single_requests_over_http_and_grpc_match_the_reference(server, name):
    x, expected = corpus_case(name)
    for infer, url in ((http_infer, server.http_url), (grpc_infer, server.grpc_url)):
        got = infer(url, name, x)
        np.testing.assert_array_equal(got, reference(name, x))  # the same executor, in the server's process
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # the corpus' torch outputs


def test_metadata_and_config(server):
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_server_ready() and http.is_model_ready("mlp") and http.is_model_ready("cnn")
    meta = http.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("cnn", as_json=True)["config"]
    assert config["backend"] == "python" and config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert [list(map(int, i["dims"])) for i in config["input"]] == [[3, 40, 48]]


def _executions(url: str, name: str) -> tuple[int, int]:
    stats = httpclient.InferenceServerClient(url).get_inference_statistics(name)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_64_concurrent_single_rows_are_batched_and_correct(server):
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((64, 1, 64)).astype(np.float32)
    expected = reference("mlp", rows[:, 0])
    before = _executions(server.http_url, "mlp")

    def one(i: int) -> np.ndarray:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [1, 64], "FP32")
        tensor.set_data_from_numpy(rows[i])
        return client.infer("mlp", [tensor]).as_numpy("y")

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    for i, got in enumerate(answers):
        np.testing.assert_allclose(got[0], expected[i], rtol=1e-5, atol=1e-6)
    # Triton counts a request a moment after its answer has gone out: wait for the count to settle.
    deadline = time.monotonic() + 10
    while True:
        inferences, executions = (a - b for a, b in zip(_executions(server.http_url, "mlp"), before))
        if inferences >= 64 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert inferences == 64 and executions < 64, (inferences, executions)


@pytest.mark.parametrize("bad", ["name", "dtype", "shape"])
def test_malformed_request_is_refused_and_the_server_stays_ready(server, bad):
    x = np.zeros((1, 64), np.float32)
    kwargs = {"name": {"input_name": "nope"}, "dtype": {"datatype": "INT32"}, "shape": {}}[bad]
    if bad == "dtype":
        x = x.astype(np.int32)
    if bad == "shape":
        x = np.zeros((1, 63), np.float32)
    with pytest.raises(InferenceServerException) as info:
        http_infer(server.http_url, "mlp", x, **kwargs)
    assert {"name": "nope", "dtype": "INT32", "shape": "63"}[bad] in str(info.value)
    assert httpclient.InferenceServerClient(server.http_url).is_server_ready()
    x, expected = corpus_case("mlp")
    np.testing.assert_allclose(http_infer(server.http_url, "mlp", x), expected, rtol=1e-4, atol=1e-5)


def test_stop_leaves_no_process(tmp_path):
    """Started and stopped on its own (not the module's server): every process of its group ends."""
    from trtc.serve.server import start_server

    repo = tmp_path / "repo"
    file, _, _, shapes = SERVED["mlp"]
    export_triton(MODELS / file, repo, TritonExportOptions(name="mlp", profiles=tuple(parse_profiles([shapes]))))
    server = start_server(repo, http_port=0, grpc_port=0, metrics_port=0)
    root = psutil.Process(server.pid)
    family = [root, *root.children(recursive=True)]
    assert any("stub" in p.name() or "python" in p.name() for p in family[1:]), [p.name() for p in family]
    server.stop()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.name() for p in alive]
