"""Scale benchmark for `trtc parse` and `trtc inspect` on a model with > 2 GB of external data,
against `onnx.load(..., load_external_data=True)` in the same run.

    python benchmarks/parse_big.py [--model PATH] [--write-results]

Without --model, writes the default model of ../shared/tools/make_big_model.py (1.21 B
parameters, 4.8 GB fp32) into a cache folder first (about 30 s, once). Each measurement
runs in its own process; peak RSS is that process's maximum resident set.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAKER = REPO.parent / "shared" / "tools" / "make_big_model.py"
CACHE = Path(os.environ.get("TRTC_BENCH_CACHE", Path(tempfile.gettempdir()) / "trtc-bench"))

# VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's at fork time.
CHILD = """
import sys, time, json
start = time.perf_counter()
{body}
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss": hwm * 1024}}))
"""


def measure(body: str) -> dict:
    """Wall time (of `body` alone, imports excluded) and peak RSS of a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(body=body)], capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def cli_time(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trtc", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    model = args.model
    if model is None:
        if not MAKER.exists():
            print(f"skipped: {MAKER} is missing")
            return 0
        model = CACHE / "big" / "model.onnx"
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(MAKER), "--out", str(model)], check=True)
    data_bytes = sum(p.stat().st_size for p in model.parent.glob("*.data"))
    out = model.parent / "model.trtir"
    # Warm the page cache for both contenders alike.
    measure(f"import onnx; onnx.load({str(model)!r}, load_external_data=True)")
    ref = measure(f"import onnx; onnx.load({str(model)!r}, load_external_data=True)")
    parse = measure(
        "from trtc.frontend import parse_onnx; from trtc.ir import save_artifact\n"
        f"a = parse_onnx({str(model)!r}); save_artifact(a.model, {str(out)!r}, a.meta)"
    )
    inspect_cli = cli_time("inspect", str(out), "--json")
    parse_cli = cli_time("parse", str(model), "-o", str(out))
    rows = [
        ("onnx.load(load_external_data=True)", ref["seconds"], ref["peak_rss"]),
        ("trtc parse (library: parse + save .trtir)", parse["seconds"], parse["peak_rss"]),
    ]
    lines = [
        f"Model: {model} ({data_bytes / 1e9:.2f} GB of external data). Page cache warm for both.",
        "",
        "| what | wall time (s) | ratio to onnx.load | peak RSS (MB) | RSS / weight bytes |",
        "|---|---|---|---|---|",
    ]
    for name, sec, rss in rows:
        lines.append(f"| {name} | {sec:.2f} | {sec / ref['seconds']:.3f}x | {rss / 1e6:.0f} | "
                     f"{rss / data_bytes:.1%} |")
    lines += ["", f"`trtc parse` CLI end to end (process start and imports included): {parse_cli:.2f} s; "
              f"`trtc inspect --json` of the artifact: {inspect_cli:.2f} s; artifact size "
              f"{out.stat().st_size / 1e3:.0f} KB (weights are referenced, not copied).",
              "", "Goals (issue 2): parse peak RSS <= 10% of the weight bytes and wall time <= 0.25x "
              "onnx.load; inspect under 2 s."]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section("Parse scale: 4.8 GB external-data model (benchmarks/parse_big.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
