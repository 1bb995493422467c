"""Fuzz trtc for a given time (issue 15): seeded mutants of small valid models through `trtc parse`,
then `run`, `optimize` and `build` on whatever parses (tests/fuzzing). Prints mutants/s, the calls by
stage and outcome, the outcomes by mutator, and every crash with the seed that reproduces it
(`python tests/fuzzing --base NAME --seed N`); --write records them in benchmarks/RESULTS.md.

    python benchmarks/fuzz.py --seconds 600 [--workers 2] [--corpus] [--write]

Goal: no traceback, no signal, no hang, exit codes 0/1/2 only, no artifact left by a failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzing.driver import Tally, campaign  # noqa: E402
from fuzzing.mutate import MUTATORS  # noqa: E402
from fuzzing.seeds import builtin_seeds, corpus_seeds  # noqa: E402

STAGES = ("parse", "run", "optimize", "build")
VERDICTS = ("ok", "refused", "crash")


def _worker(args: argparse.Namespace, index: int, deadline: float) -> dict:
    bases = builtin_seeds() + (corpus_seeds() if args.corpus else [])
    seeds = range(args.start + index, sys.maxsize, args.workers)
    with tempfile.TemporaryDirectory(prefix="trtc-fuzz-") as work:
        tally = campaign(seeds, bases, Path(work), deadline=deadline, stack=args.stack,
                         optimize_share=args.optimize_share, build_share=args.build_share, timeout=args.timeout)
    return tally.to_json()


def run(args: argparse.Namespace) -> Tally:
    deadline = time.monotonic() + args.seconds
    total = Tally()
    with ProcessPoolExecutor(args.workers) as pool:
        for result in [pool.submit(_worker, args, i, deadline) for i in range(args.workers)]:
            total.merge(Tally.from_json(result.result()))
    return total


def _commit() -> str:
    """The checkout fuzzed: its commit, `+changes` where the working tree differs."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def report(tally: Tally, args: argparse.Namespace) -> str:
    rate = tally.mutants / tally.seconds if tally.seconds else 0.0
    bases = [s.name for s in builtin_seeds() + (corpus_seeds() if args.corpus else [])]
    lines = [f"At commit {_commit()}: {tally.mutants} mutants in {tally.seconds:.0f} s ({rate:.1f} mutants/s, "
             f"{args.workers} worker(s)), "
             f"seeds {args.start}.. of {', '.join(bases)}; {args.stack:.0%} with two mutations; "
             f"optimize for {args.optimize_share:.0%} and build (tensorrt-rtx) for {args.build_share:.0%} of "
             "those that parse; each call limited to "
             f"{args.timeout:.0f} s.", "",
             "| stage | ok | refused | crash |", "|---|---|---|---|"]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(str(tally.calls[f"{stage} {v}"]) for v in VERDICTS) + " |")
    lines += ["", "| mutator | mutants | all ok | refused somewhere | crash |", "|---|---|---|---|---|"]
    for mutator in MUTATORS:
        counts = [tally.by_mutator[f"{mutator.name} {o}"] for o in ("ok", "refused", "crash")]
        lines.append(f"| {mutator.name} ({mutator.kind}) | {sum(counts)} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", f"Crashes: {len(tally.crashes)}."]
    lines += [f"\n```\n{crash}\n```" for crash in tally.crashes]
    lines += ["", f"Refusals in words from inside trtc (an exception's name or 'internal error' in the line; "
                  f"not crashes, worth a look): {len(tally.leaky)}."]
    lines += [f"\n```\n{leak}\n```" for leak in tally.leaky[: args.show_leaky]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, required=True, help="how long to fuzz")
    parser.add_argument("--workers", type=int, default=1, help="processes fuzzing side by side (default 1)")
    parser.add_argument("--start", type=int, default=10_000, help="first seed (the test suite runs 0..599)")
    parser.add_argument("--corpus", action="store_true", help="mutate the corpus models under 1 MB too")
    parser.add_argument("--stack", type=float, default=0.2, help="share of mutants with two mutations")
    parser.add_argument("--optimize-share", type=float, default=0.3)
    parser.add_argument("--build-share", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a call counts as a hang")
    parser.add_argument("--show-leaky", type=int, default=10, help="leaky refusals shown (default 10)")
    parser.add_argument("--write", action="store_true", help="write the figures to benchmarks/RESULTS.md")
    args = parser.parse_args()
    tally = run(args)
    text = report(tally, args)
    print(text)
    if args.write:
        from results import write_section

        write_section(f"Fuzzing for {args.seconds / 60:.0f} minutes (benchmarks/fuzz.py)", text)
    sys.exit(1 if tally.crashes else 0)


if __name__ == "__main__":
    main()
