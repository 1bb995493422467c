"""LLM decoders served by Triton with their tokens streamed (`trtc export triton` / `trtc serve` of a
decoder): the decoupled model's config and checks, its request handling without a server
(trtc.serve.served_llm), and the real server (nvidia-pytriton's tritonserver) queried with
tritonclient's gRPC stream: the streamed tokens reproduce HF generate's `gen:tokens`, one response
per token arriving over time, text through the genai folder's tokenizer, errors for malformed
requests with the server staying ready, cancellation, Triton's generate_stream endpoint, and
`trtc serve llm.onnx`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus import MODELS, one_error_line, trtc_in_process  # noqa: E402

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install -e '.[serve]')")

import tritonclient.grpc as grpcclient  # noqa: E402

from trtc.errors import TrtcError  # noqa: E402
from trtc.serve.check import check_repository  # noqa: E402
from trtc.serve.config import TritonExportOptions  # noqa: E402
from trtc.serve.export import export_triton  # noqa: E402
from trtc.serve.schema import config_module, read_config  # noqa: E402
from trtc.serve.served_llm import Piece, ServedLlm  # noqa: E402

LLM = MODELS / "llm"
LLAMA = LLM / "llama-dynamo-op18.onnx"
GENAI = LLM / "llama-genai"
if not (LLAMA.is_file() and (GENAI / "genai_config.json").is_file()):
    pytest.skip(f"the LLM corpus is missing ({LLM}, ../shared/models/llm)", allow_module_level=True)
STORED = dict(np.load(LLM / "llama-dynamo-op18.npz"))
PROMPTS, TOKENS = STORED["gen:prompt"], STORED["gen:tokens"]  # [2, 7], HF generate's greedy [2, 16]
pb = config_module()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """llama-dynamo-op18 (ids only), its static-cache form (`optimize --llm --max-seq 64`) and the
    genai folder (ids or text) exported into one repository."""
    from trtc.ir import save_artifact
    from trtc.loading import open_model
    from trtc.passes.static_kv_cache import LlmOptions
    from trtc.pipeline import OptimizeOptions, optimize

    repo = tmp_path_factory.mktemp("repo")
    static = tmp_path_factory.mktemp("static") / "llama-static.trtir"
    artifact = open_model(LLAMA)
    optimize(artifact, OptimizeOptions(llm=LlmOptions(max_seq=64)))
    save_artifact(artifact.model, static, artifact.meta)
    export_triton(LLAMA, repo, TritonExportOptions(name="llama"))
    export_triton(static, repo, TritonExportOptions(name="static"))
    export_triton(GENAI, repo, TritonExportOptions(name="genai"))
    return repo


@pytest.fixture(scope="module")
def llama(repo) -> ServedLlm:
    model = ServedLlm(repo / "llama" / "1")
    yield model
    model.close()


@pytest.fixture(scope="module")
def genai(repo) -> ServedLlm:
    model = ServedLlm(repo / "genai" / "1")
    yield model
    model.close()


def ids(values) -> np.ndarray:
    return np.asarray(values, np.int64)


def one(value, dtype) -> np.ndarray:
    return np.array([value], dtype)


def text(value: str) -> np.ndarray:
    return np.array([value.encode()], object)


def generated(model: ServedLlm, inputs: dict, **run) -> list[Piece]:
    pieces: list[Piece] = []
    model.run(model.parse(inputs), pieces.append, **run)
    return pieces


# -- the export and its checks (no server) --


def test_export_writes_a_decoupled_streaming_model(repo):
    config = read_config(repo / "llama" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0 and config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching")
    inputs = {i.name: (pb.DataType.Name(i.data_type), list(i.dims), i.optional) for i in config.input}
    assert inputs["input_ids"] == ("TYPE_INT64", [-1], False)
    assert inputs["max_tokens"] == ("TYPE_INT32", [1], True) and inputs["random_seed"] == ("TYPE_UINT64", [1], True)
    assert inputs["stop_token_ids"] == ("TYPE_INT64", [-1], True) and inputs["stream"] == ("TYPE_BOOL", [1], True)
    assert "text_input" not in inputs  # no tokenizer for the bare export
    assert [(o.name, pb.DataType.Name(o.data_type)) for o in config.output] == [
        ("output_ids", "TYPE_INT64"), ("finish_reason", "TYPE_STRING")]
    text = read_config(repo / "genai" / "config.pbtxt")
    by_name = {i.name: i for i in text.input}
    assert by_name["input_ids"].optional and by_name["text_input"].data_type == pb.TYPE_STRING
    assert "text_output" in [o.name for o in text.output]
    files = sorted(str(p.relative_to(repo / "genai")) for p in (repo / "genai").rglob("*") if p.is_file())
    assert files == ["1/decoder/genai_config.json", "1/decoder/llama-genai-fp32.onnx", "1/decoder/tokenizer.json",
                     "1/decoder/tokenizer_config.json", "1/model.py", "1/trtc.json", "config.pbtxt"]
    spec = json.loads((repo / "genai" / "1" / "trtc.json").read_text())
    assert spec["kind"] == "llm" and spec["decoder_spec"]["vocab"] == 512
    assert spec["defaults"]["stop_token_ids"] == [2] and spec["defaults"]["max_length"] == 256
    assert {name: r["problems"] for name, r in check_repository(repo).items()} == {"llama": [], "genai": [],
                                                                                  "static": []}


def test_export_report_says_it_is_an_llm(tmp_path, capsys):
    code, out, err = trtc_in_process(capsys, "export", "triton", LLAMA, "-o", tmp_path / "repo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"wrote {tmp_path / 'repo' / 'llama-dynamo-op18'}: python backend, decoupled LLM model (a "
                        "response per token), no batching, 1 instance group(s), version 1")
    assert lines[1].startswith(f"  note: {LLAMA} is an LLM decoder (.onnx decoder, growing cache, 2 layers, vocab "
                               "512): served as a decoupled model streaming one response per generated token")
    code, out, _ = trtc_in_process(capsys, "export", "triton", LLAMA, "-o", tmp_path / "repo", "--json")
    report = json.loads(out)
    assert code == 0 and report["llm"]["spec"]["layers"] == 2 and report["max_batch_size"] == 0


def test_export_refusals(tmp_path, capsys, mlp):
    out = tmp_path / "repo"
    one_error_line(trtc_in_process(capsys, "export", "triton", LLAMA, "-o", out, "--max-batch", "4"),
                   "--max-batch: the LLM model takes one prompt per request", "in-flight batching", "--no-llm")
    one_error_line(trtc_in_process(capsys, "export", "triton", LLAMA, "-o", out, "--shapes", "input_ids:1x1,1x8,1x16"),
                   "--shapes: the generation loop sizes every step itself")
    one_error_line(trtc_in_process(capsys, "export", "triton", mlp / "mlp.onnx", "-o", out, "--llm"),
                   "not a decoder trtc can drive: no 'logits' output")
    one_error_line(trtc_in_process(capsys, "export", "triton", mlp / "mlp.onnx", "-o", out, "--tokenizer",
                                   GENAI / "tokenizer.json", "--shapes", "x:1x16,4x16,8x16"),
                   "--tokenizer: a tokenizer serves an LLM decoder's text")
    # --no-llm: the tensor-in/tensor-out model, which needs ranges like any dynamic model.
    one_error_line(trtc_in_process(capsys, "export", "triton", LLAMA, "-o", out, "--no-llm"), "no range")
    assert not out.exists() or not any(out.iterdir())
    # A model that is no decoder is exported as before.
    code, report, err = trtc_in_process(capsys, "export", "triton", mlp / "mlp.onnx", "-o", out, "--shapes",
                                        "x:1x16,4x16,8x16", "--json")
    assert code == 0 and json.loads(report)["llm"] is None and json.loads(report)["max_batch_size"] == 8, err


def test_a_decoder_refused_as_one_is_said(tmp_path):
    """A model with input_ids and logits that the loop cannot drive (no cache): the tensor model, and why."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"])], "no-cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor("table", TensorProto.FLOAT, [8, 8], np.eye(8, dtype=np.float32).ravel())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "lm.onnx")
    report = export_triton(tmp_path / "lm.onnx", tmp_path / "repo")
    assert report["llm"] is None and report["max_batch_size"] == 0
    assert report["notes"][0].startswith("not served as a streaming LLM: not a decoder trtc can drive: no past key")


BROKEN = [
    (lambda t: t.replace("decoupled: true", "decoupled: false"), "model_transaction_policy.decoupled is not true"),
    (lambda t: t.replace('backend: "python"', 'backend: "python"\nmax_batch_size: 4\ndynamic_batching {}'),
     "max_batch_size 4: the LLM model takes one prompt per request"),
    (lambda t: t.replace("dims: 1\n  optional: true", "dims: 1", 1), "input 'max_tokens': optional is false"),
    (lambda t: t.replace("TYPE_INT64", "TYPE_INT32", 1), "input 'input_ids': data_type TYPE_INT32"),
]


@pytest.mark.parametrize("edit,problem", BROKEN, ids=["decoupled", "batching", "optional", "dtype"])
def test_broken_llm_config_reported_by_name(tmp_path, edit, problem):
    export_triton(LLAMA, tmp_path, TritonExportOptions(name="m"))
    path = tmp_path / "m" / "config.pbtxt"
    path.write_text(edit(path.read_text()))
    problems = check_repository(tmp_path)["m"]["problems"]
    assert any(problem in p for p in problems), problems


def test_a_changed_decoder_is_reported(tmp_path):
    export_triton(LLAMA, tmp_path, TritonExportOptions(name="m"))
    decoder = tmp_path / "m" / "1" / "decoder" / LLAMA.name
    decoder.unlink()
    decoder.write_bytes((LLM / "gpt2-dynamo-op18.onnx").read_bytes())  # 4 KV heads, not 2
    (problem,) = check_repository(tmp_path)["m"]["problems"]
    assert problem.startswith(f"1/decoder/{LLAMA.name} is not the decoder exported: its kv_heads 4 (recorded 2)")
    with pytest.raises(TrtcError, match="the decoder is not the one exported: its kv_heads, "):
        ServedLlm(tmp_path / "m" / "1")
    decoder.unlink()
    assert check_repository(tmp_path)["m"]["problems"] == [
        f"1/decoder/{LLAMA.name} (the decoder trtc.json names) is missing"]


# -- the model's logic (trtc.serve.served_llm), no server --


@pytest.mark.parametrize("row", [0, 1])
def test_one_piece_per_token_reproduces_hf_generate(llama, row):
    pieces = generated(llama, {"input_ids": PROMPTS[row], "max_tokens": one(16, np.int32)})
    assert [p.ids for p in pieces] == [(t,) for t in TOKENS[row].tolist()]
    assert [p.final for p in pieces] == [False] * 15 + [True] and pieces[-1].finish_reason == "length"
    assert all(p.text is None for p in pieces)


def test_the_static_cache_form(repo):
    """`optimize --llm --max-seq 64`: the same tokens; max_tokens cut to the cache's free slots."""
    spec = json.loads((repo / "static" / "1" / "trtc.json").read_text())
    assert spec["decoder"] == "decoder/llama-static.trtir" and spec["decoder_spec"]["static_cache"]["max_seq"] == 64
    model = ServedLlm(repo / "static" / "1")
    try:
        for row in range(2):
            pieces = generated(model, {"input_ids": PROMPTS[row], "max_tokens": one(16, np.int32)})
            assert [p.ids[0] for p in pieces] == TOKENS[row].tolist() and pieces[-1].final
        pieces = generated(model, {"input_ids": PROMPTS[0], "max_tokens": one(100, np.int32)})
        assert len(pieces) == 64 - 7 and pieces[-1].finish_reason == "length"
    finally:
        model.close()


def test_pieces_are_sent_while_generating(llama):
    """A send that fails at the 3rd token stops the loop there: each token is sent as it is made."""
    sent: list[Piece] = []

    def send(piece: Piece) -> None:
        if len(sent) == 2:
            raise RuntimeError("client gone")
        sent.append(piece)

    with pytest.raises(RuntimeError, match="client gone"):
        llama.run(llama.parse({"input_ids": PROMPTS[0], "max_tokens": one(16, np.int32)}), send)
    assert [p.ids[0] for p in sent] == TOKENS[0, :2].tolist()
    # Cancelled after 4 tokens: the loop stops and the stream ends with a Piece of no ids.
    pieces: list[Piece] = []
    row = llama.run(llama.parse({"input_ids": PROMPTS[0], "max_tokens": one(1000, np.int32)}), pieces.append,
                    cancelled=lambda: len(pieces) >= 4)
    assert row is None and [p.ids for p in pieces] == [(t,) for t in TOKENS[0, :4].tolist()] + [()]


def test_stops_stream_flag_and_defaults(llama, genai):
    stop = int(TOKENS[1, 5])  # first seen at step 5 of row 1
    pieces = generated(llama, {"input_ids": PROMPTS[1], "end_id": one(stop, np.int32)})
    assert [p.ids[0] for p in pieces] == TOKENS[1, :6].tolist() and pieces[-1].finish_reason == "stop"
    pieces = generated(llama, {"input_ids": PROMPTS[1], "stop_token_ids": ids([999, stop])})
    assert len(pieces) == 6 and pieces[-1].final
    default = generated(llama, {"input_ids": PROMPTS[0]})  # 32 new tokens, no stop token
    assert len(default) == 32 and default[-1].finish_reason == "length"
    (whole,) = generated(llama, {"input_ids": PROMPTS[0], "max_tokens": one(16, np.int32), "stream": one(False, bool)})
    assert list(whole.ids) == TOKENS[0].tolist() and whole.final
    # The genai folder's eos (2) ends a row by default; end_id -1 says no stop token at all.
    assert genai.parse({"input_ids": PROMPTS[0]}).options.stop_tokens == (2,)
    assert genai.parse({"input_ids": PROMPTS[0], "end_id": one(-1, np.int32)}).options.stop_tokens == ()
    assert genai.parse({"input_ids": PROMPTS[0]}).options.max_length == 256


def test_sampling_inputs(llama):
    def tokens(**extra):
        return [p.ids[0] for p in generated(llama, {"input_ids": PROMPTS[0], "max_tokens": one(12, np.int32),
                                                    **extra})]

    seeded = {"temperature": one(1.5, np.float32), "top_k": one(50, np.int32), "random_seed": one(7, np.uint64)}
    assert tokens(**seeded) == tokens(**seeded) != TOKENS[0, :12].tolist()
    assert tokens(temperature=one(0, np.float32)) == TOKENS[0, :12].tolist()  # temperature 0 is greedy
    assert llama.parse({"input_ids": PROMPTS[0], "top_p": one(0.9, np.float32)}).options.sampling.do_sample
    with pytest.raises(TrtcError, match=r"^top_p: 0.0 must be in \(0, 1\]"):
        llama.parse({"input_ids": PROMPTS[0], "top_p": one(0, np.float32)})


@pytest.mark.parametrize("inputs,message", [
    ({}, "input_ids: the request has no prompt; send the prompt's token ids as input_ids"),
    ({"input_ids": ids([1, 512])}, "input_ids: token id 512 is outside the vocabulary [0, 512)"),
    ({"input_ids": ids([])}, "input_ids: the prompt is empty (no tokens)"),
    ({"input_ids": ids([[1, 2]])}, "input_ids: int64[1x2]: one prompt of integer ids [n]"),
    ({"input_ids": ids([1]), "max_tokens": one(0, np.int32)}, "max_tokens: 0: at least 1 new token"),
    ({"text_input": text("t5")}, "text_input: this model has no tokenizer; send input_ids"),
], ids=["no-prompt", "vocab", "empty", "rank", "max-tokens", "no-tokenizer"])
def test_malformed_requests_are_one_line(llama, inputs, message):
    with pytest.raises(TrtcError) as failed:
        llama.parse(inputs)
    assert str(failed.value) == message


def test_text_in_and_out(genai):
    prompt = "t188 t155 t402 t216 t236 t267"
    pieces = generated(genai, {"text_input": text(prompt), "max_tokens": one(8, np.int32)})
    tokens = [p.ids[0] for p in pieces]
    assert "".join(p.text for p in pieces) == genai.tokenizer.decode(tokens)
    assert pieces[0].text == genai.tokenizer.decode(tokens[:1]) and pieces[1].text.startswith(" ")
    assert tokens == [p.ids[0] for p in generated(genai, {"input_ids": ids(genai.tokenizer.encode(prompt)),
                                                         "max_tokens": one(8, np.int32)})]
    # The genai folder's eos ends a generation by default (kept, as HF keeps it; no text of its own).
    ended = generated(genai, {"text_input": text("t188 t155 t402 t216"), "max_tokens": one(8, np.int32)})
    assert [(p.ids, p.text, p.finish_reason) for p in ended] == [((195,), "t195", None), ((2,), "", "stop")]
    with pytest.raises(TrtcError, match="the prompt came twice"):
        genai.parse({"text_input": text("t5"), "input_ids": ids([5])})
    with pytest.raises(TrtcError, match="text_input: not UTF-8 text"):
        genai.parse({"text_input": np.array([b"\xff"], object)})


def test_a_given_tokenizer_and_external_data(tmp_path):
    """--tokenizer serves text for a bare export; weights in external data travel with the decoder."""
    import onnx

    model = onnx.load(LLAMA)
    onnx.save(model, tmp_path / "llama.onnx", save_as_external_data=True, location="llama.onnx.data",
              size_threshold=0)
    report = export_triton(tmp_path / "llama.onnx", tmp_path / "repo",
                           TritonExportOptions(tokenizer=GENAI / "tokenizer.json"))
    assert {"1/decoder/llama.onnx", "1/decoder/llama.onnx.data", "1/tokenizer.json"} <= set(report["files"])
    assert "text_input: object[1] (optional)" in report["inputs"]
    model = ServedLlm(tmp_path / "repo" / "llama" / "1")
    try:
        pieces = generated(model, {"text_input": text("t188 t155 t402 t385"), "max_tokens": one(16, np.int32)})
        assert "".join(p.text for p in pieces) == model.tokenizer.decode([p.ids[0] for p in pieces])
        pieces = generated(model, {"input_ids": PROMPTS[0], "max_tokens": one(16, np.int32)})
        assert [p.ids[0] for p in pieces] == TOKENS[0].tolist()
    finally:
        model.close()


def test_text_held_back_until_a_character_is_whole():
    from trtc.serve.served_llm import _TextStream

    class Bytes:  # a byte-level tokenizer: token i is byte i
        def decode(self, tokens):
            return bytes(tokens).decode("utf-8", errors="replace")

    stream = _TextStream(Bytes())
    parts = [stream.add(b, last=False) for b in "aé".encode()]
    assert parts == ["a", "", "é"]  # é's first byte alone is held back


def test_a_loop_ending_early_still_ends_the_stream(llama, monkeypatch):
    """Where the loop stops before the budget the model computed, a last Piece without ids ends the stream."""
    monkeypatch.setitem(llama.defaults, "max_length", 10)  # the loop cuts at 10 positions: 3 new tokens
    monkeypatch.setattr(llama, "_budget", lambda prompt, max_tokens: max_tokens)
    pieces = generated(llama, {"input_ids": PROMPTS[0], "max_tokens": one(16, np.int32)})
    assert [p.ids for p in pieces] == [(t,) for t in TOKENS[0, :3].tolist()] + [()]
    assert [p.final for p in pieces] == [False, False, False, True] and pieces[-1].finish_reason == "length"


# -- the real server --


@pytest.fixture(scope="module")
def server(repo):
    from trtc.serve.environment import triton_install
    from trtc.serve.server import start_server

    try:
        triton_install()
    except TrtcError as exc:
        pytest.skip(f"no Triton server to run: {exc}")
    with start_server(repo, http_port=0, grpc_port=0, metrics_port=0) as running:
        yield running


class Stream:
    """A gRPC stream (decoupled) and each response's arrival time."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.arrived: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.arrived.put((time.perf_counter(), result, error)))

    def request(self, model: str, **inputs: np.ndarray) -> float:
        tensors = []
        for name, value in inputs.items():
            datatype = "BYTES" if value.dtype == object else {"int64": "INT64", "int32": "INT32"}[value.dtype.name]
            tensor = grpcclient.InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        sent = time.perf_counter()
        self.client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        return sent

    def responses(self, timeout: float = 60) -> list[tuple[float, object]]:
        """(arrival, result) up to the final one; an error response raises it."""
        got = []
        while True:
            at, result, error = self.arrived.get(timeout=timeout)
            if error is not None:
                raise error
            got.append((at, result))
            if result.get_response().parameters["triton_final_response"].bool_param:
                return got

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "static"])
def test_streamed_tokens_reproduce_hf_generate(server, model):
    stream = Stream(server.grpc_url)
    try:
        for row in range(2):
            stream.request(model, input_ids=PROMPTS[row], max_tokens=one(16, np.int32))
            responses = stream.responses()
            assert len(responses) == 16  # a response per token, the final flag on the 16th
            assert [r.as_numpy("output_ids").tolist() for _, r in responses] == [[t] for t in TOKENS[row].tolist()]
            finals = [r.get_response().parameters["triton_final_response"].bool_param for _, r in responses]
            assert finals == [False] * 15 + [True]
            assert responses[-1][1].as_numpy("finish_reason").tolist() == [b"length"]
            assert all(r.as_numpy("finish_reason") is None for _, r in responses[:-1])
            times = [at for at, _ in responses]
            assert times == sorted(times) and times[-1] > times[0]
    finally:
        stream.close()


@pytest.mark.slow
def test_text_input_through_the_genai_tokenizer(server, genai):
    stream = Stream(server.grpc_url)
    try:
        stream.request("genai", text_input=text("t188 t155 t402 t216 t236 t267"), max_tokens=one(8, np.int32))
        responses = [r for _, r in stream.responses()]
    finally:
        stream.close()
    tokens = [int(r.as_numpy("output_ids")[0]) for r in responses]
    streamed = "".join(r.as_numpy("text_output")[0].decode() for r in responses)
    assert len(responses) == 8 and streamed == genai.tokenizer.decode(tokens) and streamed.startswith("t471 t70")
    expected = generated(genai, {"text_input": text("t188 t155 t402 t216 t236 t267"), "max_tokens": one(8, np.int32)})
    assert tokens == [p.ids[0] for p in expected]


@pytest.mark.slow
def test_malformed_requests_get_an_error_and_the_server_stays_ready(server):
    from tritonclient.utils import InferenceServerException

    stream = Stream(server.grpc_url)
    try:
        for model, inputs, message in [
            ("llama", {"max_tokens": one(4, np.int32)}, "input_ids: the request has no prompt"),
            ("llama", {"input_ids": ids([3, 700])}, "input_ids: token id 700 is outside the vocabulary [0, 512)"),
            ("genai", {"input_ids": ids([3]), "text_input": text("t3")}, "the prompt came twice"),
        ]:
            stream.request(model, **inputs)
            with pytest.raises(InferenceServerException, match=message.replace("[", r"\[").replace(")", r"\)")):
                stream.responses()
        stream.request("llama", input_ids=PROMPTS[0], max_tokens=one(3, np.int32))
        assert [r.as_numpy("output_ids").tolist() for _, r in stream.responses()] == [[t] for t in TOKENS[0, :3]]
    finally:
        stream.close()
    assert grpcclient.InferenceServerClient(server.grpc_url).is_server_ready()


@pytest.mark.slow
def test_a_cancelled_stream_stops_its_generation(server):
    stream = Stream(server.grpc_url)
    stream.request("llama", input_ids=PROMPTS[0], max_tokens=one(20000, np.int32))
    for _ in range(3):
        stream.arrived.get(timeout=60)
    cancelled = time.perf_counter()
    stream.close(cancel=True)
    # The instance is free again at once: a new request does not wait for 20000 tokens.
    other = Stream(server.grpc_url)
    try:
        other.request("llama", input_ids=PROMPTS[1], max_tokens=one(2, np.int32))
        responses = other.responses(timeout=60)
    finally:
        other.close()
    assert [r.as_numpy("output_ids").tolist() for _, r in responses] == [[t] for t in TOKENS[1, :2]]
    assert responses[-1][0] - cancelled < 10


@pytest.mark.slow
def test_tritons_generate_stream_endpoint(server):
    """Triton's HTTP generate extension maps JSON fields to the inputs: server-sent events, one per token."""
    body = json.dumps({"input_ids": PROMPTS[0].tolist(), "max_tokens": 4}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/llama/generate_stream", data=body,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [json.loads(line[len("data: "):]) for line in response.read().decode().splitlines()
                  if line.startswith("data: ")]
    assert [e["output_ids"] for e in events] == TOKENS[0, :4].tolist()
    assert events[-1]["finish_reason"] == "length"


@pytest.mark.slow
def test_cli_serves_an_llm_onnx(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "trtc", "serve", str(LLAMA), "--http-port", "0", "--grpc-port",
                                "0", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving 1 model (llama-dynamo-op18) at http://127.0.0.1:"), (
            line + process.stderr.read() if process.poll() is not None else line)
        hint = process.stdout.readline()
        assert hint.startswith("llama-dynamo-op18 streams a response per generated token: a gRPC stream (decoupled)")
        assert "/v2/models/llama-dynamo-op18/generate_stream" in hint
        stream = Stream(line.split("(HTTP), ")[1].split(" ")[0])
        try:
            stream.request("llama-dynamo-op18", input_ids=PROMPTS[1], max_tokens=one(5, np.int32))
            assert [r.as_numpy("output_ids").tolist() for _, r in stream.responses()] == [[t] for t in TOKENS[1, :5]]
        finally:
            stream.close()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
