"""Converter coverage against onnx-tensorrt: which of the 158 ops it supports (REFERENCE.md
section 3) have a trtc converter, and which ops trtc lowers beyond that list. Read from the
registry alone: no TensorRT needed.

    python benchmarks/op_coverage.py [--write-results]
"""

from __future__ import annotations

import argparse
import sys

import onnx

from trtc.lower.registry import load_converters

from build_node_suite import onnx_tensorrt_ops


def covered_ops() -> set[str]:
    # Ops the parser canonicalizes away never reach the builder: they count as covered.
    canonicalized = {"Constant", "Upsample", "Dropout", "Scatter"}
    return {op for (domain, op) in load_converters() if domain == ""} | canonicalized


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    reference = onnx_tensorrt_ops()
    ours = covered_ops()
    missing = sorted(reference - ours)
    beyond = sorted(op for op in ours - reference if onnx.defs.has(op))
    lines = [f"{len(reference) - len(missing)} of {len(reference)} ops onnx-tensorrt supports have a trtc converter "
             f"(or are canonicalized away by the parser); {len(beyond)} more ONNX ops are lowered beyond that list.",
             "", f"Missing ({len(missing)}): {', '.join(missing) or 'none'}.", "",
             f"Beyond onnx-tensorrt ({len(beyond)}): {', '.join(beyond) or 'none'}."]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section("Op coverage vs onnx-tensorrt (benchmarks/op_coverage.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
