"""Start-up time of the CLI: `trtc --help`, commands' help and `trtc inspect MODEL.trtir`, next to
`python -c "import click"` (the floor of any click CLI) and `import onnx_ir` (the floor of anything
that reads a model), all in the same run.

    python benchmarks/startup.py [--model PATH.onnx] [--runs N] [--baseline CHECKOUT] [--write-results]

Each measurement is the wall time of a fresh process: median and min of N runs after one untimed
run that warms the file cache. The .trtir is parsed from --model (default
../shared/models/resnet-ts-op17.onnx; examples/make_cnn.py's model when ../shared is absent).
--baseline times another checkout of trtc (e.g. a worktree of an older commit) with this venv,
interleaved run by run with this one so that both see the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "resnet-ts-op17.onnx"


def trtc_argv() -> list[str]:
    # `python -m trtc` from a checkout's root imports that checkout (the working directory comes
    # first on sys.path, ahead of the editable install); the console script adds nothing to time.
    return [sys.executable, "-m", "trtc"]


def wall_times(runs: list[tuple[list[str], Path]], n: int) -> list[list[float]]:
    """Seconds of `n` fresh processes for each (argv, cwd), interleaved; one untimed run first."""
    times: list[list[float]] = [[] for _ in runs]
    for i in range(n + 1):
        for (argv, cwd), out in zip(runs, times):
            start = time.perf_counter()
            subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if i:
                out.append(time.perf_counter() - start)
    return times


def make_trtir(model: Path | None, folder: Path) -> tuple[Path, str]:
    """A .trtir to inspect (written by this checkout; its format is read by older ones too)."""
    if model is None and DEFAULT_MODEL.exists():
        model = DEFAULT_MODEL
    if model is None:
        sys.path.insert(0, str(REPO / "examples"))
        import onnx

        from make_cnn import make_cnn

        model = folder / "cnn.onnx"
        onnx.save(make_cnn(), model)
    out = folder / f"{model.stem}.trtir"
    subprocess.run([*trtc_argv(), "parse", str(model), "-o", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return out, model.name


def commit_of(checkout: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model whose .trtir is inspected.")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--baseline", type=Path, help="Another checkout of trtc to time alongside this one.")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    checkouts = [REPO] + ([args.baseline.resolve()] if args.baseline else [])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        trtir, model_name = make_trtir(args.model, Path(tmp))
        floors = [('python -c "import click"', [sys.executable, "-c", "import click"]),
                  ('python -c "import onnx_ir"', [sys.executable, "-c", "import onnx_ir"])]
        cases = [("trtc --help", ["--help"]), ("trtc optimize --help", ["optimize", "--help"]),
                 ("trtc run --help", ["run", "--help"]), (f"trtc inspect {trtir.name}", ["inspect", str(trtir)])]
        rows = []
        for label, argv in floors:
            (times,) = wall_times([(argv, REPO)], args.runs)
            rows.append((label, [(statistics.median(times), min(times))]))
        for label, argv in cases:
            per_checkout = wall_times([([*trtc_argv(), *argv], c) for c in checkouts], args.runs)
            rows.append((label, [(statistics.median(t), min(t)) for t in per_checkout]))
        for label, results in rows:
            print(f"{label:36} " + "   ".join(f"median {m:.3f} s min {lo:.3f} s" for m, lo in results), flush=True)

    names = [f"this checkout ({commit_of(REPO)})"]
    if args.baseline:
        names.append(f"baseline ({commit_of(args.baseline)})")
    header = "| command | " + " | ".join(f"{n}: median s | min s" for n in names) + " |"
    lines = [
        f"Wall time of a fresh process, median and min of {args.runs} runs after one warm-up"
        + (", the checkouts interleaved run by run" if args.baseline else "")
        + f"; the .trtir is {model_name} parsed; load average {load:.1f} at the start (on a busy machine "
        "compare rows of one run, not runs). The `import` rows are the floors: click for any help, "
        "onnx_ir for anything that reads a model.",
        "",
        header,
        "|---|" + "---:|---:|" * len(names),
        *[f"| `{label}` | " + " | ".join(f"{m:.3f} | {lo:.3f}" for m, lo in results)
          + " | |" * (len(names) - len(results)) + " |" for label, results in rows],
    ]
    text = "\n".join(lines)
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section

        write_section("CLI start-up (benchmarks/startup.py)", text)
    print("\n" + text)


if __name__ == "__main__":
    main()
