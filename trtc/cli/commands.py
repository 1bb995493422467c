"""The stage commands: parse, optimize, build, compile. Each turns its flags into typed options
(trtc.pipeline), calls one library function and prints what comes back."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import (
    build_options,
    echo_json,
    freeze_option,
    input_options,
    json_option,
    llm_options,
    precision_options,
    progress_line,
    support_text,
    to_build_options,
    to_feed_options,
    to_llm_options,
    to_precision_options,
    weightless_option,
)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .trtir artifact to write.")
@freeze_option
@weightless_option
@json_option
def parse(model: Path, output: Path, freeze: tuple[str, ...], weightless: bool, as_json: bool) -> None:
    """ONNX model -> checked, canonical, shape-inferred .trtir artifact."""
    import time

    from trtc.frontend import parse_onnx
    from trtc.frontend.freeze import parse_freeze_specs
    from trtc.ir import save_artifact

    start = time.perf_counter()
    artifact = parse_onnx(model, parse_freeze_specs(freeze), weightless=weightless)
    header = save_artifact(artifact.model, output, artifact.meta)
    info = {"output": str(output), "nodes": len(artifact.model.graph),
            "content_hash": header["content_hash"], "seconds": round(time.perf_counter() - start, 3),
            **header["parse"], "weightless": header.get("weightless", [])}
    if as_json:
        echo_json(info)
        return
    click.echo(f"wrote {output}: {info['nodes']} nodes, opset {info['opset']}, "
               f"hash {header['content_hash'][:16]} in {info['seconds']:.2f}s")
    if info["opset_note"]:
        click.echo(f"note: {info['opset_note']}")
    if info["frozen"]:
        click.echo(f"frozen (now constants): {', '.join(info['frozen'])}")
    if weightless:
        click.echo(weightless_text(info["weightless"]))
    for warning in info.get("shape_warnings") or ():
        click.echo(f"warning: {warning}")
    if info["unknown_shapes"]:
        click.echo(f"note: {len(info['unknown_shapes'])} values without inferred shape "
                   f"(see `trtc inspect {output}`)")


def weightless_text(missing: list[dict]) -> str:
    """What `parse --weightless` says of the weights the model lacks."""
    if not missing:
        return "note: --weightless: every weight holds its data; parsed as a full model"
    from trtc.ir.weightless import names_text

    return (f"weightless: {len(missing)} weight(s) without data ({names_text([m['name'] for m in missing])}): "
            "`trtc build` makes a refittable plan stripped of them")


def precision_needs_values(precision) -> Exception:
    """--fp16/--bf16/--int8/... on a weight-stripped model: its weights' values are what they convert and calibrate."""
    from trtc.errors import TrtcError

    option = precision.quantize or ("int4-weights" if precision.int4_weights else precision.target)
    return TrtcError("a precision pass converts weights and calibrates on the CPU reference: both need the values a "
                     "weight-stripped model does not hold", where=f"--{option}",
                     hint="build the weight-stripped model in fp32, or give the model with its weights")


def refuse_needing_values(artifact, verify: str | None, precision) -> None:
    """Refuse, before any work, what would read the weights a --weightless model lacks: --verify (the CPU reference)
    and a precision pass."""
    from trtc.ir.weightless import refuse_weightless, weightless_values

    if not weightless_values(artifact.model):
        return
    if precision is not None:
        raise precision_needs_values(precision)
    if verify:
        refuse_weightless(artifact.model, str(artifact.path or verify), "verify the passes on the CPU reference")


def _list_passes(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from trtc.cli import JSON_MODE
    from trtc.passes import PASSES

    # This eager callback runs before --json is processed, so the group records --json in ctx.meta.
    if ctx.meta.get(JSON_MODE) or ctx.params.get("as_json"):
        echo_json([{"name": info.name, "default": info.default, "description": info.description,
                    "order": info.order} for info in PASSES.values()])
    else:
        for info in PASSES.values():
            click.echo(f"{info.name:24} {'' if info.default else '(not default) '}{info.description}")
    ctx.exit(0)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .trtir to write.")
@click.option("--passes", "pass_list", metavar="A,B,C", help="Run exactly these passes, in this order.")
@click.option("--disable", metavar="A,B", help="Leave these passes out of the pipeline.")
@click.option("--list-passes", is_flag=True, expose_value=False, is_eager=True, callback=_list_passes,
              help="List the passes with their descriptions and exit.")
@click.option("--verify", is_flag=True, help="Check every pass numerically against the CPU reference.")
@freeze_option
@weightless_option
@input_options
@click.option("--fold-max-mb", type=click.FloatRange(min=0),
              help="Largest tensor constant folding may create (MB; default 64).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the report as JSON.")
@click.option("--dump-after", metavar="PASS", multiple=True,
              help="Write the graph text after PASS to OUTPUT.after-PASS.txt.")
@precision_options
@llm_options
@json_option
def optimize(artifact: Path, output: Path, pass_list, disable, verify, freeze, weightless, inputs, seed, ranges,
             shapes, fold_max_mb, report_path, dump_after, as_json, **flags) -> None:
    """Optimize an .onnx/.trtir: folding, clean-ups, fusions into TensorRT-native ops."""
    import json

    from trtc import inspect as inspect_mod
    from trtc.frontend.freeze import parse_freeze_specs
    from trtc.ir import save_artifact
    from trtc.passes.pipeline import select_passes
    from trtc.pipeline import OptimizeOptions, open_model
    from trtc.pipeline import optimize as run_optimize
    from trtc.precision.api import precision_summary_text

    options = OptimizeOptions(passes=_names(pass_list), disable=tuple(_names(disable) or ()), verify=verify,
                              precision=to_precision_options(flags), llm=to_llm_options(flags),
                              **({"fold_max_mb": fold_max_mb} if fold_max_mb is not None else {}))
    feeds = to_feed_options(inputs, seed, ranges, shapes)
    select_passes(options.passes, options.disable)
    for name in dump_after:
        select_passes([name])  # validates the name
    loaded = open_model(artifact, parse_freeze_specs(freeze), weightless=weightless)
    refuse_needing_values(loaded, "--verify" if verify else None, options.precision)

    def dump(name: str, model) -> None:
        if name in dump_after:
            Path(f"{output}.after-{name}.txt").write_text(inspect_mod.graph_text(model) + "\n")

    progress = progress_line() if not as_json else None
    result = run_optimize(loaded, options, feeds, progress=progress, after_pass=dump)
    if progress:
        progress("")
    header = save_artifact(loaded.model, output, loaded.meta)
    info = {"output": str(output), "content_hash": header["content_hash"], **result.report.as_dict()}
    if result.precision:
        info["precision"] = result.precision
    if report_path:
        report_path.write_text(json.dumps(info, indent=2) + "\n")
    if as_json:
        echo_json(info)
        return
    click.echo(_report_table(result.report))
    if result.precision:
        click.echo(precision_summary_text(result.precision))
    click.echo(f"wrote {output}: {result.report.nodes_before} -> {result.report.nodes_after} nodes in "
               f"{result.report.seconds:.2f}s" + (" (every pass verified)" if verify else ""))


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else None


def _report_table(report) -> str:
    rows = [f"{'pass':24} {'nodes -':>8} {'time s':>8}  rewrites"]
    for name, entry in report.totals().items():
        if entry["rewrites"] or entry["nodes_removed"]:
            rewrites = ", ".join(f"{k} {v}" for k, v in entry["rewrites"].items())
            rows.append(f"{name:24} {entry['nodes_removed']:>8} {entry['seconds']:>8.3f}  {rewrites}")
    return "\n".join(rows)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The engine (.plan) to write (required unless --dry-run).")
@build_options
@click.option("--dry-run", is_flag=True, help="Only report the nodes that cannot be lowered (no TensorRT needed).")
@click.option("--dump-layers", metavar="FILE",
              help="Write the network's layers before the build (index, type, name, ONNX node, inputs, outputs' "
                   "dtype and shape) as JSON to FILE; '-' prints them (with --json, as 'layers').")
@freeze_option
@weightless_option
@precision_options
@llm_options
@input_options
@json_option
def build(artifact: Path, output, no_cache, cache_dir, dry_run, freeze, weightless, inputs, seed, ranges, shapes,
          as_json, dump_layers, **flags) -> None:
    """Build a TensorRT engine from an .onnx or .trtir (parsed and optimized on the fly).

    --input/--shape/--range/--seed give the calibration data of --fp16/--bf16 (default: seeded
    random data with each dynamic input at its OPT shape)."""
    from trtc.errors import CheckFailed, TrtcError
    from trtc.frontend.freeze import parse_freeze_specs
    from trtc.pipeline import OptimizeOptions, open_model, support
    from trtc.pipeline import build as run_build

    options = to_build_options(flags)
    options.list_layers = dump_layers is not None
    optimize_options = OptimizeOptions(precision=to_precision_options(flags), llm=to_llm_options(flags))
    feeds = to_feed_options(inputs, seed, ranges, shapes)
    if not dry_run and output is None:
        raise TrtcError("missing -o/--output", where="trtc build", hint="name the .plan to write")
    loaded = open_model(artifact, parse_freeze_specs(freeze), weightless=weightless)
    refuse_needing_values(loaded, None, optimize_options.precision)
    progress = None if as_json else progress_line()
    if dry_run:
        report = support(loaded, options, optimize_options=optimize_options, feeds=feeds, progress=progress)
        if progress:
            progress("")
        echo_json(report) if as_json else click.echo(support_text(report))
        if not report["supported"]:
            raise CheckFailed(f"{len(report['unsupported'])} node(s) cannot be lowered", where=str(artifact))
        return
    result = run_build(loaded, output, options, optimize_options=optimize_options, feeds=feeds,
                       cache=not no_cache, cache_dir=cache_dir, progress=progress)
    if progress:
        progress("")
    side = result.sidecar
    info = {"output": str(output), "cached": result.cached, **side}
    if dump_layers is not None:
        from trtc.lower.layers import format_listing, write_listing

        if dump_layers != "-":
            write_listing(result.layers, dump_layers)
        elif as_json:
            info["layers"] = result.layers
        else:
            click.echo(format_listing(result.layers))
    if as_json:
        echo_json(info)
        return
    precision_text = side["precision"]["target"] if side["precision"] else "fp32"
    click.echo(f"{'reused cached engine' if result.cached else 'built'} {output}: {side['backend']} "
               f"{side['backend_version']}, targets {','.join(side['targets']) or 'default'}, {precision_text}, "
               f"{side['network_layers']} layers, {side['plan_bytes'] / 2**20:.1f} MiB, "
               f"{side['build_seconds']:.1f}s")


@click.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True,
              help="Folder for every artifact and the report.")
@build_options
@freeze_option
@weightless_option
@precision_options
@llm_options
@input_options
@json_option
def compile_cmd(model: Path, outdir: Path, freeze, weightless, inputs, seed, ranges, shapes, as_json, no_cache,
                cache_dir, **flags) -> None:
    """parse -> optimize -> build -> compare in one go; unchanged stages are reused."""
    from trtc.frontend.freeze import parse_freeze_specs
    from trtc.pipeline import OptimizeOptions, compile_model

    build_opts = to_build_options(flags)
    optimize_options = OptimizeOptions(precision=to_precision_options(flags), llm=to_llm_options(flags))
    if weightless and optimize_options.precision:
        raise precision_needs_values(optimize_options.precision)
    feeds = to_feed_options(inputs, seed, ranges, shapes)
    progress = None if as_json else progress_line()
    report = compile_model(model, outdir, optimize_options=optimize_options, build_options=build_opts, feeds=feeds,
                           freeze=parse_freeze_specs(freeze), cache=not no_cache, cache_dir=cache_dir,
                           progress=progress, weightless=weightless)
    if progress:
        progress("")
    if as_json:
        echo_json(report)
        return
    for name, stage in report["stages"].items():
        click.echo(f"{name:9} {stage['seconds']:7.2f}s {'(reused)' if stage['reused'] else ''}")
    click.echo(f"nodes {report['nodes']['parsed']} -> {report['nodes']['optimized']}; engine "
               f"{report['engine']['network_layers']} layers, {report['engine']['plan_bytes'] / 2**20:.1f} MiB")
    for name, m in report["predicted"]["outputs"].items():
        click.echo(f"predicted {name}: max error / range {m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    click.echo(f"wrote {outdir}/report.md")
