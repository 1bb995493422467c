"""What building in a child process costs (`trtc/lower/isolate.py`): the same engine built in this
process, in a forked child (trtc's default) and in a spawned interpreter (the alternative: a fresh
Python that imports trtc and TensorRT and loads the IR from a .trtir), on small models.

    python benchmarks/isolate_overhead.py [--rounds N] [--write-results]

Each model is parsed and optimized once and saved as a .trtir; every build then starts from a fresh
load of it (the lowering legalizes the model in place), timed around the build alone. The three ways
take turns within each round (the machine is shared: same load for each); medians of N rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "models"
# name, path (None: the MLP made here), profile as --shapes gives it
MODELS = [("mlp (4 nodes)", None, "x:1x16,4x16,8x16"),
          ("ppocr_cls", SHARED / "real" / "ppocr_cls.onnx", "x:1x3x48x192,6x3x48x192,6x3x48x192"),
          ("magika", SHARED / "real" / "magika.onnx", "bytes:1x2048,4x2048,64x2048"),
          ("bert-ts-op17", SHARED / "bert-ts-op17.onnx",
           "input_ids:1x8,2x16,4x32 attention_mask:1x8,2x16,4x32 token_type_ids:1x8,2x16,4x32")]

SPAWNED = """
import sys, time
start = time.perf_counter()
from trtc.ir import load_artifact
from trtc.lower.backend import load_backend
from trtc.lower.build import BuildOptions, build_engine
from trtc.lower.profiles import parse_profiles
artifact = load_artifact(sys.argv[1])
build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
             BuildOptions(profiles=parse_profiles(sys.argv[2].split(), [])))
print(time.perf_counter() - start)
"""


def make_mlp(folder: Path) -> Path:
    """x[batch, 16] -> Gemm -> Relu -> MatMul -> Tanh -> y[batch, 4]: the fuzzer's seed (tests/fuzzing/seeds.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fuzzing.seeds import mlp

    path = folder / "mlp.onnx"
    path.write_bytes(mlp().model)
    return path


def prepared(model: Path, shapes: str, folder: Path) -> Path:
    """The optimized .trtir every build of `model` starts from."""
    from trtc.ir import save_artifact
    from trtc.lower.profiles import parse_profiles
    from trtc.pipeline import BuildOptions, open_model, prepare_for_lowering

    artifact = prepare_for_lowering(open_model(model), BuildOptions(profiles=parse_profiles(shapes.split(), [])))
    path = folder / f"{model.stem}.trtir"
    save_artifact(artifact.model, path, artifact.meta)
    return path


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_build(trtir: Path, shapes: str, isolate: bool) -> tuple[float, float]:
    from trtc.ir import load_artifact
    from trtc.lower.backend import load_backend
    from trtc.lower.isolate import run_build
    from trtc.lower.profiles import parse_profiles
    from trtc.pipeline import BuildOptions

    artifact = load_artifact(trtir)
    options = BuildOptions(profiles=parse_profiles(shapes.split(), []), isolate=isolate)
    backend = load_backend("tensorrt-rtx")
    start, cpu = time.perf_counter(), cpu_seconds()
    run_build(artifact.model, artifact.meta, backend, options, output=trtir.with_suffix(".plan"))
    return time.perf_counter() - start, cpu_seconds() - cpu


def spawned_build(trtir: Path, shapes: str) -> tuple[float, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    subprocess.run([sys.executable, "-c", SPAWNED, str(trtir), shapes], check=True, capture_output=True)
    return time.perf_counter() - start, cpu_seconds() - cpu


def release_seconds(rounds: int) -> float:
    """What `run_build` spends giving freed memory back first (`release_memory`), in this process."""
    from trtc.memory import release_memory

    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        release_memory()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(rounds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, path, shapes in MODELS:
            if path is not None and not path.exists():
                print(f"skipped {name}: {path} is missing")
                continue
            trtir = prepared(path or make_mlp(folder), shapes, folder)
            timed_build(trtir, shapes, isolate=False)  # warm: imports, TensorRT's first builder
            times: dict[str, list[tuple[float, float]]] = {"in-process": [], "fork": [], "spawn": []}
            for _ in range(rounds):
                times["in-process"].append(timed_build(trtir, shapes, isolate=False))
                times["fork"].append(timed_build(trtir, shapes, isolate=True))
                times["spawn"].append(spawned_build(trtir, shapes))
            row = {"model": name, **{k: statistics.median(w for w, _ in v) for k, v in times.items()},
                   **{f"{k} cpu": statistics.median(c for _, c in v) for k, v in times.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = measure(args.rounds)
    release = release_seconds(args.rounds)
    lines = ["| model | in-process: wall s | CPU s | forked child: wall s | CPU s | overhead: wall | CPU | "
             "spawned interpreter: wall s | CPU s | overhead: wall | CPU |", "|---|" + "---:|" * 10]
    for r in rows:
        cells = [f"{r['in-process']:.3f}", f"{r['in-process cpu']:.3f}"]
        for way in ("fork", "spawn"):
            cells += [f"{r[way]:.3f}", f"{r[f'{way} cpu']:.3f}", f"{(r[way] - r['in-process']) * 1e3:+.0f} ms",
                      f"{(r[f'{way} cpu'] - r['in-process cpu']) * 1e3:+.0f} ms"]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    text = "\n".join([
        "The same engine (TensorRT-RTX, fp32, the profile given) built in this process, in a forked child "
        "(trtc's default since issue 15: a crash inside TensorRT is one line, not the end of the process) and "
        "in a spawned interpreter (the alternative: imports trtc and TensorRT again and loads the .trtir), "
        f"timed around the build (wall time, and the CPU time of this process and its children: the machine is "
        f"shared, and CPU time is what the load does not change); medians of {args.rounds} rounds, the three "
        f"taking turns. Load average at the start: {load:.1f}.", "", *lines, "",
        "fork costs the fork itself and the copy-on-write faults of the child; spawn costs an interpreter "
        "importing onnx_ir (sympy), numpy and TensorRT, which is why the build forks. Both trtc columns include "
        "`release_memory` (malloc_trim, and gc.collect where the process holds 1 GB or more, before TensorRT "
        f"copies the weights): {release * 1e3:.1f} ms in this process, median."])
    print(text)
    if args.write_results:
        from results import write_section

        write_section("Isolated build overhead (benchmarks/isolate_overhead.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
