"""Big models end to end (issue 15): the 1.21 B-parameter model of ../shared/tools/make_big_model.py
(4.8 GB of fp32 external data) through `trtc compile --fp16` to an engine, against TensorRT-RTX's own ONNX
parser + build of the same file in the same run: wall time, peak memory and where it goes (by stage), bytes
written.

    python benchmarks/big_model.py [--dir DIR] [--keep] [--model PATH] [--fp32] [--floor-gb N] [--write]

The model is generated once into --dir (default: a new temporary folder, removed at the end unless --keep;
--model takes an existing one). What is compared: TensorRT-RTX builds strongly typed networks only, so its
parser builds this file in the types it has, fp32 (there is no fp16 flag to give it); trtc compile --fp16
(its precision pass types the model) is set against that, which is what a user of the parser gets from the
file; --fp32 adds trtc compile without --fp16, the like-for-like build.

trtc runs as `compile_model` (what `trtc compile` calls; its progress callback marks the stages: parse,
optimize, precision, build, compare) with --no-cache; the parser as benchmarks/build_vs_parser.py drives it.
Each contender is a process tree under a launcher that reports the tree's getrusage: ru_maxrss (the largest
process's peak RSS) and blocks written. A sampler reads every 0.25 s the RSS and PSS of each process of the
tree and the machine's available memory. PSS splits a shared page between its sharers, so the tree's PSS is
the memory it holds (trtc's forked build child shares its parent's pages and the weights' file pages: their
RSS would count those twice). Where the machine's available memory falls below --floor-gb, the contender is
killed (the machine is shared) and the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_vs_parser import CHILD as PARSER_CHILD  # noqa: E402
from parse_big import MAKER  # noqa: E402

SHAPES = "input_ids:1x1,1x128,1x512"
PROFILE = {"input_ids": [[1, 1], [1, 128], [1, 512]]}
GB = 1e9

# Runs argv[2:] and writes the getrusage of everything it waited for to argv[1].
LAUNCHER = """
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": rc, "maxrss": u.ru_maxrss * 1024, "written": u.ru_oublock * 512,
           "cpu": u.ru_utime + u.ru_stime}, open(sys.argv[1], "w"))
"""

# compile_model with the stages marked (time, text) in argv[5], the precision pass's calibration run (observe) and
# simulation (predict) too; prints the report's stages and engine.
TRTC_CHILD = """
import json, sys, time
from trtc.lower.profiles import parse_profiles
from trtc.pipeline import BuildOptions, OptimizeOptions, PrecisionOptions, compile_model
model, outdir, precision, shapes, marks = sys.argv[1:6]
log = open(marks, "a", buffering=1)
def progress(text):
    if text.endswith("...") or text.startswith("precision:"):
        log.write(f"{time.time()} {text.rstrip('.').split(':')[0]}\\n")
import trtc.precision as precision_pass
def marked(name, after, fn):  # the precision pass's two CPU-reference runs, marked as stages of their own
    def run(*args, **kwargs):
        log.write(f"{time.time()} precision: {name}\\n")
        try:
            return fn(*args, **kwargs)
        finally:
            log.write(f"{time.time()} {after}\\n")
    return run
precision_pass.observe = marked("observe", "precision: type", precision_pass.observe)
precision_pass.predict = marked("predict", "optimize: save", precision_pass.predict)
log.write(f"{time.time()} start\\n")
report = compile_model(model, outdir, cache=False, progress=progress,
                       optimize_options=OptimizeOptions(precision=PrecisionOptions(target=precision)
                                                        if precision != "fp32" else None),
                       build_options=BuildOptions(profiles=parse_profiles(shapes.split(), [])))
log.write(f"{time.time()} end\\n")
print(json.dumps({"stages": report["stages"], "engine": report["engine"], "predicted": report["predicted"]}))
"""


def make_model(folder: Path) -> Path:
    model = folder / "model" / "model.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(MAKER), "--out", str(model)], check=True)
    return model


def pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
    except (OSError, StopIteration):
        return 0


class Sampler(threading.Thread):
    """Samples the tree under `root` every `period` s: [(t, rss sum, pss sum, processes)], each process's
    peak RSS; kills the tree where the machine's available memory falls below `floor` bytes."""

    def __init__(self, root: int, floor: float, period: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.floor, self.period = psutil.Process(root), floor, period
        self.samples: list[tuple[float, int, int, int]] = []
        self.peaks: dict[int, tuple[int, str]] = {}
        self.killed: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                break
            rss = pss_sum = 0
            for proc in procs:
                try:
                    size = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline()[1:3])[:60]
                except psutil.Error:
                    continue
                rss += size
                pss_sum += pss(proc.pid)
                if size > self.peaks.get(proc.pid, (0, ""))[0]:
                    self.peaks[proc.pid] = (size, cmd)
            self.samples.append((time.time(), rss, pss_sum, len(procs)))
            available = psutil.virtual_memory().available
            if available < self.floor and not self.killed:
                self.killed = (f"killed at {pss_sum / GB:.1f} GB (tree PSS): the machine's available memory fell to "
                               f"{available / GB:.1f} GB")
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            self.stop.wait(self.period)


def measure(name: str, argv: list[str], folder: Path, floor: float, marks: Path | None = None) -> dict:
    """Run `argv` under the launcher, sampled; its result, stdout's last JSON line, stages and peaks."""
    usage = folder / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.usage.json"
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, floor)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    result = {"name": name, "wall": time.time() - start, **json.loads(usage.read_text()),
              "killed": sampler.killed, "samples": sampler.samples,
              "peak_pss": max((s[2] for s in sampler.samples), default=0),
              "peak_rss_sum": max((s[1] for s in sampler.samples), default=0),
              "process_peaks": sorted(sampler.peaks.values(), reverse=True)[:4]}
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    result["output"] = json.loads(lines[-1]) if lines else None
    if result["rc"] != 0:
        result["error"] = (err.strip().splitlines() or ["failed"])[-1][:300]
    if marks is not None and marks.exists():
        result["stages"] = stage_peaks(marks, sampler.samples)
    print(name, {k: v for k, v in result.items() if k not in ("samples",)}, flush=True)
    return result


def stage_peaks(marks: Path, samples: list[tuple[float, int, int, int]]) -> list[dict]:
    """Per stage (as the marks file names them, in order): seconds, peak tree PSS and RSS sum."""
    entries = [(float(t), text) for t, text in (line.split(" ", 1) for line in marks.read_text().splitlines())]
    stages = []
    for (begin, text), (end, _) in zip(entries, entries[1:] + [(float("inf"), "")]):
        inside = [s for s in samples if begin <= s[0] < end]
        stages.append({"stage": text.strip(), "seconds": (min(end, samples[-1][0]) - begin) if samples else 0.0,
                       "peak_pss": max((s[2] for s in inside), default=0),
                       "peak_rss_sum": max((s[1] for s in inside), default=0),
                       "processes": max((s[3] for s in inside), default=0)})
    return [s for s in stages if s["stage"] not in ("start", "end") and s["processes"]]


def run_trtc(model: Path, folder: Path, precision: str, floor: float) -> dict:
    out, marks = folder / f"trtc-{precision}", folder / f"trtc-{precision}.marks"
    marks.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)  # a kept --dir's artifacts would be reused, not measured
    result = measure(f"trtc compile {'--fp16' if precision == 'fp16' else '(fp32)'}",
                     [sys.executable, "-c", TRTC_CHILD, str(model), str(out), precision, SHAPES, str(marks)],
                     folder, floor, marks)
    result["files"] = {p.name: p.stat().st_size for p in out.glob("*")} if out.exists() else {}
    return result


def run_parser(model: Path, folder: Path, floor: float) -> dict:
    return measure("TensorRT-RTX parser + build (fp32)",
                   [sys.executable, "-c", PARSER_CHILD, "parser", str(model), json.dumps(PROFILE), "0"], folder, floor)


def _gb(n: float) -> str:
    return f"{n / GB:.2f}"


def report(weight_bytes: int, results: list[dict], floor: float, load: float) -> str:
    parser = next((r for r in results if r["name"].startswith("TensorRT-RTX")), None)
    lines = [f"Model: ../shared/tools/make_big_model.py's default (21 layers, hidden 2048, vocab 32000: 1.21 B "
             f"parameters; what --model gave otherwise), {_gb(weight_bytes)} GB of fp32 external data. Profile "
             f"{SHAPES} (calibration and comparison at OPT). "
             "TensorRT-RTX builds strongly typed networks only: its parser builds the file's types (fp32), "
             "so trtc --fp16 is set against the parser's fp32 build (what its user gets from this file). Memory: "
             "the process tree's PSS, sampled every 0.25 s (shared pages split between sharers: trtc's forked build "
             "child shares its parent's pages); largest process: getrusage's ru_maxrss. Written: the tree's "
             f"blocks written (getrusage). No engine cache. Contenders run one after the other, killed where the "
             f"machine's available memory falls below {floor / GB:.1f} GB. Load average at the end: {load:.1f}.", "",
             "| contender | result | wall s | CPU s | peak memory GB (tree PSS) | / weight bytes | / parser's | "
             "largest process peak RSS GB | written GB | engine GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        status = "ok" if r["rc"] == 0 else (r["killed"] or f"failed: {r.get('error', r['rc'])}")
        vs_parser = f"{r['peak_pss'] / parser['peak_pss']:.2f}x" if parser and parser["peak_pss"] else "-"
        engine = r.get("files", {}).get("model.plan")
        lines.append(f"| {r['name']} | {status} | {r['wall']:.0f} | {r['cpu']:.0f} | {_gb(r['peak_pss'])} | "
                     f"{r['peak_pss'] / weight_bytes:.2f}x | {vs_parser} | {_gb(r['maxrss'])} | {_gb(r['written'])} | "
                     f"{_gb(engine) if engine else '-'} |")
    for r in results:
        if not r.get("stages"):
            continue
        lines += ["", f"{r['name']}, by stage (the stage a sample fell in; `precision` is the precision pass within "
                  "optimize; `build` includes the forked build child):", "",
                  "| stage | s | peak memory GB (tree PSS) | / weight bytes | RSS sum GB | processes |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s in r["stages"]:
            lines.append(f"| {s['stage']} | {s['seconds']:.0f} | {_gb(s['peak_pss'])} | "
                         f"{s['peak_pss'] / weight_bytes:.2f}x | {_gb(s['peak_rss_sum'])} | {s['processes']} |")
        files = r.get("files", {})
        if files:
            lines += ["", "Files written: " + ", ".join(f"{k} {_gb(v)} GB" for k, v in sorted(files.items())
                                                      if v > 1e6) + "."]
    return "\n".join(lines + findings(results, weight_bytes, parser))


def findings(results: list[dict], weight_bytes: int, parser: dict | None) -> list[str]:
    """The goals (issue 15: trtc's peak <= the parser's and <= 1.5x the weight bytes, the fp16 weights written
    once) against this run, and where the memory goes: the stages' peaks, read with what each stage holds."""
    fp16 = next((r for r in results if "--fp16" in r["name"] and r.get("stages")), None)
    if fp16 is None or parser is None:
        return []
    stage = {s["stage"]: s["peak_pss"] for s in fp16["stages"]}
    peak = max(fp16["stages"], key=lambda s: s["peak_pss"])
    fp32 = next((r for r in results if "(fp32)" in r["name"] and r.get("stages")), None)
    files = fp16.get("files", {})
    weights16, plan = files.get("model.opt.trtir", 0), files.get("model.plan", 0)

    def gb(name: str) -> str:
        return _gb(stage.get(name, 0))

    lines = ["", f"Goals: trtc compile --fp16's peak {_gb(fp16['peak_pss'])} GB against the parser's "
             f"{_gb(parser['peak_pss'])} GB ({fp16['peak_pss'] / parser['peak_pss']:.2f}x; goal <= 1x) and "
             f"{fp16['peak_pss'] / weight_bytes:.2f}x the weight bytes (goal <= 1.5x; the parser itself needs "
             f"{parser['peak_pss'] / weight_bytes:.2f}x). Its peak is in `{peak['stage']}`. The build stage alone: "
             f"{gb('build')} GB ({stage.get('build', 0) / weight_bytes:.2f}x)" +
             (f"; trtc's fp32 build stage {_gb(max(s['peak_pss'] for s in fp32['stages'] if s['stage'] == 'build'))}"
              " GB, the parser's parse + build " + _gb(parser["peak_pss"]) + " GB." if fp32 else "."), "",
             f"Written: {_gb(fp16['written'])} GB; the fp16 weights (model.opt.trtir) {_gb(weights16)} GB and the "
             f"engine (model.plan) {_gb(plan)} GB, each written once: the precision pass converts the weights as it "
             "saves them (`trtc.ir.converted`), the build child writes the plan beside model.plan and it is renamed.",
             "",
             "Where the memory goes (the stages above; what each holds was measured on this model by the "
             "function in one process):",
             f"- `precision: observe` ({gb('precision: observe')} GB): the fp32 calibration run. onnxruntime maps the "
             f"weights' file ({_gb(weight_bytes)} GB of page cache, no copy: `runner.MAP_FILE_BYTES`, prepacking and "
             "its arena off) and trtc keeps every float value of the first sample (`Observation.first`, 0.59 GB "
             "here) for the per-node error report.",
             f"- `precision: predict` ({gb('precision: predict')} GB): the fp16 simulation reads the fp32 weights from "
             "the same mapped file and rounds them with Casts as it runs (no fp16 or fp32 copy of any weight), "
             "fetching the first sample's values again, 256 MiB a run (`precision.FETCH_BYTES`), to set against "
             "`Observation.first`.",
             f"- `build` ({gb('build')} GB): in the forked child, TensorRT's own copy of the fp16 weights (twice "
             "while it clones the network) and the serialized plan; the weights' file pages it read from go as each "
             "of its phases ends (`trtc.memory.drop_file_pages`), and the parent has given back what the precision "
             "pass held (`trtc.memory.release_memory`).",
             f"- `compare` ({gb('compare')} GB): the fp32 reference, then the fp16 simulation, one after the other, "
             "each over the mapped fp32 file."]
    return lines


def publish(text: str, write: bool) -> int:
    print(text)
    if write:
        from results import write_section

        write_section("Big model end to end: 1.21 B parameters, compile --fp16 vs the parser (benchmarks/big_model.py)",
                      text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where the model and the outputs go (default: a temporary folder)")
    ap.add_argument("--model", type=Path, help="an existing model (default: generated into --dir)")
    ap.add_argument("--keep", action="store_true", help="keep --dir's contents")
    ap.add_argument("--fp32", action="store_true", help="also trtc compile without --fp16")
    ap.add_argument("--floor-gb", type=float, default=2.5, help="kill a contender below this available memory")
    ap.add_argument("--skip", action="append", default=[], choices=["trtc", "parser"])
    ap.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    ap.add_argument("--results", type=Path, help="only report a run's big_model.json (kept with --keep)")
    args = ap.parse_args()
    if args.results:
        saved = json.loads(args.results.read_text())
        return publish(report(saved["weight_bytes"], saved["results"], saved["floor"], saved["load"]), args.write)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="trtc-big-"))
    folder.mkdir(parents=True, exist_ok=True)
    floor = args.floor_gb * GB
    try:
        model = args.model or make_model(folder)
        weight_bytes = sum(p.stat().st_size for p in model.parent.glob("*.data"))
        results = []
        if "trtc" not in args.skip:
            results.append(run_trtc(model, folder, "fp16", floor))
        if "parser" not in args.skip:
            results.append(run_parser(model, folder, floor))
        if args.fp32 and "trtc" not in args.skip:
            results.append(run_trtc(model, folder, "fp32", floor))
        load = os.getloadavg()[0]
        (folder / "big_model.json").write_text(json.dumps({"weight_bytes": weight_bytes, "results": results,
                                                           "floor": floor, "load": load}, default=str))
        publish(report(weight_bytes, results, floor, load), args.write)
    finally:
        if not args.keep:
            for path in folder.iterdir() if folder.exists() else []:
                if args.model is None or path != args.model.parent:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            if args.dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
