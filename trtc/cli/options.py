"""Option groups shared by several commands (one definition of "how to give inputs") and the
shared ways of printing (JSON, progress on a terminal, the support report)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def input_options(fn):
    """--input/--seed/--range/--shape: files for some inputs, seeded random data for the rest."""
    decorators = [
        click.option("--input", "inputs", multiple=True, metavar="FILE|NAME=FILE",
                     help="x.npy (single-input model), NAME=x.npy, or an .npz keyed by name; arrays named after "
                          "outputs are expected values that run/compare check (repeatable)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for generated inputs."),
        click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH",
                     help="Value range of a generated input (HIGH exclusive for integers)."),
        click.option("--shape", "shapes", multiple=True, metavar="NAME=1x128",
                     help="Shape of a generated input with symbolic dims (NAME=1x128 or NAME:1x128)."),
        # Not passed to the command function (so every command taking input_options keeps its
        # signature): to_feed_options reads it from the invocation's context.
        click.option("--generate", multiple=True, metavar="NAME", expose_value=False, callback=_keep_generate,
                     help="Generate this input although --input is given (repeatable); without any --input "
                          "every input is generated."),
        click.option("--max-memory", metavar="SIZE", expose_value=False, callback=_keep_max_memory,
                     help="Memory the inputs may take, e.g. 8G (default: $TRTC_MAX_MEMORY, else half the RAM); "
                          "larger inputs are refused before anything is allocated."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


# ctx.meta key holding the --generate names of this invocation.
GENERATE = "trtc.generate"


def _keep_generate(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    ctx.meta[GENERATE] = tuple(value)


# ctx.meta key holding --max-memory (kept out of the command signatures as --generate is).
MAX_MEMORY = "trtc.max_memory"


def _keep_max_memory(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[MAX_MEMORY] = value


def tolerance_options(fn):
    """--atol/--rtol: how far an output may be from its expected values (run with stored outputs, compare)."""
    decorators = [
        click.option("--atol", multiple=True, metavar="X|NAME=X",
                     help="Absolute tolerance against expected outputs (default by dtype and precision: 1e-4 "
                          "float32, 1e-2 fp16, 5e-2 bf16, 0 integers)."),
        click.option("--rtol", multiple=True, metavar="X|NAME=X",
                     help="Relative tolerance (default 1e-3 float32, 1e-2 fp16, 5e-2 bf16, 0 integers)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def precision_options(fn):
    """--fp16/--bf16 and the precision pass's knobs (optimize and build share them)."""
    decorators = [
        click.option("--fp16", is_flag=True, help="Type the graph for fp16 with fp32 islands where needed."),
        click.option("--bf16", is_flag=True, help="Type the graph for bf16 with fp32 islands where needed."),
        click.option("--calib", multiple=True, metavar="FILE.npz",
                     help="Calibration sample (inputs keyed by name); repeatable. Default: seeded random."),
        click.option("--calib-samples", type=click.IntRange(min=1),
                     help="Random calibration samples when no --calib is given (default 4)."),
        click.option("--keep-fp32", multiple=True, metavar="NAME-GLOB", help="Keep matching nodes in fp32."),
        click.option("--keep-fp32-op", multiple=True, metavar="OP-GLOB", help="Keep nodes of these ops in fp32."),
        click.option("--force-fp16", multiple=True, metavar="GLOB",
                     help="Nodes (by name or op) to run in fp16/bf16 whatever the rules say."),
        click.option("--cast-io", is_flag=True, help="Change the model's float inputs/outputs to fp16/bf16 too."),
        click.option("--data-max", type=float,
                     help="Keep nodes whose observed output magnitude exceeds this in fp32 (default 512)."),
        click.option("--max-reduction", type=int,
                     help="Keep reductions over more elements than this in fp32 (default 1024)."),
        click.option("--accuracy", multiple=True, metavar="[OUTPUT:]METRIC=VALUE",
                     help="Accuracy target of the predicted outputs: cosine=0.9999, max-error=0.05 or mean-error=X "
                          "(errors relative to the output's range), for every float output or OUTPUT (repeatable). "
                          "Where --fp16/--bf16 misses it, the fewest, cheapest nodes move back to fp32 until it "
                          "holds (exit 1 when only all-fp32 does)."),
        click.option("--check", metavar="CMD",
                     help="A command that judges the predicted outputs in place of (or beside) --accuracy: run "
                          "through the shell once per calibration sample with TRTC_CHECK_OUTPUTS, "
                          "TRTC_CHECK_REFERENCE and TRTC_CHECK_INPUTS naming .npz files (keyed by name) and "
                          "TRTC_CHECK_SAMPLE its index; exit 0 accepts."),
        click.option("--tolerance", type=float,
                     help="Fail (exit 1) when a predicted output error relative to its range exceeds this."),
        *QUANTIZE_OPTIONS,
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


# Post-training quantization (trtc/precision/quantize.py), calibrated like --fp16 on --calib.
QUANTIZE_OPTIONS = [
    click.option("--int8", is_flag=True,
                 help="Quantize Conv/ConvTranspose/MatMul/Gemm to int8 (Q/DQ: weights per output channel, "
                      "activations per tensor, calibrated on --calib); the rest fp32, or fp16/bf16 with "
                      "--fp16/--bf16."),
    click.option("--fp8", is_flag=True,
                 help="As --int8 in FP8 (e4m3); needs targets with FP8 (--target sm89,sm120)."),
    click.option("--int4-weights", is_flag=True,
                 help="Weight-only int4 MatMul/Gemm weights, per output channel (block-wise int4 needs a newer "
                      "TensorRT than RTX 1.7)."),
    click.option("--calib-method", "calib_methods", multiple=True, metavar="[FAMILY=|GLOB=]METHOD",
                 help="Range method of quantized activations: max, percentile[:P], entropy or mse, for all, a "
                      "family (conv, linear, attention, probabilities, residual) or tensors/nodes matching GLOB "
                      "(repeatable; default percentile:99.99 for conv and residual, mse for linear and "
                      "attention, max for probabilities)."),
]


def llm_options(fn):
    """--llm/--max-seq/--max-batch: a decoder's growing KV cache made static (optimize, build, compile)."""
    decorators = [
        click.option("--llm", is_flag=True,
                     help="Decoder LLM: make its growing KV cache a static, in-place one (cache inputs "
                          "[B, kv_heads, MAX_SEQ, head_dim] their outputs alias, a write_indices input) and build "
                          "prefill and decode profiles."),
        click.option("--max-seq", type=click.IntRange(min=1), metavar="N",
                     help="With --llm: cache slots per row (prompt plus generated tokens)."),
        click.option("--max-batch", type=click.IntRange(min=1), metavar="B",
                     help="With --llm: the largest batch the engine's profiles take (default 8)."),
        click.option("--last-logits", is_flag=True,
                     help="With --llm: logits [B, 1, vocab] of each row's last token only (the LM head runs "
                          "once per row)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def to_llm_options(kwargs: dict[str, Any]):
    """LlmOptions from --llm/--max-seq/--max-batch (None without --llm); the flags are removed from `kwargs`."""
    from trtc.errors import TrtcError
    from trtc.passes.static_kv_cache import LlmOptions

    llm, max_seq, max_batch, last = (kwargs.pop(k) for k in ("llm", "max_seq", "max_batch", "last_logits"))
    if not llm:
        if max_seq is not None or max_batch is not None or last:
            raise TrtcError("--max-seq, --max-batch and --last-logits shape the static KV cache of --llm",
                            where="--max-seq", hint="add --llm")
        return None
    if max_seq is None:
        raise TrtcError("the static KV cache needs a size", where="--llm", hint="give --max-seq N (prompt plus "
                        "generated tokens per row)")
    return LlmOptions(max_seq=max_seq, last_logits=last, **({"max_batch": max_batch} if max_batch is not None else {}))


def freeze_option(fn):
    """--freeze NAME=VALUES: graph inputs made constants when an .onnx is parsed."""
    return click.option("--freeze", "freeze", multiple=True, metavar="NAME=VALUES",
                        help="Make graph input NAME a constant: a .npy file or values like 0,1 / 2.5 / true "
                             "(repeatable; for parameters exported as inputs: axes, pads, scales, K, ...).")(fn)


def weightless_option(fn):
    """--weightless: a weight-stripped .onnx is taken (parse, optimize, build, compile)."""
    return click.option("--weightless", is_flag=True,
                        help="Take a weight-stripped .onnx (initializers without data, as `polygraphy surgeon "
                             "weight-strip` writes them) and build a refittable plan stripped of those weights, to be "
                             "refitted with them; nothing that needs their values (run, compare, calibration) runs "
                             "on it.")(fn)


def json_option(fn):
    """--json: the result as JSON on stdout. trtc.cli.main also looks for it, to print an error as a
    JSON object on stdout rather than a line on stderr."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON (an error too: a JSON object, same exit code).")(fn)


def echo_json(data: Any) -> None:
    """Indented JSON on stdout; what JSON cannot hold (paths, numpy scalars) as its str()."""
    click.echo(json.dumps(data, indent=2, default=str))


# The optimization profiles' ranges, as trtexec users write them (build, compile, export triton).
PROFILE_OPTIONS = [
    click.option("--shapes", "profile_shapes", multiple=True, metavar="NAME:MIN,OPT,MAX",
                 help="Range of a dynamic input, dims as 1x128 (repeatable); one shape NAME:1x3x224x224 "
                      "means MIN=OPT=MAX. Forms the first profile."),
    click.option("--min-shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]",
                 help="trtexec's form: the MIN shapes of the first profile (with --opt-shapes/--max-shapes)."),
    click.option("--opt-shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]", help="The OPT shapes."),
    click.option("--max-shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]", help="The MAX shapes."),
    click.option("--profile", "profile_groups", multiple=True, metavar="'A:MIN,OPT,MAX B:...'",
                 help="A further optimization profile (repeatable)."),
]
PROFILE_FLAGS = ("profile_shapes", "min_shapes", "opt_shapes", "max_shapes", "profile_groups")


def profile_options(fn):
    """--shapes, --min/--opt/--max-shapes and --profile."""
    return functools.reduce(lambda f, d: d(f), reversed(PROFILE_OPTIONS), fn)


def to_profiles(kwargs: dict[str, Any]):
    """The ProfileSpecs of the profile flags; the flags are removed from `kwargs`."""
    from trtc.lower.profiles import parse_profiles

    flags = {k: kwargs.pop(k) for k in PROFILE_FLAGS}
    return parse_profiles(flags["profile_shapes"], flags["profile_groups"], min_shapes=flags["min_shapes"],
                          opt_shapes=flags["opt_shapes"], max_shapes=flags["max_shapes"])


def build_options(fn):
    """Backend, targets, profiles and builder knobs (build and compile share them)."""
    from pathlib import Path

    decorators = [
        click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto",
                     show_default=True, help="auto: full TensorRT if importable, else TensorRT-RTX."),
        click.option("--target", metavar="sm86,sm89,...", help="TensorRT-RTX compute capabilities to build for."),
        *PROFILE_OPTIONS,
        click.option("--shape-input", "shape_input_specs", multiple=True, metavar="NAME:MIN,OPT,MAX",
                     help="Value range of an int input that sets output shapes (values as 1x2x3)."),
        click.option("--workspace", type=click.IntRange(min=1), metavar="MB", help="Workspace memory limit."),
        click.option("--opt-level", type=click.IntRange(0, 5), help="Builder optimization level."),
        click.option("--timing-cache", type=click.Path(), help="Timing cache file (full TensorRT only)."),
        click.option("--strip-weights", is_flag=True, help="Build a weight-stripped, refittable plan."),
        click.option("--no-cache", is_flag=True, help="Build even if the engine cache has this engine."),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="Engine cache (default ~/.cache/trtc)."),
        click.option("--no-isolate", is_flag=True,
                     help="Build in this process, not a child (a crash inside TensorRT then ends trtc without a "
                          "word; for a debugger). Also TRTC_NO_ISOLATE=1."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


def to_feed_options(inputs: Sequence[str], seed: int, ranges: Sequence[str], shapes: Sequence[str],
                    generate: Sequence[str] | None = None):
    """The --input/--seed/--range/--shape/--generate/--max-memory strings as one FeedOptions, parsed
    (and checked) once; `generate` None: the --generate names of the running command."""
    from trtc.reference.feeds import FeedOptions

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    if generate is None:
        generate = meta.get(GENERATE, ())
    return FeedOptions.from_cli(inputs, seed, ranges, shapes, generate, meta.get(MAX_MEMORY))


PRECISION_FLAGS = ("fp16", "bf16", "calib", "calib_samples", "keep_fp32", "keep_fp32_op", "force_fp16", "cast_io",
                   "data_max", "max_reduction", "tolerance", "int8", "fp8", "int4_weights", "calib_methods")


ACCURACY_FLAGS = ("accuracy", "check")


def _to_accuracy(kwargs: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The accuracy search's fields of PrecisionOptions from --accuracy/--check (checked); the flags are
    removed from `kwargs`."""
    from trtc.errors import TrtcError
    from trtc.precision.judge import parse_accuracy

    accuracy, check = (kwargs.pop(k) for k in ACCURACY_FLAGS)
    if not (accuracy or check):
        return {}
    where = "--accuracy" if accuracy else "--check"
    if flags.get("int8") or flags.get("fp8") or flags.get("int4_weights"):
        raise TrtcError("the accuracy search types fp16/bf16; it does not search quantized graphs yet", where=where,
                        hint="drop --int8/--fp8/--int4-weights, or --accuracy/--check")
    if not (flags["fp16"] or flags["bf16"]):
        raise TrtcError(f"{where} searches the fp16/bf16 typing", where=where, hint="add --fp16 or --bf16")
    parse_accuracy(accuracy)
    return {"accuracy": tuple(accuracy), "check": check}


def to_precision_options(kwargs: dict[str, Any]):
    """PrecisionOptions from the precision flags (None when none of --fp16, --bf16, --int8, --fp8 and
    --int4-weights is given); the flags are removed from `kwargs`."""
    from trtc.errors import TrtcError
    from trtc.precision.rules import PrecisionOptions

    flags = {k: kwargs.pop(k) for k in PRECISION_FLAGS}
    searched = _to_accuracy(kwargs, flags)
    if flags["fp16"] and flags["bf16"]:
        raise TrtcError("choose one of --fp16 and --bf16", where="--fp16/--bf16")
    quantize = _to_quantize(flags)
    if not (flags["fp16"] or flags["bf16"] or quantize):
        return None
    # Unset flags are None: the defaults live in PrecisionOptions alone (the help text quotes them).
    given = {"data_max": flags["data_max"], "max_reduction": flags["max_reduction"],
             "calib_samples": flags["calib_samples"]}
    given.update(searched)
    target = "bf16" if flags["bf16"] else "fp16" if flags["fp16"] or not quantize else "fp32"
    return PrecisionOptions(target=target, **quantize, keep_fp32=tuple(flags["keep_fp32"]),
                            keep_fp32_ops=tuple(flags["keep_fp32_op"]), force_fp16=tuple(flags["force_fp16"]),
                            cast_io=flags["cast_io"], calib=tuple(flags["calib"]), tolerance=flags["tolerance"],
                            **{k: v for k, v in given.items() if v is not None})


def _to_quantize(flags: dict[str, Any]) -> dict[str, Any]:
    """The quantization fields of PrecisionOptions from --int8/--fp8/--int4-weights/--calib-method (checked)."""
    from trtc.errors import TrtcError
    from trtc.precision.calibrate import Method

    if flags["int8"] and flags["fp8"]:
        raise TrtcError("choose one of --int8 and --fp8", where="--int8/--fp8")
    quantize = "int8" if flags["int8"] else "fp8" if flags["fp8"] else None
    if flags["int4_weights"] and quantize:
        raise TrtcError(f"--int4-weights is weight-only and does not combine with --{quantize}", where="--int4-weights",
                        hint=f"choose --int4-weights or --{quantize}")
    if flags["calib_methods"] and not quantize:
        raise TrtcError("--calib-method sets the ranges of quantized activations", where="--calib-method",
                        hint="add --int8 or --fp8")
    for text in flags["calib_methods"]:
        Method.parse(text.rpartition("=")[2])
    if not (quantize or flags["int4_weights"]):
        return {}
    return {"quantize": quantize, "int4_weights": flags["int4_weights"], "calib_methods": tuple(flags["calib_methods"])}


BUILD_FLAGS = ("backend", "target", "shape_input_specs", "workspace", "opt_level", "timing_cache", "strip_weights",
               "no_isolate")


def to_build_options(kwargs: dict[str, Any]):
    """BuildOptions from the build flags; the flags are removed from `kwargs`."""
    from trtc.lower.backend import parse_targets
    from trtc.lower.build import BuildOptions
    from trtc.lower.profiles import parse_range

    profiles = to_profiles(kwargs)
    flags = {k: kwargs.pop(k) for k in BUILD_FLAGS}
    return BuildOptions(backend=flags["backend"], targets=parse_targets(flags["target"]),
                        workspace_mb=flags["workspace"], opt_level=flags["opt_level"],
                        timing_cache=flags["timing_cache"], strip_weights=flags["strip_weights"], profiles=profiles,
                        shape_inputs=dict(parse_range(s, "--shape-input") for s in flags["shape_input_specs"]),
                        isolate=not flags["no_isolate"])


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
