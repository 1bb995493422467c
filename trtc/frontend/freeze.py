"""`--freeze NAME=VALUES`: graph inputs that are really parameters (Reduce axes, Pad pads, Resize
scales, TopK K, OneHot depth, Reshape shapes, ...) become initializers with the given values, so
they fold and lower to TensorRT like any constant.

    inputs: x: float32[2x3], axes: int64[1]    --freeze axes=1    inputs: x: float32[2x3]
    y = ReduceSum(x, axes)                      ------------>      y = ReduceSum(x, axes=[1])

A value is an array, a `.npy` file, or a literal `0,1` / `2.5` / `true` (a scalar when the input
has rank 0, else 1-D). It takes the input's declared dtype: a value of another dtype is cast when
every element survives the cast exactly (to a float type: when it is numeric), and refused
otherwise. Its shape must match the input's declared dims where they are known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from trtc.errors import TrtcError

FreezeValue = str | np.ndarray  # a literal, a .npy path, or the array itself


def parse_freeze_specs(specs: Iterable[str]) -> dict[str, str]:
    """{'axes': '0,1'} from the command line's ['axes=0,1']."""
    values: dict[str, str] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise TrtcError(f"expected NAME=VALUES, got {spec!r}", where="--freeze",
                            hint="e.g. --freeze axes=0,1 or --freeze scales=scales.npy")
        if name in values:
            raise TrtcError(f"input '{name}' is given twice", where="--freeze", hint="give each input once")
        values[name] = text
    return values


def _is_npy(value: FreezeValue) -> bool:
    return isinstance(value, str) and value.lower().endswith(".npy")


def freeze_fingerprints(values: Mapping[str, FreezeValue]) -> dict[str, str]:
    """What identifies each value without reading the model: a literal as written (spaces dropped),
    a .npy file or an array by the SHA-256 of its bytes."""
    out = {}
    for name, value in sorted(values.items()):
        if _is_npy(value):
            out[name] = "sha256:" + hashlib.sha256(_read_bytes(Path(value), name)).hexdigest()
        elif isinstance(value, str):
            out[name] = ",".join(token.strip() for token in value.split(","))
        else:
            array = np.ascontiguousarray(value)
            out[name] = f"{array.dtype}{list(array.shape)}:sha256:{hashlib.sha256(array.tobytes()).hexdigest()}"
    return out


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrtcError(f"cannot read the value of --freeze {name} ({exc.strerror})", where=str(path),
                        hint="give an existing .npy file or a literal like 0,1") from None


def _literal(text: str, name: str, where: str) -> np.ndarray:
    """The 1-D array written as `0,1` / `2.5` / `true,false`."""
    items: list[bool | int | float] = []
    for token in (t.strip() for t in text.split(",")):
        if token.lower() in ("true", "false"):
            items.append(token.lower() == "true")
            continue
        try:
            items.append(int(token))
        except ValueError:
            try:
                items.append(float(token))
            except ValueError:
                raise TrtcError(f"'{name}': {token!r} is not a number or true/false", where=where,
                                hint="give comma-separated values like 0,1 or 2.5, or a .npy file") from None
    return np.array(items)


def _load_npy(path: Path, name: str, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TrtcError(f"'{name}': not a readable .npy file ({str(exc).splitlines()[0]})",
                        where=f"{where} {path}", hint="save it with numpy.save") from None


def _is_numeric(dtype: np.dtype) -> bool:
    """bool, integer and float dtypes, ml_dtypes' floats (numpy kind 'V') included."""
    return dtype.kind in "biuf" or (dtype.kind == "V" and "float" in dtype.name)


def _in_dtype(array: np.ndarray, dtype: ir.DataType, name: str, where: str) -> np.ndarray:
    """`array` as `dtype`: numeric values to a float type; exact values only to integer and bool types."""
    target = dtype.numpy()
    if not dtype.is_floating_point() and target.kind not in "biu":
        raise TrtcError(f"'{name}' is a {dtype.name} input; only numeric and bool inputs can be frozen",
                        where=where)
    if not _is_numeric(array.dtype):
        raise TrtcError(f"'{name}': {array.dtype} values do not fit its {dtype.name} input", where=where,
                        hint="give numbers")
    with np.errstate(invalid="ignore", over="ignore"):
        cast = array.astype(target)
    if not dtype.is_floating_point() and not np.array_equal(cast.astype(object), array.astype(object)):
        raise TrtcError(f"'{name}': the values {array.ravel()[:8].tolist()} are not all exactly {dtype.name}",
                        where=where, hint=f"give values its {dtype.name} input can hold")
    return cast


def _check_shape(array: np.ndarray, value: ir.Value, where: str) -> None:
    if value.shape is None:
        return
    want = value.shape.dims
    if len(want) == array.ndim and all(not isinstance(w, int) or w == g for w, g in zip(want, array.shape)):
        return
    declared = "x".join(str(d) for d in want) or "a scalar"
    raise TrtcError(f"'{value.name}' has shape {declared} but the value has shape "
                    f"{'x'.join(map(str, array.shape)) or 'scalar'}", where=where,
                    hint="give that many values (a .npy file for rank 2 and up)")


def input_array(value: ir.Value, given: FreezeValue, *, where: str = "--freeze") -> np.ndarray:
    """The array `given` stands for, in `value`'s dtype and checked against its declared shape."""
    name = value.name or ""
    if _is_npy(given):
        array = _load_npy(Path(given), name, where)
    elif isinstance(given, str):
        array = _literal(given, name, where)
        if array.size == 1 and value.shape is not None and value.shape.rank() == 0:
            array = array.reshape(())
    else:
        array = np.asarray(given)
    if value.dtype is None:
        raise TrtcError(f"'{name}' has no declared type", where=where, hint="re-export the model with input types")
    array = _in_dtype(array, value.dtype, name, where)
    _check_shape(array, value, where)
    return array


def freeze_inputs(model: ir.Model, values: Mapping[str, FreezeValue], *, where: str = "--freeze") -> list[str]:
    """Make each named graph input an initializer holding its value; return the names frozen."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        real = ", ".join(name for name, v in inputs.items() if not v.is_initializer()) or "none"
        raise TrtcError(f"no graph input named {', '.join(map(repr, unknown))}", where=where,
                        hint=f"the inputs are: {real}")
    for name, given in values.items():
        value = inputs[name]
        array = input_array(value, given, where=where)
        graph.inputs.remove(value)
        value.const_value = ir.tensor(array, dtype=value.dtype, name=name)
        value.shape = ir.Shape(array.shape)
        if not value.is_initializer():
            graph.register_initializer(value)
    return list(values)
