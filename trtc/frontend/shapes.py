"""Shape inference on the IR with symbolic dims kept symbolic.

Passes over a copy of the graph that carries the data of small weights only (large
weights contribute their type and shape, never their bytes: those on disk, in an external
data file or embedded in the .onnx, are referenced where they are, not copied):

1. ONNX's inference with data propagation, so Shape->Gather->Concat->Reshape chains
   resolve. It is robust but names every dim it cannot pin `unk__N`.
2. onnxruntime's symbolic shape inference (sympy), which derives dims as expressions of
   the input dims (`batch*sequence`, `floor(height/2)`). Where it succeeds and says more,
   its dims replace ONNX's; where it fails, ONNX's stay.

What the graph computes wins over what the file declares. Exporters record the type and
shape of graph outputs and of intermediate values (`value_info`), and some record them
wrong (an output declared `[1, seqlen]` that is really `[T, 1, C]`). ONNX's inference,
given such a declaration, fails on the node and silently keeps the declaration, so the
mistake would reach the build. So ONNX's inference first runs with every declaration
taken out (inputs and weights are the ground truth); a declaration that contradicts its
result (another dtype, another rank, another fixed size) is dropped, replaced by what was
inferred, and reported as a warning. onnxruntime does the same: its outputs follow the
graph, not the declaration. Declarations that agree stay: they may name dims better
(`batch` for `unk__3`) or stand in where inference cannot go (custom ops).
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import importlib.util
import logging
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx.numpy_helper
import onnx_ir as ir

from trtc.ir.onnx_export import to_model_proto
from trtc.ir.onnx_load import FileViewTensor
from trtc.ir.walk import all_initializers

# Weights up to this size are inlined for inference: shape tensors, axes, scalars.
SMALL_WEIGHT_BYTES = 1 << 16
# Dims invented by an inference engine: no better than unknown.
_INVENTED = re.compile(r"^unk__\d+$|_o\d+__d\d+")

# Where a graph sits in the model: the (node index, attribute name) steps from the main graph
# down to it, () for the main graph. The proto keeps the IR's node order, so one path names
# the same graph on both sides.
GraphPath = tuple[tuple[int, str], ...]
Infos = dict[str, onnx.ValueInfoProto]


def _dims_of(info: onnx.ValueInfoProto) -> ir.Shape | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    return ir.serde.deserialize_type_proto_for_shape(info.type)


def _elem_type(info: onnx.ValueInfoProto) -> int:
    return info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0


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


def _value_infos(graph: onnx.GraphProto) -> Infos:
    infos = {vi.name: vi for vi in graph.value_info}
    infos.update({vi.name: vi for vi in graph.output})
    return infos


def _proto_graphs(graph: onnx.GraphProto, path: GraphPath = ()) -> Iterator[tuple[GraphPath, onnx.GraphProto]]:
    """`graph` and every subgraph in it, each with its path."""
    yield path, graph
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attr.g, (*path, (index, attr.name)))


def _ir_graphs(graph: ir.Graph, path: GraphPath = ()) -> Iterator[tuple[GraphPath, ir.Graph]]:
    """`graph` and every subgraph in it, each with the path `_proto_graphs` gives its proto."""
    yield path, graph
    for index, node in enumerate(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _ir_graphs(attr.value, (*path, (index, attr.name)))


def _all_infos(proto: onnx.ModelProto) -> dict[GraphPath, Infos]:
    return {path: _value_infos(graph) for path, graph in _proto_graphs(proto.graph)}


@dataclasses.dataclass
class _Declaration:
    """A type/shape the file states for a value computed by a node (not an input or a weight)."""

    path: GraphPath
    name: str
    kind: str  # "output" or "value_info"
    info: onnx.ValueInfoProto  # a copy, as declared


def _take_declarations(proto: onnx.ModelProto) -> list[_Declaration]:
    """Remove the declared types and shapes of node outputs from `proto` (every graph); return them."""
    taken = []
    for path, graph in _proto_graphs(proto.graph):
        inputs = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
        kept = [vi for vi in graph.value_info if vi.name in inputs]  # not about a node's result
        taken.extend(_Declaration(path, vi.name, "value_info", _copy(vi))
                     for vi in graph.value_info if vi.name not in inputs)
        del graph.value_info[:]
        graph.value_info.extend(kept)
        for vi in graph.output:
            if vi.name in inputs or not vi.HasField("type"):
                continue  # an output that is an input or a weight: its type is not a claim about a node
            taken.append(_Declaration(path, vi.name, "output", _copy(vi)))
            vi.ClearField("type")
    return taken


def _restore(proto: onnx.ModelProto, declarations: list[_Declaration]) -> None:
    graphs = dict(_proto_graphs(proto.graph))
    for decl in declarations:
        graph = graphs[decl.path]
        if decl.kind == "value_info":
            graph.value_info.append(decl.info)
            continue
        for vi in graph.output:
            if vi.name == decl.name:
                vi.type.CopyFrom(decl.info.type)


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


def _dtype_name(dtype: ir.DataType) -> str:
    """float32, int64, ... as the rest of trtc writes them; ONNX's name where numpy has none."""
    try:
        return str(dtype.numpy())
    except (TypeError, ValueError):
        return dtype.name.lower()


def _describe(dtype: ir.DataType | None, shape: ir.Shape | None) -> str:
    """`float32[T, 1, 8]`: unknown and invented dims as `?`."""
    name = _dtype_name(dtype) if dtype is not None else "?"
    if shape is None:
        return f"{name}[?]"
    dims = [str(d) if isinstance(d, int) else ("?" if _score(d) == 0 else d.value) for d in shape.dims]
    return f"{name}[{', '.join(dims)}]"


def _text(info: onnx.ValueInfoProto) -> str:
    elem = _elem_type(info)
    return _describe(ir.DataType(elem) if elem else None, _dims_of(info))


def contradiction(declared: onnx.ValueInfoProto, inferred: onnx.ValueInfoProto | None) -> bool:
    """The declaration cannot describe the inferred value: another dtype, another rank, or
    another fixed size on some axis. A symbol against a number is no contradiction."""
    if inferred is None:
        return False
    if _elem_type(declared) and _elem_type(inferred) and _elem_type(declared) != _elem_type(inferred):
        return True
    want, got = _dims_of(declared), _dims_of(inferred)
    if want is None or got is None:
        return False
    if len(want) != len(got):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(want.dims, got.dims))


def _warning(decl: _Declaration, inferred: onnx.ValueInfoProto, value: ir.Value | None) -> str:
    """The sentence for a declaration dropped; `value` (when the IR holds it) gives the final,
    best-named inferred shape."""
    where = "output" if decl.kind == "output" else "value_info of"
    if decl.path:
        where += " (in a subgraph)"
    computed = _describe(value.dtype, value.shape) if value is not None and value.shape is not None \
        else _text(inferred)
    return (f"{where} {decl.name!r} is declared {_text(decl.info)} but the graph computes {computed}; "
            "the declaration is ignored")


def _onnx_inference(proto: onnx.ModelProto) -> dict[GraphPath, Infos] | None:
    """ONNX's inference result per graph, or None when it raised. Sizes it is known to get wrong
    are corrected in `proto` (see `_correct_sizes`) and inference rerun from them."""
    try:
        infos = _all_infos(onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                             data_prop=True))
        if _correct_sizes(proto, infos):
            infos = _all_infos(onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                                 data_prop=True))
        return infos
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return None


def _correct_sizes(proto: onnx.ModelProto, infos: dict[GraphPath, Infos]) -> bool:
    """Sizes ONNX's inference (1.23) is known to get wrong, found over ONNX's node tests with all
    inputs constant, corrected: the right shape is added as value_info, which ONNX's inference
    keeps and propagates downstream. Returns whether any was added (then inference must run again).
    - STFT sizes its frequency axis as frame_length even when `onesided` (the default) keeps
      frame_length // 2 + 1 bins;
    - pooling with ceil_mode keeps a last window that starts past the input and its left padding,
      which the spec's reference, onnxruntime and PyTorch drop;
    - a Loop's scan outputs are left without a length even where the trip count is a constant and
      the condition never stops the loop early (a declared length would stand unchecked);
    - a Loop's carried outputs are left without sizes even where the body hands each one back in
      the static shape it came in (a declared shape would stand unchecked, and reach the build)."""
    weights = {t.name: t for _, g in _proto_graphs(proto.graph) for t in g.initializer}
    shapes: dict[str, ir.Shape | None] = {vi.name: _dims_of(vi) for _, g in _proto_graphs(proto.graph)
                                          for vi in g.input}
    for graph_infos in infos.values():
        shapes.update((name, _dims_of(vi)) for name, vi in graph_infos.items())
    added = False
    for path, graph in _proto_graphs(proto.graph):
        for index, node in enumerate(graph.node):
            if node.domain not in ("", "ai.onnx") or not node.output:
                continue
            body_infos = infos.get((*path, (index, "body")), {})
            for output, fixes in _node_fixes(node, infos.get(path, {}), body_infos, weights, shapes).items():
                fixed = _copy(infos[path][output])
                while len(fixed.type.tensor_type.shape.dim) <= max(fixes):  # no shape inferred: a fix gives all axes
                    fixed.type.tensor_type.shape.dim.add()
                for axis, size in fixes.items():
                    dim = fixed.type.tensor_type.shape.dim[axis]
                    dim.Clear()
                    dim.dim_value = size
                # A graph output's type is its declaration (ONNX's inference reads no value_info for it).
                declared = next((vi for vi in graph.output if vi.name == output), None)
                if declared is not None:
                    declared.type.CopyFrom(fixed.type)
                else:
                    graph.value_info.append(fixed)
                added = True
    return added


def _node_fixes(node: onnx.NodeProto, infos: Infos, body_infos: Infos, weights: dict[str, onnx.TensorProto],
                shapes: dict[str, ir.Shape | None]) -> dict[str, dict[int, int]]:
    """{output name: {axis: size}} for the sizes of `node` that `_correct_sizes` corrects (`body_infos`: a
    Loop's body's)."""
    if node.op_type == "Loop":
        return {**_loop_scan_lengths(node, infos, weights), **_loop_carried_shapes(node, infos, body_infos, shapes)}
    info = infos.get(node.output[0])
    shape = _dims_of(info) if info is not None else None
    if shape is None:
        return {}
    if node.op_type == "STFT":
        fixes = _stft_bins(node, shape, weights, shapes)
    elif node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        fixes = _ceil_pool_sizes(node, shape, shapes.get(node.input[0]))
    else:
        return {}
    return {node.output[0]: fixes} if fixes else {}


def _scalar(tensor: onnx.TensorProto | None) -> int | None:
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        array = onnx.numpy_helper.to_array(tensor)
    except Exception:  # an unreadable weight holds no trip count we can use
        return None
    return int(array.reshape(-1)[0]) if array.size == 1 else None


def _loop_scan_lengths(node: onnx.NodeProto, infos: Infos, weights: dict[str, onnx.TensorProto]) -> dict:
    """{scan output: {0: max(M, 0)}} for a Loop with a constant trip count M whose condition starts
    true and is handed back unchanged (its input, an Identity of it), so it runs exactly M times."""
    body = next((a.g for a in node.attribute if a.name == "body" and a.type == onnx.AttributeProto.GRAPH), None)
    trips = _scalar(weights.get(node.input[0])) if node.input and node.input[0] else None
    start = node.input[1] if len(node.input) > 1 else ""
    starts_true = not start or bool(_scalar(weights.get(start)))
    if body is None or trips is None or len(body.input) < 2 or not body.output or not starts_true:
        return {}
    cond_in, cond_out = body.input[1].name, body.output[0].name
    if cond_out != cond_in and not any(n.op_type == "Identity" and list(n.input) == [cond_in]
                                       and list(n.output) == [cond_out] for n in body.node):
        return {}
    fixes = {}
    for output in node.output[len(node.input) - 2:]:
        shape = _dims_of(infos[output]) if output in infos else None
        if shape is not None and len(shape) and shape.dims[0] != max(trips, 0):
            fixes[output] = {0: max(trips, 0)}
    return fixes


def _static(shape: ir.Shape | None) -> tuple[int, ...] | None:
    return tuple(shape.dims) if shape is not None and all(isinstance(d, int) for d in shape.dims) else None


def _loop_carried_shapes(node: onnx.NodeProto, infos: Infos, body_infos: Infos,
                         shapes: dict[str, ir.Shape | None]) -> dict[str, dict[int, int]]:
    """{carried output: {axis: size}} for a Loop whose body takes a carried value in a static shape, the one
    its initial value has, and hands it back in that shape: every iteration keeps it, so the output has it."""
    body = next((a.g for a in node.attribute if a.name == "body" and a.type == onnx.AttributeProto.GRAPH), None)
    carried = len(node.input) - 2
    if body is None or carried <= 0 or len(body.input) < 2 + carried or len(body.output) < 1 + carried:
        return {}
    fixes = {}
    for k, output in enumerate(node.output[:carried]):
        initial = _static(shapes.get(node.input[2 + k]))
        taken = _static(_dims_of(body.input[2 + k]))
        handed = body_infos.get(body.output[1 + k].name)
        inferred = infos.get(output)
        known = _dims_of(inferred) if inferred is not None else None
        if initial is None or initial != taken or handed is None or _static(_dims_of(handed)) != initial \
                or inferred is None or (known is not None and len(known) != len(initial)):
            continue
        sizes = {axis: size for axis, size in enumerate(initial) if known is None or known.dims[axis] != size}
        if sizes:
            fixes[output] = sizes
    return fixes


def _stft_bins(node: onnx.NodeProto, shape: ir.Shape, weights: dict[str, onnx.TensorProto],
               shapes: dict[str, ir.Shape | None]) -> dict[int, int]:
    """{2: bins} when ONNX's frequency axis of STFT is wrong."""
    length = _frame_length(node, weights, shapes)
    if len(shape) != 4 or length is None:
        return {}
    onesided = next((a.i for a in node.attribute if a.name == "onesided"), 1)
    bins = length // 2 + 1 if onesided else length
    return {} if shape.dims[2] == bins else {2: bins}


def _ceil_pool_sizes(node: onnx.NodeProto, shape: ir.Shape, input_shape: ir.Shape | None) -> dict[int, int]:
    """{axis: size} where ONNX keeps a ceil_mode window that starts past the input and its left
    padding (explicit pads only: the auto_pad modes size without ceil_mode)."""
    attrs = {a.name: a for a in node.attribute}
    if not attrs.get("ceil_mode") or not attrs["ceil_mode"].i or input_shape is None:
        return {}
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return {}
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
    rank = len(kernel)
    sizes = list(input_shape.dims[2:])
    if not rank or len(sizes) != rank or len(shape) != rank + 2:
        return {}
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * rank
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * rank
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * rank)
    fixes = {}
    for i, size in enumerate(sizes):
        got = shape.dims[2 + i]
        if not isinstance(size, int) or not isinstance(got, int):
            continue
        span = (kernel[i] - 1) * dilations[i] + 1
        n = -(-(size + pads[i] + pads[rank + i] - span) // strides[i]) + 1
        if (n - 1) * strides[i] >= size + pads[i]:
            n -= 1  # the last window would start in the end padding
        if n != got:
            fixes[2 + i] = n
    return fixes


def _frame_length(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto],
                  shapes: dict[str, ir.Shape | None]) -> int | None:
    """STFT's frame length: its constant `frame_length` input, else the window's length."""
    if len(node.input) > 3 and node.input[3]:
        tensor = weights.get(node.input[3])
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return int(onnx.numpy_helper.to_array(tensor).reshape(-1)[0])
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] in weights:
            dims = list(weights[node.input[2]].dims)
            return dims[0] if len(dims) == 1 else None
        window = shapes.get(node.input[2])
        if window is not None and len(window) == 1 and isinstance(window.dims[0], int):
            return window.dims[0]
    return None


# A float that is k / 2**n with n at most this (2.0, 0.5, 1.5: the scales of real Resize nodes) is
# turned into that exact rational in a dim expression; others stay floats.
_DYADIC_BITS = 16


def _exact(number: Any) -> Any:
    """The exact rational value of a sympy Float when it has a short binary expansion, else itself."""
    import sympy

    ratio = fractions.Fraction(float(number))
    if ratio.denominator <= 1 << _DYADIC_BITS:
        return sympy.Rational(ratio.numerator, ratio.denominator)
    return number


def canonical_dim(expr: Any, *args: Any, **kwargs: Any) -> Any:
    """What onnxruntime's symbolic inference gets for `sympy.simplify` (same signature; a sympy
    expression in and out): floats with short binary expansions made exact, and nothing else.

    It calls `sympy.simplify` for Resize output sizes (`floor(2.0*floor(floor(h/2 - 1/2)/2)) + 2`)
    and a few Slice/Split sizes, only to get one canonical form per dim. On the nested floors that
    strided convolutions over dynamic image dims make, simplify costs up to a second per dim and
    grows with the depth, and it returns them unchanged (PP-OCRv4's detector: 72 calls, 19 s, not
    one rewritten). sympy already canonicalizes sums and products as it builds them; once 2.0 is 2,
    `floor` of an integer expression evaluates itself, which is all simplify achieved there."""
    import sympy

    expr = sympy.sympify(expr)
    floats = expr.atoms(sympy.Float)
    if floats:
        expr = expr.xreplace({f: _exact(f) for f in floats})
    return expr


@functools.cache
def _symbolic_shape_inference_class():
    """onnxruntime's SymbolicShapeInference, loaded from its file: importing it through
    `onnxruntime.tools` also imports torch when torch is installed (seconds, for nothing).

    This private copy of the module sees a `sympy` whose `simplify` is `canonical_dim` (see there):
    the rest of sympy, and every other user of it, are untouched."""
    import onnxruntime
    import sympy

    class _Sympy(types.ModuleType):
        simplify = staticmethod(canonical_dim)

        def __getattr__(self, name: str):
            return getattr(sympy, name)

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("trtc_ort_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.sympy = _Sympy("sympy")
    return module.SymbolicShapeInference


def _symbolic_inference(proto: onnx.ModelProto) -> Infos:
    """Main-graph results of onnxruntime's symbolic inference, which reads no declarations
    (only inputs and weights) and writes the graph outputs it computes over the declared ones."""
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
    return _value_infos(inference.out_mp_.graph)


def _incomplete(model: ir.Model, infos: Infos) -> bool:
    """Some node output has no type, no shape, or an unknown/invented dim after ONNX's inference."""
    for node in model.graph:
        for value in node.outputs:
            info = infos.get(value.name)
            shape = _dims_of(info) if info is not None else value.shape
            if shape is None or any(_score(d) == 0 for d in shape.dims):
                return True
    return False


def _adds_information(decl: _Declaration, inferred: onnx.ValueInfoProto | None) -> bool:
    """The declaration says something inference did not find on its own."""
    if inferred is None:
        return True
    if _elem_type(decl.info) and not _elem_type(inferred):
        return True
    return _better(_dims_of(decl.info), _dims_of(inferred))


def _forget(value: ir.Value | None, inferred: onnx.ValueInfoProto) -> ir.Value | None:
    """Replace the declared type/shape of `value` (a node output) by the inferred one; the value."""
    if value is not None:
        elem = _elem_type(inferred)
        value.type = ir.TensorType(ir.DataType(elem)) if elem else None
        value.shape = _dims_of(inferred)
    return value


class _NodeOutputs:
    """Node outputs by graph path and name, indexed on first use (conflicts are rare)."""

    def __init__(self, model: ir.Model):
        self._graphs = dict(_ir_graphs(model.graph))
        self._index: dict[GraphPath, dict[str, ir.Value]] = {}

    def get(self, path: GraphPath, name: str) -> ir.Value | None:
        if path not in self._index:
            graph = self._graphs.get(path)
            self._index[path] = {v.name: v for n in graph for v in n.outputs if v.name} if graph is not None else {}
        return self._index[path].get(name)


def _inference_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto for inference: small weights inline, large ones as references.

    `to_model_proto` copies in-memory weights into the proto; a weight that is a view of an .onnx
    file's bytes is serialized as an external-data reference to those bytes instead, so that
    inference copies kilobytes, not the weights, however many times it serializes the proto."""
    swapped = {}
    for value in all_initializers(model.graph):
        tensor = value.const_value
        if isinstance(tensor, FileViewTensor) and tensor.nbytes > SMALL_WEIGHT_BYTES:
            swapped[value] = tensor
            value.const_value = tensor.external_reference()
    try:
        return to_model_proto(model, embed_limit=SMALL_WEIGHT_BYTES)
    finally:
        for value, tensor in swapped.items():
            value.const_value = tensor


def infer_shapes(model: ir.Model, warnings: list[str] | None = None) -> list[str]:
    """Fill in the type and shape of every value that can be inferred.

    Returns the names of the values (main graph) whose type or shape stays unknown. A declared
    type or shape that contradicts what the graph computes is replaced by the inferred one
    (main graph and subgraphs), and a sentence saying so is appended to `warnings`.
    """
    proto = _inference_proto(model)
    declarations = _take_declarations(proto)
    free = _onnx_inference(proto) if declarations else None
    if free is None:
        # Nothing declared, or inference raised without the declarations: as the file says.
        _restore(proto, declarations)
        declarations = []
        free = _onnx_inference(proto) or _all_infos(proto)

    outputs = _NodeOutputs(model)
    dropped: list[tuple[_Declaration, onnx.ValueInfoProto, ir.Value | None]] = []
    kept = []
    for decl in declarations:
        inferred = free.get(decl.path, {}).get(decl.name)
        if contradiction(decl.info, inferred):
            dropped.append((decl, inferred, _forget(outputs.get(decl.path, decl.name), inferred)))
        else:
            kept.append(decl)
    # The declarations that agree go back when they say more than inference found without them:
    # a named dim, or a shape past a node inference cannot see through, propagates downstream.
    if any(_adds_information(d, free.get(d.path, {}).get(d.name)) for d in kept):
        _restore(proto, kept)
        infos = _onnx_inference(proto) or free
    else:
        _restore(proto, kept)  # the symbolic pass below reads the same proto; it ignores them anyway
        infos = free
    onnx_infos = infos.get((), {})

    # The symbolic pass (and its sympy import, ~1 s) only when ONNX left something to derive.
    symbolic_infos = _symbolic_inference(proto) if _incomplete(model, onnx_infos) else {}
    declared_main = {d.name: d for d in kept if not d.path}
    unknown = []
    for node in model.graph:
        for value in node.outputs:
            symbolic = symbolic_infos.get(value.name)
            decl = declared_main.get(value.name)
            checked = free.get((), {}).get(value.name)
            if (decl is not None and (checked is None or _dims_of(checked) is None)
                    and contradiction(decl.info, symbolic)):
                # ONNX could not check this declaration; the symbolic pass contradicts it.
                dropped.append((decl, symbolic, _forget(value, symbolic)))
                sources = [symbolic]
            else:
                sources = [onnx_infos.get(value.name), symbolic]
            for info in sources:
                if info is None:
                    continue
                elem_type = _elem_type(info)
                if elem_type and value.type is None:
                    value.type = ir.TensorType(ir.DataType(elem_type))
                shape = _dims_of(info)
                if _better(shape, value.shape):
                    value.shape = shape
            if value.type is None or value.shape is None:
                unknown.append(value.name)
    if warnings is not None:
        warnings.extend(_warning(decl, inferred, value) for decl, inferred, value in dropped)
    return unknown
