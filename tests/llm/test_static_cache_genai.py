"""--llm on the parsed onnxruntime-genai export (GroupQueryAttention rewritten at parse into
present = TensorScatter(Concat(past, k), k, past_b) with past_b and the mask from attention_mask):
static-kv-cache makes its cache static (write_indices feeds the positions and the cache writes, Attention
takes nonpad_kv_seqlen = write_indices + S, attention_mask goes), greedy tokens reproduce the export's
`gen:tokens` on the CPU reference, and TensorRT-RTX builds it (fp32 and fp16)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from trtc.ir.artifact import save_artifact
from trtc.ir.rewrite import is_op
from trtc.llm.decoder import open_decoder
from trtc.llm.generate import GenerateOptions, generate
from trtc.passes.static_kv_cache import LlmOptions
from trtc.pipeline import OptimizeOptions, open_model, optimize

from corpus import MODELS, trtc_in_process

GENAI = MODELS / "llm" / "llama-genai"
MODEL, NPZ = GENAI / "llama-genai-fp32.onnx", GENAI / "llama-genai-fp32.npz"
MAX_SEQ = 64
pytestmark = pytest.mark.skipif(not NPZ.is_file(), reason=f"the genai export is missing ({NPZ})")
needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is missing")


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    """(the --llm .trtir's path, its artifact, the npz's arrays)."""
    artifact = open_model(MODEL)
    optimize(artifact, OptimizeOptions(llm=LlmOptions(max_seq=MAX_SEQ, max_batch=4)))
    path = tmp_path_factory.mktemp("genai-static") / "llama-genai.opt.trtir"
    save_artifact(artifact.model, path, artifact.meta)
    with np.load(NPZ) as stored:
        return path, artifact, dict(stored)


def test_the_gqa_cache_is_static(static):
    _, artifact, _ = static
    graph = artifact.model.graph
    inputs = {v.name: v for v in graph.inputs}
    assert "attention_mask" not in inputs and "write_indices" in inputs
    assert inputs["past_key_values.0.key"].shape[2] == MAX_SEQ
    scatters = [n for n in graph if is_op(n, "TensorScatter")]
    assert len(scatters) == 4
    assert all(n.inputs[0].is_graph_input() and n.inputs[2].name == "write_indices" for n in scatters)
    assert not any(is_op(n, "Concat") for n in graph)
    attentions = [n for n in graph if is_op(n, "Attention")]
    assert len(attentions) == 2
    for node in attentions:
        assert node.attributes.get_int("is_causal", 0) == 1 and node.inputs[3] is None
        assert node.inputs[6].producer().inputs[0].name == "write_indices"  # nonpad_kv_seqlen = write_indices + S
    for rotary in [n for n in graph if is_op(n, "RotaryEmbedding")]:  # positions: write_indices + Range(S)
        add = rotary.inputs[3].producer()
        assert is_op(add, "Add") and add.inputs[0].producer().inputs[0].name == "write_indices"


def test_greedy_tokens_reproduce_the_export(static):
    path, _, stored = static
    decoder = open_decoder(path)
    prompts, want = stored["gen:prompt"].tolist(), stored["gen:tokens"].tolist()
    together = generate(decoder, prompts, GenerateOptions(max_new_tokens=16))
    assert [r.ids for r in together.rows] == want
    for prompt, tokens in zip(prompts, want, strict=True):
        assert generate(decoder, [prompt], GenerateOptions(max_new_tokens=16)).rows[0].ids == tokens


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compile_builds_the_static_gqa_cache(capsys, tmp_path, precision):
    args = ["compile", MODEL, "-o", tmp_path, "--llm", "--max-seq", MAX_SEQ, "--max-batch", 2, "--no-cache",
            "--json"] + (["--fp16"] if precision == "fp16" else [])
    rc, out, err = trtc_in_process(capsys, *args)
    assert rc == 0, err
    report = json.loads(out)
    sidecar = json.loads((tmp_path / "llama-genai-fp32.plan.json").read_text())
    assert sidecar["layer_types"]["KV_CACHE_UPDATE"] == 4 and sidecar["layer_types"]["ATTENTION_INPUT"] == 2
    assert sidecar["layer_types"]["ROTARY_EMBEDDING"] == 4 and "SCATTER" not in sidecar["layer_types"]
    assert [p["name"] for p in sidecar["llm"]["profiles"]] == ["prefill", "decode"]
    cache_type = "float16" if precision == "fp16" else "float32"
    assert all(c["dtype"] == cache_type for c in sidecar["llm"]["caches"])
    io = {e["name"]: e for e in sidecar["inputs"] + sidecar["outputs"]}
    assert "attention_mask" not in io and io["write_indices"]["dtype"] == "int64"
    assert io["past_key_values.0.key"]["shape"] == io["present.0.key"]["shape"] == [-1, 2, MAX_SEQ, 16]
    bound = 1e-5 if precision == "fp32" else 2e-2
    assert all(m["max_rel_error"] <= bound for m in report["predicted"]["outputs"].values()), report["predicted"]
