"""The sampler as pure functions over numpy: greedy ties, HF's repetition penalty against a hand
computation, top-k / top-p / min-p on known distributions, seeding, temperature near 0, and the
option checks' one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest

from trtc.errors import TrtcError
from trtc.llm.sampling import (
    Sampler,
    SamplingOptions,
    apply_repetition_penalty,
    greedy,
    min_p_filter,
    sample_logits,
    top_k_filter,
    top_p_filter,
)

# probabilities 0.5, 0.3, 0.15, 0.05 (a known distribution for the filters)
KNOWN = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))


def random_logits(rows: int = 8, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, vocab)).astype(np.float32)


def kept(logits: np.ndarray) -> list[int]:
    return np.flatnonzero(np.isfinite(logits[0])).tolist()


def test_greedy_ties_go_to_the_lowest_id():
    logits = np.array([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
    assert greedy(logits).tolist() == [1, 0]


def test_repetition_penalty_as_hf_computes_it():
    """HF: a seen token's positive logit is divided by the penalty, a negative one multiplied."""
    logits = np.array([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]], np.float32)
    seen = np.array([[True, True, False, False], [False, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]]
    assert out.dtype == np.float32
    assert apply_repetition_penalty(logits, seen, 1.0) is logits
    # It applies to greedy too (as in HF): the seen best token loses to the unseen second.
    chosen = sample_logits(np.array([[3.0, 2.0]]), SamplingOptions(repetition_penalty=2.0), np.random.default_rng(),
                           seen=np.array([[True, False]]))
    assert chosen.tolist() == [1]


def test_top_k_keeps_the_k_best_and_ties_at_the_kth():
    assert kept(top_k_filter(KNOWN, 2)) == [0, 1]
    assert kept(top_k_filter(np.array([[1.0, 3.0, 3.0, 0.0]]), 1)) == [1, 2]
    assert top_k_filter(KNOWN, 0) is KNOWN and top_k_filter(KNOWN, 10) is KNOWN


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(top_p_filter(KNOWN, 0.4)) == [0]
    assert kept(top_p_filter(KNOWN, 0.7)) == [0, 1]  # 0.5 < 0.7: the token crossing p is kept
    assert kept(top_p_filter(KNOWN, 0.9)) == [0, 1, 2]
    assert kept(top_p_filter(KNOWN, 0.01)) == [0]  # the best token always stays
    assert top_p_filter(KNOWN, 1.0) is KNOWN


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    assert kept(min_p_filter(KNOWN, 0.2)) == [0, 1, 2]  # threshold 0.1
    assert kept(min_p_filter(KNOWN, 0.5)) == [0, 1]  # threshold 0.25
    assert min_p_filter(KNOWN, 0.0) is KNOWN


def test_top_k_1_is_greedy_whatever_the_seed():
    logits = random_logits()
    for seed in range(5):
        options = SamplingOptions(do_sample=True, temperature=1.5, top_k=1, seed=seed)
        assert Sampler(options)(logits).tolist() == greedy(logits).tolist()


def test_temperature_zero_and_near_zero_are_greedy():
    logits = random_logits(rows=16, vocab=200, seed=3) * 30  # large logits: /1e-6 would overflow float32
    assert SamplingOptions(do_sample=True, temperature=0).greedy
    assert Sampler(SamplingOptions(do_sample=True, temperature=0, seed=1))(logits).tolist() == greedy(logits).tolist()
    tiny = Sampler(SamplingOptions(do_sample=True, temperature=1e-6, seed=1))(logits)
    assert tiny.tolist() == greedy(logits).tolist()


def test_the_same_seed_gives_the_same_tokens():
    logits = random_logits(rows=4, vocab=1000)
    options = SamplingOptions(do_sample=True, temperature=1.0, seed=42)
    first = [Sampler(options)(logits).tolist() for _ in range(2)]
    assert first[0] == first[1]
    others = {tuple(Sampler(SamplingOptions(do_sample=True, seed=s))(logits).tolist()) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_draws_follow_the_filtered_distribution():
    """top-k 2 over 0.5/0.3/0.15/0.05: only ids 0 and 1, in the ratio 5:3 (within sampling noise)."""
    sampler = Sampler(SamplingOptions(do_sample=True, top_k=2, seed=7))
    draws = np.concatenate([sampler(np.repeat(KNOWN, 500, axis=0)) for _ in range(4)])
    counts = np.bincount(draws, minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / draws.size - 0.625) < 0.03


def test_rows_are_sampled_independently():
    logits = np.full((2, 6), -np.inf)
    logits[0, 4] = 0.0  # row 0 can only take 4, row 1 only 1
    logits[1, 1] = 0.0
    assert Sampler(SamplingOptions(do_sample=True, seed=0))(logits).tolist() == [4, 1]


@pytest.mark.parametrize("field, value, where, text", [
    ("top_p", 1.5, "--top-p", "1.5 must be in (0, 1]"),
    ("top_p", 0.0, "--top-p", "0.0 must be in (0, 1]"),
    ("temperature", -1.0, "--temperature", "must be >= 0"),
    ("top_k", -2, "--top-k", "must be >= 0"),
    ("min_p", 2.0, "--min-p", "must be in [0, 1]"),
    ("repetition_penalty", 0.0, "--repetition-penalty", "must be > 0"),
])
def test_options_out_of_range_are_one_line(field, value, where, text):
    with pytest.raises(TrtcError) as info:
        SamplingOptions(do_sample=True, **{field: value})
    assert info.value.where == where and text in info.value.one_line()
    assert "\n" not in info.value.one_line()
