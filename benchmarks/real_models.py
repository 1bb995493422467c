"""Every real production model of ../shared/models/real through every trtc stage, as a user runs
them (one `trtc` process per stage, wall time including start-up), and TensorRT-RTX's own ONNX
parser + build of the same file with the same profile, in the same run:

    parse           trtc parse M.onnx
    run             trtc run M.trtir --input M.npz          (compares with the npz's outputs)
    verify          trtc optimize M.trtir --verify --input M.npz
    build fp32      trtc build M.onnx --shapes PROFILE --no-cache
    build fp16      trtc build M.onnx --fp16 --calib M.npz --shapes PROFILE --no-cache
    parser          OnnxParser + build_serialized_network (imports excluded)
    trtc in-process parse + optimize + build in one process, imports excluded (as the parser)

    python benchmarks/real_models.py [--filter NAME] [--write-results]

A stage that fails shows its one-line error. The build goal: trtc builds wherever the parser
does, and its in-process build time over all models is within 1.5x of the parser's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "models" / "real"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_vs_parser import manifest_profile  # noqa: E402
from build_vs_parser import run as run_in_process  # noqa: E402


def _trtc(*args: object) -> dict:
    """One CLI stage: wall seconds, or the error line it printed."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trtc", *map(str, args)], capture_output=True, text=True,
                          timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()
        return {"error": f"exit {proc.returncode}: {lines[-1][:160]}", "traceback": "Traceback" in proc.stderr}
    return {"seconds": seconds}


def measure(entry: dict, work: Path) -> dict:
    model, npz = REAL / entry["file"], REAL / entry["npz"]
    shapes = [a for spec in entry.get("build_shapes") or [] for a in ("--shapes", spec)]
    trtir = work / f"{entry['name']}.trtir"
    row = {"parse": _trtc("parse", model, "-o", trtir)}
    source = trtir if "seconds" in row["parse"] else model
    row["run"] = _trtc("run", source, "--input", npz)
    row["verify"] = _trtc("optimize", source, "-o", work / f"{entry['name']}.opt.trtir", "--verify", "--input", npz)
    row["build fp32"] = _trtc("build", model, "-o", work / f"{entry['name']}.plan", "--no-cache", *shapes)
    row["build fp16"] = _trtc("build", model, "-o", work / f"{entry['name']}.fp16.plan", "--no-cache", "--fp16",
                              "--calib", npz, *shapes)
    target = SimpleNamespace(path=model)
    row["parser"] = run_in_process("parser", target, manifest_profile(entry), False)
    row["trtc in-process"] = run_in_process("trtc", target, manifest_profile(entry), False)
    return row


STAGES = ("parse", "run", "verify", "build fp32", "build fp16", "parser", "trtc in-process")


def _cell(result: dict) -> str:
    if "seconds" in result:
        layers = f", {result['layers']} layers" if "layers" in result else ""
        return f"{result['seconds']:.2f}s{layers}"
    return f"FAILED ({result['error']})" + (" traceback!" if result.get("traceback") else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    manifest = REAL / "manifest.json"
    if not manifest.is_file():
        print(f"missing {manifest}: the real models live in ../shared/models/real", file=sys.stderr)
        return 2
    entries = [e for e in json.loads(manifest.read_text()) if args.filter in e["name"]]
    missing = [e["name"] for e in entries if not (REAL / e["file"]).is_file()]
    entries = [e for e in entries if e["name"] not in missing]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            row = measure(entry, Path(tmp))
            rows.append((entry["name"], row))
            print(entry["name"], json.dumps(row), flush=True)
    lines = ["One `trtc` process per stage (wall time, start-up included); the parser and trtc in-process are "
             "timed around their work, imports excluded. Profiles from manifest.json.", "",
             "| model | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    lines += [f"| {name} | " + " | ".join(_cell(row[s]) for s in STAGES) + " |" for name, row in rows]
    ok = {s: sum("seconds" in row[s] for _, row in rows) for s in STAGES}
    parser_ok = [row for _, row in rows if "seconds" in row["parser"]]
    wherever = all("seconds" in row["build fp32"] and "seconds" in row["build fp16"] for row in parser_ok)
    both = [row for row in parser_ok if "seconds" in row["trtc in-process"]]
    trtc_s = sum(row["trtc in-process"]["seconds"] for row in both)
    parser_s = sum(row["parser"]["seconds"] for row in both)
    tracebacks = sum(bool(row[s].get("traceback")) for _, row in rows for s in STAGES)
    lines += ["", "Successes: " + ", ".join(f"{s} {ok[s]}/{len(rows)}" for s in STAGES) + ".",
              f"trtc builds (fp32 and fp16) wherever the parser builds: {'yes' if wherever else 'no'}. "
              f"Tracebacks: {tracebacks}.",
              f"Build time where both build, in-process: trtc {trtc_s:.1f}s, parser {parser_s:.1f}s, ratio "
              f"{trtc_s / parser_s if parser_s else float('nan'):.2f}x (goal <= 1.5x)."]
    if missing:
        lines.append(f"Listed in manifest.json but absent from {REAL}: {', '.join(missing)}.")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section("Real production models (benchmarks/real_models.py)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
