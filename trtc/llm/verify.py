"""Token-level verification of one decoder against another, teacher-forced.

Both decoders are fed the same tokens: a prompt, then a continuation (by default A's own greedy
one), one token per step, each side with its OWN KV cache, so a token one side would have chosen
differently never changes what either side sees next (no cascade). At every step the next-token
logits of B are measured against A's (A is the reference; `trtc.reference.metrics`): cosine and
max abs error, top-1 agreement, top-k overlap. The prefill's earlier positions (each predicting the
prompt's next token) are measured too, summed up per row.

    step 0        prefill of the prompt      -> logits at its last position (predict continuation[0])
    step s >= 1   continuation[s - 1] fed    -> logits predicting continuation[s]

Rows of one prompt length (and continuation length) run as one batch: no padding, so nothing
but the two executors differs between the sides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import CheckFailed, TrtcError
from trtc.llm.decoder import Decoder, open_decoder, reference_decoder
from trtc.llm.sampling import greedy
from trtc.reference.metrics import error_metrics

DEFAULT_STEPS = 16
DEFAULT_TOP_K = 5
# Between reduced precision and a wrong computation. fp16 keeps 11 significant bits: trtc's fp16
# artifacts of the corpus decoders stay at 0.9999995 or above on every step's logits, bf16 (8 bits)
# at 0.99997 (LLaMA); a wrong computation (rotary at the wrong position, a cache read off by one, a
# missing mask, other weights) falls far below 0.99 at the steps it touches.
DEFAULT_MIN_COSINE = 0.999
# The prompt when none is given: rows x tokens of seeded random ids in [3, vocab) (the low ids are
# usually pad/bos/eos).
DEFAULT_PROMPT_SHAPE = (2, 8)


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """`steps`: continuation tokens per row when A's greedy continuation is fed (a given one sets
    its own length); `top_k`: the k of the top-k overlap; `min_cosine`: the least logits cosine a
    step (or prompt position) may have (None: no check)."""

    steps: int = DEFAULT_STEPS
    top_k: int = DEFAULT_TOP_K
    min_cosine: float | None = DEFAULT_MIN_COSINE

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TrtcError(f"{self.steps} must be >= 1", where="--steps")
        if self.top_k < 1:
            raise TrtcError(f"{self.top_k} must be >= 1", where="--top-k")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise TrtcError(f"{self.min_cosine} must be in [-1, 1]", where="--min-cosine")


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One row at one step: the token fed (-1: the prompt, at step 0), the continuation token the
    logits predict, B's logits against A's, each side's top-1 and how many of the top k both share."""

    step: int
    row: int
    fed: int
    next: int
    metrics: dict[str, Any]
    top1_a: int
    top1_b: int
    top_k_shared: int

    @property
    def cosine(self) -> float:
        return self.metrics["cosine"]

    @property
    def agree(self) -> bool:
        return self.top1_a == self.top1_b

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "row": self.row, "fed": None if self.fed < 0 else self.fed, "next": self.next,
                **self.metrics, "top1_a": self.top1_a, "top1_b": self.top1_b, "agree": self.agree,
                "top_k_shared": self.top_k_shared}


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """The prefill's positions before the last, of one row: each predicts the prompt's next token."""

    row: int
    positions: int
    min_cosine: float
    min_cosine_at: int | None
    max_abs_error: float
    agree: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VerifyResult:
    """Everything one verification measured; `steps` ordered by step, then row."""

    a: dict[str, str]
    b: dict[str, str]
    prompts: list[list[int]]
    continuations: list[list[int]]
    continuation_from: str
    options: VerifyOptions
    steps: list[StepResult]
    prompt_positions: list[PromptResult]

    def first_divergence(self) -> list[int | None]:
        """Per row, the first step where B's top-1 differs from A's (None: never)."""
        first: list[int | None] = [None] * len(self.prompts)
        for s in self.steps:
            if not s.agree and first[s.row] is None:
                first[s.row] = s.step
        return first

    def failures(self) -> list[str]:
        """Each step and prompt position below min_cosine (NaN included), worst first."""
        bound = self.options.min_cosine
        if bound is None:
            return []
        low = [(s.cosine, f"step {s.step} row {s.row}") for s in self.steps if not s.cosine >= bound]
        low += [(p.min_cosine, f"prompt position {p.min_cosine_at} row {p.row}") for p in self.prompt_positions
                if not p.min_cosine >= bound]
        low.sort(key=lambda item: -2.0 if np.isnan(item[0]) else item[0])
        return [f"{where}: logits cosine {_cos(cosine)}" for cosine, where in low]

    def summary(self) -> dict[str, Any]:
        worst_cos = min(self.steps, key=lambda s: -2.0 if np.isnan(s.cosine) else s.cosine)
        worst_err = max(self.steps, key=lambda s: s.metrics["max_abs_error"])
        agree = sum(s.agree for s in self.steps)
        return {"min_cosine": worst_cos.cosine, "min_cosine_at": {"step": worst_cos.step, "row": worst_cos.row},
                "max_abs_error": worst_err.metrics["max_abs_error"],
                "max_abs_error_at": {"step": worst_err.step, "row": worst_err.row},
                "top1_agreement": agree / len(self.steps), "top1_agree": agree, "compared": len(self.steps),
                "top_k_overlap": sum(s.top_k_shared for s in self.steps) / (len(self.steps) * self.options.top_k),
                "first_divergence": self.first_divergence(), "below_min_cosine": len(self.failures())}

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "reference": "A", "prompts": self.prompts,
                "continuations": self.continuations, "continuation_from": self.continuation_from,
                "top_k": self.options.top_k, "min_cosine": self.options.min_cosine,
                "summary": self.summary(), "prompt_positions": [p.as_dict() for p in self.prompt_positions],
                "steps": [s.as_dict() for s in self.steps], "match": self.passed}


def open_verified(path: str | Path) -> Decoder:
    """A decoder for verification: .onnx / genai folder as exported, a .trtir on the CPU reference,
    and one typed for fp16/bf16 through the precision simulation (as `trtc compare` runs it, the
    prediction of its engine). A .plan needs a GPU: refused in one line without one."""
    from trtc.loading import artifact_kind
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    path = Path(path)
    if path.suffix in PLAN_SUFFIXES and path.is_file():
        from trtc.runtime.engine import no_gpu_reason

        reason = no_gpu_reason()
        if reason is not None:
            raise TrtcError(f"cannot run a TensorRT engine here: {reason}", where=str(path),
                            hint="verify the .trtir it was built from instead (CPU reference / simulation)")
    if not (path.is_file() and artifact_kind(path) == "trtir"):
        return open_decoder(path)
    from trtc.ir import load_artifact

    artifact = load_artifact(path)
    precision, llm = artifact.meta.get("precision"), artifact.meta.get("llm")
    if not precision:
        return reference_decoder(artifact.model, where=str(path), llm=llm)
    from trtc.precision.simulate import simulation_model

    decoder = reference_decoder(simulation_model(artifact.model), where=str(path), llm=llm)
    decoder.executor = f"CPU simulation of {precision['target']} ({decoder.executor})"
    return decoder


def random_prompt(vocab: int | None, seed: int = 0, shape: tuple[int, int] = DEFAULT_PROMPT_SHAPE) -> list[list[int]]:
    """Seeded random token ids in [3, vocab) (the low ids are usually special tokens)."""
    if vocab is None:
        raise TrtcError("cannot tell the vocabulary size of either decoder to make up a prompt",
                        hint="give --prompt-ids 1,2,3 or --input X.npz holding gen:prompt")
    low = 3 if vocab > 3 else 0
    return np.random.default_rng(seed).integers(low, vocab, size=shape).tolist()


def verify(a: Decoder, b: Decoder, prompts: Sequence[Sequence[int]],
           continuations: Sequence[Sequence[int]] | None = None,
           options: VerifyOptions | None = None) -> VerifyResult:
    """B against A, teacher-forced over each prompt and its continuation (A's greedy one of
    `options.steps` tokens when `continuations` is None; else one per prompt, or one for all)."""
    options = options or VerifyOptions()
    vocab = _common_vocab(a, b)
    rows = _check_ids(prompts, vocab, "prompt")
    given = None if continuations is None else _check_ids(continuations, vocab, "continuation")
    if given is not None and len(given) == 1 < len(rows):
        given = given * len(rows)
    if given is not None and len(given) != len(rows):
        raise TrtcError(f"{len(given)} continuations for {len(rows)} prompts", where="--continuation-ids",
                        hint="give one per prompt, or one for all")
    lengths = [len(g) for g in given] if given is not None else [options.steps] * len(rows)
    _check_positions(a, b, rows, lengths)
    steps: list[StepResult] = []
    prompt_positions: list[PromptResult] = []
    continued: list[list[int]] = [[] for _ in rows]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((len(row), lengths[i]), []).append(i)
    for (_, count), members in groups.items():
        ids = np.array([rows[i] for i in members], dtype=np.int64)
        forced = None if given is None else np.array([given[i] for i in members], dtype=np.int64)
        group_steps, group_prompt, tokens = _teacher_forced(a, b, ids, forced, count, options.top_k)
        steps += [dataclasses.replace(s, row=members[s.row]) for s in group_steps]
        prompt_positions += [dataclasses.replace(p, row=members[p.row]) for p in group_prompt]
        for j, i in enumerate(members):
            continued[i] = tokens[j].tolist()
    steps.sort(key=lambda s: (s.step, s.row))
    prompt_positions.sort(key=lambda p: p.row)
    return VerifyResult(a={"path": str(a.where), "executor": a.executor},
                        b={"path": str(b.where), "executor": b.executor}, prompts=rows, continuations=continued,
                        continuation_from="A's greedy" if given is None else "given", options=options, steps=steps,
                        prompt_positions=prompt_positions)


def _common_vocab(a: Decoder, b: Decoder) -> int | None:
    va, vb = a.spec.vocab, b.spec.vocab
    if va is not None and vb is not None and va != vb:
        raise TrtcError(f"A has a vocabulary of {va} tokens, B of {vb}: token-level verification needs the same "
                        "vocabulary", where=f"{a.where} vs {b.where}")
    return va if va is not None else vb


def _check_ids(rows: Sequence[Sequence[int]], vocab: int | None, what: str) -> list[list[int]]:
    """The rows as lists of ints; one line for no rows, an empty row or an id outside the vocabulary."""
    checked = [[int(t) for t in row] for row in rows]
    if not checked:
        raise TrtcError(f"no {what} given")
    for i, row in enumerate(checked):
        where = f"{what} {i + 1}" if len(checked) > 1 else what
        if not row:
            raise TrtcError(f"the {what} is empty (no tokens)", where=where)
        bad = [t for t in row if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            limit = f"[0, {vocab})" if vocab is not None else ">= 0"
            raise TrtcError(f"token id {bad[0]} is outside the vocabulary {limit}", where=where)
    return checked


def _check_positions(a: Decoder, b: Decoder, rows: list[list[int]], lengths: list[int]) -> None:
    """A prompt of P tokens and N continuation tokens take positions 0 .. P + N - 2."""
    for decoder, side in ((a, "A"), (b, "B")):
        limit = decoder.spec.max_positions
        for i, (row, count) in enumerate(zip(rows, lengths)):
            if limit is not None and len(row) + count - 1 > limit:
                raise TrtcError(f"a prompt of {len(row)} tokens and {count} steps take {len(row) + count - 1} "
                                f"positions; {side} takes at most {limit} ({decoder.spec.max_positions_from})",
                                where=f"prompt {i + 1}" if len(rows) > 1 else "prompt",
                                hint="give fewer --steps or a shorter prompt")


def _teacher_forced(a: Decoder, b: Decoder, ids: np.ndarray, forced: np.ndarray | None, count: int,
                    top_k: int) -> tuple[list[StepResult], list[PromptResult], np.ndarray]:
    """One batch of equal-length prompts [R, P]: `count` steps, each side on its own cache (either
    form: `Decoder.start`); the tokens fed after the prompt are `forced` [R, count] or A's greedy
    choices. The prompt's other positions are compared where both sides return their logits
    (not a side optimized with --last-logits)."""
    rows, width = ids.shape
    batch, running = ids.tolist(), np.ones(rows, dtype=bool)
    cache_a, cache_b = a.start(batch, [count] * rows), b.start(batch, [count] * rows)
    logits_a, logits_b = cache_a.prefill(), cache_b.prefill()
    if logits_a.shape[-1] != logits_b.shape[-1]:
        raise TrtcError(f"A's logits are {list(logits_a.shape)}, B's {list(logits_b.shape)} for the same prompt: "
                        "token-level verification needs the same vocabulary", where=f"{a.where} vs {b.where}")
    before = width - 1 if logits_a.shape[1] == logits_b.shape[1] == width else 0
    prompt = [_prompt_positions(r, logits_a[r, :before], logits_b[r, :before]) for r in range(rows)]
    last_a, last_b = logits_a[:, -1], logits_b[:, -1]
    tokens = np.zeros((rows, count), dtype=np.int64)
    steps: list[StepResult] = []
    fed = np.full(rows, -1, dtype=np.int64)
    for step in range(count):
        tokens[:, step] = greedy(last_a) if forced is None else forced[:, step]
        steps += [_measure(step, r, int(fed[r]), int(tokens[r, step]), last_a[r], last_b[r], top_k)
                  for r in range(rows)]
        if step == count - 1:
            break
        fed = tokens[:, step]
        last_a, last_b = cache_a.step(fed, running), cache_b.step(fed, running)
    return steps, prompt, tokens


def _top(logits: np.ndarray, k: int) -> np.ndarray:
    """The k highest logits' ids, ties to the lowest id (as greedy breaks them)."""
    return np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")[:k]


def _measure(step: int, row: int, fed: int, nxt: int, ref: np.ndarray, got: np.ndarray, k: int) -> StepResult:
    shared = len(set(_top(ref, k).tolist()) & set(_top(got, k).tolist()))
    return StepResult(step=step, row=row, fed=fed, next=nxt, metrics=error_metrics(ref, got),
                      top1_a=int(greedy(ref)), top1_b=int(greedy(got)), top_k_shared=shared)


def _prompt_positions(row: int, ref: np.ndarray, got: np.ndarray) -> PromptResult:
    """The prefill's positions before the last ([P - 1, V] logits each side)."""
    if len(ref) == 0:
        return PromptResult(row, 0, 1.0, None, 0.0, 0)
    measured = [error_metrics(r, g) for r, g in zip(ref, got)]
    cosines = [m["cosine"] for m in measured]
    worst = int(np.argmin([-2.0 if np.isnan(c) else c for c in cosines]))
    agree = int((greedy(ref) == greedy(got)).sum())
    return PromptResult(row=row, positions=len(ref), min_cosine=cosines[worst], min_cosine_at=worst,
                        max_abs_error=max(m["max_abs_error"] for m in measured), agree=agree)


def _cos(value: float) -> str:
    return "nan" if np.isnan(value) else f"{value:.7f}"


def raise_on_failure(result: VerifyResult) -> None:
    """Exit code 1 when a step's logits cosine is below min_cosine, naming the worst steps."""
    failures = result.failures()
    if failures:
        shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise CheckFailed(f"{len(failures)} below --min-cosine {result.options.min_cosine}: {shown}",
                          where=f"{result.a['path']} vs {result.b['path']}")


def report_lines(result: VerifyResult) -> list[str]:
    """The text report: both sides, the prompt positions, a line per step and row, the summary."""
    k = result.options.top_k
    first = result.prompts[0]
    same = all(len(p) == len(first) for p in result.prompts)
    lengths = f"{len(first)} tokens" if same else "tokens " + "/".join(str(len(p)) for p in result.prompts)
    lines = [f"A: {result.a['path']} ({result.a['executor']}, reference)",
             f"B: {result.b['path']} ({result.b['executor']})",
             f"{len(result.prompts)} row{'s' if len(result.prompts) > 1 else ''}, prompt of {lengths}, "
             f"continuation {result.continuation_from} ({max(map(len, result.continuations))} steps); "
             "teacher-forced, each side on its own cache"]
    for p in result.prompt_positions:
        if p.positions:
            lines.append(f"prompt row {p.row}: {p.positions} positions, min cosine {_cos(p.min_cosine)} (position "
                         f"{p.min_cosine_at}), max abs {p.max_abs_error:.3g}, top-1 agree {p.agree}/{p.positions}")
    lines.append(f"{'step':>4} {'row':>3} {'fed':>6} {'next':>6} {'cosine':>10} {'max abs':>9} {'top1 A':>6} "
                 f"{'top1 B':>6} {f'top-{k}':>6}")
    for s in result.steps:
        mark = "" if s.agree else "  <- differs"
        fed = "prompt" if s.fed < 0 else str(s.fed)
        lines.append(f"{s.step:>4} {s.row:>3} {fed:>6} {s.next:>6} {_cos(s.cosine):>10} "
                     f"{s.metrics['max_abs_error']:>9.3g} {s.top1_a:>6} {s.top1_b:>6} {f'{s.top_k_shared}/{k}':>6}"
                     f"{mark}")
    summary = result.summary()
    divergence = ", ".join(f"row {r} {'none' if d is None else f'step {d}'}"
                           for r, d in enumerate(summary["first_divergence"]))
    bound = result.options.min_cosine
    lines += [f"min cosine {_cos(summary['min_cosine'])} (step {summary['min_cosine_at']['step']} row "
              f"{summary['min_cosine_at']['row']}); max abs error {summary['max_abs_error']:.3g} (step "
              f"{summary['max_abs_error_at']['step']} row {summary['max_abs_error_at']['row']}); top-1 agreement "
              f"{summary['top1_agree']}/{summary['compared']} ({summary['top1_agreement']:.1%}); top-{k} overlap "
              f"{summary['top_k_overlap']:.1%}",
              f"first divergence: {divergence}",
              "no --min-cosine check" if bound is None else
              f"{'all steps' if result.passed else 'NOT all steps'} at or above --min-cosine {bound}"]
    return lines
