"""Option groups shared by several commands (one definition of "how to give inputs")."""

from __future__ import annotations

import functools
import json
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


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
