"""`trtc generate` on the static KV cache (`optimize --llm --max-seq 64`) of the LLM corpus
(../shared/models/llm: LLaMA, Qwen2, GPT-2 dynamo exports at opset 18, LLaMA at opset 23), through the
same loop and sampler as the growing-cache exports: greedy generation reproduces HF generate's
`gen:tokens` (library and CLI); prompts of different lengths in one batch (right-padded, each row at
its own write index) give each row its solo tokens; the padded prefill and the decode case reproduce
the export's outputs; --last-logits artifacts; token-level verification against the export; the
refusals, one line each.

The GPU executor (trtc/runtime/kv_engine.py): everything before the GPU is tested here (the engine's
decoder and buffer plan from its sidecar, the refusal without a GPU, and the executor's bookkeeping
(buffers allocated once, presents bound to their caches, profiles per phase, the decode step's CUDA
graph) over a simulated device that runs the CPU reference); the engine itself in the `gpu` tests."""

from __future__ import annotations

import copy
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest

from trtc.errors import TrtcError
from trtc.llm.decoder import Decoder, open_decoder
from trtc.llm.engine import engine_spec
from trtc.llm.generate import GenerateOptions, generate
from trtc.llm.verify import VerifyOptions, open_verified, verify
from trtc.runtime.engine import no_gpu_reason
from trtc.runtime.kv_engine import buffer_plan

from corpus import MODELS, one_error_line, trtc_in_process

LLM = MODELS / "llm"
NAMES = ["llama-dynamo-op18", "qwen2-dynamo-op18", "gpt2-dynamo-op18", "llama-dynamo-op23"]
MAX_SEQ = 64
pytestmark = pytest.mark.skipif(not all((LLM / f"{n}.onnx").is_file() for n in NAMES),
                                reason=f"the LLM corpus is missing (looked in {LLM}, ../shared/models/llm)")
needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None and
                               importlib.util.find_spec("tensorrt") is None, reason="TensorRT(-RTX) is missing")


def run_cli(*args) -> None:
    """A trtc command in this process, which must succeed (its output left to pytest's capture)."""
    from trtc.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert done.value.code == 0


def stored(name: str) -> dict[str, np.ndarray]:
    with np.load(LLM / f"{name}.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """`trtc optimize X.onnx --llm --max-seq 64` of each model (max batch 8, the default)."""
    folder = tmp_path_factory.mktemp("static")
    made = {}
    for name in NAMES:
        made[name] = folder / f"{name}.trtir"
        run_cli("optimize", LLM / f"{name}.onnx", "--llm", "--max-seq", MAX_SEQ, "-o", made[name])
    return made


_decoders: dict[Path, Decoder] = {}


def decoder_for(path: Path) -> Decoder:
    if path not in _decoders:
        _decoders[path] = open_decoder(path)
    return _decoders[path]


def teardown_module() -> None:
    while _decoders:
        _decoders.popitem()[1].close()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_reproduces_hf_generate(artifacts, name):
    decoder, data = decoder_for(artifacts[name]), stored(name)
    assert decoder.spec.static is not None and decoder.spec.attention_mask is None
    assert decoder.spec.padding == "right" and decoder.spec.static.max_seq == MAX_SEQ
    result = generate(decoder, data["gen:prompt"], GenerateOptions(max_new_tokens=16))
    assert [r.ids for r in result.rows] == data["gen:tokens"].tolist()
    assert result.executor == "cpu-reference (onnxruntime)" and result.timings.steps == 16


@pytest.mark.parametrize("name", NAMES)
def test_cli_json_reproduces_hf_generate(artifacts, name, capsys):
    data = stored(name)
    prompts = [a for row in data["gen:prompt"] for a in ("--prompt-ids", ",".join(map(str, row)))]
    rc, out, err = trtc_in_process(capsys, "generate", artifacts[name], *prompts, "--max-new-tokens", "16", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert [r["ids"] for r in report["rows"]] == data["gen:tokens"].tolist()
    assert report["decoder"]["static_cache"] == {"max_seq": MAX_SEQ, "max_batch": 8, "max_prompt": MAX_SEQ,
                                                 "last_logits": False}


@pytest.mark.parametrize("name", NAMES)
def test_prompts_of_different_lengths_give_each_row_its_solo_tokens(artifacts, name):
    """Rows of 3, 7 and 5 tokens together: right-padded in the prefill, each row's logits read at its own last
    token and its next tokens written at its own length. Each row gets what it gets alone, and what the export
    (growing cache) gets alone."""
    prompt = stored(name)["gen:prompt"]
    prompts = [prompt[0][:3].tolist(), prompt[1].tolist(), prompt[0][2:].tolist()[:5]]
    options = GenerateOptions(max_new_tokens=10)
    together = [r.ids for r in generate(decoder_for(artifacts[name]), prompts, options).rows]
    alone = [generate(decoder_for(artifacts[name]), [p], options).rows[0].ids for p in prompts]
    export = [generate(decoder_for(LLM / f"{name}.onnx"), [p], options).rows[0].ids for p in prompts]
    assert together == alone == export


@pytest.mark.parametrize("name", NAMES)
def test_the_padded_prefill_and_the_decode_case_reproduce_the_export(artifacts, name):
    """The stored cases through the loop's cache: `pad_in` (row 1 left-padded by 3 in the export) as right-padded
    rows, its logits at the valid positions; `dec_in` as the decode step after the `in` prefill."""
    data = stored(name)
    decoder = decoder_for(artifacts[name])
    mask = data["pad_in:attention_mask"].astype(bool)
    rows = [ids[m].tolist() for ids, m in zip(data["pad_in:input_ids"], mask)]
    logits = decoder.start(rows, [1, 1]).prefill()
    for row, m in enumerate(mask):
        want = data["pad_out:logits"][row][m]
        np.testing.assert_allclose(logits[row, :m.sum()], want, atol=1e-4 * max(1.0, np.abs(want).max()))
    cache = decoder.start(data["in:input_ids"].tolist(), [2, 2])
    np.testing.assert_allclose(cache.prefill(), data["out:logits"], atol=1e-4)
    step = cache.step(data["dec_in:input_ids"][:, 0], np.ones(2, bool))
    np.testing.assert_allclose(step, data["dec_out:logits"][:, -1], atol=1e-4)


def test_stop_tokens_and_the_token_callback(artifacts):
    """A row stopped early feeds the pad at its length while the other goes on; on_token sees each step."""
    data = stored("llama-dynamo-op18")
    tokens = data["gen:tokens"].tolist()
    stop, seen = tokens[0][5], []
    result = generate(decoder_for(artifacts["llama-dynamo-op18"]), data["gen:prompt"],
                      GenerateOptions(max_new_tokens=16, stop_tokens=(stop,)),
                      on_token=lambda step, chosen, active: seen.append((step, active.tolist())))
    for row, want in zip(result.rows, tokens):
        cut = want[: want.index(stop) + 1] if stop in want else want
        assert row.ids == cut and row.finish_reason == ("stop" if stop in want else "length")
    assert [s for s, _ in seen] == list(range(len(seen))) and seen[0][1] == [True, True]


def test_last_logits_artifacts(tmp_path, capsys):
    """--last-logits: prompts of one length reproduce gen:tokens; of different lengths, one line."""
    path = tmp_path / "gpt2.trtir"
    run_cli("optimize", LLM / "gpt2-dynamo-op18.onnx", "--llm", "--max-seq", MAX_SEQ, "--last-logits", "-o", path)
    data = stored("gpt2-dynamo-op18")
    decoder = open_decoder(path)
    try:
        assert decoder.spec.static.last_logits
        result = generate(decoder, data["gen:prompt"], GenerateOptions(max_new_tokens=16))
        assert [r.ids for r in result.rows] == data["gen:tokens"].tolist()
    finally:
        decoder.close()
    one_error_line(trtc_in_process(capsys, "generate", path, "--prompt-ids", "5,6,7", "--prompt-ids", "5,6"),
                   "prompts of different lengths (2, 3 tokens) in one batch",
                   "logits at the last position only (--last-logits)")


def test_verify_the_static_artifact_against_its_export(artifacts, capsys):
    """compare --llm drives the static cache through the same runs: every step agrees with the export."""
    data = stored("qwen2-dynamo-op18")
    a, b = open_verified(LLM / "qwen2-dynamo-op18.onnx"), open_verified(artifacts["qwen2-dynamo-op18"])
    try:
        result = verify(a, b, data["gen:prompt"].tolist(), options=VerifyOptions(steps=8))
    finally:
        a.close()
        b.close()
    assert result.passed and result.summary()["top1_agree"] == 16 and result.summary()["min_cosine"] > 0.99999
    assert all(p.positions == 6 for p in result.prompt_positions)


# ---- refusals, one line each ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompts, new, needles", [
    ([[5] * 60], 16, ["prompt: the prompt's 60 tokens and 16 new ones need 76 cache slots, more than the static "
                      "cache's 64 (--max-seq)", "ask for at most 4 new tokens"]),
    ([[5] * 3, [5] * 64], 1, ["prompt 2: the prompt's 64 tokens and 1 new ones need 65 cache slots"]),
    ([[5] * 65], 1, ["prompt: the prompt has 65 tokens, more than the prefill profile takes (64)"]),
    ([[5, 6]] * 9, 4, ["9 prompts in one batch, and the static cache holds 8 rows", "--max-batch"]),
])
def test_refusals(artifacts, capsys, prompts, new, needles):
    args = [a for p in prompts for a in ("--prompt-ids", ",".join(map(str, p)))]
    result = trtc_in_process(capsys, "generate", artifacts["llama-dynamo-op23"], *args, "--max-new-tokens", new)
    one_error_line(result, *needles)


def test_a_static_decoder_is_not_stepped_with_a_growing_past(artifacts):
    decoder = decoder_for(artifacts["llama-dynamo-op18"])
    with pytest.raises(TrtcError, match="keeps its cache with the executor: run it through start()"):
        decoder(np.ones((1, 2), np.int64), None, None, [])


# ---- the GPU executor, up to the GPU ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    """`trtc compile llama-dynamo-op18.onnx --llm --max-seq 64 --max-batch 4`: the engine, its sidecar and the
    .opt.trtir it was built from, side by side."""
    if importlib.util.find_spec("tensorrt_rtx") is None and importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT(-RTX) is missing")
    folder = tmp_path_factory.mktemp("engine")
    run_cli("compile", LLM / "llama-dynamo-op18.onnx", "-o", folder, "--llm", "--max-seq", MAX_SEQ, "--max-batch", 4,
            "--no-cache")
    return folder / "llama-dynamo-op18.plan"


def sidecar_of(plan: Path) -> dict:
    return json.loads(Path(f"{plan}.json").read_text())


def test_the_engine_decoder_and_its_buffers_from_the_sidecar(engine):
    spec, plan = engine_spec(sidecar_of(engine), str(engine))
    assert spec.static.max_batch == 4 and spec.static.max_prompt == MAX_SEQ and spec.padding == "right"
    assert (spec.vocab, spec.kv_heads, spec.head_dim, spec.layers) == (512, 2, 16, 2)
    assert (plan.prefill_profile, plan.decode_profile, plan.max_batch, plan.prefill_seq) == (0, 1, 4, MAX_SEQ)
    assert [(b.name, b.alias, b.shape, b.dtype.name) for b in plan.caches] == [
        (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}", (4, 2, MAX_SEQ, 16), "float32")
        for i in (0, 1) for kind in ("key", "value")]
    assert plan.cache_bytes == 4 * (4 * 2 * MAX_SEQ * 16 * 4)
    assert [(b.name, b.shape) for b in plan.inputs] == [("input_ids", (4, MAX_SEQ)), ("position_ids", (4, MAX_SEQ)),
                                                        ("write_indices", (4,))]
    assert (plan.logits.shape, plan.step_bytes) == ((4, MAX_SEQ, 512), 2 * 4 * MAX_SEQ * 8 + 4 * 8 + 4 * MAX_SEQ * 2048)


def test_a_typed_cache_and_last_logits_size_their_buffers(engine):
    """fp16 caches take half the bytes; --last-logits logits [B, 1, V] are copied out whole at every step."""
    sidecar = copy.deepcopy(sidecar_of(engine))
    for entry in sidecar["inputs"] + sidecar["outputs"]:
        if "key" in entry["name"] or "value" in entry["name"]:
            entry["dtype"] = "float16"
        if entry["name"] == "logits":
            entry["shape"][1] = 1
    plan = buffer_plan(sidecar)
    assert plan.cache_bytes == 4 * (4 * 2 * MAX_SEQ * 16 * 2) and plan.logits.shape == (4, 1, 512)


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s.pop("llm"), "the engine was built without --llm: it has no static KV cache to generate with"),
    (lambda s: s["outputs"][1].update(shape=[-1, 2, 32, 16]), "present 'present.0.key' (float[?x2x32x16]) is not its "
                                                             "cache 'past_key_values.0.key' (float[?x2x64x16])"),
    (lambda s: s["outputs"].append({"name": "hidden", "dtype": "float", "shape": [-1, -1, 64]}),
     "the engine has outputs besides 'logits' and the presents (hidden)"),
    (lambda s: s["llm"]["caches"][0].update(output="present.0.value"),
     "the static cache's record pairs cache input 'past_key_values.0.key' with 'present.0.value'"),
])
def test_engines_generation_cannot_drive_are_one_line(engine, edit, needle):
    sidecar = copy.deepcopy(sidecar_of(engine))
    edit(sidecar)
    with pytest.raises(TrtcError) as error:
        engine_spec(sidecar, "x.plan")
    assert needle in error.value.one_line() and "\n" not in error.value.one_line()


@pytest.mark.skipif(no_gpu_reason() is None, reason="a GPU is here: the engine runs (see the gpu tests)")
def test_without_a_gpu_the_engine_points_at_its_trtir(engine, capsys):
    result = trtc_in_process(capsys, "generate", engine, "--prompt-ids", "1,2,3")
    one_error_line(result, f"{engine}: the engine needs a GPU (", "the .trtir it was built from runs on the CPU "
                   f"reference: trtc generate {engine.with_suffix('.opt.trtir')}")
    engine.with_suffix(".opt.trtir").rename(engine.with_suffix(".moved"))
    try:
        one_error_line(trtc_in_process(capsys, "generate", engine, "--prompt-ids", "1,2,3"),
                       f"trtc generate {(LLM / 'llama-dynamo-op18.onnx').resolve()}")  # the sidecar's, resolved
    finally:
        engine.with_suffix(".moved").rename(engine.with_suffix(".opt.trtir"))


# A simulated device: memory blocks by address, copies, memset, a CUDA graph that replays what it captured, and
# an engine whose contexts run the CPU reference on the tensors at the addresses they were given.

class FakeDevice:
    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.captures = self.launches = 0

    def alloc(self, nbytes: int) -> int:
        ptr = 4096 * (len(self.blocks) + 1)
        self.blocks[ptr] = np.full(max(nbytes, 1), 0xFF, np.uint8)  # float32 0xFFFFFFFF is a NaN
        return ptr

    def cuda(self) -> types.SimpleNamespace:
        device = self

        class Buffer:
            def __init__(self, nbytes):
                self.nbytes, self.ptr = nbytes, device.alloc(nbytes)
                self.array = device.blocks[self.ptr]

            def view(self, dtype, shape):
                count = int(np.prod(shape, dtype=np.int64))
                return self.array[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

            def close(self):
                device.blocks.pop(self.ptr, None)

        class Graph:
            def __init__(self, stream, enqueue):
                device.captures += 1
                self.enqueue = enqueue

            def launch(self):
                device.launches += 1
                self.enqueue()

            def close(self):
                pass

        def copy(dst, src, nbytes, stream):
            device.blocks[dst][:nbytes] = device.blocks[src][:nbytes]

        def memset(dst, value, nbytes, stream):
            device.blocks[dst][:nbytes] = value

        return types.SimpleNamespace(DeviceBuffer=Buffer, PinnedBuffer=Buffer, Graph=Graph, copy_htod_async=copy,
                                     copy_dtoh_async=copy, memset_async=memset)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.profile, self.addresses, self.shapes = engine, None, {}, {}

    def set_optimization_profile_async(self, profile, stream):
        self.profile = profile
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        assert name == "logits"
        return (*self.shapes["input_ids"], 512)

    def is_stream_capturable(self, stream):
        return True

    def execute_async_v3(self, stream):
        engine = self.engine
        for name, (lo, _, hi) in engine.profiles[self.profile].items():  # the shapes fit this context's profile
            assert all(a <= d <= b for a, d, b in zip(lo, self.shapes[name], hi)), (name, self.profile)
        feeds = {t.name: self._at(t.name, t.dtype, self.shapes[t.name]) for t in engine.io if t.is_input}
        outputs = engine.runner.run({k: v.copy() for k, v in feeds.items()})
        for name, value in outputs.items():
            source = name.replace("present", "past_key_values")
            if source != name:  # the present must be bound to its cache's memory
                assert self.addresses[name] == self.addresses[source]
            self._at(name, value.dtype, value.shape)[...] = value
        engine.runs.append((self.profile, self.shapes["input_ids"]))
        return True

    def _at(self, name, dtype, shape):
        block = self.engine.device.blocks[self.addresses[name]]
        return block[: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


def fake_engine(plan_path: Path, cuda_graph: bool, monkeypatch):
    """A KVCacheEngine over the simulated device: the runner's own setup (deserialization, stream) replaced,
    the executor's (`_prepare`) as it is."""
    from trtc.ir import load_artifact
    from trtc.reference.runner import ReferenceRunner
    from trtc.runtime import kv_engine
    from trtc.runtime.engine import _IOTensor

    device, sidecar = FakeDevice(), sidecar_of(plan_path)
    monkeypatch.setattr(kv_engine, "cuda", device.cuda())
    spec, plan = engine_spec(sidecar, str(plan_path))
    model = load_artifact(plan_path.with_suffix(".opt.trtir")).model
    fake = types.SimpleNamespace(device=device, runner=ReferenceRunner(model), runs=[], num_optimization_profiles=2,
                                 profiles=sidecar["profiles"], get_aliased_input_tensor=lambda name: name.replace(
                                     "present", "past_key_values"))
    fake.io = [_IOTensor(e["name"], e in sidecar["inputs"], kv_engine._engine_dtype(e), False)
               for e in sidecar["inputs"] + sidecar["outputs"]]
    fake.create_execution_context = lambda config=None: FakeContext(fake)
    runner = object.__new__(kv_engine.KVCacheEngine)
    runner.__dict__.update(
        buffers=plan, cuda_graph=cuda_graph, graph_mode="off", batch=0, _decode_context=None, _shapes={}, _graph=None,
        _types={}, where=str(plan_path), backend=types.SimpleNamespace(is_rtx=False), _engine=fake, _io=fake.io,
        _config=None, _graph_context=None, _graph_config=None, _cache=None, runtime_cache_path=None, _closed=False,
        stream=types.SimpleNamespace(ptr=1, synchronize=lambda: None, close=lambda: None), _device={}, _host={},
        _allocator=types.SimpleNamespace(error=None, close=lambda: None), info={"device": "a simulated GPU"})
    runner._context = fake.create_execution_context()
    runner._prepare()
    decoder = Decoder(spec, None, executor=runner.describe(), where=str(plan_path), cache=runner, close=runner.close)
    return decoder, fake


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_the_gpu_executor_on_a_simulated_device(engine, monkeypatch, cuda_graph):
    """Prefill on profile 0, decode on profile 1, the presents bound to their caches' buffers, allocated once and
    zeroed (the simulated device fills fresh memory with NaN); the decode steps after the first of each batch size
    replayed from the captured graph; the loop's tokens are gen:tokens, and a second generation (another batch size,
    rows of different lengths) on the same buffers gives each row its solo tokens."""
    data = stored("llama-dynamo-op18")
    decoder, fake = fake_engine(engine, cuda_graph, monkeypatch)
    try:
        mode = "stream capture" if cuda_graph else "off"
        assert decoder.executor == ("TensorRT engine on a simulated GPU (static cache 0.1 MiB, decode CUDA graph: "
                                    f"{mode})")
        result = generate(decoder, data["gen:prompt"], GenerateOptions(max_new_tokens=16))
        assert [r.ids for r in result.rows] == data["gen:tokens"].tolist()
        assert fake.runs[0] == (0, (2, 7)) and fake.runs[1:] == [(1, (2, 1))] * 15
        assert (fake.device.captures, fake.device.launches) == ((1, 14) if cuda_graph else (0, 0))
        prompts = [data["gen:prompt"][0][:3].tolist(), data["gen:prompt"][1].tolist(), [7, 8, 9, 10, 11]]
        together = [r.ids for r in generate(decoder, prompts, GenerateOptions(max_new_tokens=6)).rows]
        export = decoder_for(LLM / "llama-dynamo-op18.onnx")
        alone = [generate(export, [p], GenerateOptions(max_new_tokens=6)).rows[0].ids for p in prompts]
        assert together == alone
        assert fake.device.captures == (2 if cuda_graph else 0)
        with pytest.raises(TrtcError, match="5 prompts in one batch, and the static cache holds 4 rows"):
            generate(decoder, [[1, 2]] * 5)
    finally:
        decoder.close()
