"""The fuzz harness (tests/fuzzing) on a short seeded run, and the harness's own parts: the seed models
are valid end to end, mutants are reproducible from their seed, every mutator applies, and each kind of
crash is told from a refusal. `benchmarks/fuzz.py --seconds N` runs the same harness for longer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzzing.driver import Call, Driver, Mutant, campaign, classify, make_mutant, mutants
from fuzzing.mutate import MUTATORS
from fuzzing.seeds import builtin_seeds

# The seeded run: mutants 0..N-1 of the built-in seeds, a third through optimize, a few built.
SEEDED_MUTANTS = 600


@pytest.mark.slow
def test_seeded_mutants_never_crash(tmp_path):
    tally = campaign(range(SEEDED_MUTANTS), builtin_seeds(), tmp_path, optimize_share=0.3, build_share=0.05)
    assert tally.mutants == SEEDED_MUTANTS
    assert not tally.crashes, f"{len(tally.crashes)} crash(es):\n\n" + "\n\n".join(tally.crashes)
    # The run reaches every stage, not only parse's refusals.
    assert tally.calls["parse ok"] and tally.calls["run ok"] and tally.calls["optimize ok"], tally.calls


@pytest.mark.slow
def test_seed_models_go_through_every_stage(tmp_path):
    driver = Driver(tmp_path, optimize_share=1.0, build_share=1.0)
    try:
        for seed in builtin_seeds():
            case = driver.run(Mutant(0, seed.name, [], [], seed.model, dict(seed.files)))
            assert [(c.stage, c.verdict) for c in case.calls] == [
                ("parse", "ok"), ("run", "ok"), ("optimize", "ok"), ("build", "ok")], \
                [f"{c.stage}: {c.stderr}" for c in case.calls]
    finally:
        driver.close()


def test_a_mutant_is_its_seed():
    bases = builtin_seeds()
    first = [(m.model, m.files, m.notes) for m in mutants(range(40), bases)]
    again = [(m.model, m.files, m.notes) for m in mutants(range(40), bases)]
    assert first == again
    assert len({model for model, _, _ in first}) > 30  # and different seeds make different mutants


def test_every_mutator_applies_to_some_seed():
    bases = builtin_seeds()
    for mutator in MUTATORS:
        applied = {make_mutant(seed, base, mutators=[mutator], stack=0).mutators == [mutator.name]
                   for seed in range(5) for base in bases}
        assert True in applied, mutator.name


def _call(rc=2, stderr="trtc: error: m.onnx: bad\n", stdout="", timed_out=False) -> Call:
    return Call("parse", [], rc, timed_out, stdout, stderr, 0.1)


@pytest.mark.parametrize(("call", "left", "verdict", "why"), [
    (_call(0, ""), ["out"], "ok", ""),
    (_call(), [], "refused", ""),
    (_call(1), [], "refused", ""),
    (_call(0, ""), [], "crash", "exit 0 without out"),
    (_call(1, "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n"), [], "crash", "traceback"),
    (_call(-11, ""), [], "crash", "killed by SIGSEGV"),
    (_call(-9, "", timed_out=True), [], "crash", "hang: no answer in 0s"),
    (_call(3), [], "crash", "exit code 3"),
    (_call(2, "trtc: error: a\ntrtc: error: b\n"), [], "crash", "2 'trtc: error:' lines"),
    (_call(2, "warning: something\n"), [], "crash", "0 'trtc: error:' lines"),
    (_call(), ["out"], "crash", "failed but left out"),
    (_call(), [".out.123.abc.tmp"], "crash", "temporary file(s) left: .out.123.abc.tmp"),
])
def test_outcomes_are_classified(tmp_path: Path, call, left, verdict, why):
    for name in left:
        (tmp_path / name).write_bytes(b"")
    classify(call, [tmp_path / "out"], tmp_path)
    assert (call.verdict, call.why) == (verdict, why)


def test_a_refusal_in_words_from_inside_trtc_is_leaky(tmp_path):
    call = _call(2, "trtc: error: m.trtir: onnx.reference cannot run it either: TypeError: Issues with types\n")
    classify(call, [], tmp_path)
    assert call.verdict == "refused" and call.leaky
    plain = _call(2, "trtc: error: m.onnx: invalid ONNX model: node 'fc2' (MatMul): Incompatible dimensions\n")
    classify(plain, [], tmp_path)
    assert not plain.leaky


@pytest.mark.slow
def test_the_fork_server_and_a_subprocess_agree(tmp_path):
    """What the fast path reports is what `python -m trtc` does (exit code and stderr)."""
    bases = builtin_seeds()
    chosen = [make_mutant(seed, bases[seed % len(bases)]) for seed in random.Random(5).sample(range(1000), 6)]
    results = []
    for fork in (True, False):
        driver = Driver(tmp_path / str(fork), fork=fork, optimize_share=0, build_share=0)
        try:
            results.append([[(c.stage, c.rc, c.stderr.strip().splitlines()[-1:]) for c in driver.run(m).calls]
                            for m in chosen])
        finally:
            driver.close()
    assert results[0] == results[1]
