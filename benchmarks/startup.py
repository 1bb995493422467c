"""Start-up time of the CLI: `trtc --help`, a command's help and `trtc inspect MODEL.trtir`,
next to `python -c "import click"` (the floor any click CLI pays) in the same run.

    python benchmarks/startup.py [--model PATH.onnx] [--runs N] [--repo CHECKOUT] [--write-results]

Each measurement is the wall time of a fresh process (median and min of N runs, after one
untimed run to warm the file cache). The .trtir is parsed from --model (default
../shared/models/resnet-ts-op17.onnx; examples/make_cnn.py's model when ../shared is absent).
--repo times another checkout of trtc with this venv (e.g. a worktree of an older commit).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "resnet-ts-op17.onnx"


def wall_times(argv: list[str], runs: int, cwd: Path) -> list[float]:
    """Seconds for each of `runs` fresh processes; the first, untimed run warms the file cache."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - start)
    return times


def trtc_argv(repo: Path | None) -> list[str]:
    # The console script is what users run; another checkout is reached with -m from its root
    # (the working directory comes first on sys.path, ahead of the editable install).
    script = Path(sys.executable).parent / "trtc"
    return [str(script)] if repo is None and script.exists() else [sys.executable, "-m", "trtc"]


def make_trtir(model: Path | None, folder: Path, trtc: list[str], cwd: Path) -> tuple[Path, str]:
    """A .trtir to inspect, and the name of the model it came from."""
    if model is None and DEFAULT_MODEL.exists():
        model = DEFAULT_MODEL
    if model is None:
        sys.path.insert(0, str(REPO / "examples"))
        import onnx

        from make_cnn import make_cnn

        model = folder / "cnn.onnx"
        onnx.save(make_cnn(), model)
    out = folder / f"{model.stem}.trtir"
    subprocess.run([*trtc, "parse", str(model), "-o", str(out)], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return out, model.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model whose .trtir is inspected.")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--repo", type=Path, help="Time this checkout of trtc instead of this one.")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    cwd = (args.repo or REPO).resolve()
    trtc = trtc_argv(args.repo)
    with tempfile.TemporaryDirectory() as tmp:
        trtir, model_name = make_trtir(args.model, Path(tmp), trtc, cwd)
        cases = [
            ('python -c "import click"', [sys.executable, "-c", "import click"]),
            ('python -c "import onnx_ir"', [sys.executable, "-c", "import onnx_ir"]),
            ("trtc --help", [*trtc, "--help"]),
            ("trtc optimize --help", [*trtc, "optimize", "--help"]),
            ("trtc build --help", [*trtc, "build", "--help"]),
            (f"trtc inspect {trtir.name}", [*trtc, "inspect", str(trtir)]),
        ]
        rows = []
        for label, argv in cases:
            times = wall_times(argv, args.runs, cwd)
            rows.append((label, statistics.median(times), min(times)))
            print(f"{label:36} median {statistics.median(times):.3f} s  min {min(times):.3f} s", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        f"Wall time of a fresh process, median and min of {args.runs} runs after one warm-up; "
        f"the .trtir is {model_name} parsed. Checkout at {commit or 'unknown'} (plus uncommitted changes); "
        "the `import` rows are the floors: click for any help, onnx_ir for anything that reads a model.",
        "",
        "| command | median s | min s |",
        "|---|---:|---:|",
        *[f"| `{label}` | {median:.3f} | {low:.3f} |" for label, median, low in rows],
    ]
    text = "\n".join(lines)
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section

        write_section("CLI start-up (benchmarks/startup.py)", text)
    else:
        print("\n" + text)


if __name__ == "__main__":
    main()
