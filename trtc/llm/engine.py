"""The generation loop's GPU executor: an engine built with --llm (a .plan and its sidecar) whose static
KV cache stays on the device (trtc/runtime/kv_engine.py), driven by the same loop and sampler as the CPU
reference (trtc/llm/generate.py).

Everything the sidecar can tell is checked first, without a GPU: that the engine has a static cache,
the decoder's roles (the same recognition as a model's, over the engine's inputs and outputs), the
device buffers and profiles. Only then is a machine without a usable GPU told so, in one line that
points at the CPU reference of the same model: the .trtir the engine was built from (found beside it
by its content hash), else the sidecar's source."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.llm.decoder import Decoder, DecoderSpec
from trtc.runtime.kv_engine import BufferPlan, buffer_plan


def engine_spec(sidecar: Mapping[str, Any], where: str = "") -> tuple[DecoderSpec, BufferPlan]:
    """The decoder an engine's sidecar describes and its device buffers; its batch and prompt limits
    are the engine's profiles'. One line for an engine generation cannot drive."""
    if not sidecar.get("llm"):
        raise TrtcError("the engine was built without --llm: it has no static KV cache to generate with",
                        where=where, hint="build it with --llm --max-seq N, or generate on the .onnx (CPU reference)")
    spec = DecoderSpec.from_model(io_model(sidecar), where=where, llm=sidecar["llm"])
    plan = buffer_plan(sidecar, input_ids=spec.input_ids, logits=spec.logits, where=where)
    static = dataclasses.replace(spec.static, max_batch=plan.max_batch, max_prompt=min(plan.prefill_seq, plan.max_seq))
    return dataclasses.replace(spec, static=static), plan


def io_model(sidecar: Mapping[str, Any]) -> ir.Model:
    """The engine's inputs and outputs as a graph without nodes (-1 dims named as the sidecar names them),
    so that `DecoderSpec.from_model` reads an engine as it reads a model."""

    def value(entry: Mapping[str, Any]) -> ir.Value:
        names = entry.get("dim_names") or [None] * len(entry["shape"])
        shape = [d if d >= 0 else (names[i] or f"{entry['name']}_{i}") for i, d in enumerate(entry["shape"])]
        return ir.Value(name=entry["name"], type=ir.TensorType(ir.DataType[_onnx_type(entry["dtype"])]),
                        shape=ir.Shape(shape))

    graph = ir.Graph(inputs=[value(e) for e in sidecar["inputs"]], outputs=[value(e) for e in sidecar["outputs"]],
                     nodes=[], name="engine")
    return ir.Model(graph, ir_version=10)


def _onnx_type(name: str) -> str:
    """A sidecar dtype name ("float", "float16", "int64") as onnx_ir's DataType member."""
    if name.upper() not in ir.DataType.__members__:
        raise TrtcError(f"unknown dtype {name!r} in the engine sidecar")
    return name.upper()


def engine_decoder(path: str | Path, *, cuda_graph: bool = True, trust_plan: bool = False,
                   runtime_cache: str | Path | None = None) -> Decoder:
    """A Decoder over the engine at `path` (built with --llm): its cache on the device, the decode step
    replayed from a CUDA graph unless `cuda_graph` is False. Without a usable GPU: one line saying so,
    pointing at the .trtir it was built from (CPU reference)."""
    from trtc.lower.backend import load_backend
    from trtc.runtime.engine import no_gpu_reason
    from trtc.runtime.kv_engine import KVCacheEngine
    from trtc.runtime.sidecar import read_sidecar

    path = Path(path)
    where = str(path)
    sidecar = read_sidecar(path)
    spec, plan = engine_spec(sidecar, where)
    reason = no_gpu_reason()
    if reason is not None:
        raise TrtcError(f"the engine needs a GPU ({reason})", where=where, hint=cpu_alternative(path, sidecar))
    engine = KVCacheEngine(path, sidecar, load_backend(sidecar["backend"]), plan, runtime_cache,
                           cuda_graph=cuda_graph, where=where, trust_plan=trust_plan)
    return Decoder(spec, None, executor=engine.describe(), where=where, cache=engine, close=engine.close)


def cpu_alternative(plan: Path, sidecar: Mapping[str, Any]) -> str:
    """Where the same model runs on the CPU reference: the .trtir beside the engine whose content hash
    the sidecar records (the one it was built from), else the sidecar's source."""
    from trtc.ir.artifact import read_header

    wanted = sidecar.get("ir_content_hash")
    for candidate in sorted(plan.parent.glob("*.trtir")) if wanted else ():
        try:
            if read_header(candidate).get("content_hash") == wanted:
                return f"the .trtir it was built from runs on the CPU reference: trtc generate {candidate}"
        except TrtcError:
            continue
    source = (sidecar.get("source") or {}).get("path")
    if source:
        return f"the model it was built from runs on the CPU reference: trtc generate {source}"
    return "generate on the .onnx or .trtir it was built from (CPU reference)"
