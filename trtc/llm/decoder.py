"""Recognising a decoder-only LLM with a KV cache by its graph inputs and outputs, and running one
step of it.

Exporters write the same contract in two spellings:
  HF / optimum / torch dynamo: input_ids, attention_mask, position_ids (some exports lack it),
      past_key_values.{i}.key/value -> logits, present.{i}.key/value, caches [batch, kv_heads, seq, head_dim]
  onnxruntime-genai: the same roles named by genai_config.json templates (`past_key_values.%d.key`),
      no position_ids (com.microsoft GroupQueryAttention derives positions from the mask), and
      head_dim a symbolic `kv_cache_dim` that the config's head_size fills in.
The static form `trtc optimize --llm --max-seq N` writes (caches [batch, kv_heads, Smax, head_dim]
updated in place at `write_indices`, no attention_mask) is recognised from the artifact's `llm`
record, else from the graph (`DecoderSpec.static`).
`DecoderSpec.from_model` reads the roles off the graph (never a table of known files) and refuses
in one line what it cannot drive. `Decoder` runs the steps through an executor: a `Step` callable
(the CPU reference), or for the static form a `CacheExecutor` that keeps the cache itself (a GPU
engine, trtc/llm/engine.py); `Decoder.start` gives the generation loop its cache (trtc/llm/cache.py)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.llm.cache import CacheExecutor, GrowingRun, HostCache, Run, StaticRun, StaticSpec
from trtc.llm.genai import GenaiConfig, find_genai

# One step of an executor: feeds by input name -> outputs by output name.
Step = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

# Cache names as HF/optimum/dynamo exporters write them; genai's own templates come from its config.
_PAST_FORMS = ((r"past_key_values[._](?P<layer>\d+)[._](?P<kind>key|value)", None),
               (r"past[._](?P<layer>\d+)[._](?P<kind>key|value)", None))
_PRESENT_FORMS = ((r"present[._](?P<layer>\d+)[._](?P<kind>key|value)", None),
                  (r"present_key_values[._](?P<layer>\d+)[._](?P<kind>key|value)", None))
_CONTRACT = ("trtc drives decoders taking input_ids, attention_mask, position_ids (optional) and a past key and "
             "value per layer [batch, kv_heads, past, head_dim], returning logits [batch, seq, vocab] and presents")


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """The roles of a decoder's inputs and outputs, read off its graph.

    `past`/`present`: (key, value) names per layer, in layer order. `padding`: where a shorter
    prompt's pads go in a batch: "left" (HF generate; position_ids say where the tokens are) or
    "right" (valid tokens first: com.microsoft GroupQueryAttention reads sum(mask) - 1 as a row's
    last position and has no notion of left pads; the static cache, whose pads are overwritten).
    `max_positions`: the most positions the model can address, where the graph or config says
    (`max_positions_from` says how), else None. `static`: the static cache's form, None for a
    growing cache."""

    input_ids: str
    logits: str
    past: tuple[tuple[str, str], ...]
    present: tuple[tuple[str, str], ...]
    kv_heads: int
    head_dim: int
    cache_dtype: np.dtype
    ids_dtype: np.dtype
    attention_mask: str | None = None
    mask_dtype: np.dtype | None = None
    position_ids: str | None = None
    position_dtype: np.dtype | None = None
    vocab: int | None = None
    padding: str = "left"
    max_positions: int | None = None
    max_positions_from: str | None = None
    static: StaticSpec | None = None

    @property
    def layers(self) -> int:
        return len(self.past)

    def as_dict(self) -> dict[str, Any]:
        """The spec as --json prints it."""
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "cache_dtype": str(self.cache_dtype), "vocab": self.vocab, "padding": self.padding,
                "position_ids": self.position_ids is not None, "attention_mask": self.attention_mask is not None,
                "max_positions": self.max_positions, "max_positions_from": self.max_positions_from,
                "static_cache": self.static.as_dict() if self.static else None}

    @classmethod
    def from_model(cls, model: ir.Model, genai: GenaiConfig | None = None, where: str | None = None,
                   llm: Mapping[str, Any] | None = None) -> DecoderSpec:
        """The spec of `model`'s graph; genai's names and dims where it has a config; `llm`: the
        static cache's record (an artifact's meta["llm"], a sidecar's), else read off the graph.
        A one-line TrtcError naming what is missing when it is not a decoder trtc can drive."""
        names = genai.names if genai else {}
        inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
        outputs = {v.name: v for v in model.graph.outputs}
        ids_name = names.get("input_ids", "input_ids")
        logits_name = names.get("logits", "logits")
        if logits_name not in outputs:
            raise TrtcError(f"not a decoder trtc can drive: no {logits_name!r} output (outputs: "
                            f"{_listed(outputs)})", where=where, hint=_CONTRACT)
        if ids_name not in inputs:
            raise TrtcError(f"not a decoder trtc can drive: no {ids_name!r} input (inputs: {_listed(inputs)})",
                            where=where, hint=_CONTRACT)
        past = _cache_names(inputs, _templates(names, "past") or _PAST_FORMS)
        present = _cache_names(outputs, _templates(names, "present") or _PRESENT_FORMS)
        mask_name = names.get("attention_mask", "attention_mask")
        position_name = names.get("position_ids", "position_ids")
        static = _static_spec(model, llm, inputs, outputs[logits_name], ids_name, where)
        known = {ids_name, mask_name, position_name, *past.values(), *([static.write_indices] if static else [])}
        if unknown := [n for n in inputs if n not in known]:
            raise TrtcError(f"not a decoder trtc can drive: inputs it cannot feed: {', '.join(unknown)}", where=where,
                            hint=_CONTRACT)
        layers = _pair_layers(past, present, where)
        if static:
            _check_aliases(layers, llm or _graph_layout(model), where)
        if genai and genai.layers is not None and genai.layers != len(layers):
            raise TrtcError(f"the graph has {len(layers)} cache layers, genai_config.json says "
                            f"num_hidden_layers={genai.layers}", where=where)
        kv_heads, head_dim, cache_dtype = _cache_layout(inputs, outputs, layers, genai, where)
        logits = outputs[logits_name]
        if logits.shape is not None and len(logits.shape) != 3:
            raise TrtcError(f"logits has rank {len(logits.shape)}; trtc reads logits [batch, seq, vocab]",
                            where=where, hint=_CONTRACT)
        vocab = logits.shape[2] if logits.shape is not None and isinstance(logits.shape[2], int) else None
        vocab = vocab if vocab is not None else (genai.vocab if genai else None)
        mask = inputs.get(mask_name)
        position = inputs.get(position_name)
        max_positions, max_from = _max_positions(model, position, genai)
        return cls(input_ids=ids_name, logits=logits_name, past=tuple(p for p, _ in layers),
                   present=tuple(p for _, p in layers), kv_heads=kv_heads, head_dim=head_dim, cache_dtype=cache_dtype,
                   ids_dtype=_np_dtype(inputs[ids_name]), attention_mask=mask.name if mask else None,
                   mask_dtype=_np_dtype(mask) if mask else None, position_ids=position.name if position else None,
                   position_dtype=_np_dtype(position) if position else None, vocab=vocab,
                   padding="right" if static or _right_padded(model) else "left",
                   max_positions=max_positions, max_positions_from=max_from, static=static)


def _right_padded(model: ir.Model) -> bool:
    """GroupQueryAttention reads a row's length off its mask's sum (rows padded on the right); a
    model parsed from one says so in its metadata (trtc.frontend.canonicalize.contrib)."""
    return (_has_op(model, "com.microsoft", "GroupQueryAttention")
            or model.metadata_props.get("trtc.padding") == "right")


def _graph_layout(model: ir.Model) -> dict[str, Any] | None:
    """The static cache the graph holds (TensorScatter into a cache input returned as its present)."""
    from trtc.passes.kv_cache_io import cache_layout

    return cache_layout(model)


def _static_spec(model: ir.Model, llm: Mapping[str, Any] | None, inputs: Mapping[str, ir.Value],
                 logits: ir.Value, ids_name: str, where: str | None) -> StaticSpec | None:
    """The static cache's form from `llm` or the graph; None for a growing cache."""
    layout = llm or _graph_layout(model)
    if not layout:
        return None
    name = layout["write_indices"]["name"]
    if name not in inputs:
        raise TrtcError(f"the static cache's write index input {name!r} is not an input of the model", where=where)
    seq = logits.shape[1] if logits.shape is not None and len(logits.shape) == 3 else None
    return StaticSpec.from_llm(layout, ids_name, _np_dtype(inputs[name]), seq)


def _check_aliases(layers: Sequence[tuple[tuple[str, str], tuple[str, str]]], layout: Mapping[str, Any] | None,
                   where: str | None) -> None:
    """Each present is the update of its own past, as the static cache's record pairs them."""
    recorded = {c["input"]: c["output"] for c in (layout or {}).get("caches", ())}
    for pasts, presents in layers:
        for past, present in zip(pasts, presents):
            if recorded.get(past) != present:
                raise TrtcError(f"the static cache's record pairs cache input {past!r} with "
                                f"{recorded.get(past)!r}, the names with {present!r}", where=where)


def _listed(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


def _np_dtype(value: ir.Value) -> np.dtype:
    if value.dtype is None:
        raise TrtcError(f"input {value.name!r} has no element type in the graph")
    return np.dtype(value.dtype.numpy())


def _templates(names: Mapping[str, str], which: str) -> tuple[tuple[str, str | None], ...]:
    """genai's `past_key_values.%d.key` templates as the (pattern, kind) pairs `_cache_names` takes."""
    forms = []
    for kind in ("key", "value"):
        template = names.get(f"{which}_{kind}_names")
        if template and "%d" in template:
            forms.append((r"(?P<layer>\d+)".join(map(re.escape, template.split("%d", 1))), kind))
    return tuple(forms)


def _cache_names(values: Iterable[str], forms: Sequence[tuple[str, str | None]]) -> dict[tuple[int, str], str]:
    """{(layer, "key"|"value"): name} of the names matching one of `forms`: (pattern, kind), the
    kind fixed or None when the pattern captures it."""
    found: dict[tuple[int, str], str] = {}
    for name in values:
        for pattern, kind in forms:
            match = re.fullmatch(pattern, name)
            if match:
                found[(int(match["layer"]), kind or match["kind"])] = name
                break
    return found


def _pair_layers(past: Mapping[tuple[int, str], str], present: Mapping[tuple[int, str], str],
                 where: str | None) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """[((past key, past value), (present key, present value)) per layer 0..L-1]."""
    if not past:
        raise TrtcError("not a decoder trtc can drive: no past key/value inputs (trtc generates with a KV cache)",
                        where=where, hint="export the decoder with its cache (use_cache=True / with-past)")
    count = max(layer for layer, _ in past) + 1
    missing = [f"{kind} of layer {layer}" for layer in range(count) for kind in ("key", "value")
               if (layer, kind) not in past]
    if missing:
        raise TrtcError(f"cache inputs it cannot pair: no past {', '.join(missing)}", where=where, hint=_CONTRACT)
    unpaired = [name for key, name in past.items() if key not in present]
    extra = [name for key, name in present.items() if key not in past]
    if unpaired or extra:
        what = [f"past {n} has no present output" for n in unpaired] + [f"present {n} has no past input" for n in extra]
        raise TrtcError(f"cache names it cannot pair: {'; '.join(what)}", where=where, hint=_CONTRACT)
    return [((past[(i, "key")], past[(i, "value")]), (present[(i, "key")], present[(i, "value")]))
            for i in range(count)]


def _cache_layout(inputs: Mapping[str, ir.Value], outputs: Mapping[str, ir.Value],
                  layers: Sequence[tuple[tuple[str, str], tuple[str, str]]], genai: GenaiConfig | None,
                  where: str | None) -> tuple[int, int, np.dtype]:
    """(kv_heads, head_dim, dtype) shared by every cache tensor; dims the graph leaves symbolic
    come from genai's config."""
    layouts = set()
    for (key, value), (present_key, present_value) in layers:
        for name in (key, value):
            shape = inputs[name].shape
            if shape is None or len(shape) != 4:
                raise TrtcError(f"cache input {name!r} has shape {shape}; trtc drives caches [batch, kv_heads, "
                                "past, head_dim]", where=where, hint=_CONTRACT)
            heads = _dim(shape[1], genai.kv_heads if genai else None, name, "kv_heads", where)
            dim = _dim(shape[3], genai.head_dim if genai else None, name, "head_dim", where)
            layouts.add((heads, dim, _np_dtype(inputs[name])))
        for name in (present_key, present_value):
            dtype = outputs[name].dtype
            if dtype is not None and np.dtype(dtype.numpy()) != _np_dtype(inputs[key]):
                raise TrtcError(f"present {name!r} is {dtype}, its past {key!r} {inputs[key].dtype}: trtc feeds "
                                "presents back as the next step's past", where=where)
    if len(layouts) != 1:
        raise TrtcError(f"the caches differ in heads, head_dim or dtype ({sorted(map(str, layouts))}); trtc drives "
                        "one cache layout", where=where)
    return layouts.pop()


def _dim(dim: Any, configured: int | None, name: str, what: str, where: str | None) -> int:
    if isinstance(dim, int):
        if configured is not None and configured != dim:
            raise TrtcError(f"{name!r} has {what} {dim}, genai_config.json says {configured}", where=where)
        return dim
    if configured is None:
        raise TrtcError(f"cannot tell {what} of {name!r}: the graph leaves it symbolic ({dim})", where=where,
                        hint="give the model's genai_config.json beside it, or export with static head dims")
    return int(configured)


def _all_nodes(model: ir.Model) -> Iterable[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _has_op(model: ir.Model, domain: str, op: str) -> bool:
    return any(n.domain == domain and n.op_type == op for n in _all_nodes(model))


def _max_positions(model: ir.Model, position: ir.Value | None,
                   genai: GenaiConfig | None) -> tuple[int | None, str | None]:
    """The most positions the model can address and why: a learned position table indexed by
    position_ids (GPT-2's wpe), GroupQueryAttention's rotary cache, genai's context_length."""
    found: list[tuple[int, str]] = []
    if genai and genai.context_length:
        found.append((int(genai.context_length), "genai_config.json context_length"))
    if position is not None:
        for use in position.uses():
            node, index = use.node, use.idx
            table = node.inputs[0]
            if node.op_type == "Gather" and index == 1 and table is not None and table.const_value is not None:
                found.append((int(table.shape[0]), f"position table {table.name!r} has {table.shape[0]} rows"))
    for node in _all_nodes(model):
        if node.domain == "com.microsoft" and node.op_type == "GroupQueryAttention" and len(node.inputs) > 7:
            cos = node.inputs[7]
            if cos is not None and cos.const_value is not None and cos.shape is not None:
                found.append((int(cos.shape[0]), f"rotary cache {cos.name!r} has {cos.shape[0]} rows"))
                break
    return min(found) if found else (None, None)


class Decoder:
    """A decoder and its executor. A growing cache runs one step through a `Step`: (input_ids [B, S],
    attention_mask [B, total], position_ids [B, S], past) -> (logits [B, S, V], presents), past and
    presents as [key, value] per layer, in the spec's order. A static cache stays with its
    `CacheExecutor` (`cache`; the `Step` kept in host arrays when none is given). `start` gives the
    generation loop the cache of one generation, either form."""

    def __init__(self, spec: DecoderSpec, step: Step | None, *, executor: str, where: str | None = None,
                 genai: GenaiConfig | None = None, close: Callable[[], None] | None = None,
                 cache: CacheExecutor | None = None):
        if step is None and (spec.static is None or cache is None):
            raise ValueError("a Decoder needs a Step, or for a static cache a CacheExecutor")
        self.spec = spec
        self.executor = executor
        self.where = where
        self.genai = genai
        self._step = step
        self._close = close
        self.cache = cache if cache is not None or spec.static is None else HostCache(spec, step)

    def start(self, rows: list[list[int]], new_tokens: Sequence[int], pad_id: int = 0) -> Run:
        """The cache of one generation of `rows` (token ids, lengths may differ), each to be followed by
        up to `new_tokens` tokens; what the cache cannot hold is refused here, before any step runs."""
        if self.spec.static is not None:
            return StaticRun(self.spec, self.cache, rows, new_tokens, pad_id, self.where)
        return GrowingRun(self, rows, pad_id)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The cache of no tokens: [batch, kv_heads, 0, head_dim] per key and value."""
        shape = (batch, self.spec.kv_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, self.spec.cache_dtype) for _ in range(2 * self.spec.layers)]

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
              past: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The step's inputs by name, in the model's dtypes; inputs the model lacks are left out
        (None is fine for those)."""
        spec = self.spec
        if spec.static is not None or self._step is None:
            raise TrtcError("a static-cache decoder keeps its cache with the executor: run it through start()",
                            where=self.where)
        feeds = {spec.input_ids: np.asarray(input_ids, spec.ids_dtype)}
        if spec.attention_mask:
            feeds[spec.attention_mask] = np.asarray(attention_mask, spec.mask_dtype)
        if spec.position_ids:
            feeds[spec.position_ids] = np.asarray(position_ids, spec.position_dtype)
        names = [name for pair in spec.past for name in pair]
        feeds.update(zip(names, past))
        return feeds

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
                 past: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs = self._step(self.feeds(input_ids, attention_mask, position_ids, past))
        presents = [outputs[name] for pair in self.spec.present for name in pair]
        return np.asarray(outputs[self.spec.logits]), presents

    def close(self) -> None:
        """Release the executor."""
        if self._close:
            self._close()
            self._close = None


def reference_decoder(model: ir.Model, *, genai: GenaiConfig | None = None, where: str | None = None,
                      llm: Mapping[str, Any] | None = None, spin: bool = True) -> Decoder:
    """A Decoder running `model` on the CPU reference (onnxruntime, onnx.reference as its fallback);
    `llm`: the static cache's record of an --llm artifact (else the graph says whether it has one);
    `spin=False`: onnxruntime's idle threads sleep (a served model waiting for requests)."""
    from trtc.reference.runner import InputRejected, ReferenceRunner

    spec = DecoderSpec.from_model(model, genai, where, llm)
    runner = ReferenceRunner(model, spin=spin)

    def step(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        try:
            return runner.run(feeds)
        except InputRejected as exc:
            raise exc.located(where or "model") from None
        except TrtcError as exc:
            raise TrtcError(exc.message, where=where, hint=exc.hint) from None

    executor = f"cpu-reference ({runner.backend})"
    return Decoder(spec, step, executor=executor, where=where, genai=genai, close=runner.close)


def open_decoder(path: str | Path, *, cuda_graph: bool = True, spin: bool = True) -> Decoder:
    """A Decoder for an .onnx (the file as exported), a .trtir (an --llm one with its static cache) or
    an onnxruntime-genai folder, on the CPU reference (`spin`: see reference_decoder); for an engine
    (.plan) built with --llm, on the GPU (trtc/llm/engine.py; `cuda_graph`: replay its decode step
    from a CUDA graph)."""
    from trtc.loading import artifact_kind
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise TrtcError("file not found", where=str(path))
    if path.suffix in PLAN_SUFFIXES:
        from trtc.llm.engine import engine_decoder

        return engine_decoder(path, cuda_graph=cuda_graph)
    model_file, genai = find_genai(path)
    where = str(model_file)
    llm = None
    if artifact_kind(model_file) == "trtir":
        from trtc.ir import load_artifact

        artifact = load_artifact(model_file)
        model, llm = artifact.model, artifact.meta.get("llm")
    else:
        model = _load_onnx(model_file)
    return reference_decoder(model, genai=genai, where=where, llm=llm, spin=spin)


def _load_onnx(path: Path) -> ir.Model:
    """The .onnx as its exporter wrote it: generation runs the original export, custom-domain ops
    (genai's com.microsoft ones) included, which onnxruntime runs and trtc's parser would refuse."""
    try:
        return ir.load(path)
    except Exception as exc:  # protobuf and onnx_ir raise their own types for a file that is not ONNX
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrtcError(f"cannot read it as ONNX: {text}", where=str(path)) from None
