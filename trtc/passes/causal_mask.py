"""The proof static-kv-cache needs before it replaces an export's attention mask by is_causal over per-row
key lengths: the mask's own computation, evaluated on the CPU reference with an all-ones attention_mask at a
few (batch, seq, past) sizes, allows key j to query s exactly when j <= past + s (bool, or an additive mask of
0 and a large negative). The sizes include past = Smax - seq, so a sliding window shorter than the cache, a
bidirectional or a padding-only mask is refused (one line naming the Attention)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.ir.dims import dims
from trtc.passes._evaluate import EvaluationError, evaluate


def mask_cone(graph: ir.Graph, values: list[ir.Value]) -> tuple[list[ir.Node], list[ir.Value]]:
    """The nodes computing `values` (graph order) and the graph inputs they read."""
    nodes, inputs, pending = set(), set(), list(values)
    while pending:
        value = pending.pop()
        node = value.producer()
        if node is None:
            if value.is_graph_input():
                inputs.add(value)
            continue
        if node not in nodes:
            nodes.add(node)
            pending += [v for v in node.inputs if v is not None]
    return [n for n in graph if n in nodes], sorted(inputs, key=lambda v: v.name)


def mask_feeds(inputs: list[ir.Value], caches: Mapping[str, ir.Value], batch: int, seq: int, past: int
               ) -> dict[str, np.ndarray] | str:
    """Inputs of the mask's computation for one (batch, seq, past): attention_mask all ones, positions
    past .. past + seq - 1, zero ids and caches; a string names an input the pass cannot fill."""
    feeds = {}
    for value in inputs:
        dtype = value.dtype.numpy()
        if value.name in caches:
            _, heads, _, head_dim = dims(value)
            feeds[value.name] = np.zeros((batch, heads, past, head_dim), dtype)
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones((batch, past + seq), dtype)
        elif value.name == "position_ids":
            feeds[value.name] = np.broadcast_to(np.arange(past, past + seq, dtype=dtype), (batch, seq)).copy()
        elif value.name == "input_ids":
            feeds[value.name] = np.zeros((batch, seq), dtype)
        else:
            return f"the attention mask reads input {value.name!r}, which the static cache has no value for"
    return feeds


def is_causal_mask(mask: np.ndarray, seq: int, past: int) -> bool:
    """`mask` (bool, or additive float) allows key j to query s exactly when j <= past + s."""
    if mask.ndim < 2 or mask.shape[-2:] != (seq, past + seq):
        return False
    allowed = np.arange(past + seq)[None, :] <= past + np.arange(seq)[:, None]
    if mask.dtype == np.bool_:
        return bool(np.all(mask == allowed))
    if mask.dtype.kind != "f":
        return False
    lowest = float(np.finfo(mask.dtype).min) / 2
    return bool(np.all(np.where(allowed, mask == 0, mask <= lowest)))


def prove_causal(model: ir.Model, readers: Mapping[ir.Value, ir.Node], caches: Mapping[str, ir.Value],
                 max_seq: int) -> None:
    """Raise naming the Attention (`readers`: mask -> the Attention reading it) whose mask is not the plain
    causal one at some size; `caches`: the cache inputs by name."""
    masks = list(readers)
    nodes, inputs = mask_cone(model.graph, masks)
    for batch, seq, past in sorted({(2, 5, 0), (1, 1, 6), (2, 3, max(max_seq - 3, 0))}):
        feeds = mask_feeds(inputs, caches, batch, seq, past)
        if isinstance(feeds, str):
            raise TrtcError(f"node {readers[masks[0]].name!r} (Attention): {feeds}", where="--llm")
        try:
            results = evaluate(nodes, masks, model.opset_imports, feeds=feeds)
        except EvaluationError as exc:
            raise TrtcError(f"node {readers[masks[0]].name!r} (Attention): its mask could not be evaluated "
                            f"({exc})", where="--llm") from None
        for mask, result in zip(masks, results, strict=True):
            if not is_causal_mask(np.asarray(result), seq, past):
                raise TrtcError(f"node {readers[mask].name!r} (Attention): its mask is not the causal mask over "
                                f"the cache (batch {batch}, {seq} new and {past} cached tokens; a sliding window "
                                "or another mask the static cache cannot express)", where="--llm")
