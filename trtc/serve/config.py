"""config.pbtxt from an artifact's signature: what a user would otherwise write by hand.

- The batch dim becomes `max_batch_size` when every input and output leads with one dynamic
  dim, bounded by the smallest profile MAX; `dynamic_batching` prefers the profiles' OPT sizes.
- Other dynamic dims are -1; static dims are the artifact's.
- A `.plan` is a `tensorrt_plan` model with one `KIND_GPU` instance group per profile (Triton's
  TensorRT backend runs an instance on the profiles its group names); `--backend python` is a
  Python-backend model on `KIND_CPU` instances whose model.py picks the GPU when there is one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trtc.errors import TrtcError
from trtc.lower.profiles import ProfileSpec
from trtc.serve.schema import config_module, triton_type
from trtc.serve.signature import Signature

BACKENDS = ("tensorrt", "python")


@dataclasses.dataclass(frozen=True)
class TritonExportOptions:
    """`trtc export triton`'s options; None means: derive it from the artifact."""

    name: str | None = None
    version: int = 1
    max_batch: int | None = None  # 0: no batching
    instances: int = 1
    max_queue_delay_us: int | None = None
    backend: str | None = None  # default: tensorrt for an engine, python otherwise
    profiles: tuple[ProfileSpec, ...] = ()  # --shapes, for an .onnx/.trtir
    llm: bool | None = None  # a decoder as the streaming LLM model: None when it is one, True required, False never
    tokenizer: Path | None = None  # tokenizer.json for an LLM's text_input/text_output (a genai folder has its own)

    def backend_for(self, kind: str) -> str:
        return self.backend or ("tensorrt" if kind == "plan" else "python")


@dataclasses.dataclass(frozen=True)
class Batching:
    """The batching decision and, when off, why (said in the export report)."""

    max_batch: int
    preferred: tuple[int, ...]
    reason: str | None = None


def decide_batching(signature: Signature, options: TritonExportOptions) -> Batching:
    """max_batch_size and preferred sizes; an explicit --max-batch the artifact cannot take is an error."""
    asked = options.max_batch
    if asked == 0:
        return Batching(0, (), "--max-batch 0")
    reason = signature.batch_reason()
    ranges = signature.batch_ranges() if reason is None else []
    if reason is None and not ranges:
        reason = "the model has no dynamic dims"
    if reason is None and any(lo > 1 for lo, _, _ in ranges):
        reason = f"a profile's batch MIN is above 1 ({', '.join(f'{lo}..{hi}' for lo, _, hi in ranges)})"
    if reason is not None:
        if asked:
            raise TrtcError(f"cannot batch: {reason}", where="--max-batch", hint="drop --max-batch to serve unbatched")
        return Batching(0, (), reason)
    limit = min(hi for _, _, hi in ranges)
    if asked is not None and asked > limit:
        raise TrtcError(f"{asked} is above the batch the artifact takes (its profiles' MAX: {limit})",
                        where="--max-batch", hint=f"use --max-batch {limit} or less, or build with a larger range")
    max_batch = asked or limit
    preferred = tuple(sorted({opt for _, opt, _ in ranges if 1 < opt <= max_batch}))
    return Batching(max_batch, preferred)


def _refuse_types(signature: Signature, backend: str) -> None:
    problems = []
    for t in signature.tensors():
        if triton_type(t.dtype) is None or (backend == "python" and t.dtype == "bfloat16"):
            problems.append(f"{t.name!r} is {t.dtype}, which Triton's {backend} backend cannot pass")
        elif backend == "tensorrt" and t.engine_dtype:
            problems.append(f"{t.name!r} is {t.dtype}, carried as {t.engine_dtype} in the engine: Triton's TensorRT "
                            f"backend passes a client's bytes as they are, so clients would have to send "
                            f"{t.engine_dtype}")
    if problems:
        hint = ("export with --backend python, whose model.py converts between the model's types and the engine's"
                if backend == "tensorrt" and all("carried" in p for p in problems) else
                "change the model's input and output types")
        raise TrtcError("; ".join(problems), hint=hint)


def fixed_dims(t, signature: Signature) -> tuple[int, ...]:
    """An input's dims, a dynamic dim that every profile fixes to one size written as that size
    (Triton then refuses other sizes itself, before the model sees them)."""
    dims = list(t.shape)
    for axis, dim in enumerate(dims):
        sizes = {size for p in signature.profiles if t.name in p for size in (p[t.name][0][axis], p[t.name][2][axis])}
        if dim < 0 and len(sizes) == 1:
            dims[axis] = sizes.pop()
    return tuple(dims)


def model_config(signature: Signature, name: str, options: TritonExportOptions, batching: Batching):
    """The ModelConfig message (Triton's schema) for `signature`."""
    backend = options.backend_for(signature.kind)
    if backend not in BACKENDS:
        raise TrtcError(f"unknown backend {backend!r}", where="--backend", hint=f"one of {', '.join(BACKENDS)}")
    if backend == "tensorrt" and signature.kind != "plan":
        raise TrtcError("Triton's TensorRT backend serves engines", where="--backend tensorrt",
                        hint="build one first (trtc build MODEL -o model.plan), or export with --backend python")
    _refuse_types(signature, backend)
    pb = config_module()
    config = pb.ModelConfig(name=name, max_batch_size=batching.max_batch)
    if backend == "tensorrt":
        config.platform = "tensorrt_plan"
    else:
        config.backend = "python"
    skip = 1 if batching.max_batch else 0
    for tensors, field in ((signature.inputs, config.input), (signature.outputs, config.output)):
        for t in tensors:
            dims = fixed_dims(t, signature) if field is config.input else t.shape
            field.add(name=t.name, data_type=getattr(pb.DataType, triton_type(t.dtype)), dims=list(dims[skip:]))
    if batching.max_batch:
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred)
        if options.max_queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    elif options.max_queue_delay_us is not None:
        raise TrtcError("a queue delay needs batching, which is off for this model", where="--max-queue-delay-us",
                        hint=f"batching is off because {batching.reason}")
    kind = pb.ModelInstanceGroup.KIND_GPU if backend == "tensorrt" else pb.ModelInstanceGroup.KIND_CPU
    if backend == "tensorrt" and len(signature.profiles) > 1:
        for i in range(len(signature.profiles)):
            config.instance_group.add(name=f"{name}_profile{i}", kind=kind, count=options.instances, profile=[str(i)])
    else:
        config.instance_group.add(kind=kind, count=options.instances)
    return config
