"""Giving memory back between stages: a big model's stages each need most of the machine.

Two things hold memory after its user is done with it: pages of a weight file read through a
tensor's own map (they stay resident while the map is open), and blocks Python or onnxruntime
freed that the allocator keeps (dead IR graphs are reference cycles, waiting for the cyclic
collector; glibc's malloc keeps freed heap blocks).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import os
from collections.abc import Iterable

import onnx_ir as ir

# Below this resident size the full collection is not worth its time (70 ms for trtc's objects).
_COLLECT_FROM_BYTES = 1 << 30


def unmap(tensor: ir.TensorProtocol) -> None:
    """Close the map a weight file's tensor was read through: its pages would stay resident after the
    read (a big model's fp32 weights). It maps the file again if read again."""
    if isinstance(tensor, ir.ExternalTensor):
        with contextlib.suppress(BufferError):  # an array of its bytes is still in use: it stays mapped
            tensor.release()


def drop_file_pages(tensors: Iterable[ir.TensorProtocol]) -> None:
    """Let the kernel take back the resident pages of weights read through their files' maps: the bytes are
    the file's (read-only maps), so a later read faults them in again from the page cache, unchanged. For
    TensorRT's build, which copies the weights it is given and would otherwise keep both resident."""
    for tensor in tensors:
        raw = getattr(tensor, "raw", None) if isinstance(tensor, ir.ExternalTensor) else None
        if raw is not None:
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile, or a kernel without madvise
                raw.madvise(mmap.MADV_DONTNEED)


def release_memory() -> None:
    """Give back what was freed: dead IR models and the blocks glibc's malloc keeps (arrays under its mmap
    threshold, up to 32 MB, come from its heap). After compile's precision pass on the 1.21 B-parameter model
    of benchmarks/big_model.py, the process held 7.4 GB of both going into the build. The full collection is
    skipped under 1 GB resident."""
    if _resident_bytes() >= _COLLECT_FROM_BYTES:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only; well under a millisecond
        ctypes.CDLL(None).malloc_trim(0)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 1 << 62  # unknown: collect
