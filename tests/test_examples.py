"""examples/: each example script compiles its model end to end (parse -> optimize --fp16 -> build ->
predicted error), and the ONNX it writes is valid for its dynamic dims (onnxruntime, two sizes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtc.ir import load_artifact
from trtc.ir.walk import all_graphs
from trtc.lower.backend import available_backends
from trtc.passes import PASSES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ARTIFACTS = ("{name}.trtir", "{name}.opt.trtir", "{name}.plan", "{name}.plan.json", "report.json", "report.md")


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    min_fp16_share: float
    decomposed: tuple[str, ...] = ()  # ops a fusion must have removed (GELU's pieces)


EXAMPLE_LIST = [
    Example("cnn", 0.9),
    Example("bert_encoder", 0.8, decomposed=("Erf",)),  # Tanh stays: the pooler's activation
    Example("gpt2_decoder", 0.8, decomposed=("Erf", "Tanh", "Pow")),
]
BY_NAME = {e.name: e for e in EXAMPLE_LIST}
TRANSFORMERS = [BY_NAME["bert_encoder"], BY_NAME["gpt2_decoder"]]

needs_builder = pytest.mark.skipif(not available_backends(), reason="no TensorRT / TensorRT-RTX to build with")


@pytest.fixture(scope="module")
def run_example(tmp_path_factory):
    """Run an example script once per module: (CompletedProcess, output folder)."""
    done: dict[tuple[str, ...], tuple[subprocess.CompletedProcess, Path]] = {}
    # A fresh engine cache, so that the build stage really builds (and ~/.cache stays untouched).
    env = {**os.environ, "TRTC_CACHE_DIR": str(tmp_path_factory.mktemp("engine-cache"))}

    def run(name: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
        key = (name, *extra)
        if key not in done:
            out = tmp_path_factory.mktemp(name)
            proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(out), *extra],
                                  capture_output=True, text=True, env=env, timeout=300)
            done[key] = proc, out
        return done[key]

    return run


def load_example(name: str):
    """Import examples/NAME.py as a module (examples/ on sys.path for make_cnn)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def op_types(path: Path) -> set[str]:
    model = load_artifact(path).model
    return {node.op_type for graph in all_graphs(model.graph) for node in graph}


@needs_builder
@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=lambda e: e.name)
def test_example_compiles_end_to_end(run_example, example):
    proc, out = run_example(example.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for pattern in ARTIFACTS:
        assert (out / pattern.format(name=example.name)).is_file(), pattern
    assert "predicted" in proc.stdout and "report.md" in proc.stdout  # the summary was printed
    report = json.loads((out / "report.json").read_text())
    assert not any(stage["reused"] for stage in report["stages"].values())
    assert report["predicted"]["outputs"], "no float output was compared"
    for name, m in report["predicted"]["outputs"].items():
        assert m["cosine"] >= 0.999 and m["max_rel_error"] <= 1e-2, (name, m)
    assert report["precision"]["target"] == "fp16"
    assert report["precision"]["flop_share"] >= example.min_fp16_share, report["precision"]
    assert report["engine"]["profiles"], "the engine has no optimization profile for the dynamic dims"
    assert "## Predicted error" in (out / "report.md").read_text()


@needs_builder
def test_fp32_option_skips_the_precision_pass(run_example):
    proc, out = run_example("cnn", "--fp32")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] is None
    assert all(m["cosine"] >= 0.99999 for m in report["predicted"]["outputs"].values())


@needs_builder
@pytest.mark.parametrize("example", TRANSFORMERS, ids=lambda e: e.name)
def test_gelu_is_fused(run_example, example):
    proc, out = run_example(example.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ops = op_types(out / f"{example.name}.opt.trtir")
    assert "Gelu" in ops and "LayerNormalization" in ops
    assert not ops & set(example.decomposed), sorted(ops & set(example.decomposed))


@needs_builder
@pytest.mark.parametrize("example", TRANSFORMERS, ids=lambda e: e.name)
def test_attention_is_fused(run_example, example):
    if "fuse-attention" not in PASSES:
        pytest.skip("the fuse-attention pass has not landed (trtc.passes.PASSES has no 'fuse-attention')")
    proc, out = run_example(example.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ops = op_types(out / f"{example.name}.opt.trtir")
    if "Softmax" in ops:  # say why, from the pass's own diagnosis on the parsed model
        from trtc.passes import fuse_attention

        model = load_artifact(out / f"{example.name}.trtir").model
        why = {n.name: fuse_attention.why_not(n) for n in model.graph if n.op_type == "Softmax"}
        pytest.fail(f"Softmax left unfused: {why}")
    assert "Attention" in ops


# ---- the ONNX models themselves: valid for every batch / sequence length in the profiles ------------------

def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_cnn_onnx_is_valid_for_two_batch_sizes():
    session = _session(load_example("cnn").make_cnn(seed=0))
    images = np.random.default_rng(0).uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    (five,) = session.run(None, {"image": images})
    (two,) = session.run(None, {"image": images[:2]})
    assert five.shape == (5, 10)
    np.testing.assert_allclose(two, five[:2], rtol=1e-5, atol=1e-6)


def test_bert_onnx_is_valid_for_two_sequence_lengths():
    """Padding a sequence (attention_mask 0) must not change the outputs at the real tokens."""
    bert = load_example("bert_encoder")
    session = _session(bert.build_model())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, bert.VOCAB, (2, 24))
    types = rng.integers(0, bert.TYPE_VOCAB, (2, 24))
    mask = np.ones((2, 24), np.int64)
    mask[:, 11:] = 0  # the last 13 tokens are padding
    long = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    short = session.run(None, {"input_ids": ids[:, :11], "attention_mask": mask[:, :11],
                               "token_type_ids": types[:, :11]})
    assert long[0].shape == (2, 24, bert.HIDDEN) and long[1].shape == (2, bert.HIDDEN)
    np.testing.assert_allclose(short[0], long[0][:, :11], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(short[1], long[1], rtol=1e-5, atol=1e-5)  # the pooler reads token 0
    assert np.abs(long[1]).max() > 1e-3  # not trivially zero


def test_gpt2_onnx_is_valid_for_two_sequence_lengths():
    """Causal: the logits of a prefix do not depend on the tokens after it."""
    gpt2 = load_example("gpt2_decoder")
    session = _session(gpt2.build_model())
    ids = np.random.default_rng(0).integers(0, gpt2.VOCAB, (2, 19))
    (long,) = session.run(None, {"input_ids": ids})
    (short,) = session.run(None, {"input_ids": ids[:, :7]})
    assert long.shape == (2, 19, gpt2.VOCAB)
    np.testing.assert_allclose(short, long[:, :7], rtol=1e-5, atol=1e-5)
    assert not np.allclose(long[:, 7], long[:, 6])  # and the positions do differ
