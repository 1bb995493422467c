"""Recognising a decoder-only LLM with a KV cache by its graph inputs and outputs, and running one
step of it.

Exporters write the same contract in two spellings:
  HF / optimum / torch dynamo: input_ids, attention_mask, position_ids (some exports lack it),
      past_key_values.{i}.key/value -> logits, present.{i}.key/value, caches [batch, kv_heads, seq, head_dim]
  onnxruntime-genai: the same roles named by genai_config.json templates (`past_key_values.%d.key`),
      no position_ids (com.microsoft GroupQueryAttention derives positions from the mask), and
      head_dim a symbolic `kv_cache_dim` that the config's head_size fills in.
`DecoderSpec.from_model` reads the roles off the graph (never a table of known files) and refuses
in one line what it cannot drive. `Decoder` runs one step through a `Step` callable, the seam where
an executor plugs in: the CPU reference here, a GPU engine later."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
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
    last position and has no notion of left pads). `max_positions`: the most positions the model
    can address, where the graph or config says (`max_positions_from` says how), else None."""

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

    @property
    def layers(self) -> int:
        return len(self.past)

    def as_dict(self) -> dict[str, Any]:
        """The spec as --json prints it."""
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "cache_dtype": str(self.cache_dtype), "vocab": self.vocab, "padding": self.padding,
                "position_ids": self.position_ids is not None, "attention_mask": self.attention_mask is not None,
                "max_positions": self.max_positions, "max_positions_from": self.max_positions_from}

    @classmethod
    def from_model(cls, model: ir.Model, genai: GenaiConfig | None = None, where: str | None = None) -> DecoderSpec:
        """The spec of `model`'s graph; genai's names and dims where it has a config. A one-line
        TrtcError naming what is missing when it is not a decoder trtc can drive."""
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
        known = {ids_name, mask_name, position_name, *past.values()}
        if unknown := [n for n in inputs if n not in known]:
            raise TrtcError(f"not a decoder trtc can drive: inputs it cannot feed: {', '.join(unknown)}", where=where,
                            hint=_CONTRACT)
        layers = _pair_layers(past, present, where)
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
                   padding="right" if _has_op(model, "com.microsoft", "GroupQueryAttention") else "left",
                   max_positions=max_positions, max_positions_from=max_from)


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
    """One step of a decoder through an executor's `Step`: (input_ids [B, S], attention_mask
    [B, total], position_ids [B, S], past) -> (logits [B, S, V], presents), past and presents as
    [key, value] per layer, in the spec's order."""

    def __init__(self, spec: DecoderSpec, step: Step, *, executor: str, where: str | None = None,
                 genai: GenaiConfig | None = None, close: Callable[[], None] | None = None):
        self.spec = spec
        self.executor = executor
        self.where = where
        self.genai = genai
        self._step = step
        self._close = close

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The cache of no tokens: [batch, kv_heads, 0, head_dim] per key and value."""
        shape = (batch, self.spec.kv_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, self.spec.cache_dtype) for _ in range(2 * self.spec.layers)]

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
              past: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The step's inputs by name, in the model's dtypes; inputs the model lacks are left out
        (None is fine for those)."""
        spec = self.spec
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


def reference_decoder(model: ir.Model, *, genai: GenaiConfig | None = None, where: str | None = None) -> Decoder:
    """A Decoder running `model` on the CPU reference (onnxruntime, onnx.reference as its fallback)."""
    from trtc.reference.runner import InputRejected, ReferenceRunner

    spec = DecoderSpec.from_model(model, genai, where)
    runner = ReferenceRunner(model)

    def step(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        try:
            return runner.run(feeds)
        except InputRejected as exc:
            raise exc.located(where or "model") from None
        except TrtcError as exc:
            raise TrtcError(exc.message, where=where, hint=exc.hint) from None

    executor = f"cpu-reference ({runner.backend})"
    return Decoder(spec, step, executor=executor, where=where, genai=genai, close=runner.close)


def open_decoder(path: str | Path) -> Decoder:
    """A Decoder for an .onnx (the file as exported), a .trtir or an onnxruntime-genai folder, on the
    CPU reference. GPU engines (.plan) are refused: their loop is not in this build."""
    from trtc.loading import artifact_kind
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise TrtcError("file not found", where=str(path))
    if path.suffix in PLAN_SUFFIXES:
        raise TrtcError("generation on a GPU engine is not implemented in this build", where=str(path),
                        hint="generate on the .onnx or .trtir (CPU reference)")
    model_file, genai = find_genai(path)
    where = str(model_file)
    if artifact_kind(model_file) == "trtir":
        from trtc.ir import load_artifact

        model = load_artifact(model_file).model
    else:
        model = _load_onnx(model_file)
    return reference_decoder(model, genai=genai, where=where)


def _load_onnx(path: Path) -> ir.Model:
    """The .onnx as its exporter wrote it: generation runs the original export, custom-domain ops
    (genai's com.microsoft ones) included, which onnxruntime runs and trtc's parser would refuse."""
    try:
        return ir.load(path)
    except Exception as exc:  # protobuf and onnx_ir raise their own types for a file that is not ONNX
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrtcError(f"cannot read it as ONNX: {text}", where=str(path)) from None
