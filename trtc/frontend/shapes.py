"""Shape inference on the IR with symbolic dims kept symbolic.

ONNX's inference (with data propagation, so Shape->Gather->Concat->Reshape chains
resolve) runs on a copy of the graph that carries the data of small weights only:
large weights contribute their type and shape, never their bytes.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from trtc.frontend.onnx_export import to_model_proto

# Weights up to this size are inlined for inference: shape tensors, axes, scalars.
SMALL_WEIGHT_BYTES = 1 << 16


def _known(value: ir.Value) -> bool:
    return value.type is not None and value.shape is not None


def infer_shapes(model: ir.Model) -> list[str]:
    """Fill in the type and shape of every value ONNX can infer.

    Returns the names of the values (main graph) whose type or shape stays unknown.
    """
    proto = to_model_proto(model, embed_limit=SMALL_WEIGHT_BYTES)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError):
        inferred = proto  # keep what the exporter recorded; report everything unknown
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    infos.update({vi.name: vi for vi in inferred.graph.output})
    unknown = []
    for node in model.graph:
        for value in node.outputs:
            info = infos.get(value.name)
            if info is not None and info.type.HasField("tensor_type"):
                ttype = info.type.tensor_type
                if ttype.elem_type and value.type is None:
                    value.type = ir.TensorType(ir.DataType(ttype.elem_type))
                if ttype.HasField("shape"):
                    shape = ir.serde.deserialize_type_proto_for_shape(info.type)
                    if shape is not None and (value.shape is None or _more_precise(shape, value.shape)):
                        value.shape = shape
            if not _known(value):
                unknown.append(value.name)
    return unknown


def _more_precise(new: ir.Shape, old: ir.Shape) -> bool:
    """True when `new` pins down at least as many dims as `old` (and has the same rank)."""
    if len(new) != len(old):
        return False
    return sum(isinstance(d, int) for d in new.dims) >= sum(isinstance(d, int) for d in old.dims)
