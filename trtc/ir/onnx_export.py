"""IR -> ONNX: an in-memory ModelProto for the CPU reference, and `trtc export onnx` files."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from trtc.errors import TrtcError
from trtc.fileio import atomic_path, atomic_writer
from trtc.ir.onnx_load import iter_tensor_protos
from trtc.ir.walk import all_initializers, weight_bytes

# Protobuf cannot serialize messages of 2 GiB or more; stay well clear of it.
PROTO_LIMIT = (1 << 31) - (64 << 20)


def to_model_proto(model: ir.Model, *, embed_limit: int | None = None) -> onnx.ModelProto:
    """Serialize the IR, copying the bytes of external weights into the proto.

    With `embed_limit`, only weights up to that many bytes are copied; larger ones
    keep their external-data reference (absolute path), which `onnx` shape
    inference accepts without reading them.
    """
    proto = ir.serde.serialize_model(model)
    if embed_limit is None and weight_bytes(model.graph) >= PROTO_LIMIT:
        raise TrtcError(
            f"model weights ({weight_bytes(model.graph) / 2**30:.1f} GiB) exceed protobuf's 2 GiB "
            "limit for an in-memory model", hint="use export_onnx_file with external data",
        )
    by_name = {v.name: v.const_value for v in all_initializers(model.graph)}
    for tp in iter_tensor_protos(proto):
        if tp.data_location != onnx.TensorProto.EXTERNAL:
            continue
        tensor = by_name.get(tp.name)
        if tensor is None or (embed_limit is not None and tensor.nbytes > embed_limit):
            continue
        tp.ClearField("data_location")
        del tp.external_data[:]
        tp.raw_data = tensor.tobytes() if tensor.nbytes else b""
    return proto


def export_onnx_file(model: ir.Model, path: str | os.PathLike) -> Path:
    """Write a plain ONNX model; weights go to `<name>.data` beside it when they pass 2 GiB."""
    path = Path(path)
    if weight_bytes(model.graph) < PROTO_LIMIT:
        with atomic_writer(path) as out:
            out.write(to_model_proto(model).SerializeToString())
        return path
    # onnx_ir streams every weight into the data file (memory-mapped sources are not loaded
    # whole) and points the graph at it; the graph file is renamed into place last.
    with atomic_path(path) as tmp:
        ir.save(model, tmp, external_data=f"{path.name}.data")
    return path
