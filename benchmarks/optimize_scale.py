"""Optimizer scale: peak memory on the 4.8 GB external-data model, and time against node count
on many-layer models (1x, 2x, 4x layers), each in a fresh process.

    python benchmarks/optimize_scale.py [--big PATH] [--layers 100] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKER = REPO.parent / "shared" / "tools" / "make_big_model.py"
CACHE = Path(tempfile.gettempdir()) / "trtc-bench"

CHILD = r"""
import json, sys, time
from trtc.frontend import parse_onnx
from trtc.ir import save_artifact
from trtc.passes.pipeline import optimize, optimized_meta
src, dst = sys.argv[1:3]
start = time.perf_counter()
artifact = parse_onnx(src)
parsed = time.perf_counter()
report = optimize(artifact.model)
optimized = time.perf_counter()
save_artifact(artifact.model, dst, optimized_meta(artifact.meta, report, {}))
end = time.perf_counter()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"parse_s": parsed - start, "optimize_s": optimized - parsed, "save_s": end - optimized,
                  "nodes_before": report.nodes_before, "nodes_after": report.nodes_after, "peak_rss": hwm * 1024}))
"""


def measure(model: Path) -> dict:
    out = model.with_suffix(".opt.trtir")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(out)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make(path: Path, *args: str) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(MAKER), "--out", str(path), *args], check=True, capture_output=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=Path, help="the default make_big_model.py model (generated if absent)")
    ap.add_argument("--layers", type=int, default=100, help="layers of the 1x many-layer model")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    if not MAKER.exists():
        print(f"skipped: {MAKER} is missing")
        return 0
    big = args.big or make(CACHE / "big" / "model.onnx")
    weights = sum(p.stat().st_size for p in big.parent.glob("*.data"))
    big_row = measure(big)
    lines = [f"Big model ({weights / 1e9:.2f} GB external data): {big_row['nodes_before']} -> "
             f"{big_row['nodes_after']} nodes; parse {big_row['parse_s']:.2f}s, optimize {big_row['optimize_s']:.2f}s,"
             f" save {big_row['save_s']:.2f}s; peak RSS {big_row['peak_rss'] / 2**20:.0f} MiB = "
             f"{big_row['peak_rss'] / weights:.1%} of the weight bytes (goal < 25%).", "",
             "| layers | nodes (parsed) | nodes (optimized) | optimize s | s per 1k nodes | vs 1x |",
             "|---|---|---|---|---|---|"]
    tiny = ["--hidden", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "160", "--vocab", "500", "--seq-len", "64"]
    base = None
    for factor in (1, 2, 4):
        layers = args.layers * factor
        row = measure(make(CACHE / f"many-{layers}" / "model.onnx", "--layers", str(layers), *tiny))
        per_k = row["optimize_s"] / row["nodes_before"] * 1000
        base = base or row["optimize_s"]
        lines.append(f"| {layers} | {row['nodes_before']} | {row['nodes_after']} | {row['optimize_s']:.2f} | "
                     f"{per_k:.3f} | {row['optimize_s'] / base:.2f}x |")
    lines += ["", "Linear growth shows as a constant time per 1k nodes (2x and 4x the nodes: ~2x and ~4x the time)."]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section("Optimizer scale (benchmarks/optimize_scale.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
