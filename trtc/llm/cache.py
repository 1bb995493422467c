"""The KV cache of one generation, in the two forms trtc drives, behind the one interface the loop uses.

Growing (the export as written): the past goes in and the presents come out at every step, the
attention mask one column longer; prompts of different lengths are padded on the side the model
reads (`DecoderSpec.padding`).

Static (`optimize --llm --max-seq N`): caches [batch, kv_heads, Smax, head_dim] that the executor keeps
(host arrays fed back on the CPU reference, device buffers an engine updates in place), while the run
keeps each row's length. A step writes its tokens at `write_indices` = the row's length, positions
continuing from there. Prompts of different lengths are right-padded in the prefill: a row's pads sit
after its length, are never attended to and are overwritten by its next token; its next-token logits
are read at its own last prompt token, and from then on the rows advance independently (a finished
row feeds the pad id at its length and stays there).

`Decoder.start` makes a `Run` of either form: `prefill()` -> logits [B, S, V] with `last` (where each
row's next-token logits sit), then `step(ids, running)` -> logits [B, V] per token."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trtc.errors import TrtcError

if TYPE_CHECKING:
    from trtc.llm.decoder import Decoder, DecoderSpec

PREFILL, DECODE = "prefill", "decode"


@dataclasses.dataclass(frozen=True)
class StaticSpec:
    """What a static-cache decoder takes: `write_indices` (its input name and dtype), `max_seq` cache
    slots per row, at most `max_batch` rows (None: any) and prompts of at most `max_prompt` tokens (the
    prefill profile's), logits of the last token only when `last_logits`."""

    write_indices: str
    write_dtype: np.dtype
    max_seq: int
    max_prompt: int
    max_batch: int | None = None
    last_logits: bool = False

    @classmethod
    def from_llm(cls, llm: Mapping[str, Any], input_ids: str, write_dtype: np.dtype, logits_seq: Any) -> StaticSpec:
        """From the `llm` record of an artifact's meta or an engine's sidecar (or `cache_layout` of the
        graph, which lacks max_batch, last_logits and profiles); `logits_seq`: the logits' dim 1. The
        prefill profile's input_ids range bounds the batch and the prompt."""
        max_seq, max_batch = int(llm["max_seq"]), llm.get("max_batch")
        prefill = next((p for p in llm.get("profiles") or () if p.get("name") == PREFILL), None)
        ids_max = prefill["shapes"].get(input_ids, (None,) * 3)[2] if prefill else None
        max_prompt = max_seq
        if ids_max is not None and len(ids_max) == 2:
            max_batch = min(int(ids_max[0]), max_batch or int(ids_max[0]))
            max_prompt = min(int(ids_max[1]), max_seq)
        return cls(write_indices=llm["write_indices"]["name"], write_dtype=np.dtype(write_dtype), max_seq=max_seq,
                   max_prompt=max_prompt, max_batch=max_batch,
                   last_logits=bool(llm.get("last_logits", logits_seq == 1)))

    def as_dict(self) -> dict[str, Any]:
        return {"max_seq": self.max_seq, "max_batch": self.max_batch, "max_prompt": self.max_prompt,
                "last_logits": self.last_logits}


class CacheExecutor(Protocol):
    """An executor that keeps a static cache itself between steps (the CPU reference's host arrays, an
    engine's device buffers). `reset(batch)` starts a generation of `batch` rows; `run(feeds, phase)` runs
    one step (feeds: input_ids, position_ids, write_indices; phase PREFILL or DECODE) and returns the
    logits, the cache updated in place."""

    def reset(self, batch: int) -> None: ...

    def run(self, feeds: Mapping[str, np.ndarray], phase: str) -> np.ndarray: ...


class Run(Protocol):
    """One generation's cache: `prefill()` then `step()` per token; `last`: per row, where its
    next-token logits are in the prefill's [B, S, V]."""

    last: np.ndarray

    def prefill(self) -> np.ndarray: ...

    def step(self, ids: np.ndarray, running: np.ndarray) -> np.ndarray: ...


class HostCache:
    """A static cache in host memory for a `Step` that takes and returns the caches (the CPU reference):
    the presents of each step are the next step's cache inputs."""

    def __init__(self, spec: DecoderSpec, step: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]):
        self.spec = spec
        self._step = step
        self.caches: dict[str, np.ndarray] = {}

    def reset(self, batch: int) -> None:
        shape = (batch, self.spec.kv_heads, self.spec.static.max_seq, self.spec.head_dim)
        self.caches = {name: np.zeros(shape, self.spec.cache_dtype) for pair in self.spec.past for name in pair}

    def run(self, feeds: Mapping[str, np.ndarray], phase: str) -> np.ndarray:
        outputs = self._step({**feeds, **self.caches})
        for pasts, presents in zip(self.spec.past, self.spec.present):
            for past, present in zip(pasts, presents):
                self.caches[past] = outputs[present]
        return np.asarray(outputs[self.spec.logits])


class _Batch:
    """The padded batch of a growing cache: ids of the prefill, then the attention mask and positions of
    each step. Finished rows feed a pad that the mask hides, their positions left where they were."""

    def __init__(self, padding: str, rows: list[list[int]], pad_id: int):
        self.padding = padding
        self.valid = np.array([len(r) for r in rows])
        width = int(self.valid.max())
        self.ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            if padding == "left":
                self.ids[i, width - len(row):] = row
            else:
                self.ids[i, : len(row)] = row
        columns = np.arange(width)[None, :]
        left = columns >= width - self.valid[:, None]
        self.mask = (left if padding == "left" else columns < self.valid[:, None]).astype(np.int64)
        # HF generate's position_ids: cumsum(mask) - 1, and 1 at the pads.
        self.positions = np.where(self.mask, np.cumsum(self.mask, axis=1) - 1, 1)
        # Where each row's next-token logits are in the prefill's output.
        self.last = np.full(len(rows), width - 1) if padding == "left" else self.valid - 1

    def advance(self, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(attention mask, position_ids) for one more token per row; rows not `active` are masked."""
        self.valid = self.valid + active
        if self.padding == "left":
            self.mask = np.concatenate([self.mask, active[:, None].astype(np.int64)], axis=1)
        else:
            self.mask = (np.arange(self.mask.shape[1] + 1)[None, :] < self.valid[:, None]).astype(np.int64)
        return self.mask, (self.valid - 1)[:, None]


class GrowingRun:
    """A growing cache: the decoder's presents are the next step's past."""

    def __init__(self, decoder: Decoder, rows: list[list[int]], pad_id: int):
        if decoder.spec.attention_mask is None and len({len(r) for r in rows}) > 1:
            raise TrtcError("prompts of different lengths need an attention mask, and the model takes none",
                            where=decoder.where, hint="run them one at a time")
        self.decoder = decoder
        self.batch = _Batch(decoder.spec.padding, rows, pad_id)
        self.last = self.batch.last
        self.past: list[np.ndarray] = decoder.empty_past(len(rows))

    def prefill(self) -> np.ndarray:
        logits, self.past = self.decoder(self.batch.ids, self.batch.mask, self.batch.positions, self.past)
        return logits

    def step(self, ids: np.ndarray, running: np.ndarray) -> np.ndarray:
        mask, positions = self.batch.advance(running)
        logits, self.past = self.decoder(ids[:, None], mask, positions, self.past)
        return logits[:, -1]


class StaticRun:
    """A static cache: the executor keeps the caches, the run each row's length (its write index)."""

    def __init__(self, spec: DecoderSpec, executor: CacheExecutor, rows: list[list[int]],
                 new_tokens: Sequence[int], pad_id: int, where: str | None = None):
        check_capacity(spec.static, rows, new_tokens, where)
        self.spec, self.executor = spec, executor
        self.lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.ids = np.full((len(rows), int(self.lengths.max())), pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            self.ids[i, : len(row)] = row
        self.last = np.zeros(len(rows), np.int64) if spec.static.last_logits else self.lengths - 1
        executor.reset(len(rows))

    def _feeds(self, ids: np.ndarray, write: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.spec
        feeds = {spec.input_ids: np.ascontiguousarray(ids, spec.ids_dtype),
                 spec.static.write_indices: np.ascontiguousarray(write, spec.static.write_dtype)}
        if spec.position_ids:
            feeds[spec.position_ids] = np.ascontiguousarray(positions, spec.position_dtype)
        return feeds

    def prefill(self) -> np.ndarray:
        """Every row's padded prompt at slots 0..width-1 (positions 0..width-1)."""
        batch, width = self.ids.shape
        positions = np.broadcast_to(np.arange(width, dtype=np.int64), (batch, width))
        return self.executor.run(self._feeds(self.ids, np.zeros(batch, np.int64), positions), PREFILL)

    def step(self, ids: np.ndarray, running: np.ndarray) -> np.ndarray:
        """One token per row at its own length; the rows that took a real token grow by one."""
        logits = self.executor.run(self._feeds(ids[:, None], self.lengths, self.lengths[:, None]), DECODE)
        self.lengths = self.lengths + running.astype(np.int64)
        return logits[:, -1]


def check_capacity(static: StaticSpec, rows: list[list[int]], new_tokens: Sequence[int],
                   where: str | None = None) -> None:
    """One line, before anything runs, for a batch the static cache cannot take: more rows than its
    max batch, prompts of different lengths with last-token logits, a prompt longer than the prefill
    profile, or a prompt and its new tokens beyond --max-seq."""
    if static.max_batch is not None and len(rows) > static.max_batch:
        raise TrtcError(f"{len(rows)} prompts in one batch, and the static cache holds {static.max_batch} rows",
                        where=where, hint=f"give at most {static.max_batch} prompts at once, or optimize with a "
                                          "larger --max-batch")
    lengths = sorted({len(r) for r in rows})
    if static.last_logits and len(lengths) > 1:
        raise TrtcError(f"prompts of different lengths ({', '.join(map(str, lengths))} tokens) in one batch, and "
                        "the model returns logits at the last position only (--last-logits)", where=where,
                        hint="run prompts of one length together, or optimize without --last-logits")
    for i, (row, new) in enumerate(zip(rows, new_tokens)):
        at = f"prompt {i + 1}" if len(rows) > 1 else "prompt"
        if len(row) > static.max_prompt:
            raise TrtcError(f"the prompt has {len(row)} tokens, more than the prefill profile takes "
                            f"({static.max_prompt})", where=at, hint="give a shorter prompt, or build with a "
                                                                      "longer prefill profile (--max-seq)")
        if len(row) + int(new) > static.max_seq:
            room = static.max_seq - len(row)
            raise TrtcError(f"the prompt's {len(row)} tokens and {int(new)} new ones need {len(row) + int(new)} "
                            f"cache slots, more than the static cache's {static.max_seq} (--max-seq)", where=at,
                            hint=(f"ask for at most {room} new tokens, or " if room > 0 else "") +
                            "optimize with a larger --max-seq")
