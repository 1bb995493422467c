"""The peer side of build_node_suite.py: TensorRT-RTX's own ONNX parser + build on the same
node-test cases, the same profiles and shape-input values, and (with --freeze-parameters) the
same inputs frozen, written into the ONNX file as initializers.

The parser can crash its process (a segfault in a layer it creates), so cases run in child
processes, a chunk each, reporting one line per case as they finish; a case whose child died
is recorded as a crash and the rest of its chunk runs again in a fresh child.

    python benchmarks/node_suite_parser.py [--freeze-parameters] CASE_DIR...   (the child)
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

CHUNK = 40


def frozen_proto(case: Path, arrays: dict, freeze: bool) -> onnx.ModelProto:
    """The case's model; with `freeze`, the inputs trtc's benchmark freezes become initializers."""
    proto = onnx.load(str(case / "model.onnx"))
    if not freeze:
        return proto
    from trtc.frontend import parse_onnx

    from build_node_suite import freeze_parameter_inputs

    names = set(freeze_parameter_inputs(parse_onnx(case / "model.onnx").model, arrays))
    for vi in [vi for vi in proto.graph.input if vi.name in names]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(arrays[vi.name]).astype(dtype), vi.name))
        proto.graph.input.remove(vi)
    return proto


def parser_build(case: Path, freeze: bool) -> tuple[str, str]:
    """('pass' | 'fail', reason) for TensorRT-RTX's OnnxParser + build of one case."""
    import tensorrt_rtx as trt

    from build_node_suite import input_arrays

    arrays = input_arrays(case)
    proto = frozen_proto(case, arrays, freeze)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(proto.SerializeToString(), str(case / "model.onnx")):
        errors = "; ".join(str(parser.get_error(i)).splitlines()[0] for i in range(parser.num_errors))
        return "fail", f"parse: {errors[:250]}"
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    used = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        array = arrays.get(tensor.name)
        if array is None:
            continue
        if tensor.is_shape_tensor:
            values = tuple(int(v) for v in array.ravel())
            profile.set_shape_input(tensor.name, values, values, values)
            used = True
        if any(d < 0 for d in tensor.shape):
            profile.set_shape(tensor.name, array.shape, array.shape, array.shape)
            used = True
    if used:
        config.add_optimization_profile(profile)
    if builder.build_serialized_network(network, config) is None:
        return "fail", "build failed"
    return "pass", ""


def _child(cases: list[str], freeze: bool) -> None:
    for case in cases:
        try:
            status, reason = parser_build(Path(case), freeze)
        except Exception as exc:  # a case's failure is data for the report
            status, reason = "fail", f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        print(f"{Path(case).name}\t{status}\t{' '.join(reason.split())}", flush=True)


def _run_chunk(cases: list[Path], freeze: bool) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    pending = list(cases)
    while pending:
        args = [sys.executable, __file__, *(["--freeze-parameters"] if freeze else []), *map(str, pending)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        for line in proc.stdout.splitlines():
            name, status, reason = (line.split("\t") + ["", ""])[:3]
            results[name] = (status, reason)
        pending = [c for c in pending if c.name not in results]
        if pending and proc.returncode != 0:  # the first case without a line crashed the child
            results[pending[0].name] = ("fail", f"the parser's process died (exit code {proc.returncode})")
            pending = pending[1:]
        elif pending:
            break
    return results


def parser_results(cases: list[Path], freeze: bool, jobs: int) -> dict[str, tuple[str, str]]:
    """Case name -> ('pass' | 'fail', reason) for every case, crashes included."""
    chunks = [cases[i:i + CHUNK] for i in range(0, len(cases), CHUNK)]
    results: dict[str, tuple[str, str]] = {}
    with ThreadPoolExecutor(jobs) as pool:
        for part in pool.map(lambda chunk: _run_chunk(chunk, freeze), chunks):
            results.update(part)
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    _child([a for a in sys.argv[1:] if not a.startswith("--")], "--freeze-parameters" in flags)
