"""--llm's static, in-place KV cache on the LLM corpus (../shared/models/llm: LLaMA, Qwen2 and GPT-2 dynamo
exports at opset 18, LLaMA at opset 23). The rewritten graph is opset-24 ONNX (TensorScatter + Attention with
nonpad_kv_seqlen): on the CPU reference it reproduces the growing-cache export on the prefill (`in:`) and
decode (`dec_in:`, its past written into a zero cache) cases and in a 16-step greedy loop (`gen:tokens`).
TensorRT-RTX builds it (fp32 and fp16) with IKVCacheUpdateLayer and IAttention and the prefill and decode
profiles. What the pass cannot make static is refused in one line naming the node."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from trtc.errors import TrtcError
from trtc.ir.rewrite import is_op
from trtc.passes import PASSES, PassContext
from trtc.passes.kv_cache_io import cache_layout, to_static_feeds
from trtc.passes.pipeline import optimize as run_passes
from trtc.passes.static_kv_cache import LlmOptions, cache_concats
from trtc.pipeline import OptimizeOptions, open_model, optimize
from trtc.reference.runner import ReferenceRunner

from corpus import MODELS, one_error_line, trtc_in_process

LLM = MODELS / "llm"
NAMES = ["llama-dynamo-op18", "qwen2-dynamo-op18", "gpt2-dynamo-op18", "llama-dynamo-op23"]
MAX_SEQ = 64
needs_llm = pytest.mark.skipif(not all((LLM / f"{n}.onnx").is_file() for n in NAMES),
                               reason=f"the LLM corpus is missing (looked in {LLM}, ../shared/models/llm)")
needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is missing")
pytestmark = needs_llm


def cases(name: str, prefix: str) -> dict[str, np.ndarray]:
    data = np.load(LLM / f"{name}.npz")
    return {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith(f"{prefix}:")}


@pytest.fixture(scope="module")
def static_models() -> dict:
    """Each model optimized with --llm --max-seq 64 --max-batch 4 (the library call `optimize` makes)."""
    made = {}
    for name in NAMES:
        artifact = open_model(LLM / f"{name}.onnx")
        optimize(artifact, OptimizeOptions(llm=LlmOptions(max_seq=MAX_SEQ, max_batch=4)))
        made[name] = artifact
    return made


@pytest.mark.parametrize("name", NAMES)
def test_the_graph_is_static(static_models, name):
    artifact = static_models[name]
    model, layout = artifact.model, artifact.meta["llm"]
    ops = [n.op_type for n in model.graph]
    assert model.opset_imports[""] == 24
    assert ops.count("TensorScatter") == 4 and ops.count("Attention") == 2
    assert not any(is_op(n, "Concat") and n.inputs[0].is_graph_input() for n in model.graph)
    for node in (n for n in model.graph if is_op(n, "Attention")):
        assert node.attributes.get_int("is_causal") == 1 and node.inputs[6] is not None
        assert node.inputs[1].is_graph_output() and node.inputs[2].is_graph_output()  # the caches, no repeat
    heads = 4 if name.startswith("gpt2") else 2
    assert list(layout["inputs"]) == ["input_ids", "position_ids", *[f"past_key_values.{i}.{kind}" for i in (0, 1)
                                                                     for kind in ("key", "value")], "write_indices"]
    assert layout["dropped_inputs"] == ["attention_mask"]
    assert layout["max_seq"] == MAX_SEQ and layout["max_batch"] == 4
    assert layout["caches"][0] == {"input": "past_key_values.0.key", "output": "present.0.key", "dtype": "float32",
                                   "shape": ["batch", heads, MAX_SEQ, 16]}
    assert layout["write_indices"]["shape"] == ["batch"] and layout["write_indices"]["dtype"] == "int64"
    prefill, decode = layout["profiles"]
    assert (prefill["name"], decode["name"]) == ("prefill", "decode")
    assert prefill["shapes"]["input_ids"] == ((1, 1), (4, 32), (4, MAX_SEQ))
    assert decode["shapes"]["input_ids"] == ((1, 1), (4, 1), (4, 1))
    assert decode["shapes"]["past_key_values.1.value"] == ((1, heads, MAX_SEQ, 16), (4, heads, MAX_SEQ, 16),
                                                           (4, heads, MAX_SEQ, 16))
    assert artifact.meta["optimize"]["options"]["llm"] == {"max_seq": MAX_SEQ, "max_batch": 4, "last_logits": False}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["in", "dec_in"])
def test_prefill_and_decode_reproduce_the_export(static_models, name, case):
    """The growing-cache case moved into a zero cache (past at slots 0..P-1, write_indices P): the logits and each
    present over the slots it fills equal the export's; the slots after them stay zero."""
    layout = static_models[name].meta["llm"]
    feeds, expected = cases(name, case), cases(name, case.replace("in", "out"))
    runner = ReferenceRunner(static_models[name].model)
    got = runner.run(to_static_feeds(layout, feeds))
    filled = feeds["attention_mask"].shape[1]
    assert np.abs(got["logits"] - expected["logits"]).max() <= 1e-5 * max(1.0, np.abs(expected["logits"]).max())
    for cache in layout["caches"]:
        present = got[cache["output"]]
        assert present.shape == (2, cache["shape"][1], MAX_SEQ, 16)
        np.testing.assert_allclose(present[:, :, :filled], expected[cache["output"]], atol=1e-6)
        assert not present[:, :, filled:].any()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_loop_reproduces_hf_generate(static_models, name):
    """Prefill the prompt at write index 0, then one token per step at write index = tokens so far; the caches
    go back in as they came out (the engine aliases them)."""
    artifact = static_models[name]
    layout, runner = artifact.meta["llm"], ReferenceRunner(artifact.model)
    data = np.load(LLM / f"{name}.npz")
    prompt, want = data["gen:prompt"], data["gen:tokens"]
    batch = prompt.shape[0]
    feeds = {c["input"]: np.zeros([batch, *c["shape"][1:]], np.float32) for c in layout["caches"]}
    ids, written, tokens = prompt, np.zeros(batch, np.int64), []
    for _ in range(want.shape[1]):
        seq = ids.shape[1]
        feeds.update(input_ids=ids, write_indices=written, position_ids=written[:, None] + np.arange(seq))
        out = runner.run(feeds)
        tokens.append(out["logits"][:, -1].argmax(-1))
        feeds.update({c["input"]: out[c["output"]] for c in layout["caches"]})
        written, ids = written + seq, tokens[-1][:, None]
    np.testing.assert_array_equal(np.stack(tokens, 1), want)


@pytest.mark.parametrize("name", ["gpt2-dynamo-op18", "llama-dynamo-op23"])
def test_last_logits_are_the_last_tokens(name):
    """--last-logits: logits [B, 1, vocab] (the head on each row's last token), equal to the export's last."""
    artifact = open_model(LLM / f"{name}.onnx")
    report = optimize(artifact, OptimizeOptions(llm=LlmOptions(max_seq=MAX_SEQ, last_logits=True))).report
    assert report.totals()["static-kv-cache"]["rewrites"]["last-token-logits"] == 1
    logits = next(v for v in artifact.model.graph.outputs if v.name == "logits")
    assert logits.shape[1] == 1 and artifact.meta["llm"]["last_logits"] is True
    runner = ReferenceRunner(artifact.model)
    for case in ("in", "dec_in"):
        got = runner.run(to_static_feeds(artifact.meta["llm"], cases(name, case)))["logits"]
        np.testing.assert_allclose(got, cases(name, case.replace("in", "out"))["logits"][:, -1:], atol=1e-5)


def test_a_run_longer_than_the_cache_is_refused(static_models):
    layout = static_models["llama-dynamo-op18"].meta["llm"]
    feeds = cases("llama-dynamo-op18", "dec_in")  # 7 cached + 1 new
    with pytest.raises(TrtcError, match="holds 7 tokens and 1 come: more than the static cache's 7"):
        to_static_feeds({**layout, "max_seq": 7}, feeds)


def test_the_pass_is_idempotent(static_models):
    model = static_models["llama-dynamo-op23"].model.clone()
    ctx = PassContext(llm=LlmOptions(max_seq=MAX_SEQ))
    assert PASSES["static-kv-cache"].fn(model, ctx) == {}
    assert cache_layout(model)["max_seq"] == MAX_SEQ


def test_verify_checks_the_static_model(tmp_path, capsys):
    """optimize --llm --verify: the passes before it verified as usual, the static model against the model before
    it on the verify inputs moved into its cache."""
    feeds = tmp_path / "dec.npz"
    np.savez(feeds, **cases("qwen2-dynamo-op18", "dec_in"))
    rc, out, err = trtc_in_process(capsys, "optimize", LLM / "qwen2-dynamo-op18.onnx", "-o", tmp_path / "q.trtir",
                                   "--llm", "--max-seq", "32", "--verify", "--input", feeds)
    assert rc == 0, err
    assert "static-kv-cache" in out and "every pass verified" in out


# ---- refusals, one line each ---------------------------------------------------------------------------------

def test_llm_needs_max_seq(capsys, tmp_path):
    result = trtc_in_process(capsys, "optimize", LLM / "llama-dynamo-op18.onnx", "-o", tmp_path / "x.trtir", "--llm")
    one_error_line(result, "--llm", "--max-seq N")
    result = trtc_in_process(capsys, "build", LLM / "llama-dynamo-op18.onnx", "-o", tmp_path / "x.plan",
                             "--max-seq", "64")
    one_error_line(result, "--max-seq", "add --llm")


def test_build_llm_of_an_artifact_optimized_without_it_is_refused(capsys, tmp_path):
    artifact = tmp_path / "plain.trtir"
    assert trtc_in_process(capsys, "optimize", LLM / "gpt2-dynamo-op18.onnx", "-o", artifact)[0] == 0
    result = trtc_in_process(capsys, "build", artifact, "-o", tmp_path / "x.plan", "--llm", "--max-seq", "64")
    one_error_line(result, "--llm applies when a model is optimized", "optimized without it")


def test_a_model_without_a_growing_cache_is_refused(capsys, tmp_path):
    result = trtc_in_process(capsys, "optimize", MODELS / "mlp-ts-op17.onnx", "-o", tmp_path / "x.trtir", "--llm",
                             "--max-seq", "64")
    one_error_line(result, "no growing KV cache")


def test_a_cache_no_attention_reads_is_refused():
    """With fuse-attention disabled the op-18 export's attention stays decomposed: the Concat is named."""
    artifact = open_model(LLM / "llama-dynamo-op18.onnx")
    with pytest.raises(TrtcError) as error:
        optimize(artifact, OptimizeOptions(disable=("fuse-attention",), llm=LlmOptions(max_seq=MAX_SEQ)))
    assert "(Concat) grows cache 'past_key_values.0.key'" in error.value.one_line()
    assert "no Attention reads it" in error.value.one_line()


def test_an_input_sized_by_the_cached_tokens_left_read_is_refused(tmp_path):
    """attention_mask read for something else than the mask (here a sum as an extra output): no profile could
    size it, so the model is refused naming the reader."""
    proto = onnx.load(LLM / "llama-dynamo-op23.onnx")
    proto.graph.node.append(helper.make_node("ReduceSum", ["attention_mask"], ["tokens"], name="count_tokens"))
    proto.graph.output.append(helper.make_tensor_value_info("tokens", TensorProto.INT64, None))
    onnx.save(proto, tmp_path / "model.onnx")
    with pytest.raises(TrtcError) as error:
        optimize(open_model(tmp_path / "model.onnx"), OptimizeOptions(llm=LlmOptions(max_seq=MAX_SEQ)))
    assert "node 'count_tokens' (ReduceSum) still reads input 'attention_mask'" in error.value.one_line()


def padding_only_model() -> ir.Model:
    """One cache layer whose Attention mask is attention_mask alone (bidirectional: no causal mask)."""
    f, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    nodes = [helper.make_node("Concat", ["past_key_values.0.key", "k"], ["present.0.key"], axis=2),
             helper.make_node("Concat", ["past_key_values.0.value", "v"], ["present.0.value"], axis=2),
             helper.make_node("Cast", ["attention_mask"], ["allowed"], to=b),
             helper.make_node("Unsqueeze", ["allowed", "axes"], ["mask"]),
             helper.make_node("Attention", ["q", "present.0.key", "present.0.value", "mask"], ["y"],
                              name="the_attention")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("q", f, ["batch", 2, "seq", 8]),
         helper.make_tensor_value_info("k", f, ["batch", 2, "seq", 8]),
         helper.make_tensor_value_info("v", f, ["batch", 2, "seq", 8]),
         helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
         helper.make_tensor_value_info("past_key_values.0.key", f, ["batch", 2, "past", 8]),
         helper.make_tensor_value_info("past_key_values.0.value", f, ["batch", 2, "past", 8])],
        [helper.make_tensor_value_info("y", f, ["batch", 2, "seq", 8]),
         helper.make_tensor_value_info("present.0.key", f, ["batch", 2, "total", 8]),
         helper.make_tensor_value_info("present.0.value", f, ["batch", 2, "total", 8])],
        [helper.make_tensor("axes", i64, [2], [1, 2])])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


def test_a_mask_that_is_not_causal_is_refused():
    model = padding_only_model()
    with pytest.raises(TrtcError) as error:
        run_passes(model, passes=[PASSES["static-kv-cache"]], ctx=PassContext(llm=LlmOptions(max_seq=MAX_SEQ)))
    assert "node 'the_attention' (Attention): its mask is not the causal mask" in error.value.one_line()
    assert len(cache_concats(model.graph)) == 2  # refused before anything changed


# ---- TensorRT-RTX builds ---------------------------------------------------------------------------------

@needs_rtx
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compile_builds_the_static_cache(capsys, tmp_path, name, precision):
    """compile --llm --max-seq 64: IKVCacheUpdateLayer per cache, IAttention per layer, the two profiles in the
    sidecar with the cache layout; fp16 keeps the cache in fp16 in and out (written in place)."""
    args = ["compile", LLM / f"{name}.onnx", "-o", tmp_path, "--llm", "--max-seq", MAX_SEQ, "--max-batch", 2,
            "--no-cache", "--json"] + (["--fp16"] if precision == "fp16" else [])
    rc, out, err = trtc_in_process(capsys, *args)
    assert rc == 0, err
    report = json.loads(out)
    sidecar = json.loads((tmp_path / f"{name}.plan.json").read_text())
    assert sidecar["layer_types"]["KV_CACHE_UPDATE"] == 4
    assert sidecar["layer_types"]["ATTENTION_INPUT"] == 2 and "SCATTER" not in sidecar["layer_types"]
    if not name.startswith("gpt2"):  # GPT-2's positions are learned
        assert sidecar["layer_types"]["ROTARY_EMBEDDING"] == 4
    assert [p["name"] for p in sidecar["llm"]["profiles"]] == ["prefill", "decode"]
    assert sidecar["profiles"][0]["input_ids"] == [[1, 1], [2, 32], [2, MAX_SEQ]]
    assert sidecar["profiles"][1]["input_ids"] == [[1, 1], [2, 1], [2, 1]]
    cache_type = "float16" if precision == "fp16" else "float32"
    io = {e["name"]: e for e in sidecar["inputs"] + sidecar["outputs"]}
    assert all(c["dtype"] == cache_type for c in sidecar["llm"]["caches"])
    assert io["past_key_values.0.key"]["shape"] == io["present.0.key"]["shape"] == [-1, 2 + 2 * name.startswith(
        "gpt2"), MAX_SEQ, 16]
    assert io["write_indices"]["dtype"] == "int64"
    bound = 1e-5 if precision == "fp32" else 2e-2
    assert all(m["max_rel_error"] <= bound for m in report["predicted"]["outputs"].values()), report["predicted"]


def test_tensor_scatter_that_is_no_cache_update_is_a_scatter():
    from trtc.lower.ops.gather import kv_cache_update_fits

    model = padding_only_model()
    for node in [n for n in model.graph if is_op(n, "Concat")]:
        scatter = ir.node("TensorScatter", [node.inputs[0], node.inputs[1], None], {"axis": 2})
        assert kv_cache_update_fits(scatter) == "not a graph input scattered into a graph output at given write indices"
