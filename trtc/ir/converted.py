"""Weights converted to another float type when read, not when converted.

The precision pass gives every fp16 weight a copy of its fp32 original. Held in memory, a big
model's copies sit beside the fp32 file's pages (4.8 GB + 2.4 GB for 1.2 B parameters) and
onnxruntime takes one more for the CPU simulation. A `ConvertedTensor` holds only its source:
saving writes it a slice at a time, the simulation casts the source itself (file-mapped by
onnxruntime), and whoever asks for its elements gets them converted then.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.ir.splat import SplatTensor, map_elements
from trtc.memory import unmap

# Elements converted at a time when a converted weight is written (64 MiB of fp32).
_SLICE_ELEMENTS = 16 << 20


def convert(array: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """`array`'s elements in float type `dtype`, rounded to nearest even (overflow gives +-inf, as a Cast does)."""
    with np.errstate(over="ignore"):  # out-of-range weights only reach here when forced
        return array.astype(np.float32, copy=False).astype(dtype.numpy())


class ConvertedTensor(ir.LazyTensor):
    """`source` in float type `dtype`, converted each time its elements are read."""

    def __init__(self, source: ir.TensorProtocol, dtype: ir.DataType, *, name: str | None = None):
        super().__init__(lambda: ir.tensor(convert(source.numpy(), dtype), name=name), dtype=dtype,
                         shape=source.shape, name=name)
        self.source = source

    def tofile(self, file) -> None:
        """Write the converted elements a slice at a time (never the whole copy in memory)."""
        flat = self.source.numpy().reshape(-1)
        for start in range(0, flat.size, _SLICE_ELEMENTS):
            file.write(memoryview(convert(flat[start:start + _SLICE_ELEMENTS], self.dtype).view(np.uint8)))
        del flat
        unmap(self.source)


def converted(tensor: ir.TensorProtocol, dtype: ir.DataType, name: str | None = None) -> ir.TensorProtocol:
    """`tensor` in float type `dtype`: a splat stays a splat (its one element converted), anything else is a
    `ConvertedTensor`. `name` defaults to the tensor's."""
    name = tensor.name if name is None else name
    if isinstance(tensor, SplatTensor):
        return map_elements(tensor, lambda data: convert(data, dtype), name=name)
    return ConvertedTensor(tensor, dtype, name=name)
