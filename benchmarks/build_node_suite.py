"""`trtc build` (TensorRT-RTX, no GPU) over the ONNX node test suite cases whose op
onnx-tensorrt supports: parse, lower, build an engine with a profile fixed to the test
data's input shapes. Success means TensorRT built it and every tensor's dtype/shape
agreed with the IR (numerics need a GPU: see the `gpu` tests).

    python benchmarks/build_node_suite.py [--filter SUBSTRING] [--write-results] [--all-ops]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO.parent / "shared" / "onnx-node-tests"
REFERENCE = REPO.parent / "shared" / "docs" / "REFERENCE.md"


def onnx_tensorrt_ops() -> set[str]:
    """The 158 ops REFERENCE.md section 3 lists as supported by onnx-tensorrt."""
    text = REFERENCE.read_text()
    block = text.split("158 supported ops", 1)[1].split("TensorRT 11.0 adds", 1)[0]
    block = block.split(":", 1)[1].split("\n\n", 1)[0]
    return {w.strip().rstrip(".") for w in block.replace("\n", " ").split(",") if w.strip()}


def case_op(case: Path) -> str:
    """The op a node test exercises: the single node's op (expanded cases are functions of several)."""
    model = onnx.load(str(case / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return ops[0] if len(ops) == 1 else "+".join(sorted(set(ops)))


def input_arrays(case: Path) -> dict:
    model = onnx.load(str(case / "model.onnx"), load_external_data=False)
    arrays = {}
    inits = {i.name for i in model.graph.initializer}
    for i, vi in enumerate(v for v in model.graph.input):
        f = case / "test_data_set_0" / f"input_{i}.pb"
        if vi.name in inits or not f.exists() or vi.type.WhichOneof("value") != "tensor_type":
            continue
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        arrays[vi.name] = numpy_helper.to_array(t)
    return arrays


# Float and bool inputs that parameterize an op, by op and input position (None: any small one):
# Resize's scales, OneHot's depth and Range's bounds set output sizes; Dropout's ratio and
# training_mode decide whether it is the identity.
FLOAT_PARAMETERS: dict[str, set[int] | None] = {"Resize": None, "Upsample": None, "OneHot": {1},
                                                "Range": {0, 1, 2}, "Dropout": {1, 2}}


def _is_parameter(node, index: int) -> bool:
    positions = FLOAT_PARAMETERS.get(node.op_type, set())
    return positions is None or index in positions


def freeze_parameter_inputs(model, arrays: dict) -> list[str]:
    """Make the small 1-D/0-D inputs that parameterize an op (axes, pads, starts, shapes, scales, K, depth,
    Range bounds, Dropout's ratio and mode) constants with the test data's values: node tests feed them as
    inputs, models carry them as initializers. The freezing is trtc's own (`--freeze`)."""
    from trtc.frontend.freeze import freeze_inputs

    parameters = {}
    for value in model.graph.inputs:
        array = arrays.get(value.name)
        if array is None or array.ndim > 1 or array.size > 16:
            continue
        kind = "f" if array.dtype.name == "bfloat16" else array.dtype.kind  # ml_dtypes' bfloat16 is kind V
        if kind not in "iufb":
            continue
        if kind in "fb" and not any(_is_parameter(n, i) for n, i in value.uses()):
            continue  # float and bool data stay data
        parameters[value.name] = array
    return freeze_inputs(model, parameters)


def build_case(case: Path, freeze: bool = False, fp16: bool = False) -> tuple[str, str]:
    """('pass' | 'fail', reason); with `fp16`, trtc's precision pass first types the graph (the test
    inputs are its calibration sample)."""
    from trtc.errors import TrtcError
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine

    try:
        artifact = parse_onnx(case / "model.onnx")
        model = artifact.model
        arrays = input_arrays(case)
        frozen = set(freeze_parameter_inputs(model, arrays)) if freeze else set()
        if fp16:
            from trtc.precision import PrecisionOptions, apply_precision

            apply_precision(model, [{k: v for k, v in arrays.items() if k not in frozen}], PrecisionOptions())
        profile = {}
        for value in model.graph.inputs:
            if value.shape is not None and any(not isinstance(d, int) for d in value.shape.dims):
                dims = tuple(arrays[value.name].shape)
                profile[value.name] = (dims, dims, dims)
        # Integer inputs TensorRT may take as shape tensors get the test data's values as their range.
        shape_inputs = {name: (tuple(a.ravel().tolist()),) * 3 for name, a in arrays.items()
                        if a.dtype.kind in "iu" and a.ndim <= 1}
        build_engine(model, artifact.meta, load_backend("tensorrt-rtx"),
                     BuildOptions(profiles=[profile] if profile else [], shape_inputs=shape_inputs))
        return "pass", ""
    except TrtcError as exc:
        return "fail", exc.one_line()[:300]
    except Exception as exc:  # a case's failure is data for the report
        return "fail", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:250] if str(exc).strip() else ''}"


FAILURE_KINDS = [  # (what the reason says, the kind of failure), first match wins
    ("which TensorRT does not support", "a type TensorRT lacks that trtc does not carry (STRING, FLOAT8E8M0)"),
    ("is not a tensor", "sequence/optional values (TensorRT has tensors only)"),
    ("are not tensors", "sequence/optional values (TensorRT has tensors only)"),
    ("has no NonMaxSuppression kernel", "no TensorRT-RTX kernel (NonMaxSuppression, NonZero)"),
    ("has no NonZero", "no TensorRT-RTX kernel (NonMaxSuppression, NonZero)"),
    ("is random", "training-mode Dropout with a nonzero ratio (random: inference engines have none)"),
    ("must be a constant", "a parameter given as a graph input (TensorRT needs it at build time)"),
    ("graph input", "a parameter given as a graph input (TensorRT needs it at build time)"),
    ("not supported", "an attribute value TensorRT's layers cannot express"),
]


def failure_kind(reason: str) -> str:
    return next((kind for text, kind in FAILURE_KINDS if text in reason), "other (see the reason)")


def selected_cases(filter_text: str, all_ops: bool) -> list[tuple[Path, str]]:
    supported = onnx_tensorrt_ops()
    out = []
    for case in sorted(p for p in SUITE.iterdir() if (p / "model.onnx").exists() and filter_text in p.name):
        op = case_op(case)
        if all_ops or op in supported:
            out.append((case, op))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--all-ops", action="store_true", help="also cases whose op onnx-tensorrt lacks")
    ap.add_argument("--freeze-parameters", action="store_true",
                    help="make small 1-D integer inputs (axes, pads, shapes) and float/bool parameters (Resize scales, "
                         "OneHot depth, Range bounds, Dropout ratio/mode) constants")
    ap.add_argument("--fp16", action="store_true", help="type each case with trtc's fp16 precision pass first")
    ap.add_argument("--with-parser", action="store_true",
                    help="also TensorRT-RTX's own ONNX parser + build on the same cases (node_suite_parser.py)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    if not SUITE.is_dir() or not REFERENCE.is_file():
        print(f"skipped: {SUITE} or {REFERENCE} is missing")
        return 0
    cases = selected_cases(args.filter, args.all_ops)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(build_case, [c for c, _ in cases], [args.freeze_parameters] * len(cases),
                                [args.fp16] * len(cases), chunksize=4))
    elapsed = time.perf_counter() - start
    peer = None
    if args.with_parser:
        from node_suite_parser import parser_results

        peer = parser_results([c for c, _ in cases], args.freeze_parameters, args.jobs)
    passed = sum(1 for s, _ in results if s == "pass")
    failures = [(c.name, op, r) for (c, op), (s, r) in zip(cases, results) if s != "pass"]
    kinds = collections.Counter(failure_kind(r) for _, _, r in failures)
    summary = (f"{passed} of {len(results)} node-test cases whose op onnx-tensorrt supports build with TensorRT-RTX "
               f"({passed / max(1, len(results)):.1%}) in {elapsed:.0f}s with {args.jobs} processes")
    if peer is not None:
        peer_passed = sum(1 for c, _ in cases if peer.get(c.name, ("fail",))[0] == "pass")
        only_peer = sorted(c.name for (c, _), (s, _) in zip(cases, results)
                           if s != "pass" and peer.get(c.name, ("fail",))[0] == "pass")
        summary += (f"; TensorRT-RTX's ONNX parser builds {peer_passed} ({peer_passed / max(1, len(results)):.1%}) "
                    f"of the same cases in the same run, trtc / parser = {passed / max(1, peer_passed):.2f}x; "
                    f"cases only the parser builds: {', '.join(only_peer) or 'none'}")
    print(summary)
    for kind, count in kinds.most_common():
        print(f"  {count:4d}  {kind}")
    for name, op, reason in failures:
        print(f"  {name} [{op}]: {reason}")
    if args.write_results:
        from results import write_section

        mode = ("parameter inputs (axes, pads, shapes, K, Resize scales/ROI, OneHot depth, Range bounds, Dropout "
                "ratio/training_mode) frozen to the test values with trtc's `--freeze`"
                if args.freeze_parameters else "models as given (parameters as graph inputs)")
        if args.fp16:
            mode = f"trtc --fp16 (its precision pass, the test inputs as calibration); {mode}"
        lines = [f"Mode: {mode}.", "", f"{summary}.", "", "| failures | kind |", "|---|---|"]
        lines += [f"| {count} | {kind} |" for kind, count in kinds.most_common()]
        lines += ["", "| case | op | reason |", "|---|---|---|"]
        lines += [f"| {n} | {o} | {r.replace('|', '/')} |" for n, o, r in failures]
        if peer is not None:
            lines += ["", "Parser failures (first line of its error):", "", "| case | parser's reason |", "|---|---|"]
            lines += [f"| {c.name} | {peer[c.name][1].replace('|', '/')[:200]} |" for c, _ in cases
                      if peer.get(c.name, ("fail",))[0] != "pass"]
        title = ("frozen parameters" if args.freeze_parameters else "as given") + (", fp16" if args.fp16 else "")
        write_section(f"Build coverage: ONNX node tests, {title} (benchmarks/build_node_suite.py)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
