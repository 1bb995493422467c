"""Option groups shared by several commands (one definition of "how to give inputs") and the
shared ways of printing (JSON, progress on a terminal, the support report)."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import click


def input_options(fn):
    """--input/--seed/--range/--shape: files for some inputs, seeded random data for the rest."""
    decorators = [
        click.option("--input", "inputs", multiple=True, metavar="FILE|NAME=FILE",
                     help="x.npy (single-input model), NAME=x.npy, or inputs.npz keyed by name."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for generated inputs."),
        click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH",
                     help="Value range of a generated input (HIGH exclusive for integers)."),
        click.option("--shape", "shapes", multiple=True, metavar="NAME=1x128",
                     help="Shape of a generated input with symbolic dims (default 1)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def precision_options(fn):
    """--fp16/--bf16 and the precision pass's knobs (optimize and build share them)."""
    decorators = [
        click.option("--fp16", is_flag=True, help="Type the graph for fp16 with fp32 islands where needed."),
        click.option("--bf16", is_flag=True, help="Type the graph for bf16 with fp32 islands where needed."),
        click.option("--calib", multiple=True, metavar="FILE.npz",
                     help="Calibration sample (inputs keyed by name); repeatable. Default: seeded random."),
        click.option("--calib-samples", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Random calibration samples when no --calib is given."),
        click.option("--keep-fp32", multiple=True, metavar="NAME-GLOB", help="Keep matching nodes in fp32."),
        click.option("--keep-fp32-op", multiple=True, metavar="OP-GLOB", help="Keep nodes of these ops in fp32."),
        click.option("--force-fp16", multiple=True, metavar="GLOB",
                     help="Nodes (by name or op) to run in fp16/bf16 whatever the rules say."),
        click.option("--cast-io", is_flag=True, help="Change the model's float inputs/outputs to fp16/bf16 too."),
        click.option("--data-max", type=float, default=512.0, show_default=True,
                     help="Keep nodes whose observed output magnitude exceeds this in fp32."),
        click.option("--max-reduction", type=int, default=1024, show_default=True,
                     help="Keep reductions over more elements than this in fp32."),
        click.option("--tolerance", type=float,
                     help="Fail (exit 1) when a predicted output error relative to its range exceeds this."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def freeze_option(fn):
    """--freeze NAME=VALUES: graph inputs made constants when an .onnx is parsed."""
    return click.option("--freeze", "freeze", multiple=True, metavar="NAME=VALUES",
                        help="Make graph input NAME a constant: a .npy file or values like 0,1 / 2.5 / true "
                             "(repeatable; for parameters exported as inputs: axes, pads, scales, K, ...).")(fn)


def json_option(fn):
    """--json: the result as JSON on stdout. trtc.cli.main also looks for it, to print an error as a
    JSON object on stdout rather than a line on stderr."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON (an error too: a JSON object, same exit code).")(fn)


def echo_json(data: Any) -> None:
    """Indented JSON on stdout; what JSON cannot hold (paths, numpy scalars) as its str()."""
    click.echo(json.dumps(data, indent=2, default=str))


PRECISION_KEYS = ("fp16", "bf16", "calib", "calib_samples", "keep_fp32", "keep_fp32_op", "force_fp16", "cast_io",
                  "data_max", "max_reduction", "tolerance")


def build_options(fn):
    """Backend, targets, profiles and builder knobs (build and compile share them)."""
    from pathlib import Path

    decorators = [
        click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto",
                     show_default=True, help="auto: full TensorRT if importable, else TensorRT-RTX."),
        click.option("--target", metavar="sm86,sm89,...", help="TensorRT-RTX compute capabilities to build for."),
        click.option("--shapes", "profile_shapes", multiple=True, metavar="NAME:MIN,OPT,MAX",
                     help="Range of a dynamic input, dims as 1x128 (repeatable); forms the first profile."),
        click.option("--profile", "profile_groups", multiple=True, metavar="'A:MIN,OPT,MAX B:...'",
                     help="A further optimization profile (repeatable)."),
        click.option("--shape-input", "shape_input_specs", multiple=True, metavar="NAME:MIN,OPT,MAX",
                     help="Value range of an int input that sets output shapes (values as 1x2x3)."),
        click.option("--workspace", type=click.IntRange(min=1), metavar="MB", help="Workspace memory limit."),
        click.option("--opt-level", type=click.IntRange(0, 5), help="Builder optimization level."),
        click.option("--timing-cache", type=click.Path(), help="Timing cache file (full TensorRT only)."),
        click.option("--strip-weights", is_flag=True, help="Build a weight-stripped, refittable plan."),
        click.option("--no-cache", is_flag=True, help="Build even if the engine cache has this engine."),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="Engine cache (default ~/.cache/trtc)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def split_build_options(kwargs: dict[str, Any]):
    """(BuildOptions, precision options) from a command's keyword arguments."""
    from trtc.lower.backend import parse_targets
    from trtc.lower.build import BuildOptions
    from trtc.lower.profiles import parse_profiles, parse_shape_spec

    options = BuildOptions(backend=kwargs["backend"], targets=parse_targets(kwargs["target"]),
                           workspace_mb=kwargs["workspace"], opt_level=kwargs["opt_level"],
                           timing_cache=kwargs["timing_cache"], strip_weights=kwargs["strip_weights"],
                           profiles=parse_profiles(kwargs["profile_shapes"], kwargs["profile_groups"]),
                           shape_inputs=dict(parse_shape_spec(s, "--shape-input") for s in kwargs["shape_input_specs"]))
    return options, {k: kwargs[k] for k in PRECISION_KEYS}


def progress_line():
    """A one-line status on a terminal (nothing when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return None

    def show(text: str) -> None:
        click.echo(f"\r\033[K{text}", err=True, nl=False)

    return show


def support_text(report: dict) -> str:
    if report["supported"]:
        return f"all {report['nodes']} nodes can be lowered to TensorRT"
    lines = [f"{len(report['unsupported'])} of {report['nodes']} nodes cannot be lowered:"]
    lines += [f"  {p['node']} ({p['op']}): {p['reason']}" for p in report["unsupported"]]
    return "\n".join(lines)
