"""The generation loop: one for every executor and both cache forms (a `Decoder` wraps whichever
runs the steps; `Decoder.start` gives the cache of one generation, trtc/llm/cache.py).

A batch of prompts of different lengths is padded to one width with the pad id. A growing cache
masks the pads (attention mask 0): on the left for HF-style decoders (position_ids = cumsum(mask) - 1
and 1 at the pads, as HF generate writes them), on the right where the model reads a row's last
position from the mask (`DecoderSpec.padding`). A static cache (--llm) right-pads and keeps each
row's length, where its next token is written. The prefill runs the prompts; each row's next-token
logits are read at its own last prompt token; then one token per step. A row stops at a stop token
(kept, as HF keeps eos) or its token budget; finished rows feed the pad id until every row is
done, their outputs ignored."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from trtc.errors import TrtcError
from trtc.llm.decoder import Decoder
from trtc.llm.sampling import Sampler, SamplingOptions

# Called after each step with the step number (0 = the prefill's token), the token chosen per row
# and which rows took it (rows finished earlier are False).
OnToken = Callable[[int, np.ndarray, np.ndarray], None]


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """`max_new_tokens` per row; `stop_tokens` end a row (the token kept in its output); `pad_id`
    fills the pad positions and finished rows (never attended to, so any id in the vocabulary)."""

    max_new_tokens: int = 32
    sampling: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise TrtcError(f"{self.max_new_tokens} must be >= 1", where="--max-new-tokens")


@dataclasses.dataclass
class RowResult:
    """One prompt's outcome: `finish_reason` "stop" (a stop token, kept as the last id) or "length"."""

    prompt_ids: list[int]
    ids: list[int]
    finish_reason: str
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Timings:
    """`prefill_s`: start to the first token (the prefill step and its sampling: time to first
    token); `decode_s`: the steps after it, which made `decode_tokens` tokens over all rows."""

    prefill_s: float
    decode_s: float
    prompt_tokens: int
    new_tokens: int
    decode_tokens: int
    steps: int

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 and self.decode_tokens else None

    @property
    def tokens_per_s(self) -> float | None:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"time_to_first_token_s": self.prefill_s, "decode_s": self.decode_s,
                "total_s": self.prefill_s + self.decode_s, "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens, "steps": self.steps, "tokens_per_s": self.tokens_per_s,
                "decode_tokens_per_s": self.decode_tokens_per_s}


@dataclasses.dataclass
class GenerateResult:
    rows: list[RowResult]
    timings: Timings
    executor: str
    sampling: SamplingOptions

    def as_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "rows": [r.as_dict() for r in self.rows],
                "timings": self.timings.as_dict(), "sampling": self.sampling.as_dict()}


def check_prompts(prompts: Sequence[Sequence[int]], vocab: int | None) -> list[list[int]]:
    """The prompts as lists of ints; one line for an empty batch, an empty prompt or an id out of range."""
    rows = [[int(t) for t in p] for p in prompts]
    if not rows:
        raise TrtcError("no prompt given", hint="give --prompt-ids 1,2,3 or --prompt TEXT with a tokenizer")
    for i, row in enumerate(rows):
        where = f"prompt {i + 1}" if len(rows) > 1 else "prompt"
        if not row:
            raise TrtcError("the prompt is empty (no tokens)", where=where)
        bad = [t for t in row if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            limit = f"[0, {vocab})" if vocab is not None else ">= 0"
            raise TrtcError(f"token id {bad[0]} is outside the vocabulary {limit}", where=where)
    return rows


def _budgets(decoder: Decoder, rows: list[list[int]], options: GenerateOptions) -> np.ndarray:
    """New tokens allowed per row: max_new_tokens, cut so that prompt + new fits the model's
    positions (and the genai config's max_length); a prompt leaving no room is refused."""
    spec = decoder.spec
    limits = [(spec.max_positions, spec.max_positions_from), (options.max_length, "max_length")]
    budgets = np.full(len(rows), options.max_new_tokens)
    for limit, source in limits:
        if limit is None:
            continue
        for i, row in enumerate(rows):
            if len(row) >= limit:
                raise TrtcError(f"the prompt has {len(row)} tokens and the model takes at most {limit} positions "
                                f"({source}): no room for a new token",
                                where=f"prompt {i + 1}" if len(rows) > 1 else "prompt")
            budgets[i] = min(budgets[i], limit - len(row))
    return budgets


@dataclasses.dataclass
class _Rows:
    """Each row's new tokens and why it finished (None while it runs)."""

    budgets: np.ndarray
    stops: frozenset[int]
    generated: list[list[int]]
    reasons: list[str | None]

    @property
    def active(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons])

    def take(self, tokens: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
        """Add this step's token to each running row; returns which rows took one."""
        active = self.active
        for i in np.flatnonzero(active):
            token = int(tokens[i])
            self.generated[i].append(token)
            if seen is not None:
                seen[i, token] = True
            if token in self.stops:
                self.reasons[i] = "stop"
            elif len(self.generated[i]) >= self.budgets[i]:
                self.reasons[i] = "length"
        return active


def generate(decoder: Decoder, prompts: Sequence[Sequence[int]], options: GenerateOptions | None = None, *,
             tokenizer: Detokenizer | None = None, on_token: OnToken | None = None) -> GenerateResult:
    """Generate up to `options.max_new_tokens` tokens after each prompt (token ids; a batch may mix
    lengths). `on_token` sees every step's tokens as they come; `tokenizer` adds each row's text."""
    options = options or GenerateOptions()
    rows = check_prompts(prompts, decoder.spec.vocab)
    budgets = _budgets(decoder, rows, options)
    state = _Rows(budgets, frozenset(options.stop_tokens), [[] for _ in rows], [None] * len(rows))
    cache = decoder.start(rows, budgets, options.pad_id)  # refuses what the cache cannot hold, before any step
    sampler = Sampler(options.sampling)

    start = time.perf_counter()
    step_logits = cache.prefill()[np.arange(len(rows)), cache.last]
    # The repetition penalty's context: each prompt's tokens (not the pads HF would count too).
    seen = _seen(rows, step_logits.shape[-1]) if options.sampling.repetition_penalty != 1 else None
    prefill_s = decode_start = 0.0
    step = 0
    while True:
        tokens = sampler(step_logits, seen)
        active = state.take(tokens, seen)
        if step == 0:
            prefill_s = time.perf_counter() - start
            decode_start = time.perf_counter()
        if on_token:
            on_token(step, tokens, active)
        running = state.active
        if not running.any():
            break
        step += 1
        step_logits = cache.step(np.where(running, tokens, options.pad_id), running)
    decode_s = time.perf_counter() - decode_start if step else 0.0
    new = sum(map(len, state.generated))
    timings = Timings(prefill_s=prefill_s, decode_s=decode_s, prompt_tokens=sum(map(len, rows)),
                      new_tokens=new, decode_tokens=new - len(rows), steps=step + 1)
    results = [RowResult(prompt_ids=r, ids=g, finish_reason=str(why), text=tokenizer.decode(g) if tokenizer else None)
               for r, g, why in zip(rows, state.generated, state.reasons)]
    return GenerateResult(rows=results, timings=timings, executor=decoder.executor, sampling=options.sampling)


def _seen(rows: list[list[int]], vocab: int) -> np.ndarray:
    """Which tokens each prompt holds, bool [batch, vocab]."""
    seen = np.zeros((len(rows), vocab), dtype=bool)
    for i, row in enumerate(rows):
        seen[i, row] = True
    return seen
