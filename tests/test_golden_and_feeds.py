"""Golden outputs and no silent data: an --input .npz holding expected outputs is compared with
(tolerances by dtype and precision, said), `compare A REF.npz`, and inputs are generated only where
asked for (no --input at all, or --generate NAME), each one said; missing, repeated and unknown
names are errors listing every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from trtc.compare import Tolerances, default_tolerance, engine_precision
from trtc.errors import TrtcError
from trtc.reference.feeds import FeedOptions, TensorSpec, load_feeds, make_feeds

from corpus import MODELS, run_trtc
from corpus import one_error_line as user_error
from corpus import trtc_in_process as trtc

CORPUS = "mlp-ts-op17"  # the smallest corpus model: x[5, 64] -> y[5, 10]
needs_corpus = pytest.mark.skipif(not (MODELS / f"{CORPUS}.onnx").is_file(),
                                  reason=f"{MODELS / CORPUS}.onnx/.npz missing: golden-output tests not run")


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    """The corpus model, its .npz, a tampered copy (y + 1), a slightly shifted one (y + 5e-3: beyond
    fp32 tolerances, within fp16's), one with an extra key, and the model typed for fp16."""
    if not (MODELS / f"{CORPUS}.onnx").is_file():
        pytest.skip(f"{MODELS / CORPUS}.onnx missing")
    folder = tmp_path_factory.mktemp("golden")
    with np.load(MODELS / f"{CORPUS}.npz") as data:
        stored = {k: data[k] for k in data.files}
    np.savez(folder / "bad.npz", x=stored["x"], y=stored["y"] + 1.0)
    np.savez(folder / "shifted.npz", x=stored["x"], y=stored["y"] + 5e-3)
    np.savez(folder / "extra.npz", **stored, z=stored["y"])
    np.savez(folder / "outputs.npz", y=stored["y"])
    np.save(folder / "x.npy", stored["x"])
    proc = run_trtc("optimize", MODELS / f"{CORPUS}.onnx", "-o", folder / "m16.trtir", "--fp16")
    assert proc.returncode == 0, proc.stderr
    return folder


@needs_corpus
def test_run_with_corpus_npz_compares_and_passes(golden):
    # End to end in a subprocess once: the stored inputs feed the model, the stored outputs are checked.
    proc = run_trtc("run", MODELS / f"{CORPUS}.onnx", "--input", MODELS / f"{CORPUS}.npz")
    assert proc.returncode == 0, proc.stderr
    assert f"compared with {MODELS / CORPUS}.npz:" in proc.stdout
    assert "  y: match (max abs" in proc.stdout and "tolerance atol 0.0001 rtol 0.001 for float32" in proc.stdout
    assert "generated" not in proc.stdout
    report = json.loads(run_trtc("run", MODELS / f"{CORPUS}.onnx", "--input", MODELS / f"{CORPUS}.npz",
                                 "--json").stdout)
    assert report["generated"] == [] and report["compared_with"]["match"] is True
    y = report["compared_with"]["outputs"]["y"]
    assert y["match"] and (y["atol"], y["rtol"], y["tolerance"]) == (1e-4, 1e-3, "for float32")


@needs_corpus
def test_tampered_expected_output_exits_1_naming_it(golden, capsys):
    model = MODELS / f"{CORPUS}.onnx"
    rc, out, err = trtc(capsys, "run", model, "--input", golden / "bad.npz")
    assert "  y: MISMATCH (max abs 1," in out
    user_error((rc, out, err), f"{model} vs {golden / 'bad.npz'}: outputs differ: y (100.00% of elements", code=1)
    rc, out, _ = trtc(capsys, "run", model, "--input", golden / "bad.npz", "--json")
    report = json.loads(out)
    assert rc == 1 and report["exit_code"] == 1 and "outputs differ: y" in report["error"]
    assert report["compared_with"]["outputs"]["y"]["match"] is False
    # --atol/--rtol override, per output too (NAME=X, as compare takes them).
    rc, out, err = trtc(capsys, "run", model, "--input", golden / "bad.npz", "--atol", "y=2")
    assert rc == 0, err
    assert "tolerance atol 2 rtol 0.001 as given (rtol: default for float32)" in out


@needs_corpus
def test_fp16_artifact_is_judged_with_fp16_defaults(golden, capsys):
    # y + 5e-3 is beyond fp32's defaults for the fp32 model ...
    rc, out, err = trtc(capsys, "run", MODELS / f"{CORPUS}.onnx", "--input", golden / "shifted.npz")
    user_error((rc, out, err), "outputs differ: y", code=1)
    # ... and within fp16's for the fp16 artifact, which says so.
    rc, out, err = trtc(capsys, "run", golden / "m16.trtir", "--input", golden / "shifted.npz")
    assert rc == 0, err
    assert "  y: match (" in out and "tolerance atol 0.01 rtol 0.01 for fp16)" in out
    report = json.loads(trtc(capsys, "run", golden / "m16.trtir", "--input", golden / "shifted.npz", "--json")[1])
    assert report["precision"] == "fp16"
    assert report["compared_with"]["outputs"]["y"]["tolerance"] == "for fp16"
    # Given tolerances win over the defaults.
    rc, out, err = trtc(capsys, "run", golden / "m16.trtir", "--input", golden / "shifted.npz",
                        "--atol", "1e-4", "--rtol", "1e-3")
    assert "tolerance atol 0.0001 rtol 0.001 as given)" in out
    user_error((rc, out, err), "outputs differ: y", code=1)


def test_default_tolerances_by_dtype_and_precision():
    assert default_tolerance(np.dtype(np.float32), None) == (1e-4, 1e-3, "for float32")
    assert default_tolerance(np.dtype(np.float32), "fp16") == (1e-2, 1e-2, "for fp16")
    assert default_tolerance(np.dtype(np.float16), None) == (1e-2, 1e-2, "for fp16")
    assert default_tolerance(np.dtype(ml_dtypes.bfloat16), None)[2] == "for bf16"
    assert default_tolerance(np.dtype(np.float32), "bf16")[:2] == (5e-2, 5e-2)
    # Integers and booleans are exact whatever the precision.
    assert default_tolerance(np.dtype(np.int64), "fp16") == (0.0, 0.0, "exact for int64")
    assert default_tolerance(np.dtype(np.bool_), None) == (0.0, 0.0, "exact for bool")
    # A .plan's precision comes from its sidecar.
    assert engine_precision({"precision": {"target": "fp16"}}) == "fp16"
    assert engine_precision({"precision": None}) is None
    tolerances = Tolerances.from_cli(["1e-3", "logits=0"], [])
    assert tolerances.for_output("logits", np.dtype(np.float32), None) == (0.0, 1e-3, "as given (rtol: default for "
                                                                                        "float32)")
    with pytest.raises(TrtcError, match=r"--atol a=x: not a number: 'x'; --rtol -1: a tolerance is a number >= 0"):
        Tolerances.from_cli(["a=x"], ["-1"])


@needs_corpus
def test_unknown_key_and_tolerance_errors(golden, capsys):
    model = MODELS / f"{CORPUS}.onnx"
    user_error(trtc(capsys, "run", model, "--input", golden / "extra.npz"),
               f"--input: unknown input name(s) 'z' (from {golden / 'extra.npz'}): neither an input nor an output "
               "of the model", "the model's inputs are: x (outputs: y)")
    user_error(trtc(capsys, "run", model, "--input", golden / "x.npy", "--atol", "1e-2"),
               "--atol/--rtol apply to expected outputs, and no --input .npz holds any")
    user_error(trtc(capsys, "run", model, "--input", MODELS / f"{CORPUS}.npz", "--atol", "z=1"),
               "--atol/--rtol name no compared output: 'z'", "compared outputs: y")


@needs_corpus
def test_compare_with_stored_outputs(golden, capsys):
    model, stored = MODELS / f"{CORPUS}.onnx", MODELS / f"{CORPUS}.npz"
    rc, out, err = trtc(capsys, "compare", model, stored)
    assert rc == 0, err
    assert f"B: {stored} (stored outputs, reference)" in out
    assert "  y: match (max abs 0," in out and "for float32)" in out
    rc, out, err = trtc(capsys, "compare", model, golden / "bad.npz")
    assert "  y: MISMATCH" in out
    user_error((rc, out, err), f"{model} vs {golden / 'bad.npz'}: outputs differ: y", code=1)
    rc, out, _ = trtc(capsys, "compare", model, golden / "bad.npz", "--json")
    report = json.loads(out)
    assert rc == 1 and report["b"]["runs_on"] == "stored outputs" and report["outputs"]["y"]["match"] is False
    # Same tolerances as run: the fp16 artifact (through the simulation) with fp16 defaults.
    rc, out, err = trtc(capsys, "compare", golden / "m16.trtir", golden / "shifted.npz")
    assert rc == 0, err
    assert "A: " in out and "(CPU simulation of fp16)" in out and "tolerance atol 0.01 rtol 0.01 for fp16)" in out
    # An .npz without outputs is no reference; one without the inputs needs them from --input.
    user_error(trtc(capsys, "compare", model, golden / "outputs.npz"),
               "missing input(s) 'x'", "--generate x")
    rc, out, err = trtc(capsys, "compare", model, golden / "outputs.npz", "--input", golden / "x.npy")
    assert rc == 0, err
    np.savez(golden / "inputs.npz", x=np.load(golden / "x.npy"))
    user_error(trtc(capsys, "compare", model, golden / "inputs.npz"), "holds no output of", "outputs: y")
    # Expected outputs in the --input of a two-artifact compare are not the reference: said.
    rc, out, err = trtc(capsys, "compare", model, model, "--input", stored)
    assert rc == 0, err
    assert f"not used: expected y in --input (compare with them: trtc compare A {stored})" in out


def test_missing_input_is_an_error(two_inputs, capsys):
    model, ids = two_inputs / "two.onnx", two_inputs / "ids.npy"
    user_error(trtc(capsys, "run", model, "--input", f"ids={ids}"),
               "--input: missing input(s) 'bias': --input gives no data for them",
               "give them with --input NAME=file.npy, or generate them with --generate bias")
    # compare, and optimize --verify (calibration and verification read inputs the same way).
    user_error(trtc(capsys, "compare", model, model, "--input", f"ids={ids}"), "missing input(s) 'bias'")
    user_error(trtc(capsys, "optimize", model, "-o", two_inputs / "o.trtir", "--verify", "--input", f"ids={ids}"),
               "missing input(s) 'bias'")
    user_error(trtc(capsys, "optimize", model, "-o", two_inputs / "o.trtir", "--fp16", "--input", f"ids={ids}"),
               "missing input(s) 'bias'")


def test_generate_asked_for_is_generated_and_said(two_inputs, capsys):
    model, ids = two_inputs / "two.onnx", two_inputs / "ids.npy"
    rc, out, err = trtc(capsys, "run", model, "--input", f"ids={ids}", "--generate", "bias")
    assert rc == 0, err
    # batch comes from the given ids.
    assert out.splitlines()[0] == "generated: bias float32[2x4x8] uniform [-1, 1) seed 0"
    report = json.loads(trtc(capsys, "run", model, "--input", f"ids={ids}", "--generate", "bias", "--seed", "3",
                             "--json")[1])
    assert report["generated"] == [{"name": "bias", "dtype": "float32", "shape": [2, 4, 8],
                                    "distribution": "uniform", "low": -1.0, "high": 1.0, "seed": 3}]
    # No --input at all: everything generated, as before, and every one said.
    rc, out, err = trtc(capsys, "run", model)
    assert rc == 0, err
    assert out.splitlines()[:2] == ["generated: ids int64[1x4] integers [0, 10) seed 0",
                                    "generated: bias float32[1x4x8] uniform [-1, 1) seed 0"]
    rc, out, err = trtc(capsys, "compare", model, model, "--input", f"ids={ids}", "--generate", "bias")
    assert rc == 0, err
    assert "generated: bias float32[2x4x8]" in out
    rc, out, err = trtc(capsys, "optimize", model, "-o", two_inputs / "o.trtir", "--verify",
                        "--input", f"ids={ids}", "--generate", "bias")
    assert rc == 0, err
    # Generating what a file gives, or what is no input, is an error.
    user_error(trtc(capsys, "run", model, "--input", f"ids={ids}", "--generate", "ids", "--generate", "bais"),
               "--generate: no input named 'bais'", "'ids' both given by --input and asked for with --generate",
               "missing input(s) 'bias'")


def test_repeated_input_is_an_error(two_inputs, capsys):
    model, ids, bias = two_inputs / "two.onnx", two_inputs / "ids.npy", two_inputs / "bias.npy"
    user_error(trtc(capsys, "run", model, "--input", f"ids={ids}", "--input", f"ids={ids}", "--input", f"bias={bias}"),
               f"given more than once: 'ids' (--input ids={ids} and --input ids={ids})")
    np.savez(two_inputs / "both.npz", ids=np.load(ids), bias=np.load(bias))
    user_error(trtc(capsys, "run", model, "--input", two_inputs / "both.npz", "--input", f"bias={bias}"),
               f"given more than once: 'bias' ({two_inputs / 'both.npz'} and --input bias={bias})")


def test_every_problem_at_once(two_inputs, capsys):
    model, ids = two_inputs / "two.onnx", two_inputs / "ids.npy"
    user_error(trtc(capsys, "run", model, "--input", f"idz={ids}", "--input", f"ids={ids}", "--input", f"ids={ids}",
                    "--shape", "bais=1x4x8"),
               "--shape: no input named 'bais'", "given more than once: 'ids'", "unknown input name(s) 'idz'",
               "missing input(s) 'bias'", "the model's inputs are: ids, bias (outputs: y)")
    # An unreadable file: named with the rest, but no guess at what it would have given.
    line = user_error(trtc(capsys, "run", model, "--input", f"idz={ids}", "--input", two_inputs / "nowhere.npy"),
                      f"--input: {two_inputs / 'nowhere.npy'}: input file not found; unknown input name(s) 'idz'")
    assert "missing" not in line


def test_library_feeds():
    specs = [TensorSpec("a", np.dtype(np.float32), ("n", 2)), TensorSpec("b", np.dtype(np.int32), ("n",), 7)]
    # No files: everything generated (calibration relies on it), deterministic per seed.
    feeds = load_feeds(specs, FeedOptions(seed=1, shapes={"a": (3, 2)}), outputs=["y"])
    assert [g.describe() for g in feeds.generated] == ["a float32[3x2] uniform [-1, 1) seed 1",
                                                       "b int32[3] integers [0, 7) seed 1"]
    assert feeds.expected == {} and set(feeds.arrays) == {"a", "b"}
    assert np.array_equal(make_feeds(specs, FeedOptions(seed=1, shapes={"a": (3, 2)}))["a"], feeds.arrays["a"])
