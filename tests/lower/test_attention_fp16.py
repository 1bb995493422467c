"""fp16 attention: the precision pass types Attention's Q, K and V alike (so the CPU reference is
onnxruntime itself, not the onnx.reference fallback), and the lowering keeps TensorRT-RTX 1.7's
builder away from the fp32 IAttention fed through fp16->fp32 Casts that breaks it (a widened K
segfaults the build: such builds run in a child process, so a regression fails one test instead
of killing the test run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[build]')")

from trtc.frontend import parse_onnx  # noqa: E402
from trtc.ir import save_artifact  # noqa: E402
from trtc.lower.backend import load_backend  # noqa: E402
from trtc.lower.network import lower  # noqa: E402
from trtc.lower.ops.attention import widened_from_low_precision  # noqa: E402
from trtc.precision import PrecisionOptions, apply_precision  # noqa: E402
from trtc.reference.metrics import error_metrics  # noqa: E402
from trtc.reference.runner import ReferenceRunner  # noqa: E402

from corpus import MODELS, CorpusModel  # noqa: E402

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

# Builds the artifact or ONNX model at argv[1] with the profile in argv[2] (JSON; {} for none).
CHILD_BUILD = """
import json, sys
from trtc.frontend import parse_onnx
from trtc.ir import load_artifact
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
path, profile = sys.argv[1], json.loads(sys.argv[2])
artifact = parse_onnx(path) if path.endswith(".onnx") else load_artifact(path)
profiles = [{k: tuple(tuple(d) for d in v) for k, v in profile.items()}] if profile else []
result = build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"), BuildOptions(profiles=profiles))
print("layers", result.sidecar["network_layers"])
"""


def build_in_child(path: Path, profile: Profile | None = None) -> None:
    """Build with TensorRT-RTX in a child process; a crash or failure fails the test with its output."""
    done = subprocess.run([sys.executable, "-c", CHILD_BUILD, str(path), json.dumps(profile or {})],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"build of {path.name} exited {done.returncode}: {done.stderr[-2000:]}"


def layer_types(model: ir.Model) -> set[str]:
    network = lower(model, load_backend("tensorrt-rtx")).network
    return {network.get_layer(i).type.name for i in range(network.num_layers)}


def attention_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Attention"]


def assert_one_type(model: ir.Model) -> None:
    """Q, K, V (and a past cache) of every Attention share one type, as onnxruntime requires."""
    for node in attention_nodes(model):
        types = {v.dtype for i, v in enumerate(node.inputs) if i in (0, 1, 2, 4, 5) and v is not None and v.name}
        assert len(types) == 1, f"{node.name}: {[(v.name, v.dtype.name) for v in node.inputs if v is not None]}"


# ------------------------------------------------------------------ the smallest graphs that broke the builder


def widened_attention(widened: str, three_d: bool = False) -> onnx.ModelProto:
    """One fp32 Attention whose input `widened` (Q, K or V) is Cast from an fp16 graph input.
    4-D [1, 2, 8, 16] static (a widened K alone segfaulted TensorRT-RTX 1.7's builder as IAttention),
    or the BERT form: 3-D dynamic with a float mask."""
    dims: list[int | str] = ["b", "s", 32] if three_d else [1, 2, 8, 16]
    nodes, inputs, names = [], [], []
    for name in "QKV":
        if name == widened:
            inputs.append(helper.make_tensor_value_info(f"{name}16", F16, dims))
            nodes.append(helper.make_node("Cast", [f"{name}16"], [name], to=F32, name=f"{name}_cast"))
        else:
            inputs.append(helper.make_tensor_value_info(name, F32, dims))
        names.append(name)
    attrs: dict[str, float | int] = {"scale": 0.25}
    if three_d:
        inputs.append(helper.make_tensor_value_info("mask", F32, ["b", 1, "s", "s"]))
        names.append("mask")
        attrs.update(q_num_heads=2, kv_num_heads=2)
    nodes.append(helper.make_node("Attention", names, ["Y"], name="attention", **attrs))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("Y", F32, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def bert_profile(proto: onnx.ModelProto) -> Profile:
    profile: Profile = {}
    for value in proto.graph.input:
        rank = len(value.type.tensor_type.shape.dim)
        profile[value.name] = ((1, 1, 32), (2, 8, 32), (4, 16, 32)) if rank == 3 else \
            ((1, 1, 1, 1), (2, 1, 8, 8), (4, 1, 16, 16))
    return profile


@pytest.mark.parametrize(("widened", "three_d"), [("Q", False), ("K", False), ("V", False), ("K", True)],
                         ids=["q", "k", "v", "k-bert-form"])
def test_fp32_attention_widened_from_fp16_is_decomposed_and_builds(widened, three_d, tmp_path):
    proto = widened_attention(widened, three_d)
    onnx.save(proto, tmp_path / "m.onnx")
    model = parse_onnx(tmp_path / "m.onnx").model
    assert widened_from_low_precision(attention_nodes(model)[0])
    types = layer_types(model)
    assert "ATTENTION_INPUT" not in types and "SOFTMAX" in types
    build_in_child(tmp_path / "m.onnx", bert_profile(proto) if three_d else None)


def test_fp32_attention_of_fp32_inputs_stays_fused(tmp_path):
    """The decomposition is kept to inputs that really come through a widening Cast."""
    proto = widened_attention("none")
    onnx.save(proto, tmp_path / "m.onnx")
    model = parse_onnx(tmp_path / "m.onnx").model
    assert not widened_from_low_precision(attention_nodes(model)[0])
    assert "ATTENTION_INPUT" in layer_types(model)


def test_fp16_attention_narrowed_from_fp32_stays_fused(tmp_path):
    """fp32->fp16 Casts into an fp16 IAttention build fine: nothing to avoid there."""
    dims = [1, 2, 8, 16]
    nodes = [helper.make_node("Cast", [n], [f"{n}16"], to=F16, name=f"{n}_cast") for n in "QKV"]
    nodes.append(helper.make_node("Attention", ["Q16", "K16", "V16"], ["Y"], name="attention"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F32, dims) for n in "QKV"],
                              [helper.make_tensor_value_info("Y", F16, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), tmp_path / "m.onnx")
    model = parse_onnx(tmp_path / "m.onnx").model
    assert "ATTENTION_INPUT" in layer_types(model)
    build_in_child(tmp_path / "m.onnx")


# ------------------------------------------------------------------ the precision pass's form of it


def bert_like_attention(hidden: int = 32, heads: int = 2) -> onnx.ModelProto:
    """x -> Q/K/V projections (MatMul + Add) -> Attention with an additive mask made by
    Where(mask, 0, -3.4e38): the mask's range keeps the Attention in fp32 while the projections go fp16."""
    rng = np.random.default_rng(0)
    inits = {"zero": np.array(0.0, np.float32), "lowest": np.array(np.finfo(np.float32).min, np.float32)}
    nodes = []
    for name in "qkv":
        inits[f"w_{name}"] = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.2
        inits[f"b_{name}"] = rng.standard_normal(hidden).astype(np.float32) * 0.1
        nodes += [helper.make_node("MatMul", ["x", f"w_{name}"], [f"{name}_mm"], name=f"{name}_proj"),
                  helper.make_node("Add", [f"{name}_mm", f"b_{name}"], [name], name=f"{name}_bias")]
    nodes += [helper.make_node("Where", ["keep", "zero", "lowest"], ["bias"], name="mask_bias"),
              helper.make_node("Attention", ["q", "k", "v", "bias"], ["y"], name="attention",
                               q_num_heads=heads, kv_num_heads=heads)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, ["b", "s", hidden]),
                     helper.make_tensor_value_info("keep", TensorProto.BOOL, ["b", 1, "s", "s"])],
        [helper.make_tensor_value_info("y", F32, ["b", "s", hidden])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def test_fp32_attention_after_fp16_projections_is_one_type_and_builds(tmp_path):
    onnx.save(bert_like_attention(), tmp_path / "m.onnx")
    artifact = parse_onnx(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    keep = np.ones((2, 1, 6, 6), bool)
    keep[1, ..., 4:] = False  # the second sequence is padded
    feeds = {"x": rng.standard_normal((2, 6, 32)).astype(np.float32), "keep": keep}
    reference = ReferenceRunner(artifact.model).run(feeds)["y"]
    report = apply_precision(artifact.model, [feeds], PrecisionOptions())
    (node,) = attention_nodes(artifact.model)
    assert node.name in report.fp32_nodes and node.inputs[0].dtype == ir.DataType.FLOAT
    assert all(artifact.model.graph.node(f"{n}_proj").outputs[0].dtype == ir.DataType.FLOAT16 for n in "qkv")
    assert_one_type(artifact.model)
    runner = ReferenceRunner(artifact.model)
    assert runner.backend == "onnxruntime", runner.fallback_reason
    metrics = error_metrics(reference, runner.run(feeds)["y"])
    assert runner.fallback_reason is None and metrics["cosine"] >= 0.999 and metrics["max_rel_error"] <= 1e-2
    assert widened_from_low_precision(node) and "ATTENTION_INPUT" not in layer_types(artifact.model)
    save_artifact(artifact.model, tmp_path / "m.trtir", artifact.meta)
    build_in_child(tmp_path / "m.trtir", {"x": ((1, 1, 32), (2, 6, 32), (4, 16, 32)),
                                           "keep": ((1, 1, 1, 1), (2, 1, 6, 6), (4, 1, 16, 16))})


# ------------------------------------------------------------------ the corpus BERT


BERT = MODELS / "bert-ts-op17.onnx"


@pytest.mark.skipif(not BERT.is_file(), reason=f"{BERT} is missing: the fp16 BERT artifact test is not run")
def test_fp16_bert_runs_in_onnxruntime_within_the_goals_and_builds(tmp_path):
    """`trtc optimize --fp16` of BERT: each Attention is fp32 (the mask reaches -3.4e38) after fp16
    projections; onnxruntime loads the typed graph, its outputs meet the precision goals against
    the fp32 reference outputs, and TensorRT-RTX builds it (decomposed attention) over the corpus profile."""
    from test_corpus_build import profile_for  # the corpus's profile: the reference shape as OPT, /2 and x2

    from trtc.passes.pipeline import optimize

    corpus_model = CorpusModel(BERT.stem, BERT)
    inputs, expected = corpus_model.reference()
    artifact = parse_onnx(BERT)
    optimize(artifact.model)
    apply_precision(artifact.model, [inputs], PrecisionOptions())
    assert attention_nodes(artifact.model)
    assert_one_type(artifact.model)
    runner = ReferenceRunner(artifact.model)
    assert runner.backend == "onnxruntime", runner.fallback_reason
    outputs = runner.run(inputs)
    assert runner.fallback_reason is None
    for name, want in expected.items():
        metrics = error_metrics(want, outputs[name])
        assert metrics["cosine"] >= 0.999 and metrics["max_rel_error"] <= 1e-2, (name, metrics)
    assert all(widened_from_low_precision(n) for n in attention_nodes(artifact.model))
    save_artifact(artifact.model, tmp_path / "bert.fp16.trtir", artifact.meta)
    build_in_child(tmp_path / "bert.fp16.trtir", profile_for(corpus_model, inputs))
