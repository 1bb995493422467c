"""The generation loop: one for every executor (a `Decoder` wraps whichever runs the steps).

A batch of prompts of different lengths is padded to one width with the pad id, attention mask 0
at the pads: on the left for HF-style decoders (position_ids = cumsum(mask) - 1 and 1 at the
pads, as HF generate writes them), on the right where the model reads a row's last position
from the mask (`DecoderSpec.padding`). The prefill runs the prompts with an empty cache; then one
token per step, the presents fed back as past and the mask one column longer. A row stops at a
stop token (kept, as HF keeps eos) or its token budget; finished rows feed the pad id until
every row is done, their outputs ignored."""

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


def _layout(spec_padding: str, valid: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(attention mask [B, width], position_ids [B, width]) for rows of `valid` tokens padded to
    `width`: left padding puts the tokens last, right padding first; pads get position 1 (HF)."""
    columns = np.arange(width)[None, :]
    if spec_padding == "left":
        mask = columns >= width - valid[:, None]
    else:
        mask = columns < valid[:, None]
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, 1)
    return mask.astype(np.int64), positions.astype(np.int64)


def generate(decoder: Decoder, prompts: Sequence[Sequence[int]], options: GenerateOptions | None = None, *,
             tokenizer: Detokenizer | None = None, on_token: OnToken | None = None) -> GenerateResult:
    """Generate up to `options.max_new_tokens` tokens after each prompt (token ids; a batch may mix
    lengths). `on_token` sees every step's tokens as they come; `tokenizer` adds each row's text."""
    options = options or GenerateOptions()
    spec = decoder.spec
    rows = check_prompts(prompts, spec.vocab)
    if spec.attention_mask is None and len({len(r) for r in rows}) > 1:
        raise TrtcError("prompts of different lengths need an attention mask, and the model takes none",
                        where=decoder.where, hint="run them one at a time")
    budgets = _budgets(decoder, rows, options)
    batch, width = len(rows), max(map(len, rows))
    valid = np.array([len(r) for r in rows])
    ids = np.full((batch, width), options.pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        if spec.padding == "left":
            ids[i, width - len(row):] = row
        else:
            ids[i, : len(row)] = row
    mask, positions = _layout(spec.padding, valid, width)
    sampler = Sampler(options.sampling)
    seen = None  # the tokens of each row's context, when the repetition penalty needs them
    generated: list[list[int]] = [[] for _ in rows]
    reasons: list[str | None] = [None] * batch
    stops = set(options.stop_tokens)

    start = time.perf_counter()
    logits, past = decoder(ids, mask, positions, decoder.empty_past(batch))
    last = width - 1 if spec.padding == "left" else valid - 1
    step_logits = logits[np.arange(batch), last]
    prefill_s = decode_start = 0.0
    step = 0
    while True:
        if step == 0 and options.sampling.repetition_penalty != 1:
            seen = _seen(rows, step_logits.shape[-1])
        tokens = sampler(step_logits, seen)
        active = np.array([r is None for r in reasons])
        for i in np.flatnonzero(active):
            token = int(tokens[i])
            generated[i].append(token)
            if seen is not None:
                seen[i, token] = True
            if token in stops:
                reasons[i] = "stop"
            elif len(generated[i]) >= budgets[i]:
                reasons[i] = "length"
        if step == 0:
            prefill_s = time.perf_counter() - start
            decode_start = time.perf_counter()
        if on_token:
            on_token(step, tokens, active)
        if all(r is not None for r in reasons):
            break
        step += 1
        feed = np.where([r is None for r in reasons], tokens, options.pad_id)[:, None]
        valid = valid + 1
        width += 1
        mask, positions = _layout(spec.padding, valid, width)
        logits, past = decoder(feed, mask, (valid - 1)[:, None], past)
        step_logits = logits[:, -1]
    decode_s = time.perf_counter() - decode_start if step else 0.0
    texts = [tokenizer.decode(g) for g in generated] if tokenizer else [None] * batch
    new = sum(map(len, generated))
    timings = Timings(prefill_s=prefill_s, decode_s=decode_s, prompt_tokens=int(sum(map(len, rows))),
                      new_tokens=new, decode_tokens=new - batch, steps=step + 1)
    results = [RowResult(prompt_ids=r, ids=g, finish_reason=str(why), text=t)
               for r, g, why, t in zip(rows, generated, reasons, texts)]
    return GenerateResult(rows=results, timings=timings, executor=decoder.executor, sampling=options.sampling)


def _seen(rows: list[list[int]], vocab: int) -> np.ndarray:
    """Which tokens each prompt holds, bool [batch, vocab]: the repetition penalty's context
    (the prompt's tokens only, not the pads HF would count in a padded batch)."""
    seen = np.zeros((len(rows), vocab), dtype=bool)
    for i, row in enumerate(rows):
        seen[i, row] = True
    return seen
