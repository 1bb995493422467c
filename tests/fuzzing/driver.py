"""Mutants, the CLI stages run on them, and what each outcome means.

A mutant is one seeded edit of one seed model. Its files go to a folder of their own, and the CLI
runs on them in a child process: `parse`, then on success `run` (generated inputs), `optimize` and
`build --backend tensorrt-rtx` (the last two for a share of the mutants). Each call ends:

- ok: exit 0 and its output written;
- refused: exit 1 or 2, exactly one `trtc: error:` line on stderr, no traceback, no output;
- CRASH: a traceback, a signal, another exit code, a timeout (a hang), more than one error line,
  an output or a temporary file left by a failure, or exit 0 without the output.

A refusal whose line carries a Python exception's name (`TypeError: ...`) or says "internal error"
is also counted as `leaky`: one line, but words from inside trtc rather than about the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx

from fuzzing.mutate import MUTATORS, Files, Mutator
from fuzzing.seeds import Seed

REPO = Path(__file__).resolve().parents[2]
MODEL = "model.onnx"
# An error line that names an exception class: words from inside trtc, not about the model.
_LEAK = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception)\b:|internal error)")
_TEMPORARY = re.compile(r"\.tmp$|\.tmp\.|^tmp[a-z0-9_]{6,}$")


@dataclasses.dataclass
class Mutant:
    seed: int
    base: str
    mutators: list[str]
    notes: list[str]
    model: bytes
    files: Files

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL).write_bytes(self.model)
        for name, data in self.files.items():
            if isinstance(data, str):
                os.symlink(data, folder / name)
            else:
                (folder / name).write_bytes(data)
        return folder / MODEL

    @property
    def label(self) -> str:
        return f"{self.base} seed {self.seed} ({' + '.join(self.mutators)})"


def make_mutant(seed: int, base: Seed, mutators: Sequence[Mutator] = MUTATORS, stack: float = 0.2) -> Mutant:
    """The mutant `seed` of `base`: one mutator (two, a `stack` share of the time) and every choice
    it makes drawn from a generator seeded with both. A mutator with nothing to do is drawn again."""
    rng = random.Random(f"{base.name}:{seed}")
    model, files = base.model, dict(base.files)
    names, notes = [], []
    rounds = 2 if rng.random() < stack else 1
    for _ in range(rounds):
        for _attempt in range(20):
            mutator = rng.choice(mutators)
            note, model, files = _apply(mutator, model, files, rng)
            if note is not None:
                names.append(mutator.name)
                notes.append(note)
                break
    return Mutant(seed, base.name, names, notes, model, files)


def mutants(seeds: Iterable[int], bases: Sequence[Seed], **options) -> Iterable[Mutant]:
    """Mutant `seed` of base `seed % len(bases)`, for each seed."""
    for seed in seeds:
        yield make_mutant(seed, bases[seed % len(bases)], **options)


def _apply(mutator: Mutator, model: bytes, files: Files, rng: random.Random) -> tuple[str | None, bytes, Files]:
    if mutator.kind == "bytes":
        if not model:
            return None, model, files
        data, note = mutator.fn(model, rng)
        return note, data, files
    if mutator.kind == "files":
        files = dict(files)
        return mutator.fn(files, rng), model, files
    try:
        proto = onnx.ModelProto.FromString(model)
    except Exception:  # an earlier byte mutation: nothing structural to edit
        return None, model, files
    try:
        note = mutator.fn(proto, rng)
    except Exception:  # a mutator tripping on what an earlier one made: another is drawn (a long run goes on)
        return None, model, files
    return note, proto.SerializeToString() if note is not None else model, files


# ---------------------------------------------------------------------------------------- running


# A call's end: (exit code, negative for a signal; timed out; stdout; stderr; seconds).
RunResult = tuple[int, bool, str, str, float]


@dataclasses.dataclass
class Call:
    stage: str
    args: list[str]
    rc: int  # negative: killed by that signal
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    verdict: str = ""  # ok, refused, crash
    why: str = ""
    leaky: bool = False


def _env() -> dict[str, str]:
    return {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TRTC_MAX_MEMORY": "1GiB"}


class ForkServer:
    """Runs CLI calls in children forked from one process that imported trtc (see server.py)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            code = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from fuzzing.server import serve; serve()"
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, cwd=REPO,
                                          env={**os.environ, **_env()})
        return self._proc

    def call(self, args: list[str], cwd: Path, timeout: float, env: dict[str, str]) -> RunResult:
        proc = self._start()
        out, err = cwd / ".fuzz-stdout", cwd / ".fuzz-stderr"
        request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:  # the server itself died: a harness failure, not a verdict on trtc
            raise RuntimeError(f"the fork server exited ({proc.poll()}); rerun with fork=False to see the call")
        answer = json.loads(line)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return os.waitstatus_to_exitcode(answer["status"]), answer["timed_out"], stdout, stderr, answer["seconds"]

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._proc = None


class Subprocesses:
    """Runs each CLI call as `python -m trtc ARGS`: slower, and exactly what a user runs."""

    def call(self, args: list[str], cwd: Path, timeout: float, env: dict[str, str]) -> RunResult:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "trtc", *args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                env={**os.environ, **_env(), **env})
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            timed_out = True
        return proc.returncode, timed_out, stdout, stderr, time.perf_counter() - started

    def close(self) -> None:
        pass


def classify(call: Call, outputs: Iterable[Path], folder: Path) -> None:
    """Set `call.verdict` (ok, refused, crash), `call.why` and `call.leaky` (see the module docstring)."""
    text = call.stdout + call.stderr
    errors = [line for line in call.stderr.splitlines() if line.startswith("trtc: error:")]
    left = [p.name for p in outputs if p.exists() or p.is_symlink()]
    temporary = [str(p.relative_to(folder)) for p in folder.rglob("*") if _TEMPORARY.search(p.name)]
    call.verdict, call.why = "crash", ""
    if call.timed_out:
        call.why = f"hang: no answer in {call.seconds:.0f}s"
    elif call.rc < 0:
        call.why = f"killed by {signal.Signals(-call.rc).name}"
    elif "Traceback (most recent call last)" in text:
        call.why = "traceback"
    elif temporary:
        call.why = f"temporary file(s) left: {', '.join(temporary)}"
    elif call.rc == 0:
        missing = [p.name for p in outputs if not p.exists()]
        call.verdict, call.why = ("crash", f"exit 0 without {', '.join(missing)}") if missing else ("ok", "")
    elif call.rc not in (1, 2):
        call.why = f"exit code {call.rc}"
    elif len(errors) != 1:
        call.why = f"{len(errors)} 'trtc: error:' lines"
    elif left:
        call.why = f"failed but left {', '.join(left)}"
    else:
        call.verdict = "refused"
        call.leaky = bool(_LEAK.search(errors[0]))


def _symbolic_shapes(model: bytes) -> tuple[list[str], list[str]] | None:
    """`run --shape` and `build --shapes` options for the inputs with symbolic dims (a batch axis
    1..4, other symbolic axes 32); None when the model does not decode or an input has no shape."""
    try:
        proto = onnx.ModelProto.FromString(model)
    except Exception:
        return None
    weights = {t.name for t in proto.graph.initializer}
    run, build = [], []
    for info in proto.graph.input:
        if info.name in weights:
            continue
        if not info.type.tensor_type.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        if all(d is not None for d in dims):
            continue
        sizes = [[d] * 3 if d is not None else ([1, 2, 4] if i == 0 else [32] * 3) for i, d in enumerate(dims)]
        shape = ["x".join(str(s[k]) for s in sizes) or "1" for k in range(3)]
        run += ["--shape", f"{info.name}={shape[1]}"]
        build += ["--shapes", f"{info.name}:{','.join(shape)}"]
    return run, build


@dataclasses.dataclass
class Case:
    mutant: Mutant
    calls: list[Call]

    @property
    def crashes(self) -> list[Call]:
        return [c for c in self.calls if c.verdict == "crash"]


class Driver:
    """Runs mutants through the CLI stages. `optimize_share`/`build_share` of the mutants that parse
    go through optimize/build too (decided by the mutant's seed, so reproducible)."""

    def __init__(self, workdir: Path, *, fork: bool = True, timeout: float = 60.0, build_timeout: float = 180.0,
                 optimize_share: float = 0.3, build_share: float = 0.1, keep: bool = False):
        self.workdir = workdir
        self.runner = ForkServer() if fork else Subprocesses()
        self.timeout, self.build_timeout = timeout, build_timeout
        self.optimize_share, self.build_share = optimize_share, build_share
        self.keep = keep

    def close(self) -> None:
        self.runner.close()

    def _call(self, stage: str, args: list[str], folder: Path, outputs: list[str], timeout: float) -> Call:
        env = {"TRTC_CACHE_DIR": str(folder / "cache")}
        rc, timed_out, stdout, stderr, seconds = self.runner.call(args, folder, timeout, env)
        call = Call(stage, args, rc, timed_out, stdout, stderr, seconds)
        classify(call, [folder / o for o in outputs], folder)
        return call

    def run(self, mutant: Mutant) -> Case:
        folder = self.workdir / f"m{mutant.seed}"
        if folder.exists():
            shutil.rmtree(folder)
        mutant.write(folder)
        case = Case(mutant, [self._call("parse", ["parse", MODEL, "-o", "model.trtir"], folder, ["model.trtir"],
                                        self.timeout)])
        if case.calls[0].verdict == "ok":
            self._later_stages(case, folder)
        if not self.keep and not case.crashes:
            shutil.rmtree(folder, ignore_errors=True)
        return case

    def _later_stages(self, case: Case, folder: Path) -> None:
        rng = random.Random(f"stages {case.mutant.seed}")
        shapes = _symbolic_shapes(case.mutant.model)
        run_shapes, build_shapes = shapes or ([], [])
        case.calls.append(self._call("run", ["run", "model.trtir", *run_shapes, "--output", "out.npz"], folder,
                                     ["out.npz"], self.timeout))
        source = "model.trtir"
        if rng.random() < self.optimize_share:
            call = self._call("optimize", ["optimize", "model.trtir", "-o", "opt.trtir"], folder, ["opt.trtir"],
                              self.timeout)
            case.calls.append(call)
            source = "opt.trtir" if call.verdict == "ok" else source
        if shapes is not None and rng.random() < self.build_share:
            args = ["build", "--backend", "tensorrt-rtx", source, "-o", "model.plan", *build_shapes]
            case.calls.append(self._call("build", args, folder, ["model.plan", "model.plan.json"],
                                         self.build_timeout))


# ---------------------------------------------------------------------------------------- a campaign


@dataclasses.dataclass
class Tally:
    """Counts over a fuzz run; crashes and leaky refusals as `describe` writes them. JSON-able."""

    mutants: int = 0
    calls: Counter = dataclasses.field(default_factory=Counter)  # "stage verdict" -> n
    by_mutator: Counter = dataclasses.field(default_factory=Counter)  # "mutator outcome" -> n
    crashes: list[str] = dataclasses.field(default_factory=list)
    leaky: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def add(self, case: Case) -> None:
        self.mutants += 1
        outcome = "crash" if case.crashes else "ok" if all(c.verdict == "ok" for c in case.calls) else "refused"
        for name in case.mutant.mutators:
            self.by_mutator[f"{name} {outcome}"] += 1
        for call in case.calls:
            self.calls[f"{call.stage} {call.verdict}"] += 1
            if call.verdict == "crash":
                self.crashes.append(describe(case, call))
            elif call.leaky:
                self.leaky.append(describe(case, call, tail=1))

    def merge(self, other: Tally) -> None:
        self.mutants += other.mutants
        self.calls.update(other.calls)
        self.by_mutator.update(other.by_mutator)
        self.crashes += other.crashes
        self.leaky += other.leaky
        self.seconds = max(self.seconds, other.seconds)

    def to_json(self) -> dict:
        return {"mutants": self.mutants, "calls": dict(self.calls), "by_mutator": dict(self.by_mutator),
                "crashes": self.crashes, "leaky": self.leaky, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        return cls(data["mutants"], Counter(data["calls"]), Counter(data["by_mutator"]), data["crashes"],
                   data["leaky"], data["seconds"])


def describe(case: Case, call: Call, tail: int = 6) -> str:
    """One crash (or leaky refusal) for a report: what, where, how to reproduce, the stderr's tail."""
    lines = (call.stderr or call.stdout).strip().splitlines()[-tail:]
    return "\n".join([f"{case.mutant.label}: {call.stage}: {call.why or 'leaky'}",
                      f"  mutations: {'; '.join(case.mutant.notes)}",
                      f"  reproduce: python tests/fuzzing --base {case.mutant.base} --seed {case.mutant.seed}",
                      *(f"  | {line}" for line in lines)])


def campaign(seeds: Iterable[int], bases: Sequence[Seed], workdir: Path, *, deadline: float | None = None,
             stack: float = 0.2, **driver_options) -> Tally:
    """Run the mutants of `seeds` (until `deadline`, a time.monotonic() value, if given)."""
    tally, started = Tally(), time.monotonic()
    driver = Driver(workdir, **driver_options)
    try:
        for mutant in mutants(seeds, bases, stack=stack):
            if deadline is not None and time.monotonic() >= deadline:
                break
            tally.add(driver.run(mutant))
    finally:
        driver.close()
    tally.seconds = time.monotonic() - started
    return tally
