"""Mutators: small named functions, one per class of damage the readers must refuse in one line.

A structure mutator edits a ModelProto in place and returns what it did (None: nothing to do on this
model, another is drawn); a byte mutator returns new bytes and what it did. Both draw every choice
from the `random.Random` they are given, so a mutant is reproduced from its seed alone.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

StructureMutator = Callable[[onnx.ModelProto, random.Random], "str | None"]
ByteMutator = Callable[[bytes, random.Random], "tuple[bytes, str]"]
# The files beside the model by name: bytes, or a str for a symbolic link to that target.
Files = dict[str, "bytes | str"]
FilesMutator = Callable[[Files, random.Random], "str | None"]


@dataclasses.dataclass(frozen=True)
class Mutator:
    name: str
    kind: str  # "structure", "bytes" (of the .onnx) or "files" (beside it)
    fn: Callable


MUTATORS: list[Mutator] = []


def structure(fn: StructureMutator) -> StructureMutator:
    MUTATORS.append(Mutator(fn.__name__, "structure", fn))
    return fn


def on_bytes(fn: ByteMutator) -> ByteMutator:
    MUTATORS.append(Mutator(fn.__name__, "bytes", fn))
    return fn


def on_files(fn: FilesMutator) -> FilesMutator:
    MUTATORS.append(Mutator(fn.__name__, "files", fn))
    return fn


# Dims and integers that break arithmetic: negative, zero, past int32, past what memory holds.
EXTREME_INTS = [-(2**63), -(2**31), -1000, -7, -1, 0, 1, 3, 1000, 2**31, 2**40, 2**62, 2**63 - 1]
HUGE_DIMS = [2**31, 2**40, 2**62, 2**63 - 1]
BAD_DTYPES = [0, TensorProto.STRING, 99, -1, TensorProto.BOOL, TensorProto.INT8, TensorProto.FLOAT16,
              TensorProto.BFLOAT16, TensorProto.COMPLEX64, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, 1000]


def graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    """The main graph and every subgraph (If branches, Loop bodies), outermost first."""
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        found.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def _graph(model: onnx.ModelProto, rng: random.Random) -> onnx.GraphProto:
    """The main graph usually; a subgraph a quarter of the time when there is one."""
    every = graphs(model)
    return rng.choice(every[1:]) if len(every) > 1 and rng.random() < 0.25 else every[0]


def _nodes(model: onnx.ModelProto) -> list[tuple[onnx.GraphProto, onnx.NodeProto]]:
    return [(g, n) for g in graphs(model) for n in g.node]


def _value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.output, *graph.value_info]


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in graphs(model):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    yield attr.t


def _array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's values; None when an earlier mutation left them unreadable."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception:
        return None


def _set_dim(dim: onnx.TensorShapeProto.Dimension, value: int | str) -> None:
    dim.Clear()
    if isinstance(value, str):
        dim.dim_param = value
    else:
        dim.dim_value = value


# ---------------------------------------------------------------------------------------- structure


@structure
def unknown_op(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not (nodes := _nodes(model)):
        return None
    graph, node = rng.choice(nodes)
    choice = rng.randrange(4)
    if choice == 0:
        node.op_type = rng.choice(["NoSuchOp", "relu", "Gelu2", "", "Conv "])
        return f"node {node.name!r} op -> {node.op_type!r}"
    if choice == 1:
        node.domain = rng.choice(["com.example", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"])
        return f"node {node.name!r} domain -> {node.domain!r}"
    if choice == 2:  # an op that exists, with the wrong number of inputs for it
        node.op_type = rng.choice(["Add", "Relu", "Concat", "Split", "TopK", "Resize", "Loop"])
        return f"node {node.name!r} op -> {node.op_type} (its inputs kept)"
    model.opset_import.add(domain="com.example", version=1)
    node.domain = "com.example"
    return f"node {node.name!r} in a declared custom domain"


@structure
def dangling_edge(model: onnx.ModelProto, rng: random.Random) -> str | None:
    candidates = [(g, n) for g, n in _nodes(model) if any(n.input)]
    if not candidates:
        return None
    graph, node = rng.choice(candidates)
    index = rng.choice([i for i, name in enumerate(node.input) if name])
    node.input[index] = rng.choice(["ghost", "", node.input[index] + "_missing"])
    return f"node {node.name!r} input {index} -> {node.input[index]!r}"


@structure
def cyclic_edge(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    nodes = [n for n in graph.node if n.input and n.output]
    if not nodes:
        return None
    position = rng.randrange(len(nodes))
    node = nodes[position]
    later = [o for n in nodes[position:] for o in n.output if o]
    index = rng.randrange(len(node.input))
    node.input[index] = rng.choice(later)
    return f"node {node.name!r} input {index} -> {node.input[index]!r} (its own or a later output)"


@structure
def reorder_nodes(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    if len(graph.node) < 2:
        return None
    nodes = list(graph.node)
    if rng.random() < 0.5:
        nodes.reverse()
        what = "reversed"
    else:
        i, j = sorted(rng.sample(range(len(nodes)), 2))
        nodes[i], nodes[j] = nodes[j], nodes[i]
        what = f"nodes {i} and {j} swapped"
    del graph.node[:]
    graph.node.extend(nodes)
    return f"graph {graph.name!r}: {what}"


@structure
def duplicate_names(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    choice = rng.randrange(6)
    if choice == 0 and len(graph.node) >= 2:
        a, b = rng.sample(list(graph.node), 2)
        b.name = a.name or "same"
        a.name = b.name
        return f"two nodes named {a.name!r}"
    if choice == 1 and len(graph.node) >= 2:
        a, b = rng.sample(list(graph.node), 2)
        if a.output and b.output:
            b.output[0] = a.output[0]
            return f"nodes {a.name!r} and {b.name!r} both write {a.output[0]!r}"
    if choice == 2 and graph.initializer:
        tensor = rng.choice(list(graph.initializer))
        twin = graph.initializer.add()
        twin.CopyFrom(numpy_helper.from_array(np.zeros(3, np.float32), tensor.name))
        return f"initializer {tensor.name!r} twice (another shape)"
    if choice == 3 and graph.input:
        twin = graph.input.add()
        twin.CopyFrom(rng.choice(list(graph.input)))
        return f"graph input {twin.name!r} twice"
    if choice == 4 and graph.output:
        twin = graph.output.add()
        twin.CopyFrom(rng.choice(list(graph.output)))
        return f"graph output {twin.name!r} twice"
    produced = [o for n in graph.node for o in n.output if o]
    if not produced:
        return None
    name = rng.choice(produced)
    for elem in (TensorProto.FLOAT, rng.choice([TensorProto.INT64, TensorProto.FLOAT])):
        graph.value_info.append(helper.make_tensor_value_info(name, elem, None))
    return f"value_info {name!r} twice"


@structure
def bad_dims(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    value = rng.random()
    size = rng.choice([-1, -7, 0, *HUGE_DIMS])
    if value < 0.3 and graph.initializer:
        tensor = rng.choice(list(graph.initializer))
        if not tensor.dims:
            tensor.dims.append(size)
        else:
            tensor.dims[rng.randrange(len(tensor.dims))] = size
        return f"initializer {tensor.name!r} dims -> {list(tensor.dims)}"
    infos = [vi for vi in _value_infos(graph) if vi.type.tensor_type.HasField("shape")]
    if not infos:
        return None
    info = rng.choice(infos)
    dims = info.type.tensor_type.shape.dim
    if value < 0.45 or not dims:
        for _ in range(rng.choice([1, 3, 40])):
            _set_dim(dims.add(), rng.choice([1, 2, "extra"]))
        return f"{info.name!r} gains dims ({len(dims)} now)"
    index = rng.randrange(len(dims))
    _set_dim(dims[index], rng.choice([size, size, "", "1", "-1", "batch"]))
    return f"{info.name!r} dim {index} -> {dims[index]}".replace("\n", " ")


@structure
def bad_dtype(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    dtype = rng.choice(BAD_DTYPES)
    if rng.random() < 0.35 and graph.initializer:
        tensor = rng.choice(list(graph.initializer))
        tensor.data_type = dtype
        return f"initializer {tensor.name!r} data_type -> {dtype}"
    infos = _value_infos(graph)
    if not infos:
        return None
    info = rng.choice(infos)
    info.type.tensor_type.elem_type = dtype
    return f"{info.name!r} elem_type -> {dtype}"


@structure
def short_raw_data(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = [t for t in _tensors(model) if t.data_location != TensorProto.EXTERNAL]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    choice = rng.randrange(4)
    if choice == 0 or not tensor.HasField("raw_data"):
        values = _array(tensor)
        data = values.reshape(-1)[: rng.choice([0, 1])] if values is not None else np.zeros(1)
        tensor.ClearField("raw_data")
        tensor.float_data[:] = [float(v) for v in data]  # a typed field, maybe not this dtype's
        return f"tensor {tensor.name!r}: {len(data)} float_data values"
    if choice == 1:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
        return f"tensor {tensor.name!r} raw_data cut to {len(tensor.raw_data)} bytes"
    if choice == 2:
        tensor.raw_data += bytes(rng.choice([1, 3, 4, 64]))
        return f"tensor {tensor.name!r} raw_data grown to {len(tensor.raw_data)} bytes"
    tensor.ClearField("raw_data")
    return f"tensor {tensor.name!r} holds no data"


ESCAPES = ["../outside.bin", "/etc/hostname", "", "sub/../../outside.bin", "missing.bin", "weights.bin/..",
           ".", "model.onnx", "weights.bin\0x", "a" * 300]


@structure
def external_data(model: onnx.ModelProto, rng: random.Random) -> str | None:
    tensors = list(_tensors(model))
    external = [t for t in tensors if t.data_location == TensorProto.EXTERNAL]
    if not tensors:
        return None
    if not external:  # make one: it points at data that is not there (or elsewhere)
        tensor = rng.choice(tensors)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=rng.choice(ESCAPES))
        return f"tensor {tensor.name!r} made external at {tensor.external_data[0].value!r}"
    tensor = rng.choice(external)
    entries = {e.key: e for e in tensor.external_data}
    key = rng.choice(["location", "offset", "length", "checksum", "bogus", "drop"])
    if key == "drop":
        del tensor.external_data[:]
        return f"tensor {tensor.name!r}: no external_data entries"
    if key == "location":
        value = rng.choice(ESCAPES)
    else:
        value = rng.choice(["abc", "-5", "1e3", "", str(2**64), "99999999", "7", " 8"])
    if key in entries:
        entries[key].value = value
    else:
        tensor.external_data.add(key=key, value=value)
    return f"tensor {tensor.name!r} external {key} -> {value!r}"


def _odd_attribute(attr: onnx.AttributeProto, rng: random.Random) -> str:
    """Give `attr` a value of another type or an extreme one of its own type."""
    if rng.random() < 0.5:  # another type
        kind = rng.choice([AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING, AttributeProto.INTS,
                           AttributeProto.TENSOR, AttributeProto.GRAPH, AttributeProto.FLOATS])
        name = attr.name
        attr.Clear()
        attr.name = name
        attr.type = kind
        if kind == AttributeProto.FLOAT:
            attr.f = rng.choice([1.5, float("nan"), float("inf")])
        elif kind == AttributeProto.INT:
            attr.i = rng.choice(EXTREME_INTS)
        elif kind == AttributeProto.STRING:
            attr.s = rng.choice([b"", b"bogus", b"\xff\xfe"])
        elif kind == AttributeProto.INTS:
            attr.ints.extend(rng.choice(EXTREME_INTS) for _ in range(rng.randrange(5)))
        elif kind == AttributeProto.FLOATS:
            attr.floats.extend([0.5, -1.0][: rng.randrange(3)])
        elif kind == AttributeProto.TENSOR:
            attr.t.CopyFrom(numpy_helper.from_array(np.array([1, 2], np.int64), "t"))
        else:
            attr.g.CopyFrom(helper.make_graph([], "empty", [], []))
        return f"-> type {AttributeProto.AttributeType.Name(kind)}"
    if attr.type == AttributeProto.INT:
        attr.i = rng.choice(EXTREME_INTS)
        return f"-> {attr.i}"
    if attr.type == AttributeProto.INTS:
        values = list(attr.ints) or [1]
        choice = rng.randrange(3)
        if choice == 0:
            values[rng.randrange(len(values))] = rng.choice(EXTREME_INTS)
        elif choice == 1:
            values = values[:-1]
        else:
            values = values + values[:1]
        del attr.ints[:]
        attr.ints.extend(values)
        return f"-> {values}"
    if attr.type == AttributeProto.FLOAT:
        attr.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e38])
        return f"-> {attr.f}"
    if attr.type == AttributeProto.STRING:
        attr.s = rng.choice([b"", b"bogus", b"\xff"])
        return f"-> {attr.s!r}"
    if attr.type == AttributeProto.GRAPH:
        kept = list(attr.g.output)[: rng.randrange(len(attr.g.output) + 1)]
        del attr.g.output[:]
        attr.g.output.extend(kept)
        return f"-> subgraph with {len(kept)} outputs"
    if attr.type == AttributeProto.TENSOR:
        attr.t.CopyFrom(numpy_helper.from_array(np.zeros(rng.choice([(0,), (2, 2), (3,)]), np.float32), attr.t.name))
        return f"-> tensor {list(attr.t.dims)} float"
    return "unchanged"


@structure
def bad_attribute(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not (nodes := _nodes(model)):
        return None
    graph, node = rng.choice(nodes)
    choice = rng.randrange(5) if node.attribute else 3
    if choice <= 1:
        attr = rng.choice(list(node.attribute))
        return f"node {node.name!r} attribute {attr.name!r} {_odd_attribute(attr, rng)}"
    if choice == 2:
        attr = rng.choice(list(node.attribute))
        node.attribute.remove(attr)
        return f"node {node.name!r} attribute {attr.name!r} removed"
    if choice == 3:
        known = {"axis": -5, "perm": [2, 0], "to": 99, "kernel_shape": [0, 0], "pads": [1], "strides": [0, 1],
                 "bogus": 1, "keepdims": 7, "group": 0, "transA": 2}
        name = rng.choice(sorted(known))
        if not any(a.name == name for a in node.attribute):
            node.attribute.append(helper.make_attribute(name, known[name]))
            return f"node {node.name!r} gains attribute {name}={known[name]}"
        return f"node {node.name!r} attribute {name} kept"
    source = rng.choice(list(node.attribute))
    twin = node.attribute.add()
    twin.CopyFrom(source)
    if rng.random() < 0.5:
        twin.name = ""
    return f"node {node.name!r} attribute {twin.name!r} twice or unnamed"


@structure
def bad_opset(model: onnx.ModelProto, rng: random.Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        del model.opset_import[:]
        return "no opset_import"
    if choice == 1:
        version = rng.choice([0, -1, 1, 6, 9, 11, 13, 21, 24, 999, 2**40])
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = version
        return f"default opset -> {version}"
    if choice == 2:
        model.opset_import.add(domain="", version=rng.choice([11, 18]))
        return "default domain imported twice"
    if choice == 3:
        renamed = rng.choice(["ai.onnx", "com.example", "ai.onnx.ml"])
        for opset in model.opset_import:
            if opset.domain == "":
                opset.domain = renamed
        return f"default domain renamed -> {renamed!r}"
    model.ir_version = rng.choice([0, -1, 1, 3, 4, 99, 2**40])
    return f"ir_version -> {model.ir_version}"


@structure
def dangling_output(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    choice = rng.randrange(4)
    if choice == 0 or not graph.output:
        del graph.output[:]
        return f"graph {graph.name!r} has no outputs"
    output = rng.choice(list(graph.output))
    if choice == 1:
        output.name = rng.choice(["nothing", ""])
        return f"graph output -> {output.name!r}"
    if choice == 2:
        sources = [vi.name for vi in graph.input] + [t.name for t in graph.initializer]
        if not sources:
            return None
        output.name = rng.choice(sources)
        return f"graph output -> input or weight {output.name!r}"
    output.ClearField("type")
    return f"graph output {output.name!r} has no type"


@structure
def empty_graph_name(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = _graph(model, rng)
    graph.name = ""
    return "a graph with an empty name"


@structure
def wrong_shape_weight(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A weight of the right dtype and the wrong shape (incompatible MatMul, Conv, Add...)."""
    graph = _graph(model, rng)
    tensors = [t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL
               and t.data_type not in (TensorProto.UNDEFINED, TensorProto.STRING)]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = rng.choice([(5, 4), (3,), (2, 3, 4), (), (1, 1, 1, 1, 1), (0, 4)])
    tensor.CopyFrom(numpy_helper.from_array(np.ones(shape, dtype), tensor.name))
    return f"initializer {tensor.name!r} -> shape {list(shape)}"


@structure
def wrong_input_type(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A node input of another dtype (a Cast inserted before it), or a graph input of another kind."""
    graph = _graph(model, rng)
    if rng.random() < 0.5 and graph.input:
        info = rng.choice(list(graph.input))
        choice = rng.randrange(4)
        if choice == 0:
            info.ClearField("type")
        elif choice == 1:
            info.type.tensor_type.ClearField("shape")
        elif choice == 2:
            elem = info.type.tensor_type.elem_type
            info.type.ClearField("tensor_type")
            info.type.sequence_type.elem_type.tensor_type.elem_type = elem or TensorProto.FLOAT
        else:
            info.type.ClearField("tensor_type")
            info.type.optional_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
        return f"graph input {info.name!r} type -> {info.type}".replace("\n", " ")
    nodes = [n for n in graph.node if any(n.input)]
    if not nodes:
        return None
    node = rng.choice(nodes)
    index = rng.choice([i for i, name in enumerate(node.input) if name])
    to = rng.choice([TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.STRING, TensorProto.DOUBLE])
    cast = helper.make_node("Cast", [node.input[index]], [node.input[index] + "_as"], name="fuzz_cast", to=to)
    node.input[index] = cast.output[0]
    nodes = list(graph.node)
    nodes.insert(nodes.index(node), cast)
    del graph.node[:]
    graph.node.extend(nodes)
    return f"node {node.name!r} input {index} cast to {TensorProto.DataType.Name(to)}"


@structure
def remove_things(model: onnx.ModelProto, rng: random.Random) -> str | None:
    graph = _graph(model, rng)
    fields = [f for f in ("node", "initializer", "input", "value_info") if len(getattr(graph, f))]
    if not fields:
        return None
    field = rng.choice(fields)
    items = getattr(graph, field)
    victim = rng.choice(list(items))
    items.remove(victim)
    return f"graph {graph.name!r}: removed {field} {victim.name!r}"


@structure
def node_arity(model: onnx.ModelProto, rng: random.Random) -> str | None:
    if not (nodes := _nodes(model)):
        return None
    graph, node = rng.choice(nodes)
    choice = rng.randrange(4)
    if choice == 0 and node.input:
        del node.input[-1]
        return f"node {node.name!r} loses its last input"
    if choice == 1:
        node.input.append(rng.choice(["", *node.input, *node.output]) if node.input else "")
        return f"node {node.name!r} gains an input"
    if choice == 2 and node.output:
        node.output.append(rng.choice(["", "extra_out", node.output[0]]))
        return f"node {node.name!r} gains an output {node.output[-1]!r}"
    del node.output[:]
    return f"node {node.name!r} has no outputs"


@structure
def huge_shape_operand(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """Small int64 weights (Reshape targets, axes, Slice bounds, trip counts) set to extreme values."""
    tensors = [t for t in _tensors(model)
               if t.data_type == TensorProto.INT64 and t.data_location != TensorProto.EXTERNAL]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    values = _array(tensor)
    if values is None:
        return None
    values = values.copy()
    flat = values.reshape(-1)
    if flat.size:
        flat[rng.randrange(flat.size)] = rng.choice(EXTREME_INTS)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return f"int64 tensor {tensor.name!r} -> {flat.tolist()[:8]}"


@structure
def special_values(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A float weight full of NaN, infinities, denormals or huge values: a valid model whose numbers
    every stage (folding, fusions, the build) must carry without tripping."""
    tensors = [t for t in _tensors(model) if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
               and t.data_location != TensorProto.EXTERNAL]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    values = _array(tensor)
    if values is None:
        return None
    special = rng.choice([np.nan, np.inf, -np.inf, 1e-45, 3e38, 0.0, -0.0])
    values = values.copy()
    flat = values.reshape(-1)
    if flat.size:
        flat[[rng.randrange(flat.size) for _ in range(max(1, flat.size // rng.choice([1, 4])))]] = special
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return f"tensor {tensor.name!r} holds {special}"


@structure
def pin_dims(model: onnx.ModelProto, rng: random.Random) -> str | None:
    """A valid change of the inputs' shapes: symbolic dims pinned to numbers (1 and 7 are edge cases of
    broadcasting and folding), or numbers made symbolic."""
    infos = [vi for vi in model.graph.input if vi.type.tensor_type.HasField("shape")]
    if not infos:
        return None
    info = rng.choice(infos)
    dims = info.type.tensor_type.shape.dim
    if not dims:
        return None
    index = rng.randrange(len(dims))
    if dims[index].HasField("dim_param"):
        _set_dim(dims[index], rng.choice([1, 2, 7]))
    else:
        _set_dim(dims[index], rng.choice(["n", "batch", f"d{index}"]))
    return f"input {info.name!r} dim {index} -> {dims[index]}".replace("\n", " ")


# --------------------------------------------------------------------------------------------- bytes


@on_bytes
def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    spots = [rng.randrange(len(out)) for _ in range(rng.choice([1, 2, 8, 32]))]
    for spot in spots:
        out[spot] ^= 1 << rng.randrange(8)
    return bytes(out), f"{len(spots)} bit(s) flipped"


@on_bytes
def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice([0, 1, rng.randrange(len(data)), len(data) - 1, len(data) // 2])
    return data[:cut], f"cut at {cut} of {len(data)} bytes"


@on_bytes
def interesting_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    count = rng.choice([1, 2, 4])
    for _ in range(count):
        spot = rng.randrange(len(out))
        out[spot] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE])
    return bytes(out), f"{count} byte(s) set to boundary values"


@on_bytes
def splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.choice([1, 4, 16, 256])]
    where = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:where] + chunk + data[where:], f"{len(chunk)} bytes from {start} copied to {where}"
    return data[:where] + data[where + len(chunk):], f"{len(chunk)} bytes deleted at {where}"


@on_bytes
def append_garbage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    tail = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64])))
    return data + tail, f"{len(tail)} random bytes appended"


@on_bytes
def long_varint(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A run of continuation bytes: a varint (a length, a dim) of 64 bits or more."""
    spot = rng.randrange(len(data))
    run = bytes([0xFF] * rng.choice([5, 9, 10, 11])) + bytes([rng.choice([0x01, 0x7F])])
    return data[:spot] + run + data[spot + 1:], f"a {len(run)}-byte varint at {spot}"


# ------------------------------------------------------------------------------------- side files


@on_files
def external_file(files: Files, rng: random.Random) -> str | None:
    """The external data file cut short, grown, gone, or a link out of the model's folder."""
    if not files:
        return None
    name = rng.choice(sorted(files))
    data = files[name]
    choice = rng.randrange(4)
    if choice == 0 and isinstance(data, bytes):
        files[name] = data[: rng.randrange(len(data) + 1)]
        return f"{name} cut to {len(files[name])} bytes"
    if choice == 1 and isinstance(data, bytes):
        files[name] = data + bytes(rng.choice([1, 100]))
        return f"{name} grown to {len(files[name])} bytes"
    if choice == 2:
        del files[name]
        return f"{name} removed"
    files[name] = rng.choice(["/etc/hostname", "../outside.bin", "/nonexistent", name])
    return f"{name} -> symbolic link to {files[name]!r}"
