"""The one place that knows the difference between full TensorRT and TensorRT-RTX.

Both expose the same network-definition API (`import tensorrt as trt` /
`import tensorrt_rtx as trt`); they differ in what a build config can take: RTX builds
for a list of compute capabilities (ahead of time, without a GPU) and has no timing
cache; full TensorRT has a timing cache and builds for the GPU it runs on.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType

from trtc.errors import TrtcError

MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # "tensorrt" or "tensorrt-rtx"
    trt: ModuleType

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX's timing cache does nothing and forces a GPU query (breaks CPU-only builds).
        return not self.is_rtx

    def network_flags(self) -> int:
        """Strongly typed networks: the only kind TensorRT 11 and RTX build."""
        flags = self.trt.NetworkDefinitionCreationFlag
        return 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0

    def set_targets(self, config, targets: tuple[str, ...]) -> list[str]:
        """Compute capabilities to build for (RTX only); returns what the config now holds."""
        if not targets:
            return [str(config.get_compute_capability(i)).split(".")[-1].lower()
                    for i in range(config.num_compute_capabilities)] if self.is_rtx else ["current GPU"]
        if not self.is_rtx:
            raise TrtcError("--target applies to TensorRT-RTX only; full TensorRT builds for the GPU it runs on",
                            where="--target", hint="drop --target or use --backend tensorrt-rtx")
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            config.set_compute_capability(getattr(self.trt.ComputeCapability, target.upper()), i)
        return list(targets)


def available_backends() -> list[str]:
    out = []
    for name, module in MODULES.items():
        try:
            importlib.import_module(module)
            out.append(name)
        except ImportError:
            continue
    return out


def auto_backend() -> str:
    """The backend `load_backend("auto")` loads, found without importing it; TensorRT-RTX (what
    `pip install "trtc[build]"` installs) where neither is installed."""
    return next((name for name, module in MODULES.items() if importlib.util.find_spec(module) is not None),
                "tensorrt-rtx")


def load_backend(name: str = "auto") -> Backend:
    """`auto`: full TensorRT if importable, else TensorRT-RTX."""
    names = list(MODULES) if name == "auto" else [name]
    if name != "auto" and name not in MODULES:
        raise TrtcError(f"unknown backend {name!r}", where="--backend", hint="use auto, tensorrt or tensorrt-rtx")
    for candidate in names:
        try:
            return Backend(candidate, importlib.import_module(MODULES[candidate]))
        except ImportError:
            continue
    wanted = " or ".join(MODULES[n] for n in names)
    raise TrtcError(f"{wanted} is not installed", where="--backend",
                    hint='install TensorRT-RTX with `pip install "trtc[build]"`, or full TensorRT from NVIDIA')


def parse_targets(text: str | None) -> tuple[str, ...]:
    """`sm86,sm89,sm120` -> ('sm86', 'sm89', 'sm120'), checked against what RTX knows."""
    if not text:
        return ()
    targets = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in RTX_TARGETS]
    if unknown:
        raise TrtcError(f"unknown target(s) {', '.join(unknown)}", where="--target",
                        hint=f"TensorRT-RTX targets are {', '.join(RTX_TARGETS)} (no sm90: RTX does not run on Hopper)")
    return targets
