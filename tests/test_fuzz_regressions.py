"""Every crash the fuzz harness (tests/fuzzing, benchmarks/fuzz.py) found, as the smallest model that
showed it, with the one line it now gets; and the rules of ONNX that broken graphs break (issue 15,
part 6b), each refused in the checker's words with the node or value it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from corpus import one_error_line, run_trtc, trtc_in_process

BROKEN_RULES = "the model breaks ONNX's rules; fix the exporter or re-export it"


def mlp(**changes) -> onnx.ModelProto:
    """x[batch, 16] -> Gemm 'fc1' -> Relu 'relu' -> MatMul 'fc2' -> y[batch, 4]."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
         for name, shape in changes.pop("weights", {"w1": (32, 16), "b1": (32,), "w2": (32, 4)}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(trips: np.ndarray | None, *, cond_out: str = "cond_in", scan_shape=None,
               carried_shape=(2,)) -> onnx.ModelProto:
    """Loop(trips, true, x): acc += 1 each step, each step's acc a scan output; the body's condition
    output is `cond_out` (its input passed on: the loop stops only at the trip count)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "one"], ["acc_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_pass"], name="body_cond"),
         helper.make_node("Identity", ["acc_out"], ["step"], name="body_scan")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, list(carried_shape)),
         helper.make_tensor_value_info("step", TensorProto.FLOAT, [2])])
    weights = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
               numpy_helper.from_array(np.array(True), "go")]
    if trips is not None:
        weights.append(numpy_helper.from_array(trips, "trips"))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips" if trips is not None else "", "go", "x"], ["y", "steps"], name="loop",
                          body=body)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(carried_shape)),
         helper.make_tensor_value_info("steps", TensorProto.FLOAT, scan_shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(model: onnx.ModelProto | bytes, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def parse_refused(capsys, model, folder: Path, *needles: str) -> str:
    """`trtc parse` refuses in one line holding every needle, exit 2, and leaves nothing behind."""
    path = save(model, folder)
    before = sorted(folder.iterdir())
    line = one_error_line(trtc_in_process(capsys, "parse", path, "-o", folder / "m.trtir"), *needles)
    assert sorted(folder.iterdir()) == before, "a failed parse left files behind"
    return line


# ------------------------------------------------------------------ ONNX's rules (issue 15, part 6b)


def test_duplicate_value_info(capsys, tmp_path):
    model = mlp()
    model.graph.value_info.extend([helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 32]),
                                   helper.make_tensor_value_info("h", TensorProto.INT64, None)])
    line = parse_refused(capsys, model, tmp_path, "invalid ONNX model: 2 value_info entries describe 'h' in the "
                         "main graph; names must be unique within a graph")
    assert line.endswith(BROKEN_RULES)


def test_duplicate_node_names(capsys, tmp_path):
    model = mlp()
    model.graph.node[1].name = "fc1"
    parse_refused(capsys, model, tmp_path, "invalid ONNX model: 2 nodes are named 'fc1' in the main graph")


def test_duplicate_node_names_in_a_subgraph_name_the_node_holding_it(capsys, tmp_path):
    model = loop_model(np.array(3, np.int64))
    model.graph.node[0].attribute[0].g.node[1].name = "body_add"
    parse_refused(capsys, model, tmp_path, "2 nodes are named 'body_add' in attribute body of node 'loop' (Loop)")


def test_unnamed_nodes_are_fine(capsys, tmp_path):
    model = mlp()
    for node in model.graph.node:
        node.name = ""
    path = save(model, tmp_path)
    assert trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir")[0] == 0


@pytest.mark.parametrize("which", ["main", "subgraph"])
def test_empty_graph_name(capsys, tmp_path, which):
    model = loop_model(np.array(3, np.int64)) if which == "subgraph" else mlp()
    graph = model.graph.node[0].attribute[0].g if which == "subgraph" else model.graph
    graph.name = ""
    where = "attribute body of node 'loop' (Loop)" if which == "subgraph" else "the main graph"
    line = parse_refused(capsys, model, tmp_path,
                         f"invalid ONNX model: Field 'name' of 'graph' is required to be non-empty: {where}")
    assert "truncated" not in line


def test_no_opset_import(capsys, tmp_path):
    model = mlp()
    del model.opset_import[:]
    line = parse_refused(capsys, model, tmp_path, "invalid ONNX model: no opset_import: the model does not say "
                         "which opset its ops follow", BROKEN_RULES)
    assert "truncated" not in line and "not an ONNX model" not in line


@pytest.mark.parametrize("declared", [False, True])
def test_incompatible_matmul_shapes(capsys, tmp_path, declared):
    """With `declared`, a value_info says w2 is [32, 4] (exporters declare weights too): ONNX's inference
    stopped at that contradiction, in words naming no node, and hid the MatMul's."""
    model = mlp(weights={"w1": (32, 16), "b1": (32,), "w2": (5, 4)})
    if declared:
        model.graph.value_info.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [32, 4]))
    line = parse_refused(capsys, model, tmp_path, "invalid ONNX model: node 'fc2' (MatMul): [ShapeInferenceError] "
                         "Incompatible dimensions for matrix multiplication",
                         "ONNX's type and shape inference refuses it")
    assert "onnx.reference" not in line and "TypeError" not in line


def test_nodes_out_of_topological_order(capsys, tmp_path):
    model = mlp()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[1], nodes[0], nodes[2]])
    parse_refused(capsys, model, tmp_path, "invalid ONNX model: Nodes in a graph must be topologically sorted, "
                  "however input 'h' of node: name: relu OpType: Relu is not output of any previous nodes.")


@pytest.mark.parametrize(("source", "name"), [("ghost", "ghost"), ("y", "y")], ids=["dangling", "cycle"])
def test_dangling_and_cyclic_edges_name_the_node(capsys, tmp_path, source, name):
    model = mlp()
    model.graph.node[1].input[0] = source
    parse_refused(capsys, model, tmp_path, f"however input {name!r} of node: name: relu OpType: Relu")


def test_graph_output_naming_nothing(capsys, tmp_path):
    model = mlp()
    model.graph.output[0].name = "nothing"
    parse_refused(capsys, model, tmp_path, "Graph output 'nothing' is not an output of any node in graph.")


def test_ill_typed_node(capsys, tmp_path):
    """Add of float and int64 passed the checker and failed in the CPU reference's words."""
    model = mlp()
    model.graph.node.insert(1, helper.make_node("Cast", ["h"], ["h64"], name="cast", to=TensorProto.INT64))
    model.graph.node.insert(2, helper.make_node("Add", ["h", "h64"], ["h2"], name="mixed"))
    model.graph.node[3].input[0] = "h2"
    parse_refused(capsys, model, tmp_path, "node 'mixed' (Add): B has inconsistent type tensor(int64)")


def test_error_inside_a_subgraph_names_the_inner_node_and_its_holder(capsys, tmp_path):
    model = loop_model(np.array(3, np.int64))
    model.graph.node[0].attribute[0].g.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "three"))
    model.graph.node[0].attribute[0].g.node[0].input[1] = "three"
    parse_refused(capsys, model, tmp_path, "node 'body_add' (Add) in node 'loop' (Loop): [ShapeInferenceError]")


# ------------------------------------------------------------------ crashes the harness found


@pytest.mark.parametrize("field", ["graph name", "op_type"])
def test_text_that_is_not_utf8(capsys, tmp_path, field):
    """A flipped byte in a name: onnx_ir's serializer raised UnicodeDecodeError (graph name), onnx's
    get_schema a TypeError (op type)."""
    model = mlp()
    if field == "graph name":
        model.graph.name = "Zmlp"
        data, at = model.SerializeToString().replace(b"Zmlp", b"\x80mlp"), "model.graph.name b'\\x80mlp'"
    else:
        model.graph.node[1].op_type = "Zelu"
        data, at = model.SerializeToString().replace(b"Zelu", b"\xffelu"), "model.graph.node[1].op_type b'\\xffelu'"
    parse_refused(capsys, data, tmp_path, "invalid ONNX model: 1 text field(s) that are not UTF-8: " + at)
    one_error_line(trtc_in_process(capsys, "inspect", tmp_path / "m.onnx"), "not UTF-8")


def _external(model: onnx.ModelProto, **entries: str) -> onnx.ModelProto:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return model


def test_external_location_with_a_nul_byte(capsys, tmp_path):
    """os.path.realpath raised ValueError('embedded null byte')."""
    (tmp_path / "w.bin").write_bytes(bytes(2048))
    parse_refused(capsys, _external(mlp(), location="w.bin\0x"), tmp_path,
                  "tensor 'w1': external data 'w.bin\\x00x' is not a plain relative path inside the model's folder")


@pytest.mark.parametrize("offset", ["abc", "-5", "1e3"])
def test_external_offset_that_is_not_a_number(capsys, tmp_path, offset):
    """int('abc') raised ValueError when the data file existed."""
    (tmp_path / "w.bin").write_bytes(bytes(2048))
    path = save(_external(mlp(), location="w.bin", offset=offset), tmp_path)
    one_error_line(trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir"),
                   f"tensor 'w1': external data 'w.bin': offset {offset!r} or length None is not a number of bytes")


@pytest.mark.parametrize(("elem_type", "words"), [(-1, "an unknown element type (-1)"),
                                                   (1000, "an unknown element type (1000)"),
                                                   (0, "no element type (0, UNDEFINED)")])
def test_unknown_element_type(capsys, tmp_path, elem_type, words):
    """ONNX's shape inference raised ValueError('Invalid tensor data type')."""
    model = mlp()
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    parse_refused(capsys, model, tmp_path, f"input 'x' of the main graph has {words}")


def test_loop_that_never_finishes(tmp_path):
    """Trip count 2**63 - 1 and a condition passed on unchanged: `trtc run` hung."""
    path = save(loop_model(np.array(2**63 - 1, np.int64)), tmp_path)
    proc = run_trtc("run", path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert ("node 'loop' (Loop): it would not finish: its condition never turns false and its trip count is "
            "9223372036854775807 (more iterations than the 2147483647 a run may take)") in proc.stderr


def test_loop_without_trip_count_or_a_condition_that_changes(capsys, tmp_path):
    parse_refused(capsys, loop_model(None), tmp_path,
                  "node 'loop' (Loop): it would not finish: its condition never turns false and it has no trip count")


def test_long_loops_that_can_stop_are_fine(capsys, tmp_path):
    model = loop_model(np.array(2**63 - 1, np.int64), cond_out="stop")
    body = model.graph.node[0].attribute[0].g
    body.initializer.append(numpy_helper.from_array(np.array(4, np.int64), "four"))
    body.node.append(helper.make_node("Less", ["i", "four"], ["stop"], name="body_stop"))
    model.graph.output[1].type.tensor_type.ClearField("shape")
    path = save(model, tmp_path)
    assert trtc_in_process(capsys, "run", path)[0] == 0


def test_loop_trip_count_of_no_elements(tmp_path):
    """A trip count of shape [0, 4]: onnxruntime segfaulted in `trtc run`."""
    path = save(loop_model(np.zeros((0, 4), np.int64)), tmp_path)
    proc = run_trtc("run", path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "node 'loop' (Loop): its trip count 'trips' must hold exactly one element, it is [0, 4]" in proc.stderr


def test_if_condition_of_many_elements(capsys, tmp_path):
    """Was 'onnxruntime refuses these inputs' at run (blaming generated inputs) and a TensorRT shape
    error in build."""
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "zero"], ["positive"], name="positive"),
         helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.zeros(2, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    parse_refused(capsys, model, tmp_path,
                  "node 'branch' (If): its condition 'positive' must hold exactly one element, it is [2]")


def test_conv_bias_of_the_wrong_shape(capsys, tmp_path):
    """Was 'onnxruntime refuses these inputs' at run and an internal error lowering in build."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros((2, 4), np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    parse_refused(capsys, model, tmp_path,
                  "node 'conv' (Conv): its bias 'b' must be 1-D with one value per output channel (8), it is [2, 4]")


def test_negative_trip_count_builds(capsys, tmp_path):
    """TensorRT sized the scan output by a negative trip count: 'Could not get tensor shape' escaped
    the build as a traceback. A negative M runs no iteration, as in onnxruntime."""
    pytest.importorskip("tensorrt_rtx")
    path = save(loop_model(np.array(-5, np.int64)), tmp_path)
    code, out, err = trtc_in_process(capsys, "run", path)
    assert code == 0 and "steps: float32[0, 2]" in out + err, out + err
    code, out, err = trtc_in_process(capsys, "build", "--backend", "tensorrt-rtx", path, "-o", tmp_path / "m.plan",
                                     "--cache-dir", tmp_path / "cache")
    assert code == 0, out + err


def test_negative_declared_dim_before_the_version_converter(tmp_path):
    """An input dim of -7 into a Slice at opset 17: ONNX's version converter ran its shape inference on
    it and aborted the process (std::clamp with a negative bound). A negative dim is unknown (as
    onnxruntime reads it) before the converter sees the model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    x.type.tensor_type.shape.dim[1].dim_value = -7
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice")], "g", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("starts", 1), ("ends", 5), ("axes", 1))])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    proc = run_trtc("run", path, "--shape", "x=2x8")
    assert proc.returncode == 0, proc.stderr
    assert "y: float32[2, 4]" in proc.stdout + proc.stderr


@pytest.mark.parametrize("to", [0, 99])
def test_cast_to_no_data_type(capsys, tmp_path, to):
    """Cast to=0: ONNX's inference raised ValueError('Invalid tensor data type 0'), naming no node."""
    model = mlp()
    model.graph.node.append(helper.make_node("Cast", ["y"], ["z"], name="cast", to=to))
    model.graph.output[0].name = "z"
    parse_refused(capsys, model, tmp_path,
                  f"node 'cast' (Cast) in the main graph: attribute 'to' is {to}, not an ONNX data type")


def test_reshape_target_that_is_not_1d(capsys, tmp_path):
    """A [0, 4] shape operand: run refused in onnxruntime's words, build raised 'Could not get tensor
    shape' from TensorRT as a traceback."""
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((0, 4), np.int64), "target"))
    model.graph.node.append(helper.make_node("Reshape", ["y", "target"], ["z"], name="reshape"))
    model.graph.output[0].name = "z"
    parse_refused(capsys, model, tmp_path, "node 'reshape' (Reshape): its shape 'target' must be 1-D, it is [0, 4]")


@pytest.mark.parametrize("shape", [(0, 4), (2, 3, 4)])
def test_gemm_bias_that_does_not_broadcast(capsys, tmp_path, shape):
    """Was 'onnxruntime refuses these inputs' at run, a TensorRT broadcast error lowering MatMul in build."""
    model = mlp(weights={"w1": (32, 16), "b1": shape, "w2": (32, 4)})
    parse_refused(capsys, model, tmp_path,
                  f"node 'fc1' (Gemm): its C 'b1' of shape {list(shape)} does not broadcast to its result [?, 32]")


def test_loop_body_with_the_wrong_number_of_outputs(capsys, tmp_path):
    """onnxruntime refused at load, onnx.reference raised IndexError: a one-line run failure in their words."""
    model = loop_model(np.array(3, np.int64))
    del model.graph.node[0].attribute[0].g.output[:]
    parse_refused(capsys, model, tmp_path, "node 'loop' (Loop): its body gives 0 outputs, the node needs 3")


def test_declared_scan_length_against_a_constant_trip_count(capsys, tmp_path):
    """Steps declared [3, 2] with a trip count of -1: the declaration stood (ONNX's inference leaves scan
    lengths unknown) and the build said 'internal error: ... (0, 2) in TensorRT but (3, 2) in the IR'."""
    path = save(loop_model(np.array(-1, np.int64), scan_shape=[3, 2]), tmp_path)
    code, out, err = trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir")
    assert code == 0, err
    assert "output 'steps' is declared float32[3, 2] but the graph computes float32[0, 2]" in out + err
    ok = save(loop_model(np.array(3, np.int64), scan_shape=[3, 2]), tmp_path, "ok.onnx")
    code, out, err = trtc_in_process(capsys, "parse", ok, "-o", tmp_path / "ok.trtir")
    assert code == 0 and "is declared" not in out + err


def test_declared_carried_shape_the_body_does_not_keep(capsys, tmp_path):
    """The body and the graph declare the carried acc [5]; it is [2] in and out of every iteration. ONNX's
    inference leaves a carried output's sizes unknown, so the graph's [5] stood, and the build said 'internal
    error: node 'loop' (Loop) output 'y' has shape (2,) in TensorRT but (5,) in the IR'."""
    path = save(loop_model(np.array(3, np.int64), carried_shape=[5]), tmp_path)
    code, out, err = trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir")
    assert code == 0, err
    assert "output 'y' is declared float32[5] but the graph computes float32[2]" in out + err
    pytest.importorskip("tensorrt_rtx")
    code, out, err = trtc_in_process(capsys, "build", "--backend", "tensorrt-rtx", tmp_path / "m.trtir", "-o",
                                     tmp_path / "m.plan", "--cache-dir", tmp_path / "cache")
    assert code == 0, out + err


def test_a_dim_above_tensorrts_32_bit_profiles(capsys, tmp_path):
    """x[batch, 2**31] (one-hour fuzz run, seeds 314891 and 325286: a static dim of a dynamic input set to 2**31):
    TensorRT's profile held it as a negative int32 and raised 'Shape provided for min is inconsistent with other
    shapes' out of the build."""
    pytest.importorskip("tensorrt_rtx")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2**31])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2**31])])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    line = one_error_line(trtc_in_process(capsys, "build", "--backend", "tensorrt-rtx", path, "-o", tmp_path / "m.plan",
                                          "--cache-dir", tmp_path / "cache", "--shapes",
                                          f"x:1x{2**31},2x{2**31},4x{2**31}"),
                          "input 'x': dim 2147483648 is above TensorRT's limit of 2147483647")
    assert not (tmp_path / "m.plan").exists(), line


def test_a_loop_whose_scan_output_outgrows_the_memory_limit(capsys, tmp_path):
    """A trip count of 2130706435 (one-hour fuzz run, seed 326312: a byte set to a boundary value) made `run`
    fill a 16 GiB scan output for minutes; the CPU reference refuses a value of a static size above the limit
    (--max-memory, default half the machine's memory: given here, so that the test holds on any machine)."""
    path = save(loop_model(np.array(2130706435, np.int64)), tmp_path)
    one_error_line(trtc_in_process(capsys, "run", path, "--max-memory", "1G"), "1 value(s) of the model would be "
                   "larger than the memory limit ('steps' float[2130706435, 2] (15.88 GiB))", "--max-memory")


def test_declared_shape_beyond_a_64_bit_count(capsys, tmp_path):
    """x[batch, 4, 2**62]: TensorRT's volumes overflowed to 0 in build ('internal error: ... (-1, 0) in
    TensorRT but (-1, 24) in the IR')."""
    model = mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**62
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 4
    parse_refused(capsys, model, tmp_path, "input 'x' of the main graph is declared [batch, 4611686018427387904, 4]: "
                  "more elements than a 64-bit count holds")


def test_graph_output_naming_a_weight_with_another_type(capsys, tmp_path):
    """An output naming an int64 weight but declared float16 made ONNX's inference stop before the nodes
    (an error naming no node), so a bad Unsqueeze axis reached the CPU reference."""
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array([2**40], np.int64), "axes"))
    model.graph.node.append(helper.make_node("Unsqueeze", ["y", "axes"], ["z"], name="unsqueeze"))
    model.graph.output[0].name = "z"
    model.graph.output.append(helper.make_tensor_value_info("axes", TensorProto.FLOAT16, [1]))
    parse_refused(capsys, model, tmp_path, "node 'unsqueeze' (Unsqueeze): [ShapeInferenceError] Unexpected axis "
                  "value: 1099511627776")


def test_pool_window_larger_than_its_input(capsys, tmp_path):
    """An image input pinned to width 1 under a 2x2 MaxPool: onnxruntime and ONNX's inference sized the
    output 1 wide, TensorRT 0 ('internal error: ... (-1, 16, -1, 0) in TensorRT but (-1, 16, -1, 1)')."""
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    parse_refused(capsys, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path,
                  "node 'pool' (MaxPool): its window (2) is larger than its padded input (1) on axis 3")


def test_a_type_outside_the_schema_is_left_to_the_build(capsys, tmp_path):
    """ReduceMax of bool before opset 20 is outside ONNX's schema, which TensorRT takes: not refused at
    parse, and the shape errors after it are still found."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["x", "axes"], ["m"], name="any", keepdims=0),
         helper.make_node("MatMul", ["f", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("f", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("m", TensorProto.BOOL, None), helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.ones((3, 4), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = save(model, tmp_path)
    assert trtc_in_process(capsys, "parse", path, "-o", tmp_path / "m.trtir")[0] == 0
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((5, 4), np.float32), "w"))
    parse_refused(capsys, model, tmp_path, "node 'mm' (MatMul): [ShapeInferenceError] Incompatible dimensions")


def test_a_shape_tensorrt_cannot_compute_is_one_line(tmp_path):
    """TensorRT's 'Could not get tensor shape.' escaped the build's shape check as a traceback (found
    with a [0, 4] Reshape shape, which parse now refuses; an IR made otherwise can still hold one)."""
    pytest.importorskip("tensorrt_rtx")
    import onnx_ir as ir

    from trtc.errors import TrtcError
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.network import lower

    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "target"))
    model.graph.node.append(helper.make_node("Reshape", ["y", "target"], ["z"], name="reshape"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2, 2]))
    parsed = parse_onnx(save(model, tmp_path)).model
    target = parsed.graph.initializers["target"]
    target.const_value, target.shape = ir.tensor(np.zeros((0, 4), np.int64), name="target"), ir.Shape([0, 4])
    with pytest.raises(TrtcError, match=r"node 'reshape' \(Reshape\): TensorRT cannot compute the shape of its "
                                        r"output 'z': ITensor::getDimensions: Shape Error"):
        lower(parsed, load_backend("tensorrt-rtx"), "m.onnx")


def test_a_string_where_the_op_takes_numbers(capsys, tmp_path):
    """A Reshape shape cast to string passed parse (a type outside the schema is left to the build) and
    `optimize` raised TypeError from folding ('Bitwidth not available for ONNX data type: STRING')."""
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "target"))
    model.graph.node.extend([helper.make_node("Cast", ["target"], ["text"], name="cast", to=TensorProto.STRING),
                             helper.make_node("Reshape", ["y", "text"], ["z"], name="reshape")])
    model.graph.output[0].name = "z"
    parse_refused(capsys, model, tmp_path, "node 'reshape' (Reshape): shape typestr: tensor(int64), has "
                  "unsupported type: tensor(string)")


def test_constant_strings_fold(capsys, tmp_path):
    """Folding sized every constant by its dtype's bit width, which strings have not (TypeError)."""
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array([3, 4], np.int64), "n"))
    model.graph.node.extend([helper.make_node("Cast", ["n"], ["text"], name="to_text", to=TensorProto.STRING),
                             helper.make_node("Cast", ["text"], ["back"], name="to_float", to=TensorProto.FLOAT),
                             helper.make_node("ReduceSum", ["back"], ["total"], name="sum", keepdims=0),
                             helper.make_node("Add", ["y", "total"], ["z"], name="add")])
    model.graph.output[0].name = "z"
    path = save(model, tmp_path)
    code, out, err = trtc_in_process(capsys, "optimize", path, "-o", tmp_path / "o.trtir")
    assert code == 0, err
