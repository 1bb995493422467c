"""The pass registry: every optimizer pass registers here, in default pipeline order.

A pass is a function `pass_fn(model, ctx) -> dict[str, int]` that rewrites the IR in
place and returns how many times it applied each of its patterns (empty: nothing
changed). Its docstring's first line is its description in `--list-passes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_ir as ir

if TYPE_CHECKING:
    from trtc.passes.static_kv_cache import LlmOptions


@dataclasses.dataclass
class PassContext:
    """Options every pass may read."""

    fold_max_bytes: int = 64 << 20  # largest tensor constant folding may create
    model_weight_bytes: int = 0  # the model's weights before optimizing (folding budget)
    llm: LlmOptions | None = None  # --llm: the static KV cache's size (static-kv-cache)


PassFn = Callable[[ir.Model, PassContext], dict[str, int]]


@dataclasses.dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    description: str
    order: int
    default: bool


# Default pipeline order (the `order` each pass registers with):
#   10 eliminate-noops   12 legacy-softmax   20 fold-constants   30 fold-shapes   35 inline-constant-if
#   40 fold-batchnorm
#   41 fold-pad-into-conv   45 batchnorm-to-affine (not default)
#   50 fuse-layer-norm   55 fuse-rms-norm    60 fuse-gelu     70 fuse-attention
#   72 static-kv-cache (not default: --llm)
#   75 fuse-rotary       80 matmul-add-to-gemm                90 cse
#   95 dead-code        100 infer-shapes
PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, *, order: int, default: bool = True) -> Callable[[PassFn], PassFn]:
    """Register `fn` under `name` at position `order`; `default` puts it in the default pipeline."""

    def decorate(fn: PassFn) -> PassFn:
        if name in PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        PASSES[name] = PassInfo(name, fn, description, order, default)
        ordered = sorted(PASSES.values(), key=lambda p: (p.order, p.name))
        PASSES.clear()
        PASSES.update((p.name, p) for p in ordered)
        return fn

    return decorate
