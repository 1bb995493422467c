"""Helpers for pass tests: build small graphs with onnx.helper, run a pass, compare numerics."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from trtc.passes import PASSES, PassContext
from trtc.reference.runner import ReferenceRunner


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Mapping[str, np.ndarray] = (),
               opset: int = 18) -> ir.Model:
    """An IR model from onnx.helper pieces (initializers given as name -> array), shapes inferred."""
    from trtc.frontend.shapes import infer_shapes

    inits = [onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in dict(initializers).items()]
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    return model


def run_pass(model: ir.Model, name: str, ctx: PassContext | None = None) -> dict[str, int]:
    return PASSES[name].fn(model, ctx or PassContext())


def run_model(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ReferenceRunner(model).run(feeds)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def check_pass(model: ir.Model, name: str, feeds: Mapping[str, np.ndarray], *, rtol: float = 1e-5,
               atol: float = 1e-5) -> dict[str, int]:
    """Run pass `name` on `model` in place; assert outputs unchanged and a second run is a no-op."""
    before = run_model(copy_model(model), feeds)
    counts = run_pass(model, name)
    after = run_model(model, feeds)
    for key, want in before.items():
        np.testing.assert_allclose(after[key], want, rtol=rtol, atol=atol, err_msg=f"output {key}")
    assert not {k: v for k, v in run_pass(model, name).items() if v}, "pass is not idempotent"
    return counts


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy (through the proto) so a pass cannot touch the original."""
    proto = ir.serde.serialize_model(model)
    return ir.serde.deserialize_model(copy.deepcopy(proto))


def vi(name: str, shape, dtype=onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)
