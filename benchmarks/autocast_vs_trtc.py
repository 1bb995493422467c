"""ModelOpt AutoCast beside trtc's accuracy-driven fp16 (issue 14), in the same run, on the same calibration
data: the FLOP share each keeps in fp16 at the same accuracy.

    python benchmarks/autocast_vs_trtc.py [--modelopt-python /tmp/mo/bin/python] [--filter NAME] [--write-results]

For each of benchmarks/accuracy_search.py's real models: AutoCast (`convert_to_mixed_precision`, fp16) with its
defaults (no calibration data: random inputs) and with the model's .npz inputs as calibration data, in
ModelOpt's own virtual environment (it pins onnx 1.21), timed around the call; then trtc --fp16 --accuracy
cosine=X with X = that AutoCast model's achieved cosine (floored to 6 digits), calibrated on the same .npz.
Every exported model is judged the same way: its worst output's cosine under the independent emulation of
tests/test_accuracy_search.py (every fp16 tensor by ONNX type inference rounded, ops in fp32) against the
.npz's fp32 outputs, and its share of Conv/ConvTranspose/MatMul/Gemm FLOPs (trtc's node_flops, shapes by
ONNX shape inference at the .npz's input shapes) whose output is fp16.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy_search import MODELS, REAL, emulated_cosine, typed  # noqa: E402
from quantize_vs_modelopt import reference  # noqa: E402

TITLE = "fp16 at the same accuracy: ModelOpt AutoCast vs trtc --accuracy (benchmarks/autocast_vs_trtc.py)"
HEAVY = ("Conv", "ConvTranspose", "MatMul", "Gemm")

CHILD = r"""
import json, sys, time
import onnx
src, dst, calib = sys.argv[1:4]
from modelopt.onnx.autocast import convert_to_mixed_precision
start = time.perf_counter()
model = convert_to_mixed_precision(src, low_precision_type="fp16", calibration_data=calib or None)
seconds = time.perf_counter() - start
onnx.save(model, dst)
print(json.dumps({"seconds": seconds}))
"""


def fp16_share(path: Path, inputs: dict[str, np.ndarray]) -> float | None:
    """Share of the heavy nodes' FLOPs whose output is fp16, by ONNX shape inference at the inputs' shapes;
    None where inference leaves a heavy node's output without a static shape."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto

    from trtc.precision.flops import node_flops

    proto = onnx.load(str(path))
    for value in proto.graph.input:
        if value.name in inputs:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, inputs[value.name].shape):
                dim.Clear()
                dim.dim_value = size
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    graph = proto.graph
    infos = [*graph.input, *graph.output, *graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in infos}
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in infos
              if v.type.tensor_type.HasField("shape")
              and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
    model = ir.serde.deserialize_model(proto)
    nodes = [n for n in model.graph if n.op_type in HEAVY]
    missing = [n.name for n in nodes if n.outputs[0].name not in shapes]
    if missing:
        print(f"{path.name}: no inferred shape for {len(missing)} heavy node(s), e.g. {missing[0]}", flush=True)
        return None
    flops = {n.name: node_flops(n, shapes) for n in nodes}
    low = sum(flops[n.name] for n in nodes if types.get(n.outputs[0].name) == TensorProto.FLOAT16)
    return low / max(sum(flops.values()), 1)


def autocast(name: str, python: str, calibrated: bool, folder: Path, timeout: float) -> dict:
    inputs, _ = reference(name)
    calib, dst = folder / "calib.npz", folder / f"autocast_{'calib' if calibrated else 'default'}.onnx"
    np.savez(calib, **inputs)
    done = subprocess.run([python, "-c", CHILD, str(REAL / f"{name}.onnx"), str(dst), str(calib) if calibrated else ""],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1][:120] if lines else str(done.returncode)}
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return {"cosine": emulated_cosine(name, dst), "share": fp16_share(dst, inputs), "seconds": seconds}


def trtc_at(name: str, target: float, folder: Path) -> dict:
    inputs, _ = reference(name)
    out = folder / "trtc.onnx"
    report, seconds = typed(name, (f"cosine={target}",), out)
    search = report["search"]
    return {"target": target, "cosine": emulated_cosine(name, out), "share": fp16_share(out, inputs),
            "reported_share": search["heavy_flop_share"]["after"], "moved": len(search["moved"]),
            "search_s": search["seconds"], "seconds": seconds}


def rows_for(name: str, python: str, timeout: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for calibrated in (False, True):
            ac = autocast(name, python, calibrated, folder, timeout)
            row = {"model": name, "autocast": "defaults + .npz calibration" if calibrated else "defaults",
                   "ac": ac, "trtc": None}
            if "error" not in ac:
                row["trtc"] = trtc_at(name, math.floor(ac["cosine"] * 1e6) / 1e6, folder)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["cosine = the worst output's, of the exported ONNX under the independent fp16 emulation "
             "(tests/test_accuracy_search.py), against the .npz's fp32 outputs; share = Conv/ConvTranspose/"
             "MatMul/Gemm FLOPs with an fp16 output (ONNX type inference on the exported model). trtc's target "
             "is AutoCast's cosine floored to 6 digits; its own reported share (its simulation's graph) in "
             "brackets. Times: AutoCast around convert_to_mixed_precision; trtc its whole optimize from the "
             ".onnx (search alone in brackets).", "",
             "| model | AutoCast | AutoCast cosine | fp16 share | time | trtc --accuracy cosine= | trtc cosine "
             "| fp16 share | nodes moved | time | trtc share - AutoCast's |", "|" + "---|" * 11]
    def pct(share: float | None) -> str:
        return "n/a (shapes not inferred)" if share is None else f"{share:.1%}"

    def gap(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{(a - b) * 100:+.1f} pts"

    for r in rows:
        ac, t = r["ac"], r["trtc"]
        if "error" in ac:
            lines.append(f"| {r['model']} | {r['autocast']} | failed: {ac['error']} | | | | | | | | |")
            continue
        ok = "" if t["cosine"] >= t["target"] else " (misses)"
        lines.append(f"| {r['model']} | {r['autocast']} | {ac['cosine']:.6f} | {pct(ac['share'])} | "
                     f"{ac['seconds']:.1f}s | {t['target']:.6f} | {t['cosine']:.6f}{ok} | {pct(t['share'])} "
                     f"({t['reported_share']:.1%}) | {t['moved']} | {t['seconds']:.1f}s ({t['search_s']:.1f}s) | "
                     f"{gap(t['share'], ac['share'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelopt-python", default="/tmp/mo/bin/python",
                        help="python of a virtual environment with nvidia-modelopt[onnx] 0.47")
    parser.add_argument("--filter", default="")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [r for name in MODELS if args.filter in name and (REAL / f"{name}.onnx").is_file()
            for r in rows_for(name, args.modelopt_python, args.timeout)]
    text = table(rows)
    print(text)
    print(f"({time.perf_counter() - start:.0f}s)")
    if args.write_results:
        from results import write_section

        write_section(TITLE, text)


if __name__ == "__main__":
    main()
