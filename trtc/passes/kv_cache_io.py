"""A static-KV-cache model seen from outside (the artifact's meta, the sidecar, the runners): its cache
layout, its prefill and decode profiles, and its inputs made from a growing-cache run (for --verify, compile's
comparison and tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.dims import dims
from trtc.ir.rewrite import is_op

WRITE_INDICES = "write_indices"


def cache_layout(model: ir.Model) -> dict[str, Any] | None:
    """The static cache of a rewritten model (None when it has none): the cache inputs with the outputs that
    alias them, their [batch, heads, Smax, head_dim] and dtype, and the write-index input."""
    caches = []
    for node in model.graph:
        if is_op(node, "TensorScatter") and node.inputs[0].is_graph_input() and node.outputs[0].is_graph_output():
            cache = node.inputs[0]
            caches.append({"input": cache.name, "output": node.outputs[0].name,
                           "dtype": np.dtype(cache.dtype.numpy()).name,
                           "shape": [d if isinstance(d, int) else str(d) for d in dims(cache)]})
    if not caches:
        return None
    index = next(v for v in model.graph.inputs if v.name == WRITE_INDICES)
    return {"caches": caches, "max_seq": caches[0]["shape"][2],
            "write_indices": {"name": index.name, "dtype": "int64", "shape": [str(dims(index)[0])],
                              "meaning": "per row: tokens already in the cache; the new tokens are written there "
                                         "and attend to cache slots [0, write_indices + seq)"},
            "inputs": {v.name: [d if isinstance(d, int) else str(d) for d in dims(v)] for v in model.graph.inputs
                       if not v.is_initializer()}}


def llm_profiles(layout: Mapping[str, Any], max_batch: int) -> list[dict[str, Any]]:
    """The engine's two optimization profiles, in this order: prefill (batch 1..max_batch, seq 1..Smax, OPT
    Smax/2) and decode (seq 1), each {"name", "shapes": {input: (MIN, OPT, MAX)}}. The cache's batch symbol is
    the batch; every other symbolic dim is the new tokens' seq."""
    batch, max_seq = layout["caches"][0]["shape"][0], layout["max_seq"]
    profiles = []
    for kind, seq in (("prefill", (1, max(1, max_seq // 2), max_seq)), ("decode", (1, 1, 1))):
        shapes = {}
        for name, shape in layout["inputs"].items():
            ranges = [(d, d, d) if isinstance(d, int) else (1, max_batch, max_batch) if d == batch else seq
                      for d in shape]
            shapes[name] = tuple(tuple(r[i] for r in ranges) for i in range(3))
        profiles.append({"name": kind, "shapes": shapes})
    return profiles


def to_static_feeds(layout: Mapping[str, Any], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The static model's inputs for a growing-cache run (`feeds`: past [B, H, P, D], attention_mask all ones
    [B, P+S]): each past written at slots 0..P-1 of a zero cache, write_indices = P."""
    caches = {c["input"]: c for c in layout["caches"]}
    mask = feeds.get("attention_mask")
    if mask is not None and not np.all(mask == 1):
        raise TrtcError("the static cache has no padding mask: attention_mask must be all ones", where="--llm")
    static, past = {}, 0
    for name in layout["inputs"]:  # in the static model's order
        if name in caches:
            grown = np.asarray(feeds[name])
            past = grown.shape[2]
            seq = np.shape(feeds["input_ids"])[1] if "input_ids" in feeds else 0
            if past + seq > layout["max_seq"]:
                raise TrtcError(f"input {name!r} holds {past} tokens and {seq} come: more than the static "
                                f"cache's {layout['max_seq']}", where="--llm", hint="raise --max-seq")
            dtype = np.dtype(getattr(ml_dtypes, caches[name]["dtype"], caches[name]["dtype"]))
            cache = np.zeros((grown.shape[0], grown.shape[1], layout["max_seq"], grown.shape[3]), dtype)
            cache[:, :, :past] = grown
            static[name] = cache
        elif name != WRITE_INDICES:
            static[name] = np.asarray(feeds[name])
    batch = next(iter(static.values())).shape[0]
    static[WRITE_INDICES] = np.full((batch,), past, np.int64)
    return static


def growing_feeds(specs: list, batch: int, seq: int, seed: int = 0,
                  presents: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Inputs of the growing-cache model (`specs`: its TensorSpecs) for `seq` new tokens per row after
    `presents` (a run's outputs by name, their presents becoming the past; None: an empty cache): random ids
    in [0, vocab), attention_mask all ones, positions past .. past + seq - 1."""
    rng = np.random.default_rng(seed)
    pasts = {spec.name: (presents or {}).get(spec.name.replace("past_key_values", "present")) for spec in specs}
    past = next((p.shape[2] for p in pasts.values() if p is not None), 0)
    feeds = {}
    for spec in specs:
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(0, spec.index_bound or 2, (batch, seq)).astype(spec.dtype)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((batch, past + seq), spec.dtype)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.broadcast_to(np.arange(past, past + seq), (batch, seq)).astype(spec.dtype)
        elif pasts[spec.name] is not None:
            feeds[spec.name] = pasts[spec.name]
        elif spec.shape is not None and len(spec.shape) == 4 and isinstance(spec.shape[1], int):
            feeds[spec.name] = np.zeros((batch, spec.shape[1], 0, spec.shape[3]), spec.dtype)
        else:
            raise TrtcError(f"input {spec.name!r} is neither input_ids, attention_mask, position_ids nor a "
                            "cache", where="--llm")
    return feeds


def comparable(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An output of the growing-cache model and the static model's, cut to what both hold: a present over the
    slots the run filled, logits at the last token when the static model returns only that one."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if actual.ndim == 4 and actual.shape[2] != expected.shape[2]:
        return expected, actual[:, :, :expected.shape[2]]
    if actual.ndim == 3 and actual.shape[1] == 1 != expected.shape[1]:
        return expected[:, -1:], actual
    return expected, actual
