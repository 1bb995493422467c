"""onnxruntime-genai's contrib ops rewritten at parse (trtc/frontend/canonicalize/contrib.py): the parsed
llama-genai export has only standard ONNX, reproduces onnxruntime's results on the original (prefill, decode,
padded rows at the positions GQA reads as valid) and HF's greedy tokens, and builds with TensorRT-RTX; a
GroupQueryAttention or SkipSimplifiedLayerNormalization form the rewrite does not handle exactly, or any
other custom-domain op, is refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from trtc.frontend.canonicalize.contrib import rewrite_contrib_ops
from trtc.frontend.parse import parse_onnx
from trtc.ir.artifact import load_artifact, save_artifact
from trtc.llm.decoder import open_decoder
from trtc.llm.generate import GenerateOptions, generate
from trtc.reference.runner import ReferenceRunner

from corpus import MODELS, one_error_line, trtc_in_process

GENAI = MODELS / "llm" / "llama-genai"
MODEL, NPZ = GENAI / "llama-genai-fp32.onnx", GENAI / "llama-genai-fp32.npz"
needs_genai = pytest.mark.skipif(not NPZ.is_file(), reason=f"the genai export is missing ({NPZ})")
CONTRIB = {"GroupQueryAttention", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """(the parsed .trtir, the artifact, the npz's arrays)."""
    artifact = parse_onnx(MODEL)
    path = tmp_path_factory.mktemp("genai") / "llama-genai.trtir"
    save_artifact(artifact.model, path, artifact.meta)
    with np.load(NPZ) as stored:
        return path, artifact, dict(stored)


def case(stored: dict, name: str) -> tuple[dict, dict]:
    take = lambda prefix: {k.split(":", 1)[1]: v for k, v in stored.items() if k.startswith(prefix)}  # noqa: E731
    return take(f"{name}in:"), take(f"{name}out:")


@needs_genai
def test_parse_leaves_standard_onnx(parsed):
    _, artifact, _ = parsed
    ops = {n.op_type for n in artifact.model.graph}
    assert not ops & CONTRIB and {"RMSNormalization", "RotaryEmbedding", "Attention", "TensorScatter"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in artifact.model.graph)
    assert artifact.meta["parse"]["opset"] == 24 and artifact.meta["parse"]["source_opset"] == 22
    assert artifact.model.metadata_props["trtc.padding"] == "right"  # GQA's rows: read by trtc generate
    counts = artifact.meta["parse"]["canonicalized"]
    assert {k: counts[k] for k in counts if k.startswith("contrib_")} == {
        "contrib_GroupQueryAttention": 2, "contrib_SimplifiedLayerNormalization": 1,
        "contrib_SkipSimplifiedLayerNormalization": 4}
    cache = next(v for v in artifact.model.graph.inputs if v.name == "past_key_values.0.key")
    assert cache.shape[1] == 2 and cache.shape[3] == 16  # genai's symbolic kv_cache_dim pinned to the head size


@needs_genai
@pytest.mark.parametrize("name", ["", "dec_", "pad_"])
def test_reference_reproduces_onnxruntime(parsed, name):
    """The CPU reference on the parsed model = onnxruntime on the genai export (its contrib kernels). In the
    pad case GQA reads row 1 as right-padded: its first sum(mask) tokens are the valid ones."""
    _, artifact, stored = parsed
    feeds, expected = case(stored, name)
    outputs = ReferenceRunner(artifact.model).run(feeds)
    valid = int(feeds["attention_mask"][1].sum())
    for key, want in expected.items():
        got = np.asarray(outputs[key])
        if name == "pad_":
            got, want = (x[1, :valid] if key == "logits" else x[1, :, :valid] for x in (got, want))
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=f"{name}{key}")


@needs_genai
def test_generate_reproduces_hf_tokens(parsed):
    path, _, stored = parsed
    result = generate(open_decoder(path), stored["gen:prompt"], GenerateOptions(max_new_tokens=16))
    assert [row.ids for row in result.rows] == stored["gen:tokens"].tolist()


@needs_genai
def test_build_fp32(parsed, tmp_path, capsys):
    path, _, _ = parsed
    shapes = ["--shapes", "input_ids:1x1,2x8,4x64", "--shapes", "attention_mask:1x1,2x16,4x128"]
    for i in range(2):
        for kind in ("key", "value"):
            shapes += ["--shapes", f"past_key_values.{i}.{kind}:1x2x0x16,2x2x8x16,4x2x64x16"]
    rc, out, err = trtc_in_process(capsys, "build", path, "-o", tmp_path / "g.plan", *shapes)
    assert rc == 0, out + err
    assert (tmp_path / "g.plan").is_file()


@needs_genai
def test_static_cache_takes_the_parsed_gqa_form(tmp_path, capsys):
    """GQA's cache write and positions read attention_mask (past_b from seqlens_k): --llm feeds them
    write_indices instead and drops attention_mask (tests/llm/test_static_cache_genai.py: tokens, builds)."""
    rc, _, err = trtc_in_process(capsys, "optimize", MODEL, "--llm", "--max-seq", "64", "-o", tmp_path / "s.trtir")
    assert rc == 0, err
    model = load_artifact(tmp_path / "s.trtir").model
    names = {v.name for v in model.graph.inputs}
    assert "attention_mask" not in names and "write_indices" in names


@needs_genai
def test_prompts_of_different_lengths_generate_as_alone(parsed):
    """Right padding as GQA reads it: a shorter row's next token overwrites its first pad."""
    from trtc.llm.decoder import open_decoder
    from trtc.llm.generate import GenerateOptions, generate

    path, _, stored = parsed
    decoder = open_decoder(path)
    prompt = stored["gen:prompt"].tolist()
    rows = [prompt[0], prompt[1][:4], prompt[0][:2]]
    together = generate(decoder, rows, GenerateOptions(max_new_tokens=8))
    alone = [generate(decoder, [row], GenerateOptions(max_new_tokens=8)).rows[0].ids for row in rows]
    assert [r.ids for r in together.rows] == alone


# ---- hand-built nodes ---------------------------------------------------------------------------------

GENAI_OPSETS = [helper.make_opsetid("", 22), helper.make_opsetid("com.microsoft", 1)]
HQ, HKV, D, MAXPOS = 4, 2, 16, 32  # onnxruntime's GQA kernel wants D % 16 == 0


def gqa_model(past: int, **attributes) -> onnx.ModelProto:
    """One packed-QKV GroupQueryAttention with rotary, graph inputs for everything, fed like genai does."""
    f = TensorProto.FLOAT
    angles = np.arange(MAXPOS)[:, None] / 10000 ** (np.arange(D // 2) / (D // 2))
    attrs = {"num_heads": HQ, "kv_num_heads": HKV, "do_rotary": 1, "scale": 0.3} | attributes
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens_k", "total", "cos", "sin"],
                            ["y", "present_key", "present_value"], name="gqa", domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("qkv", f, ["B", "S", (HQ + 2 * HKV) * D]),
         helper.make_tensor_value_info("pk", f, ["B", HKV, past, D]),
         helper.make_tensor_value_info("pv", f, ["B", HKV, past, D]),
         helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
         helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info(n, f, None) for n in ("y", "present_key", "present_value")],
        [helper.make_tensor("cos", f, [MAXPOS, D // 2], np.cos(angles).astype(np.float32).ravel()),
         helper.make_tensor("sin", f, [MAXPOS, D // 2], np.sin(angles).astype(np.float32).ravel())])
    return helper.make_model(graph, opset_imports=GENAI_OPSETS)


def run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(("past", "lengths"), [(0, [5, 5]), (0, [5, 3]), (4, [5, 5]), (4, [7])],
                         ids=["first-prompt", "first-prompt-right-padded", "decode", "later-prompt"])
def test_gqa_rewrite_matches_onnxruntime(past, lengths):
    """`lengths`: each row's valid tokens (seqlens_k + 1); new tokens S = max - past. A right-padded row's
    outputs past its length are don't-care (onnxruntime leaves them unset)."""
    batch, seq = len(lengths), max(lengths) - past
    rng = np.random.default_rng(past + seq)
    proto = gqa_model(past)
    feeds = {"qkv": rng.standard_normal((batch, seq, (HQ + 2 * HKV) * D), np.float32),
             "pk": rng.standard_normal((batch, HKV, past, D), np.float32),
             "pv": rng.standard_normal((batch, HKV, past, D), np.float32),
             "seqlens_k": np.array(lengths, np.int32) - 1, "total": np.array(past + seq, np.int32)}
    rewritten, counts = rewrite_contrib_ops(proto, "t.onnx")
    assert counts == {"contrib_GroupQueryAttention": 1}
    assert {o.domain for o in rewritten.opset_import} == {""}
    (y, *presents), (want_y, *want_presents) = run(rewritten, feeds), run(proto, feeds)
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(y[row, :length - past], want_y[row, :length - past], atol=1e-5, rtol=1e-5)
    for got, want in zip(presents, want_presents):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("attribute", "value", "words"), [
    ("local_window_size", 4, "local_window_size=4 is not handled (only -1)"),
    ("softcap", 1.0, "softcap=1.0 is not handled (only 0.0)"),
    ("smooth_softmax", 1, "smooth_softmax=1 is not handled (only 0)"),
    ("qk_output", 1, "qk_output=1 is not handled (only 0)"),
])
def test_gqa_attributes_not_handled_are_refused(tmp_path, capsys, attribute, value, words):
    path = tmp_path / "gqa.onnx"
    onnx.save(gqa_model(2, **{attribute: value}), path)
    one_error_line(trtc_in_process(capsys, "parse", path, "-o", tmp_path / "g.trtir"),
                   f"node 'gqa' (com.microsoft.GroupQueryAttention): {words}")


def skip_norm_model(outputs: list[str], op: str = "SkipSimplifiedLayerNormalization") -> onnx.ModelProto:
    f = TensorProto.FLOAT
    node = helper.make_node(op, ["x", "skip", "gamma"], outputs, name="norm", domain="com.microsoft",
                            epsilon=1e-6)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, f, [2, 3, 8]) for n in ("x", "skip")],
        [helper.make_tensor_value_info(n, f, None) for n in outputs if n],
        [helper.make_tensor("gamma", f, [8], np.linspace(0.5, 1.5, 8, dtype=np.float32))])
    return helper.make_model(graph, opset_imports=GENAI_OPSETS)


def test_skip_norm_outputs_match_onnxruntime():
    """y, inv_std_var and the input+skip sum (genai's next residual)."""
    rng = np.random.default_rng(1)
    proto = skip_norm_model(["y", "", "inv", "sum"])
    feeds = {n: rng.standard_normal((2, 3, 8), np.float32) for n in ("x", "skip")}
    rewritten, _ = rewrite_contrib_ops(proto, "t.onnx")
    for got, want in zip(run(rewritten, feeds), run(proto, feeds)):
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)


def test_other_contrib_ops_are_still_refused(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(skip_norm_model(["y"], op="SkipLayerNormalization"), path)
    one_error_line(trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir"),
                   "node 'norm' (op SkipLayerNormalization, domain 'com.microsoft'): unknown op domain")


def test_skip_norm_mean_output_is_refused(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(skip_norm_model(["y", "mean"]), path)
    one_error_line(trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir"),
                   "node 'norm' (com.microsoft.SkipSimplifiedLayerNormalization): its output 1 (mean) is read")
