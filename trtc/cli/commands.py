"""The subcommands. Each parses its options and calls one library function."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from trtc import inspect as inspect_mod
from trtc.cli.options import (
    build_options,
    echo_json,
    freeze_option,
    input_options,
    json_option,
    precision_options,
    progress_line,
    split_build_options,
    support_text,
)
from trtc.compile import compile_model
from trtc.errors import CheckFailed, TrtcError
from trtc.frontend import parse_onnx
from trtc.frontend.freeze import parse_freeze_specs
from trtc.ir import save_artifact
from trtc.loading import open_model
from trtc.lower.api import build_artifact, prepare_for_build, support_report
from trtc.lower.profiles import parse_shape_spec
from trtc.passes import PASSES, PassContext
from trtc.passes.pipeline import optimize as run_optimize
from trtc.passes.pipeline import optimized_meta, select_passes
from trtc.precision.api import precision_summary_text, run_precision
from trtc.reference import (
    make_feeds,
    model_inputs,
    validate_feeds,
)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .trtir artifact to write.")
@freeze_option
@json_option
def parse(model: Path, output: Path, freeze: tuple[str, ...], as_json: bool) -> None:
    """ONNX model -> checked, canonical, shape-inferred .trtir artifact."""
    start = time.perf_counter()
    artifact = parse_onnx(model, parse_freeze_specs(freeze))
    header = save_artifact(artifact.model, output, artifact.meta)
    info = {"output": str(output), "nodes": len(artifact.model.graph),
            "content_hash": header["content_hash"], "seconds": round(time.perf_counter() - start, 3),
            **header["parse"]}
    if as_json:
        echo_json(info)
        return
    click.echo(f"wrote {output}: {info['nodes']} nodes, opset {info['opset']}, "
               f"hash {header['content_hash'][:16]} in {info['seconds']:.2f}s")
    if info["opset_note"]:
        click.echo(f"note: {info['opset_note']}")
    if info["frozen"]:
        click.echo(f"frozen (now constants): {', '.join(info['frozen'])}")
    if info["unknown_shapes"]:
        click.echo(f"note: {len(info['unknown_shapes'])} values without inferred shape "
                   f"(see `trtc inspect {output}`)")


def _list_passes(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from trtc.cli import JSON_MODE

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
@input_options
@click.option("--fold-max-mb", type=click.FloatRange(min=0), default=64, show_default=True,
              help="Largest tensor constant folding may create (MB).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the report as JSON.")
@click.option("--dump-after", metavar="PASS", multiple=True,
              help="Write the graph text after PASS to OUTPUT.after-PASS.txt.")
@precision_options
@json_option
def optimize(artifact: Path, output: Path, pass_list, disable, verify, freeze, inputs, seed, ranges, shapes,
             fold_max_mb, report_path, dump_after, as_json, **precision) -> None:
    """Optimize an .onnx/.trtir: folding, clean-ups, fusions into TensorRT-native ops."""
    chosen = select_passes(_names(pass_list), _names(disable) or ())
    for name in dump_after:
        select_passes([name])  # validates the name
    loaded = open_model(artifact, parse_freeze_specs(freeze))
    feeds = None
    if verify:
        specs = model_inputs(loaded.model)
        feeds = make_feeds(specs, inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
        validate_feeds(specs, feeds, where=str(artifact))

    def dump(name: str, model) -> None:
        if name in dump_after:
            Path(f"{output}.after-{name}.txt").write_text(inspect_mod.graph_text(model) + "\n")

    progress = progress_line() if not as_json else None
    report = run_optimize(loaded.model, passes=chosen, ctx=PassContext(fold_max_bytes=int(fold_max_mb * 2**20)),
                          verify_feeds=feeds, after_pass=dump, progress=progress)
    if progress:
        progress("")
    options = {"passes": [p.name for p in chosen], "fold_max_mb": fold_max_mb, "verify": verify}
    meta = optimized_meta(loaded.meta, report, options)
    precision_report = None
    if precision["fp16"] or precision["bf16"]:
        if progress:
            progress("precision: observing calibration data")
        precision_report = run_precision(loaded, precision, inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
        if progress:
            progress("")
        meta["precision"] = precision_report
    header = save_artifact(loaded.model, output, meta)
    info = {"output": str(output), "content_hash": header["content_hash"], **report.as_dict()}
    if precision_report:
        info["precision"] = precision_report
    if report_path:
        report_path.write_text(json.dumps(info, indent=2) + "\n")
    if as_json:
        echo_json(info)
        return
    click.echo(_report_table(report))
    if precision_report:
        click.echo(precision_summary_text(precision_report))
    click.echo(f"wrote {output}: {report.nodes_before} -> {report.nodes_after} nodes in {report.seconds:.2f}s"
               + (" (every pass verified)" if verify else ""))


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _report_table(report) -> str:
    rows = [f"{'pass':24} {'nodes -':>8} {'time s':>8}  rewrites"]
    for name, entry in report.totals().items():
        if entry["rewrites"] or entry["nodes_removed"]:
            rewrites = ", ".join(f"{k} {v}" for k, v in entry["rewrites"].items())
            rows.append(f"{name:24} {entry['nodes_removed']:>8} {entry['seconds']:>8.3f}  {rewrites}")
    return "\n".join(rows)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="The engine (.plan) to write.")
@build_options
@click.option("--dry-run", is_flag=True, help="Only report the nodes that cannot be lowered (no TensorRT needed).")
@freeze_option
@precision_options
@input_options
@json_option
def build(artifact: Path, output, no_cache, cache_dir, dry_run, freeze, inputs, seed, ranges, as_json, **rest) -> None:
    """Build a TensorRT engine from an .onnx or .trtir (parsed and optimized on the fly)."""
    options, precision = split_build_options(rest)
    shapes = rest["profile_shapes"]
    if not dry_run and output is None:
        raise TrtcError("missing -o/--output", where="trtc build", hint="name the .plan to write")
    loaded = open_model(artifact, parse_freeze_specs(freeze))
    progress = None if as_json else progress_line()
    prepare_for_build(loaded, precision, progress=progress,
                      calib_kwargs={"inputs": inputs, "seed": seed, "ranges": ranges, "shapes": _calib_shapes(shapes)})
    if dry_run:
        report = support_report(loaded)
        if as_json:
            echo_json(report)
        else:
            click.echo(support_text(report))
        if not report["supported"]:
            raise CheckFailed(f"{len(report['unsupported'])} node(s) cannot be lowered", where=str(artifact))
        return
    result = build_artifact(loaded, output, options, cache=not no_cache, cache_dir=cache_dir, progress=progress)
    if progress:
        progress("")
    side = result.sidecar
    info = {"output": str(output), "cached": result.cached, **side}
    if as_json:
        echo_json(info)
        return
    precision_text = side["precision"]["target"] if side["precision"] else "fp32"
    click.echo(f"{'reused cached engine' if result.cached else 'built'} {output}: {side['backend']} "
               f"{side['backend_version']}, targets {','.join(side['targets']) or 'default'}, {precision_text}, "
               f"{side['network_layers']} layers, {side['plan_bytes'] / 2**20:.1f} MiB, "
               f"{side['build_seconds']:.1f}s")


def _calib_shapes(shapes) -> list[str]:
    """Random calibration data at each dynamic input's OPT shape."""
    out = []
    for spec in shapes:
        name, ranges = parse_shape_spec(spec)
        out.append(f"{name}={'x'.join(map(str, ranges[1]))}")
    return out


@click.command("compile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True,
              help="Folder for every artifact and the report.")
@build_options
@freeze_option
@precision_options
@input_options
@json_option
def compile_cmd(model: Path, outdir: Path, freeze, inputs, seed, ranges, shapes, as_json, **rest) -> None:
    """parse -> optimize -> build -> compare in one go; unchanged stages are reused."""
    options, precision = split_build_options(rest)
    # Calibration and comparison data: --shape if given, else each dynamic input at its OPT shape.
    calib_shapes = list(shapes) or _calib_shapes(rest["profile_shapes"])
    progress = None if as_json else progress_line()
    report = compile_model(model, outdir, build_options=options, precision=precision,
                           freeze=parse_freeze_specs(freeze),
                           calib={"inputs": inputs, "seed": seed, "ranges": ranges, "shapes": calib_shapes},
                           feeds_kwargs={"inputs": inputs, "seed": seed + 1000, "ranges": ranges,
                                         "shapes": calib_shapes},
                           cache=not rest["no_cache"], progress=progress)
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
