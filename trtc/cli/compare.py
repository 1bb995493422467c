"""`trtc compare A B`: two artifacts on the same inputs, every output compared."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import echo_json, input_options, json_option

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3

@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@input_options
@click.option("--atol", multiple=True, metavar="X|NAME=X", help=f"Absolute tolerance (default {DEFAULT_ATOL:g}).")
@click.option("--rtol", multiple=True, metavar="X|NAME=X", help=f"Relative tolerance (default {DEFAULT_RTOL:g}).")
@json_option
def compare(a: Path, b: Path, inputs, seed, ranges, shapes, atol, rtol, as_json) -> None:
    """Run A and B (.onnx, .trtir, .plan) on the same inputs and compare every output (B is the reference)."""
    from trtc.compare import compare as compare_runs
    from trtc.compare import executable_for, parse_tolerances, raise_on_mismatch
    from trtc.reference.feeds import make_feeds, validate_feeds

    tolerances = (parse_tolerances(atol, DEFAULT_ATOL, "--atol"), parse_tolerances(rtol, DEFAULT_RTOL, "--rtol"))
    first, second = executable_for(a), executable_for(b)
    try:
        feeds = make_feeds(second.inputs, inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
        validate_feeds(second.inputs, feeds, where=str(b))
        report = compare_runs(first, second, feeds, *tolerances)
    finally:
        first.close()
        second.close()
    if as_json:
        echo_json(report)
    else:
        click.echo(f"A: {a} ({report['a']['runs_on']})\nB: {b} ({report['b']['runs_on']}, reference)")
        for name, r in report["outputs"].items():
            status = "match" if r["match"] else "MISMATCH"
            detail = r.get("reason") or (
                f"max abs {r['max_abs_error']:.3g}, max error / range {r['max_rel_error']:.3g}, mean abs "
                f"{r['mean_abs_error']:.3g}, cosine {r['cosine']:.6f}, {r['beyond_tolerance']:.2%} beyond tolerance")
            click.echo(f"  {name}: {status} ({detail})")
    raise_on_mismatch(report)
