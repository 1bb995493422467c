"""`trtc compare A B`: two artifacts on the same inputs, every output compared; or A with the
outputs stored in an .npz (B = REF.npz); with --llm, two decoders token by token (trtc.llm.verify)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trtc.cli.options import echo_json, input_options, json_option, to_feed_options, tolerance_options


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@input_options
@tolerance_options
@click.option("--llm", is_flag=True,
              help="A and B are decoder LLMs (.onnx, .trtir, genai folder): feed both the same tokens, each on "
                   "its own KV cache, and compare the logits step by step (A is the reference).")
@click.option("--prompt-ids", "prompt_ids", multiple=True, metavar="1,2,3",
              help="With --llm: a prompt as token ids (repeatable: a row each). Default: gen:prompt of an --input "
                   ".npz, else seeded random ids.")
@click.option("--continuation-ids", "continuation_ids", multiple=True, metavar="4,5,6",
              help="With --llm: the tokens fed after the prompt (one for all rows, or one per prompt). Default: "
                   "A's own greedy continuation.")
@click.option("--steps", type=int, metavar="N", help="With --llm: steps of A's greedy continuation (default 16).")
@click.option("--top-k", type=int, metavar="K", help="With --llm: the k of the top-k overlap (default 5).")
@click.option("--min-cosine", type=float, metavar="X",
              help="With --llm: fail (exit 1) when a step's logits cosine is below X (default 0.999).")
@json_option
def compare(a: Path, b: Path, inputs, seed, ranges, shapes, atol, rtol, as_json, **llm: Any) -> None:
    """Run A and B (.onnx, .trtir, .plan) on the same inputs and compare every output (B is the reference).

    B may be an .npz of inputs and expected outputs keyed by name (the corpus files, polygraphy's
    saved outputs): A runs on its inputs and is compared with its outputs. Default tolerances
    follow each output's dtype and the precision (fp16/bf16) of the typed artifact.

    With --llm, A and B are decoders run teacher-forced over a prompt and a continuation: per step
    and row the logits' cosine and max abs error (B against A), top-1 agreement, top-k overlap and
    the first step where the top-1 tokens differ."""
    import dataclasses

    if llm.pop("llm"):
        _compare_llm(a, b, inputs, seed, ranges, shapes, atol, rtol, as_json, **llm)
        return
    given = [f"--{name.replace('_', '-')}" for name, value in llm.items() if value not in (None, ())]
    if given:
        from trtc.errors import TrtcError

        raise TrtcError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to decoders compared token "
                        "by token", hint="add --llm")

    from trtc.compare import (
        Tolerances,
        compare_with_stored,
        engine_shapes,
        executable_for,
        pair_feeds,
        raise_on_mismatch,
        result_text,
    )
    from trtc.compare import compare as compare_runs
    from trtc.errors import TrtcError
    from trtc.reference.feeds import load_feeds, validate_feeds

    feed_options = to_feed_options(inputs, seed, ranges, shapes)
    tolerances = Tolerances.from_cli(atol, rtol)
    stored = b.suffix == ".npz"
    if stored:
        # The .npz is the first --input: its arrays feed A, its outputs are the reference.
        feed_options = dataclasses.replace(feed_options, files=(str(b), *feed_options.files))
    first = executable_for(a)
    second = None
    try:
        second = None if stored else executable_for(b)
        # An engine's dynamic inputs are generated at its profile's OPT shape unless --shape says otherwise.
        shapes_by_engine = engine_shapes([x for x in (first, second) if x is not None])
        feed_options = dataclasses.replace(feed_options, shapes={**shapes_by_engine, **feed_options.shapes})
        notes: list[str] = []
        if second is None:
            given = load_feeds(first.inputs, feed_options, outputs=first.outputs, frozen=first.frozen)
            validate_feeds(first.inputs, given.arrays, where=str(b))
            if not given.expected:
                raise TrtcError(f"holds no output of {a.name}", where=str(b),
                                hint=f"outputs: {', '.join(first.outputs)}; inputs alone: trtc run {a} --input {b}")
            report = compare_with_stored(first, given.arrays, given.expected, ", ".join(given.expected_from),
                                         tolerances)
        else:
            pair = pair_feeds(first, second, feed_options)
            given, notes = pair.given, pair.notes
            validate_feeds(second.inputs, {k: v for k, v in pair.arrays.items()
                                           if k in {s.name for s in second.inputs}}, where=str(b))
            report = compare_runs(first, second, pair.arrays, tolerances)
            # Expected outputs in an --input file are not the reference here (B is): said, not dropped.
            report["unused_expected"] = sorted(given.expected)
    finally:
        first.close()
        if second is not None:
            second.close()
    report["generated"] = [g.as_dict() for g in given.generated]
    report["inputs_notes"] = notes + [f"{name}: not used ({why})" for name, why in given.unused.items()]
    if as_json:
        echo_json(report)
    else:
        for generated in given.generated:
            click.echo(f"generated: {generated.describe()}")
        for note in report["inputs_notes"]:
            click.echo(f"input {note}")
        click.echo(f"A: {a} ({report['a']['runs_on']})\nB: {b} ({report['b']['runs_on']}, reference)")
        for name, r in report["outputs"].items():
            click.echo(f"  {name}: {result_text(r)}")
        if report.get("unused_expected"):
            click.echo(f"not used: expected {', '.join(report['unused_expected'])} in --input "
                       f"(compare with them: trtc compare A {', '.join(given.expected_from)})")
    raise_on_mismatch(report)


def _compare_llm(a: Path, b: Path, inputs: tuple[str, ...], seed: int, ranges: tuple[str, ...],
                 shapes: tuple[str, ...], atol: tuple[str, ...], rtol: tuple[str, ...], as_json: bool,
                 prompt_ids: tuple[str, ...], continuation_ids: tuple[str, ...], steps: int | None,
                 top_k: int | None, min_cosine: float | None) -> None:
    """`compare --llm`: B against A token by token (trtc.llm.verify)."""
    from trtc.cli.generate import _parse_ids
    from trtc.cli.options import GENERATE
    from trtc.errors import TrtcError
    from trtc.llm import verify as v

    generate = click.get_current_context().meta.get(GENERATE, ())
    unused = [flag for flag, value in (("--range", ranges), ("--shape", shapes), ("--generate", generate),
                                       ("--atol", atol), ("--rtol", rtol)) if value]
    if unused:
        raise TrtcError(f"{', '.join(unused)} do{'es' if len(unused) == 1 else ''} not apply to --llm (it feeds token "
                        "ids and measures logits by cosine)",
                        hint="give --prompt-ids, --continuation-ids, --steps, --top-k, --min-cosine")
    if b.suffix == ".npz":
        raise TrtcError("--llm compares two decoders; B is an .npz", where=str(b),
                        hint=f"give the .npz with --input for its gen:prompt: trtc compare A B --llm --input {b}")
    if continuation_ids and steps is not None:
        raise TrtcError("give --steps (A's greedy continuation) or --continuation-ids, not both", where="--steps")
    options = v.VerifyOptions(**{k: val for k, val in (("steps", steps), ("top_k", top_k),
                                                       ("min_cosine", min_cosine)) if val is not None})
    first = v.open_verified(a)
    second = None
    try:
        second = v.open_verified(b)
        prompts = [_parse_ids(text) for text in prompt_ids] or _npz_prompt(inputs) \
            or v.random_prompt(first.spec.vocab or second.spec.vocab, seed)
        continuations = [_parse_ids(text, "--continuation-ids") for text in continuation_ids] or None
        result = v.verify(first, second, prompts, continuations, options)
    finally:
        first.close()
        if second is not None:
            second.close()
    if as_json:
        echo_json({**result.as_dict(), "prompt_from": _prompt_source(prompt_ids, inputs, seed)})
    else:
        click.echo(f"prompt: {_prompt_source(prompt_ids, inputs, seed)}")
        click.echo("\n".join(v.report_lines(result)))
    v.raise_on_failure(result)


def _npz_prompt(inputs: tuple[str, ...]) -> list[list[int]] | None:
    """The gen:prompt rows of the --input .npz (None without --input)."""
    import numpy as np

    from trtc.errors import TrtcError

    if not inputs:
        return None
    if len(inputs) > 1 or not inputs[0].endswith(".npz") or not Path(inputs[0]).is_file():
        raise TrtcError("--llm reads its prompt from one .npz holding gen:prompt", where="--input",
                        hint="or give --prompt-ids 1,2,3")
    with np.load(inputs[0]) as data:
        if "gen:prompt" not in data.files:
            raise TrtcError("holds no gen:prompt (token ids [rows, tokens])", where=inputs[0],
                            hint="give --prompt-ids 1,2,3")
        prompt = np.asarray(data["gen:prompt"])
    if prompt.ndim != 2 or prompt.dtype.kind not in "iu":
        raise TrtcError(f"gen:prompt is {prompt.dtype}{list(prompt.shape)}; --llm reads integer ids [rows, tokens]",
                        where=inputs[0])
    return prompt.tolist()


def _prompt_source(prompt_ids: tuple[str, ...], inputs: tuple[str, ...], seed: int) -> str:
    if prompt_ids:
        return "--prompt-ids"
    return f"gen:prompt of {inputs[0]}" if inputs else f"random ids, --seed {seed}"
