"""Shape inference on the IR with symbolic dims kept symbolic.

Two passes over a copy of the graph that carries the data of small weights only (large
weights contribute their type and shape, never their bytes):

1. ONNX's inference with data propagation, so Shape->Gather->Concat->Reshape chains
   resolve. It is robust but names every dim it cannot pin `unk__N`.
2. onnxruntime's symbolic shape inference (sympy), which derives dims as expressions of
   the input dims (`batch*sequence`, `floor(height/2)`). Where it succeeds and says more,
   its dims replace ONNX's; where it fails, ONNX's stay.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from pathlib import Path

import onnx
import onnx_ir as ir

from trtc.ir.onnx_export import to_model_proto

# Weights up to this size are inlined for inference: shape tensors, axes, scalars.
SMALL_WEIGHT_BYTES = 1 << 16
# Dims invented by an inference engine: no better than unknown.
_INVENTED = re.compile(r"^unk__\d+$|_o\d+__d\d+")


def _dims_of(info: onnx.ValueInfoProto) -> ir.Shape | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    return ir.serde.deserialize_type_proto_for_shape(info.type)


def _score(dim) -> int:
    """How much a dim says: 2 for a number, 1 for a derived or named symbol, 0 for unknown."""
    if isinstance(dim, int):
        return 2
    return 0 if dim.value is None or _INVENTED.search(dim.value) else 1


def _better(new: ir.Shape | None, old: ir.Shape | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    if len(new) != len(old):
        return False
    scores = [(_score(a), _score(b)) for a, b in zip(new.dims, old.dims)]
    return all(a >= b for a, b in scores) and any(a > b for a, b in scores)


def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {vi.name: vi for vi in proto.graph.value_info}
    infos.update({vi.name: vi for vi in proto.graph.output})
    return infos


def _onnx_inference(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        return _value_infos(onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                              data_prop=True))
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return _value_infos(proto)  # keep what the exporter recorded


@functools.cache
def _symbolic_shape_inference_class():
    """onnxruntime's SymbolicShapeInference, loaded from its file: importing it through
    `onnxruntime.tools` also imports torch when torch is installed (seconds, for nothing)."""
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("trtc_ort_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def _symbolic_inference(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    SymbolicShapeInference = _symbolic_shape_inference_class()  # noqa: N806

    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    # The steps of SymbolicShapeInference.infer_shapes, without its ending: when inference is
    # incomplete it writes sym_shape_infer_temp.onnx into the cwd and raises, losing the partial
    # result we want to merge.
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    try:
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
    except Exception:  # it raises bare Exceptions on ops it does not know; ONNX's result stands
        return {}
    return _value_infos(inference.out_mp_)


def _incomplete(model: ir.Model, infos: dict[str, onnx.ValueInfoProto]) -> bool:
    """Some node output has no type, no shape, or an unknown/invented dim after ONNX's inference."""
    for node in model.graph:
        for value in node.outputs:
            info = infos.get(value.name)
            shape = _dims_of(info) if info is not None else value.shape
            if shape is None or any(_score(d) == 0 for d in shape.dims):
                return True
    return False


def infer_shapes(model: ir.Model) -> list[str]:
    """Fill in the type and shape of every value that can be inferred.

    Returns the names of the values (main graph) whose type or shape stays unknown.
    """
    proto = to_model_proto(model, embed_limit=SMALL_WEIGHT_BYTES)
    onnx_infos = _onnx_inference(proto)
    # The symbolic pass (and its sympy import, ~1 s) only when ONNX left something to derive.
    symbolic_infos = _symbolic_inference(proto) if _incomplete(model, onnx_infos) else {}
    unknown = []
    for node in model.graph:
        for value in node.outputs:
            for info in (onnx_infos.get(value.name), symbolic_infos.get(value.name)):
                if info is None:
                    continue
                elem_type = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
                if elem_type and value.type is None:
                    value.type = ir.TensorType(ir.DataType(elem_type))
                shape = _dims_of(info)
                if _better(shape, value.shape):
                    value.shape = shape
            if value.type is None or value.shape is None:
                unknown.append(value.name)
    return unknown
