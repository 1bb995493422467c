"""`trtc run`: an engine on the GPU, an .onnx/.trtir on the CPU reference."""

from __future__ import annotations

from pathlib import Path

import click

from trtc.cli.options import echo_json, input_options, json_option, to_feed_options, tolerance_options


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@input_options
@click.option("--output", "output", type=click.Path(path_type=Path), help="Write outputs to an .npz.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, help="Untimed runs first.")
@click.option("--iterations", type=click.IntRange(min=0), default=0, help="Timed runs (latency).")
@click.option("--duration", type=click.FloatRange(min=0), help="Engines: time runs for at least this many seconds.")
@click.option("--cuda-graph", is_flag=True, help="Engines: capture the inference in a CUDA graph and replay it.")
@click.option("--include-transfers", is_flag=True, help="Engines: time host<->device copies too.")
@click.option("--runtime-cache", type=click.Path(path_type=Path),
              help="TensorRT-RTX: file of JIT-compiled kernels reused across runs.")
@click.option("--trust-plan", is_flag=True,
              help="Engines: deserialize the plan even when its sidecar does not record its bytes (built elsewhere).")
@tolerance_options
@json_option
def run(artifact: Path, inputs, seed, ranges, shapes, output, warmup, iterations, duration, cuda_graph,
        include_transfers, runtime_cache, trust_plan, atol, rtol, as_json) -> None:
    """Run a .plan on the GPU, or an .onnx/.trtir on the CPU reference (onnxruntime, then onnx.reference).

    An --input .npz may hold expected outputs too (keyed by output name, as the corpus files and
    polygraphy's saved outputs are): the outputs are then compared with them, and a mismatch exits 1."""
    import numpy as np

    from trtc.compare import Tolerances, compare_outputs, raise_on_mismatch
    from trtc.errors import TrtcError
    from trtc.runtime.api import run_engine_file, run_reference_file
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    feeds = to_feed_options(inputs, seed, ranges, shapes)
    tolerances = Tolerances.from_cli(atol, rtol)
    if artifact.suffix in PLAN_SUFFIXES:
        report = run_engine_file(artifact, feeds, warmup=warmup,
                                 iterations=iterations, duration=duration, cuda_graph=cuda_graph,
                                 include_transfers=include_transfers, runtime_cache=runtime_cache,
                                 trust_plan=trust_plan)
    else:
        if runtime_cache or cuda_graph or duration or include_transfers or trust_plan:
            raise TrtcError("--runtime-cache/--cuda-graph/--duration/--include-transfers/--trust-plan apply to "
                            "engines (.plan)",
                            where=str(artifact))
        report = run_reference_file(artifact, feeds, warmup=warmup, iterations=iterations)
    outputs, given = report.pop("_arrays"), report.pop("_feeds")
    checked = None
    if given.expected:
        stored = ", ".join(given.expected_from)
        tolerances.check_names(list(given.expected), f"{artifact} vs {stored}")
        results = compare_outputs(outputs, given.expected, tolerances, report["precision"])
        checked = report["compared_with"] = {
            "files": list(given.expected_from), "outputs": results, "match": all(r["match"] for r in results.values()),
            "not_compared": [n for n in outputs if n not in given.expected]}
    elif tolerances.given:
        raise TrtcError("--atol/--rtol apply to expected outputs, and no --input .npz holds any", where=str(artifact),
                        hint="give an .npz keyed by input and output names, e.g. polygraphy's saved outputs")
    if output:
        np.savez(output, **{k: v for k, v in outputs.items() if isinstance(v, np.ndarray)})
    if as_json:
        echo_json(report)
    else:
        _print_text(report, [g.describe() for g in given.generated], output)
    if checked:
        raise_on_mismatch({"a": {"path": str(artifact)}, "b": {"path": stored}, "outputs": checked["outputs"]})


def _print_text(report: dict, generated: list[str], output: Path | None) -> None:
    from trtc.compare import result_text

    for line in generated:
        click.echo(f"generated: {line}")
    for name, why in report.get("unused", {}).items():
        click.echo(f"input {name}: not used ({why})")
    click.echo(f"backend: {report['backend']}" + (f" ({report['fallback_reason']})"
                                                   if report.get("fallback_reason") else ""))
    for name, info in report["outputs"].items():
        click.echo(f"{name}: {_summary_text(info)}")
    checked = report.get("compared_with")
    if checked:
        click.echo(f"compared with {', '.join(checked['files'])}:")
        for name, result in checked["outputs"].items():
            click.echo(f"  {name}: {result_text(result)}")
        if checked["not_compared"]:
            click.echo(f"  not compared (no expected values): {', '.join(checked['not_compared'])}")
    timing = report["latency"]
    if timing:
        click.echo(f"latency over {timing['iterations']} runs: min {timing['min_ms']:.3f} ms, median "
                   f"{timing['median_ms']:.3f} ms, p90 {timing['p90_ms']:.3f} ms, p95 {timing['p95_ms']:.3f} ms, "
                   f"p99 {timing['p99_ms']:.3f} ms, throughput {timing['throughput_per_s']:.1f}/s")
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
