"""The trtc IR: an `onnx_ir.Model` (ONNX semantics, def-use links, symbolic dims,
memory-mapped weights) plus the `.trtir` artifact that stores it on disk.

`docs/design.md` records why onnx-ir is the in-memory graph; `docs/artifact.md`
documents the file format.
"""

from trtc.ir.artifact import Artifact, load_artifact, save_artifact
from trtc.ir.walk import all_graphs, all_initializers, weight_bytes

__all__ = [
    "Artifact",
    "all_graphs",
    "all_initializers",
    "load_artifact",
    "save_artifact",
    "weight_bytes",
]
