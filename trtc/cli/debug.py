"""`trtc debug`: where a model goes wrong, answered on the CPU."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import echo_json, freeze_option, input_options, json_option, precision_options


@click.group()
def debug() -> None:
    """Debugging tools: where a low-precision model's error comes from."""


@debug.command("precision")
@click.argument("artifact", type=click.Path(path_type=Path))
@freeze_option
@input_options
@precision_options
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Nodes listed per output.")
@click.option("--trials", type=click.IntRange(min=1), default=64, show_default=True,
              help="Simulation runs the measurement may spend (each runs the calibration samples once).")
@json_option
def debug_precision(artifact: Path, freeze, inputs, seed, ranges, shapes, top: int, trials: int, as_json: bool,
                    **flags) -> None:
    """Per output, the nodes whose fp16/bf16 adds the most error (each measured alone in the precision
    simulation), mapped to the source ONNX's node names, with the observed ranges the precision rules judged,
    and the first node whose own output goes wrong. A typed .trtir is re-traced from its source ONNX with
    the options and calibration it records (--calib replaces the files); an .onnx or fp32 .trtir is typed
    as `optimize` would with the precision flags (default --fp16)."""
    from trtc.cli.options import to_feed_options, to_precision_options
    from trtc.debug import debug_precision as run_debug
    from trtc.debug import debug_text
    from trtc.frontend.freeze import parse_freeze_specs

    calib = tuple(flags["calib"])
    options = to_precision_options(flags)
    report = run_debug(artifact, options, to_feed_options(inputs, seed, ranges, shapes),
                       freeze=parse_freeze_specs(freeze), calib=calib, top=top, trials=trials)
    echo_json(report) if as_json else click.echo(debug_text(report))
