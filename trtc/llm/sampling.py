"""The one sampler: next-token choice from logits [batch, vocab], per row, pure numpy.

The order and meaning of each step follow HF transformers' generate, so a setting means here what
it means there: repetition penalty (on the row's context), then temperature, top-k, top-p, min-p,
then a draw from the softmax. Greedy is argmax, ties to the lowest id (numpy's and torch's argmax).
Filtering works in float64 over logits shifted by their row maximum, so a temperature near 0
tends to greedy instead of overflowing."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from trtc.errors import TrtcError


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen. `do_sample` False (or temperature 0) is greedy; top_k 0,
    top_p 1 and min_p 0 filter nothing; repetition_penalty 1 changes nothing (it applies to
    greedy too, as in HF). `seed` seeds one numpy Generator per generation."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = (("--temperature", self.temperature >= 0, "must be >= 0 (0 is greedy)"),
                  ("--top-k", self.top_k >= 0, "must be >= 0 (0 keeps every token)"),
                  ("--top-p", 0 < self.top_p <= 1, "must be in (0, 1]"),
                  ("--min-p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
                  ("--repetition-penalty", self.repetition_penalty > 0, "must be > 0 (1 is none)"))
        for option, ok, rule in checks:
            if not ok:
                value = getattr(self, option[2:].replace("-", "_"))
                raise TrtcError(f"{value} {rule}", where=option)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        if self.greedy:
            return {"mode": "greedy", "repetition_penalty": self.repetition_penalty}
        return {"mode": "sample", **{k: v for k, v in dataclasses.asdict(self).items() if k != "do_sample"}}


def greedy(logits: np.ndarray) -> np.ndarray:
    """The highest logit's id per row, the lowest id among ties."""
    return np.argmax(logits, axis=-1)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """HF's RepetitionPenaltyLogitsProcessor: for the tokens already in a row's context (`seen`,
    bool [batch, vocab]), positive logits divided by `penalty`, negative ones multiplied by it."""
    if penalty == 1.0:
        return logits
    penalized = np.where(logits < 0, logits * penalty, logits / penalty)
    return np.where(seen, penalized, logits).astype(logits.dtype, copy=False)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """-inf for all but the k highest logits of each row (ties at the k-th kept, as HF does)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the most probable tokens whose probabilities sum to at least `p` (the token
    crossing `p` included, the most probable always kept); -inf for the rest."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    probs = np.take_along_axis(softmax(logits), order, axis=-1)
    before = np.cumsum(probs, axis=-1) - probs  # the mass of the tokens ranked above each one
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def min_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """-inf for tokens less probable than `p` times the row's most probable token (HF's MinP)."""
    if p <= 0.0:
        return logits
    probs = softmax(logits)
    return np.where(probs < p * probs.max(axis=-1, keepdims=True), -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities per row, in float64; -inf logits get 0."""
    shifted = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sample_logits(logits: np.ndarray, options: SamplingOptions, rng: np.random.Generator,
                  seen: np.ndarray | None = None) -> np.ndarray:
    """The next token id per row of `logits` [batch, vocab]: greedy or one draw per row from the
    filtered softmax (`rng`, one uniform number per row, so a seed fixes every row's choice)."""
    logits = np.asarray(logits)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, options.repetition_penalty)
    if options.greedy:
        return greedy(logits)
    scaled = logits.astype(np.float64)
    scaled = (scaled - scaled.max(axis=-1, keepdims=True)) / options.temperature
    scaled = min_p_filter(top_p_filter(top_k_filter(scaled, options.top_k), options.top_p), options.min_p)
    cumulative = np.cumsum(softmax(scaled), axis=-1)
    draws = rng.random(logits.shape[0]) * cumulative[:, -1]
    chosen = np.array([np.searchsorted(row, u, side="right") for row, u in zip(cumulative, draws)])
    return np.minimum(chosen, logits.shape[-1] - 1)


class Sampler:
    """`sample_logits` with one seeded Generator for a whole generation: the same seed, the same tokens."""

    def __init__(self, options: SamplingOptions | None = None):
        self.options = options or SamplingOptions()
        self.rng = np.random.default_rng(self.options.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        return sample_logits(logits, self.options, self.rng, seen)
