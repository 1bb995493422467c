"""`trtc compare A B`: two artifacts on the same inputs, every output compared; or A with the
outputs stored in an .npz (B = REF.npz)."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import echo_json, input_options, json_option, to_feed_options, tolerance_options


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@input_options
@tolerance_options
@json_option
def compare(a: Path, b: Path, inputs, seed, ranges, shapes, atol, rtol, as_json) -> None:
    """Run A and B (.onnx, .trtir, .plan) on the same inputs and compare every output (B is the reference).

    B may be an .npz of inputs and expected outputs keyed by name (the corpus files, polygraphy's
    saved outputs): A runs on its inputs and is compared with its outputs. Default tolerances
    follow each output's dtype and the precision (fp16/bf16) of the typed artifact."""
    import dataclasses

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
