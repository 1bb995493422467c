"""The subcommands. Each parses its options and calls one library function."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from trtc import inspect as inspect_mod
from trtc.cli.options import echo_json, input_options, json_option
from trtc.errors import TrtcError
from trtc.frontend import export_onnx_file, parse_onnx
from trtc.ir import save_artifact
from trtc.loading import open_model
from trtc.runtime import (
    ReferenceRunner,
    make_feeds,
    model_inputs,
    summarize,
    time_runs,
    validate_feeds,
)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .trtir artifact to write.")
@json_option
def parse(model: Path, output: Path, as_json: bool) -> None:
    """ONNX model -> checked, canonical, shape-inferred .trtir artifact."""
    start = time.perf_counter()
    artifact = parse_onnx(model)
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
    if info["unknown_shapes"]:
        click.echo(f"note: {len(info['unknown_shapes'])} values without inferred shape "
                   f"(see `trtc inspect {output}`)")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@input_options
@click.option("--output", "output", type=click.Path(path_type=Path), help="Write outputs to an .npz.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, help="Untimed runs first.")
@click.option("--iterations", type=click.IntRange(min=0), default=0, help="Timed runs (latency).")
@json_option
def run(artifact: Path, inputs, seed, ranges, shapes, output, warmup, iterations, as_json) -> None:
    """Run an .onnx or .trtir model on the CPU reference (onnxruntime, then onnx.reference)."""
    if artifact.suffix == ".plan":
        raise TrtcError("running TensorRT engines is not available yet", where=str(artifact),
                        hint="run the CPU reference on the .trtir instead")
    loaded = open_model(artifact)
    specs = model_inputs(loaded.model)
    feeds = make_feeds(specs, inputs=inputs, seed=seed, ranges=ranges, shapes=shapes)
    validate_feeds(specs, feeds, where=str(artifact))
    runner = ReferenceRunner(loaded.model)
    try:
        outputs = runner.run(feeds)
        timing = time_runs(runner.run, feeds, warmup, iterations) if iterations else None
    finally:
        runner.close()
    if output:
        np.savez(output, **{k: v for k, v in outputs.items() if isinstance(v, np.ndarray)})
    report = {"artifact": str(artifact), "backend": runner.backend,
              "fallback_reason": runner.fallback_reason,
              "inputs": {k: summarize(v) for k, v in feeds.items()},
              "outputs": {k: summarize(v) for k, v in outputs.items()}, "latency": timing}
    if as_json:
        echo_json(report)
        return
    click.echo(f"backend: {runner.backend}" + (f" ({runner.fallback_reason})" if runner.fallback_reason else ""))
    for name, info in report["outputs"].items():
        click.echo(f"{name}: {_summary_text(info)}")
    if timing:
        click.echo(f"latency over {iterations} runs: median {timing['median_ms']:.3f} ms, "
                   f"p90 {timing['p90_ms']:.3f} ms, p99 {timing['p99_ms']:.3f} ms, "
                   f"throughput {timing['throughput_per_s']:.1f}/s")
    if output:
        click.echo(f"wrote {output}")


def _summary_text(info: dict) -> str:
    if "shape" not in info:
        return info.get("type", "?")
    text = f"{info['dtype']}{info['shape']}"
    if "min" in info:
        text += f" min {info['min']:.6g} max {info['max']:.6g} mean {info['mean']:.6g}"
    if info.get("nan") or info.get("inf"):
        text += f" NaN {info['nan']} Inf {info['inf']}"
    return text


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--graph", is_flag=True, help="Print the graph, one line per node.")
@json_option
def inspect(artifact: Path, graph: bool, as_json: bool) -> None:
    """Inputs, outputs, ops, parameters, opsets, metadata of an .onnx or .trtir."""
    loaded = open_model(artifact)
    info = inspect_mod.summary(loaded)
    if as_json:
        if graph:
            info["graph"] = inspect_mod.graph_text(loaded.model).splitlines()
        echo_json(info)
        return
    click.echo(inspect_mod.graph_text(loaded.model) if graph else inspect_mod.format_summary(info))


@click.group()
def export() -> None:
    """Write an artifact in another format."""


@export.command("onnx")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def export_onnx(artifact: Path, output: Path) -> None:
    """A plain ONNX model (external data beside it when weights pass 2 GB)."""
    loaded = open_model(artifact)
    export_onnx_file(loaded.model, output)
    click.echo(f"wrote {output}")


ALL = [parse, run, inspect, export]
