"""Reproduce one mutant: write it to a folder and run the CLI stages on it as `python -m trtc`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzzing.driver import Driver, make_mutant  # noqa: E402
from fuzzing.seeds import builtin_seeds, corpus_seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python tests/fuzzing", description=__doc__)
    parser.add_argument("--base", required=True, help="seed model name (mlp, convnet, control, ...)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, help="folder for the mutant (default: a temporary one)")
    parser.add_argument("--stack", type=float, default=0.2, help="share of mutants with two mutations")
    args = parser.parse_args()
    bases = {s.name: s for s in builtin_seeds() + corpus_seeds()}
    mutant = make_mutant(args.seed, bases[args.base], stack=args.stack)
    out = args.out or Path(tempfile.mkdtemp(prefix="trtc-fuzz-"))
    print(f"{mutant.label}: {'; '.join(mutant.notes)}\nfolder: {out / f'm{mutant.seed}'}")
    driver = Driver(out, fork=False, optimize_share=1.0, build_share=1.0, keep=True)
    for call in driver.run(mutant).calls:
        print(f"\n$ trtc {' '.join(call.args)}\n-> {call.verdict} (exit {call.rc}) {call.why}")
        print((call.stdout + call.stderr).rstrip())


if __name__ == "__main__":
    main()
