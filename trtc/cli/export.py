"""`trtc export`: an artifact in another format."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import click

from trtc.cli.options import echo_json, json_option


@click.group()
def export() -> None:
    """Write an artifact in another format."""


@export.command("onnx")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .onnx file to write (weights over 2 GB go to OUTPUT.data beside it).")
@json_option
def export_onnx(artifact: Path, output: Path, as_json: bool) -> None:
    """A plain ONNX model (external data beside it when weights pass 2 GB)."""
    from trtc.ir.onnx_export import PROTO_LIMIT, export_onnx_file
    from trtc.ir.walk import weight_bytes
    from trtc.loading import open_model

    start = time.perf_counter()
    loaded = open_model(artifact)
    export_onnx_file(loaded.model, output)
    # The writer puts weights in OUTPUT.data only past protobuf's limit; asking the same question
    # (rather than whether the file exists) ignores a stale one left by an earlier, larger export.
    data = output.with_name(f"{output.name}.data") if weight_bytes(loaded.model.graph) >= PROTO_LIMIT else None
    info = {
        "output": str(output),
        "bytes": output.stat().st_size,
        "external_data": str(data) if data else None,
        "external_data_bytes": data.stat().st_size if data else 0,
        "nodes": len(loaded.model.graph),
        "opsets": {domain or "ai.onnx": version for domain, version in loaded.model.opset_imports.items()},
        "inputs": [value.name for value in loaded.model.graph.inputs],
        "outputs": [value.name for value in loaded.model.graph.outputs],
        "seconds": round(time.perf_counter() - start, 3),
    }
    if as_json:
        echo_json(info)
        return
    size = info["bytes"] + info["external_data_bytes"]
    click.echo(f"wrote {output}: {info['nodes']} nodes, {size / 2**20:.1f} MiB in {info['seconds']:.2f}s")


def triton_options(fn):
    """The options of a Triton model written from an artifact (export triton, and serve ARTIFACT)."""
    from trtc.cli.options import profile_options

    decorators = [
        click.option("--name", help="The model's name in the repository (default: the artifact's file name)."),
        click.option("--version", "model_version", type=click.IntRange(min=1), default=1, show_default=True,
                     help="The version folder to write."),
        click.option("--max-batch", type=click.IntRange(min=0), metavar="N",
                     help="max_batch_size (default: the profiles' batch MAX; 0: no batching)."),
        click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Model instances (per profile, for an engine with several)."),
        click.option("--max-queue-delay-us", type=click.IntRange(min=0), metavar="N",
                     help="How long the dynamic batcher may hold a request to fill a batch."),
        click.option("--backend", "triton_backend", type=click.Choice(["tensorrt", "python"]),
                     help="Triton backend: tensorrt (an engine's default) or python (trtc's runtime: the engine on "
                          "a GPU, else the CPU reference; the default for .onnx/.trtir)."),
        profile_options,
        click.option("--llm/--no-llm", "llm", default=None,
                     help="An LLM decoder (.onnx/.trtir with a KV cache, an onnxruntime-genai folder) becomes a "
                          "decoupled model streaming one response per token (default: when the artifact is one; "
                          "--llm: it must be; --no-llm: the tensor-in/tensor-out model)."),
        click.option("--tokenizer", type=click.Path(path_type=Path), metavar="TOKENIZER.JSON",
                     help="For an LLM: serve text too (text_input, text_output) with this tokenizer.json "
                          "(default: a genai folder's own)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)


TRITON_FLAGS = ("name", "model_version", "max_batch", "instances", "max_queue_delay_us", "triton_backend", "llm",
                "tokenizer")


def to_triton_options(kwargs: dict[str, Any]):
    """TritonExportOptions from the triton_options flags; the flags are removed from `kwargs`."""
    from trtc.cli.options import to_profiles
    from trtc.serve.config import TritonExportOptions

    profiles = tuple(to_profiles(kwargs))
    flags = {k: kwargs.pop(k) for k in TRITON_FLAGS}
    return TritonExportOptions(name=flags["name"], version=flags["model_version"], max_batch=flags["max_batch"],
                               instances=flags["instances"], max_queue_delay_us=flags["max_queue_delay_us"],
                               backend=flags["triton_backend"], profiles=profiles, llm=flags["llm"],
                               tokenizer=flags["tokenizer"])


@export.command("triton")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The model repository to write the model into (created if missing).")
@triton_options
@json_option
def export_triton(artifact: Path, repo: Path, as_json: bool, **kwargs: Any) -> None:
    """A Triton model: REPO/NAME/config.pbtxt and REPO/NAME/VERSION/ with the engine (tensorrt) or
    trtc's model.py (python), the config checked against the artifact before anything is written."""
    from trtc.serve.export import export_triton as write_model

    report = write_model(artifact, repo, to_triton_options(kwargs))
    if as_json:
        echo_json(report)
        return
    batching = (f"max_batch_size {report['max_batch_size']}"
                + (f", preferred {report['preferred_batch_size']}" if report["preferred_batch_size"] else "")
                if report["max_batch_size"] else "no batching")
    kind = "decoupled LLM model (a response per token), " if report["llm"] else ""
    click.echo(f"wrote {report['path']}: {report['backend']} backend, {kind}{batching}, "
               f"{report['instance_groups']} instance group(s), version {report['version']}")
    for note in report["notes"]:
        click.echo(f"  note: {note}")
    if report["backend"] == "python":
        click.echo(f"serve it: trtc serve {repo}")
    else:  # the Triton trtc serve runs has no TensorRT backend
        click.echo(f"serve it with Triton's TensorRT backend: tritonserver --model-repository={repo} "
                   "(NGC's Triton container)")
