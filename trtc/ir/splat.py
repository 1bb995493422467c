"""A lazy splat: a tensor whose every element is one value, kept as (value, shape, dtype).

Constant folding turns `ConstantOfShape(shape)` and `Expand(scalar, shape)` into splats.
Their arrays are `np.broadcast_to` views of the one element (strides of zero: no memory,
whatever the shape); bytes exist only while a caller of `tobytes()` holds them. A model
whose 143 M weights come from ConstantOfShape thus folds in milliseconds and is
materialized once, when the artifact is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

CHUNK_ELEMENTS = 1 << 20  # tofile() writes this many elements at a time


class SplatTensor(ir.Tensor):
    """A tensor of `shape` filled with `value` (one element of `dtype`).

    An `ir.Tensor` whose backing array is a broadcast view, so everything that takes an
    `ir.Tensor` (serialization, the artifact writer, the CPU reference) takes it too.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any, shape: ir.Shape | tuple[int, ...], dtype: ir.DataType, *,
                 name: str | None = None):
        if dtype.itemsize < 1 or dtype == ir.DataType.STRING:
            raise ValueError(f"a splat needs a fixed-size element type of at least one byte, not {dtype}")
        dims = tuple(shape.numpy() if isinstance(shape, ir.Shape) else shape)
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
            raise ValueError(f"a splat needs a static shape, not {shape}")
        self._value = np.asarray(value, dtype=dtype.numpy()).reshape(())
        super().__init__(np.broadcast_to(self._value, dims), dtype=dtype, name=name)

    @property
    def value(self) -> np.ndarray:
        """The one element, as a 0-d array of the tensor's dtype."""
        return self._value

    def tofile(self, file) -> None:
        """Write the bytes a chunk at a time, never holding all of them."""
        total = self.size
        step = min(total, CHUNK_ELEMENTS)
        chunk = ir.Tensor(np.broadcast_to(self._value, (step,)), dtype=self.dtype).tobytes()
        while total > 0:
            file.write(chunk if total >= step else chunk[: total * int(self.dtype.itemsize)])
            total -= step

    def __repr__(self) -> str:
        return f"{self._repr_base()}(value={self._value.item()!r}, name={self.name!r})"


def is_splat(tensor: ir.TensorProtocol | None) -> bool:
    return isinstance(tensor, SplatTensor)


def map_elements(tensor: ir.TensorProtocol, fn: Callable[[np.ndarray], np.ndarray], *,
                 name: str | None = None) -> ir.Tensor:
    """`fn` (elementwise: astype, scaling...) applied to `tensor`; a splat maps its one element
    and stays a splat, with the same numbers `fn` gives on the full array."""
    if isinstance(tensor, SplatTensor):
        element = np.asarray(fn(tensor.value))
        return SplatTensor(element, tensor.shape, ir.DataType.from_numpy(element.dtype), name=name)
    return ir.tensor(fn(tensor.numpy()), name=name)


def dense_array(tensor: ir.TensorProtocol) -> np.ndarray:
    """The tensor's elements in one C-contiguous array (a splat filled at memset speed)."""
    if isinstance(tensor, SplatTensor):
        return np.full(tuple(tensor.shape.numpy()), tensor.value)
    return np.ascontiguousarray(tensor.numpy())
