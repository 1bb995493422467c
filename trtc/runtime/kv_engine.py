"""A static-KV-cache engine (`trtc build --llm --max-seq N`) run one generation step at a time.

The caches live on the device for the engine's whole life: one buffer per cache input, allocated once
for the largest batch and Smax slots and zeroed once (masked slots must not hold NaN bit patterns that
a 0-weight product would spread), bound both as the input and as the present output the engine
aliases to it (IKVCacheUpdateLayer writes the new tokens in place; `ICudaEngine.get_aliased_input_tensor`
must name the input). A step copies in only input_ids, position_ids and write_indices and copies out
only the logits. The prefill runs on one execution context under the prefill profile, the decode
steps on a second one under the decode profile (seq 1), each context's addresses set once. The decode
step is replayed from a CUDA graph: stream capture of copies and enqueue, made after the first decode
step of each batch size, for TensorRT; TensorRT-RTX's own whole-graph capture for RTX (its engines
allocate memory internally, so a stream capture is not possible).

`buffer_plan` reads the sizes, profiles and aliasing from the sidecar alone (no GPU), so what the GPU
would be asked for is checked, and testable, anywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtc.errors import TrtcError
from trtc.lower.backend import Backend
from trtc.runtime import cuda
from trtc.runtime.engine import EngineRunner, to_engine_type
from trtc.runtime.sidecar import sidecar_dtype

PREFILL, DECODE = "prefill", "decode"  # the phases trtc.llm.cache runs


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One device buffer: tensor `name` at its largest shape in the engine's type; `alias`: the output
    bound to the same memory (a cache's present)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    alias: str | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape), "bytes": self.nbytes,
                "alias": self.alias}


@dataclasses.dataclass(frozen=True)
class BufferPlan:
    """What a static-cache engine needs on the device, from its sidecar: the caches (each with the
    present aliased to it), the inputs copied in at every step and the logits copied out, all at
    `max_batch` rows; the prefill and decode profiles by index and the longest prompt the prefill
    profile takes (`prefill_seq`)."""

    max_batch: int
    max_seq: int
    prefill_seq: int
    prefill_profile: int
    decode_profile: int
    caches: tuple[Buffer, ...]
    inputs: tuple[Buffer, ...]
    logits: Buffer

    @property
    def cache_bytes(self) -> int:
        return sum(b.nbytes for b in self.caches)

    @property
    def step_bytes(self) -> int:
        """Device memory of the per-step inputs and the logits (also held in pinned host memory)."""
        return sum(b.nbytes for b in self.inputs) + self.logits.nbytes

    def as_dict(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_seq": self.max_seq, "prefill_seq": self.prefill_seq,
                "prefill_profile": self.prefill_profile, "decode_profile": self.decode_profile,
                "cache_bytes": self.cache_bytes, "step_bytes": self.step_bytes,
                "caches": [b.as_dict() for b in self.caches], "inputs": [b.as_dict() for b in self.inputs],
                "logits": self.logits.as_dict()}


def buffer_plan(sidecar: Mapping[str, Any], *, input_ids: str = "input_ids", logits: str = "logits",
                where: str = "") -> BufferPlan:
    """The device buffers of the engine `sidecar` describes; one line for an engine generation cannot
    drive in place (built without --llm, a present not shaped as its cache, outputs besides the logits
    and the presents, no profile for input_ids)."""
    llm = sidecar.get("llm")
    if not llm:
        raise TrtcError("the engine was built without --llm: it has no static KV cache to generate with",
                        where=where, hint="build it with --llm --max-seq N, or generate on the .onnx (CPU reference)")
    entries = {e["name"]: e for e in [*sidecar["inputs"], *sidecar["outputs"]]}
    profiles = sidecar.get("profiles") or []
    prefill, decode = _phase_profiles(profiles, input_ids, where)
    ids_max = profiles[prefill][input_ids][2]
    max_batch = min(int(ids_max[0]), int(profiles[decode][input_ids][2][0]), int(llm.get("max_batch") or ids_max[0]))
    caches = tuple(_cache_buffer(c, entries, max_batch, where) for c in llm["caches"])
    cached = {b.name for b in caches} | {b.alias for b in caches}
    others = [e["name"] for e in sidecar["outputs"] if e["name"] not in cached | {logits}]
    if others or logits not in entries:
        what = f"outputs besides {logits!r} and the presents ({', '.join(others)})" if others else f"no {logits!r}"
        raise TrtcError(f"the engine has {what}: generation binds the logits and the caches only", where=where)
    inputs = tuple(_step_buffer(entries[e["name"]], profiles[prefill], where) for e in sidecar["inputs"]
                   if e["name"] not in cached)
    entry = entries[logits]
    shape = entry["shape"]
    if len(shape) != 3 or shape[2] < 0:
        raise TrtcError(f"logits {_shape_text(shape)}: trtc reads logits [batch, seq, vocab] with a fixed vocab",
                        where=where)
    seq = 1 if shape[1] == 1 else int(ids_max[1])
    return BufferPlan(max_batch=max_batch, max_seq=int(llm["max_seq"]), prefill_seq=int(ids_max[1]),
                      prefill_profile=prefill, decode_profile=decode, caches=caches, inputs=inputs,
                      logits=Buffer(logits, _engine_dtype(entry), (max_batch, seq, int(shape[2]))))


def _phase_profiles(profiles: Sequence[Mapping[str, Any]], input_ids: str, where: str) -> tuple[int, int]:
    """(prefill, decode) profile indices: prefill takes the longest input_ids, decode exactly one token
    (the prefill profile itself when no profile is for one token only)."""
    ranges = [p.get(input_ids) for p in profiles]
    if not ranges or any(r is None or len(r[2]) != 2 for r in ranges):
        raise TrtcError(f"the engine's profiles do not all give {input_ids!r} [batch, seq] ranges", where=where,
                        hint="build it with --llm (its prefill and decode profiles)")
    prefill = max(range(len(ranges)), key=lambda i: (ranges[i][2][1], -i))
    decode = next((i for i, r in enumerate(ranges) if i != prefill and r[0][1] == r[2][1] == 1), prefill)
    return prefill, decode


def _engine_dtype(entry: Mapping[str, Any]) -> np.dtype:
    """The type the engine holds a tensor in (its carrier, where it carries the model's in another)."""
    return sidecar_dtype(entry.get("engine_dtype") or entry["dtype"])


def _cache_buffer(cache: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]], max_batch: int,
                  where: str) -> Buffer:
    source, present = entries.get(cache["input"]), entries.get(cache["output"])
    if source is None or present is None:
        missing = cache["input"] if source is None else cache["output"]
        raise TrtcError(f"the sidecar's llm record names cache tensor {missing!r}, which the engine lacks",
                        where=where, hint="rebuild the engine with `trtc build --llm`")
    if source["shape"][1:] != present["shape"][1:] or _engine_dtype(source) != _engine_dtype(present):
        raise TrtcError(f"present {present['name']!r} ({present['dtype']}[{_shape_text(present['shape'])}]) is not "
                        f"its cache {source['name']!r} ({source['dtype']}[{_shape_text(source['shape'])}]): it cannot "
                        "be updated in place", where=where)
    if any(d < 0 for d in source["shape"][1:]):
        raise TrtcError(f"cache {source['name']!r} is [{_shape_text(source['shape'])}]: only its batch may vary",
                        where=where)
    return Buffer(source["name"], _engine_dtype(source), (max_batch, *map(int, source["shape"][1:])),
                  alias=present["name"])


def _step_buffer(entry: Mapping[str, Any], profile: Mapping[str, Any], where: str) -> Buffer:
    """An input copied in at every step, at the prefill profile's largest shape."""
    shape = profile[entry["name"]][2] if entry["name"] in profile else entry["shape"]
    if any(d < 0 for d in shape):
        raise TrtcError(f"input {entry['name']!r} has no size in the prefill profile", where=where)
    return Buffer(entry["name"], _engine_dtype(entry), tuple(int(d) for d in shape))


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in shape)


class KVCacheEngine(EngineRunner):
    """An engine with a static KV cache kept on the device (see the module's docstring): `reset(batch)`
    starts a generation, `run(feeds, phase)` runs its prefill or a decode step and returns the logits.
    The `CacheExecutor` of trtc.llm.cache."""

    def __init__(self, plan_path: str | Path, sidecar: Mapping[str, Any], backend: Backend, buffers: BufferPlan,
                 runtime_cache: str | Path | None = None, *, cuda_graph: bool = True, device: int = 0,
                 where: str | None = None, trust_plan: bool = False):
        self.buffers = buffers
        self.cuda_graph = cuda_graph
        self.graph_mode = "off"
        self.batch = 0
        self._decode_context = None
        self._shapes: dict[int, dict[str, tuple[int, ...]]] = {}  # per context (id): the input shapes last set
        self._graph: cuda.Graph | None = None
        self._types: dict[str, np.dtype] = {}
        super().__init__(plan_path, sidecar, backend, runtime_cache, device=device, where=where,
                         trust_plan=trust_plan)

    # ---- setup

    def _open(self, device: int) -> None:
        super()._open(device)
        self._prepare()

    def _prepare(self) -> None:
        """After the runner's own setup (engine, context, stream): checks, buffers, contexts."""
        self._check_engine()
        self._allocate()
        self._make_contexts()

    def _check_engine(self) -> None:
        """The engine takes exactly the planned tensors, in the planned types, each present aliased to
        its cache; both profiles exist."""
        by_name = {t.name: t for t in self._io}
        planned = [*self.buffers.caches, *self.buffers.inputs, self.buffers.logits]
        names = {b.name for b in planned} | {b.alias for b in self.buffers.caches}
        if unplanned := sorted(set(by_name) - names):
            raise TrtcError(f"the engine has tensors its sidecar does not list: {', '.join(unplanned)}",
                            where=self.where, hint="rebuild the engine with `trtc build --llm`")
        for buffer in planned:
            tensor = by_name.get(buffer.name)
            if tensor is None or tensor.on_host or tensor.dtype.itemsize != buffer.dtype.itemsize:
                found = "missing" if tensor is None else f"{tensor.dtype}{' on the host' * tensor.on_host}"
                raise TrtcError(f"engine tensor {buffer.name!r} is {found}, its sidecar says {buffer.dtype} on the "
                                "device", where=self.where, hint="rebuild the engine with `trtc build --llm`")
            self._types[buffer.name] = tensor.dtype
        aliased = getattr(self._engine, "get_aliased_input_tensor", None)
        for cache in self.buffers.caches:
            source = aliased(cache.alias) if aliased is not None else cache.name
            if source != cache.name:
                raise TrtcError(f"the engine does not update cache {cache.name!r} in place (its present "
                                f"{cache.alias!r} aliases {source!r})", where=self.where,
                                hint="rebuild with `trtc build --llm` (IKVCacheUpdateLayer: TensorRT-RTX 1.7+, "
                                     "TensorRT 10.15+)")
        count = self._engine.num_optimization_profiles
        if max(self.buffers.prefill_profile, self.buffers.decode_profile) >= count:
            raise TrtcError(f"the sidecar lists {self.buffers.decode_profile + 1} profiles but the engine has {count}",
                            where=self.where)

    def _allocate(self) -> None:
        """Every buffer once: the caches zeroed on the device, the step tensors with pinned twins."""
        for cache in self.buffers.caches:
            self._device[cache.name] = buffer = cuda.DeviceBuffer(cache.nbytes)
            cuda.memset_async(buffer.ptr, 0, cache.nbytes, self.stream)
        for planned in (*self.buffers.inputs, self.buffers.logits):
            nbytes = int(np.prod(planned.shape, dtype=np.int64)) * self._types[planned.name].itemsize
            self._device[planned.name] = cuda.DeviceBuffer(nbytes)
            self._host[planned.name] = cuda.PinnedBuffer(nbytes)
        self.stream.synchronize()

    def _make_contexts(self) -> None:
        """The prefill context (the runner's own) and the decode one, each on its profile, addresses set."""
        prefill, decode = self.buffers.prefill_profile, self.buffers.decode_profile
        self._select(self._context, prefill)
        if decode == prefill:  # one profile: one context; a captured graph is redone after each prefill
            self._decode_context = self._context
            self.graph_mode = "stream capture" if self.cuda_graph and not self.backend.is_rtx else "off"
        elif self.cuda_graph and self.backend.is_rtx:
            self._decode_context = self._rtx_graph_context()
            self.graph_mode = "tensorrt-rtx whole-graph capture"
        else:
            self._decode_context = self._new_context(self._config)
            self.graph_mode = "stream capture" if self.cuda_graph else "off"
        if self._decode_context is not self._context:
            self._select(self._decode_context, decode)
        for context in {id(c): c for c in (self._context, self._decode_context)}.values():
            self._set_addresses(context)

    def _select(self, context, profile: int) -> None:
        if not context.set_optimization_profile_async(profile, self.stream.ptr):
            raise TrtcError(f"TensorRT could not switch to profile {profile}: {self._errors()}", where=self.where)

    def _set_addresses(self, context) -> None:
        bindings = [(b.name, b.name) for b in (*self.buffers.inputs, self.buffers.logits)]
        bindings += [(name, cache.name) for cache in self.buffers.caches for name in (cache.name, cache.alias)]
        for tensor, buffer in bindings:
            if not context.set_tensor_address(tensor, self._device[buffer].ptr):
                raise TrtcError(f"TensorRT did not take the address of {tensor!r}: {self._errors()}",
                                where=self.where)

    def describe(self) -> str:
        """The executor as `trtc generate` names it."""
        label = "TensorRT-RTX" if self.backend.is_rtx else "TensorRT"
        return (f"{label} engine on {self.info.get('device', 'GPU')} (static cache "
                f"{self.buffers.cache_bytes / 2**20:.1f} MiB, decode CUDA graph: {self.graph_mode})")

    # ---- the steps

    def reset(self, batch: int) -> None:
        """A new generation of `batch` rows: the cache's first rows are theirs (what earlier generations
        left there is overwritten before it is read: a step attends only to slots it wrote)."""
        self._require_open()
        if not 1 <= batch <= self.buffers.max_batch:
            raise TrtcError(f"{batch} rows, and the engine's static cache holds 1 to {self.buffers.max_batch}",
                            where=self.where)
        self.batch = batch

    def run(self, feeds: Mapping[str, np.ndarray], phase: str) -> np.ndarray:
        """The prefill or one decode step of the current generation: `feeds` (input_ids, position_ids,
        write_indices) in, the logits out; the caches updated in place on the device."""
        self._require_open()
        decode = phase == DECODE
        context = self._decode_context if decode else self._context
        arrays = {b.name: to_engine_type(b.name, feeds[b.name], self._types[b.name], self.where)
                  for b in self.buffers.inputs}
        self._check_step(arrays, decode)
        shapes = {name: array.shape for name, array in arrays.items()}
        shapes |= {c.name: (self.batch, *c.shape[1:]) for c in self.buffers.caches}
        if self._shapes.get(id(context)) != shapes:
            self._set_shapes(context, shapes)
        self._stage(arrays)
        logits = self.buffers.logits.name
        shape = tuple(context.get_tensor_shape(logits))
        if len(shape) != 3 or min(shape) < 0:
            raise TrtcError(f"TensorRT gives logits {_shape_text(shape)} for these inputs: {self._errors()}",
                            where=self.where)
        nbytes = int(np.prod(shape, dtype=np.int64)) * self._types[logits].itemsize
        if decode and self.graph_mode == "stream capture":
            self._replay(context, arrays, nbytes)
        else:
            self._enqueue(context, arrays, nbytes)
        self.stream.synchronize()
        out = np.array(self._host[logits].view(self._types[logits], shape))
        return out if out.dtype == self.buffers.logits.dtype else out.astype(self.buffers.logits.dtype)

    def _check_step(self, arrays: Mapping[str, np.ndarray], decode: bool) -> None:
        """The step fits the buffers (the loop checks this before the generation; a caller may not)."""
        limit = (self.batch, 1) if decode else (self.batch, self.buffers.prefill_seq)
        for buffer in self.buffers.inputs:
            shape = arrays[buffer.name].shape
            if len(shape) != len(buffer.shape) or shape[0] != self.batch or (len(shape) > 1 and shape[1] > limit[1]):
                phase = DECODE if decode else PREFILL
                raise TrtcError(f"input {buffer.name!r} is {_shape_text(shape)}; a {phase} step takes "
                                f"{_shape_text(limit[:len(shape)])} at most", where=self.where)

    def _set_shapes(self, context, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise TrtcError(f"TensorRT rejected shape {_shape_text(shape)} for input {name!r}: {self._errors()}",
                                where=self.where)
        self._shapes[id(context)] = dict(shapes)
        if context is self._decode_context:
            self._drop_graph()

    def _enqueue(self, context, arrays: Mapping[str, np.ndarray], nbytes: int) -> None:
        """Copies in, the engine, the logits out: on the stream, not waited for."""
        for name, array in arrays.items():
            cuda.copy_htod_async(self._device[name].ptr, self._host[name].ptr, array.nbytes, self.stream)
        self._execute(context)
        name = self.buffers.logits.name
        cuda.copy_dtoh_async(self._host[name].ptr, self._device[name].ptr, nbytes, self.stream)

    def _replay(self, context, arrays: Mapping[str, np.ndarray], nbytes: int) -> None:
        """A decode step from the CUDA graph of this batch size, captured after its first plain run
        (which flushes TensorRT's deferred setup); a context that cannot be captured runs plainly."""
        if self._graph is not None:
            self._graph.launch()
            return
        self._enqueue(context, arrays, nbytes)
        capturable = getattr(context, "is_stream_capturable", None)
        if capturable is not None and not capturable(self.stream.ptr):
            self.graph_mode = "off (the engine cannot be captured)"
            return
        self._graph = cuda.Graph(self.stream, lambda: self._enqueue(context, arrays, nbytes))

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self.stream.synchronize()
            graph, self._graph = self._graph, None
            graph.close()

    def close(self, save_cache: bool = True) -> None:
        """The graph and the decode context go first, then everything the runner holds."""
        if not self._closed:
            try:
                self._drop_graph()
            finally:
                self._decode_context = None
        super().close(save_cache)
