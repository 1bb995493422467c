"""The ONNX backend node test suite through trtc: parse, save, load, run on the CPU
reference, compare with the expected outputs (rtol 1e-3, atol 1e-7 by default).

    python benchmarks/node_suite.py [--write-results] [--filter SUBSTRING]

Also imported by tests/test_node_suite.py (one case per test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from trtc.errors import TrtcError
from trtc.frontend import parse_onnx
from trtc.ir import load_artifact, save_artifact
from trtc.reference.runner import ReferenceRunner

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO.parent / "shared" / "onnx-node-tests"
RTOL, ATOL = 1e-3, 1e-7
# Cases whose expected outputs need a looser tolerance, and why.
TOLERANCES = {
    # Random-number ops: outputs are compared by shape/dtype only below.
}


def _read_pb(path: Path, kind):
    proto = kind()
    proto.ParseFromString(path.read_bytes())
    return proto


def _to_value(path: Path, type_proto: onnx.TypeProto):
    """Read an input_N.pb/output_N.pb as the value type the model declares."""
    which = type_proto.WhichOneof("value")
    if which == "sequence_type":
        seq = _read_pb(path, onnx.SequenceProto)
        return [numpy_helper.to_array(t) for t in seq.tensor_values]
    if which == "optional_type":
        opt = _read_pb(path, onnx.OptionalProto)
        if opt.HasField("tensor_value"):
            return numpy_helper.to_array(opt.tensor_value)
        if opt.HasField("sequence_value"):
            return [numpy_helper.to_array(t) for t in opt.sequence_value.tensor_values]
        return None
    if which == "map_type":
        raise NotImplementedError("map values")
    return numpy_helper.to_array(_read_pb(path, onnx.TensorProto))


def case_data(case: Path, proto: onnx.ModelProto) -> tuple[dict, dict]:
    """(inputs, expected outputs) of a node test case's first data set, by value name (inputs
    without a file, e.g. omitted optional ones, are left out)."""
    data_dir = case / "test_data_set_0"
    inputs = {vi.name: _to_value(data_dir / f"input_{i}.pb", vi.type) for i, vi in enumerate(proto.graph.input)
              if (data_dir / f"input_{i}.pb").exists()}
    expected = {vi.name: _to_value(data_dir / f"output_{i}.pb", vi.type) for i, vi in enumerate(proto.graph.output)}
    return inputs, expected


def _compare(name: str, got, want, rtol: float, atol: float) -> str | None:
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{name}: sequence length/type differs"
        for i, (g, w) in enumerate(zip(got, want)):
            if (err := _compare(f"{name}[{i}]", g, w, rtol, atol)) is not None:
                return err
        return None
    if want is None:
        return None if got is None else f"{name}: expected an empty optional"
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape} != expected {want.shape}"
    if want.dtype.kind in "OUS":
        return None if np.array_equal(got.astype(object), want.astype(object)) else f"{name}: strings differ"
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        err = np.nanmax(np.abs(g - w)) if g.size else 0.0
        return f"{name}: max abs error {err:.3g} beyond rtol {rtol:g} / atol {atol:g}"
    return None


def run_case(case: Path) -> tuple[str, str]:
    """('pass'|'fail'|'error', reason) for one node test case."""
    model_path = case / "model.onnx"
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
        inputs, expected = case_data(case, proto)
        artifact = parse_onnx(model_path)
        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(artifact.model, Path(tmp) / "m.trtir", artifact.meta)
            loaded = load_artifact(Path(tmp) / "m.trtir")
            runner = ReferenceRunner(loaded.model, threads=1)
            outputs = runner.run(inputs)
        rtol, atol = TOLERANCES.get(case.name, (RTOL, ATOL))
        for name, want in expected.items():
            if (err := _compare(name, outputs.get(name), want, rtol, atol)) is not None:
                return "fail", f"[{runner.backend}] {err}"
        return "pass", runner.backend
    except TrtcError as exc:
        return "error", f"trtc: {exc.one_line()}"[:300]
    except Exception as exc:  # a case's failure is data for the report, whatever its type
        text = str(exc).strip().splitlines()
        return "error", f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def cases(filter_text: str = "") -> list[Path]:
    return sorted(p for p in SUITE.iterdir() if (p / "model.onnx").exists() and filter_text in p.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    if not SUITE.is_dir():
        print(f"skipped: the ONNX node test suite is missing at {SUITE}")
        return 0
    selected = cases(args.filter)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(zip((c.name for c in selected), pool.map(run_case, selected, chunksize=8)))
    elapsed = time.perf_counter() - start
    passed = sum(1 for s, _ in results.values() if s == "pass")
    by_ref = sum(1 for s, b in results.values() if s == "pass" and b == "onnx.reference")
    print(f"{passed} passed, {len(results) - passed} failed ({by_ref} served by onnx.reference) "
          f"of {len(results)} in {elapsed:.0f}s")
    for name, (status, reason) in sorted(results.items()):
        if status != "pass":
            print(f"  {name}: {reason}")
    if args.write_results:
        from results import write_section

        lines = [f"{passed} of {len(results)} cases pass: {passed - by_ref} served by onnxruntime, {by_ref} "
                 f"through the onnx.reference fallback; wall time {elapsed:.0f}s with {args.jobs} processes.",
                 "Known failures and their reasons are listed in tests/test_node_suite.py.", "",
                 "| case | reason |", "|---|---|"]
        lines += [f"| {n} | {r.replace('|', '/')} |" for n, (s, r) in sorted(results.items()) if s != "pass"]
        write_section("ONNX node test suite (parse, save, load, CPU reference)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
