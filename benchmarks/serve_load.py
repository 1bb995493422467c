"""Load on the real Triton server that trtc starts, from the real clients (tritonclient.http and
tritonclient.grpc), with Triton's dynamic batching on and off, in the same run:

    python benchmarks/serve_load.py [--models NAME ...] [--clients 16] [--seconds 10] [--repeats 2] [--write]

For each model (default mlp-ts-op17 and cnn_bn-ts-op17 of ../shared/models), the .onnx is exported
twice into one model repository with `--backend python` (the TensorRT backend is absent from the
nvidia-pytriton server): NAME_batched (max_batch --max-batch, dynamic batching with
--max-queue-delay-us) and NAME_unbatched (max_batch 0), the same --instances, and one server
(trtc.serve.server.start_server) serves both. Then, per protocol and setting, --clients concurrent
clients (asyncio coroutines, each its own client object and connection, spread over
--client-processes processes so that the client side does not bottleneck on one core's GIL) each
send single-row requests in a loop for --seconds, --repeats times (the settings' order alternating,
so that a drift in the machine's load falls on both alike). Every response is checked against the CPU
reference (trtc's ReferenceRunner, run beforehand on a pool of --pool random rows, row by row):
wrong = an answer that differs (np.allclose, --rtol/--atol) or lacks an output, lost = an error or
no answer within --timeout. Throughput counts right answers over the wall time of the window;
the average batch is Triton's own statistics (inference_count over execution_count) for the window.

Goal (issue 12): batching >= 1.5x the throughput without it at 16 clients, no wrong or lost answer.
Loopback only (127.0.0.1); nothing is left running (the server's stop() ends its process group).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"
DEFAULT_MODELS = ("mlp-ts-op17", "cnn_bn-ts-op17")
PROTOCOLS = ("http", "grpc")
SETTINGS = ("batched", "unbatched")
GOAL = 1.5


@dataclass
class Pool:
    """The rows clients send and the reference's answers, row i of each array."""

    input_name: str
    inputs: np.ndarray  # (pool, *row shape)
    expected: dict[str, np.ndarray]  # output name -> (pool, *output row shape)
    row_ms: dict[int, float]  # batch size -> the reference's ms per row in this process, run alone


def _ms_per_row(runner, name: str, rows: np.ndarray, budget_s: float = 0.5) -> float:
    runner.run({name: rows})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s or runs < 3:
        runner.run({name: rows})
        runs += 1
    return (time.perf_counter() - start) / runs / len(rows) * 1e3


def make_pool(model_path: Path, size: int, seed: int, max_batch: int) -> Pool:
    """`size` distinct random rows (the .npz input's non-batch shape) and the CPU reference's outputs,
    each row run alone as a client sends it; and the reference's cost per row alone and in a batch
    of `max_batch` (what batching can save in the model run itself)."""
    from trtc.loading import open_model
    from trtc.reference.runner import ReferenceRunner

    model = open_model(model_path).model
    names = [v.name for v in model.graph.inputs]
    if len(names) != 1:
        raise SystemExit(f"{model_path.name}: {len(names)} inputs; this benchmark sends models of one input")
    sample = np.load(model_path.with_suffix(".npz"))[names[0]]
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((size, *sample.shape[1:])).astype(sample.dtype)
    runner = ReferenceRunner(model)
    try:
        rows = [runner.run({names[0]: inputs[i:i + 1]}) for i in range(size)]
        row_ms = {n: _ms_per_row(runner, names[0], np.resize(inputs, (n, *inputs.shape[1:])))
                  for n in sorted({1, max_batch})}
    finally:
        runner.close()
    expected = {name: np.concatenate([np.asarray(r[name]) for r in rows]) for name in rows[0]}
    return Pool(names[0], inputs, expected, row_ms)


def export_pair(model_path: Path, pool: Pool, repo: Path, args: argparse.Namespace) -> dict[str, dict]:
    """NAME_batched and NAME_unbatched in `repo`: the same model, profile and instances."""
    from trtc.lower.profiles import parse_profiles
    from trtc.serve.config import TritonExportOptions
    from trtc.serve.export import export_triton

    row = "x".join(map(str, pool.inputs.shape[1:]))
    opt = args.opt_batch or args.max_batch
    profiles = tuple(parse_profiles([f"{pool.input_name}:1x{row},{opt}x{row},{args.max_batch}x{row}"]))
    base = model_path.stem.replace("-", "_")
    common = {"backend": "python", "instances": args.instances, "profiles": profiles}
    return {
        "batched": export_triton(model_path, repo, TritonExportOptions(
            name=f"{base}_batched", max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, **common)),
        "unbatched": export_triton(model_path, repo, TritonExportOptions(
            name=f"{base}_unbatched", max_batch=0, **common)),
    }


# --- the client side: runs in --client-processes spawned processes -------------------------------

def _client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
        import tritonclient.http.aio as aio
    else:
        import tritonclient.grpc as module
        import tritonclient.grpc.aio as aio
    return module, aio


def worker_ready(pause: float) -> int:
    """Imports the clients (a spawned process's first job, before any timed window); the pause lets
    each process take one."""
    time.sleep(pause)
    for protocol in PROTOCOLS:
        _client_module(protocol)
    return os.getpid()


@dataclass
class Job:
    protocol: str
    url: str
    model: str
    pool: Pool
    client_ids: list[int]
    total_clients: int
    start_at: float  # time.time() at which every client starts
    seconds: float
    timeout: float
    rtol: float
    atol: float


def _matches(got: np.ndarray | None, want: np.ndarray, job: Job) -> bool:
    return got is not None and got.shape == want.shape and np.allclose(got, want, rtol=job.rtol, atol=job.atol)


async def _one_client(job: Job, cid: int, out: dict) -> None:
    from tritonclient.utils import np_to_triton_dtype

    module, aio = _client_module(job.protocol)
    client = aio.InferenceServerClient(job.url)
    outputs = [module.InferRequestedOutput(name) for name in job.pool.expected]
    size = len(job.pool.inputs)
    k = cid
    end = job.start_at + job.seconds
    try:
        # an untimed readiness call opens the connection (and counts no inference); then every
        # client starts at start_at
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.is_model_ready(job.model), job.timeout)
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        while time.time() < end:
            index = k % size
            k += job.total_clients
            row = job.pool.inputs[index:index + 1]
            request = module.InferInput(job.pool.input_name, list(row.shape), np_to_triton_dtype(row.dtype))
            request.set_data_from_numpy(row)
            start = time.perf_counter()
            try:
                result = await asyncio.wait_for(client.infer(job.model, [request], outputs=outputs), job.timeout)
            except Exception as exc:  # noqa: BLE001  (an error or a timeout: the answer is lost)
                out["lost"] += 1
                message = f"{type(exc).__name__}: {str(exc)[:160]}"
                out["errors"][message] = out["errors"].get(message, 0) + 1
                continue
            out["latencies"].append(time.perf_counter() - start)
            good = all(_matches(result.as_numpy(name), expected[index:index + 1], job)
                       for name, expected in job.pool.expected.items())
            out["ok" if good else "wrong"] += 1
    finally:
        out["finished"] = max(out["finished"], time.time())
        await client.close()


def run_clients(job: Job) -> dict:
    """This process's clients of one window: their counts, latencies (s) and errors."""
    out = {"ok": 0, "wrong": 0, "lost": 0, "latencies": [], "errors": {}, "finished": 0.0}

    async def main() -> None:
        await asyncio.gather(*(_one_client(job, cid, out) for cid in job.client_ids))

    cpu = time.process_time()
    asyncio.run(main())
    out["cpu_s"] = time.process_time() - cpu  # the wait for start_at included, which costs none
    return out


# --- the server side ------------------------------------------------------------------------------

def _counts(url: str, model: str) -> tuple[int, int, int]:
    """Triton's inference_count, execution_count and the nanoseconds its executions took (compute_infer
    of every batch size) of `model` so far."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    try:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
    finally:
        client.close()
    infer_ns = sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in stats.get("batch_stats", []))
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)), infer_ns


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by the processes of a process group: the server
    (tritonserver) and the rest (its Python-backend stubs)."""
    server = stubs = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text.rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            ticks = int(fields[11]) + int(fields[12])
            if int(stat.parent.name) == pgid:
                server += ticks
            else:
                stubs += ticks
    return server / os.sysconf("SC_CLK_TCK"), stubs / os.sysconf("SC_CLK_TCK")


def warm_up(url: str, model: str, pool: Pool, max_batch: int) -> None:
    """One request of each batch size the window may form, so that no first run is timed."""
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype

    client = http.InferenceServerClient(url)
    try:
        for n in range(1, max_batch + 1):
            rows = np.resize(pool.inputs, (n, *pool.inputs.shape[1:]))
            request = http.InferInput(pool.input_name, list(rows.shape), np_to_triton_dtype(rows.dtype))
            request.set_data_from_numpy(rows)
            client.infer(model, [request])
    finally:
        client.close()


def window(executor, server, protocol: str, model: str, pool: Pool, args: argparse.Namespace) -> dict:
    """One timed window of --clients clients on `model`: the clients' counts and latencies, Triton's
    counts and the CPU seconds spent, as raw sums (summarize() turns windows into figures)."""
    url = server.http_url if protocol == "http" else server.grpc_url
    before = _counts(server.http_url, model)
    ids = list(range(args.clients))
    shares = [ids[i::args.client_processes] for i in range(args.client_processes)]
    start_at = time.time() + 1.0
    jobs = [Job(protocol, url, model, pool, share, args.clients, start_at, args.seconds, args.timeout,
                args.rtol, args.atol) for share in shares if share]
    cpu_before = group_cpu_seconds(server.pid)
    parts = list(executor.map(run_clients, jobs))
    server_cpu, stub_cpu = (b - a for a, b in zip(cpu_before, group_cpu_seconds(server.pid)))
    after = _counts(server.http_url, model)
    for _ in range(20):  # Triton counts a request a moment after its answer has left: let the counts settle
        time.sleep(0.05)
        after, previous = _counts(server.http_url, model), after
        if after == previous:
            break
    errors: dict[str, int] = {}
    for p in parts:
        for message, n in p["errors"].items():
            errors[message] = errors.get(message, 0) + n
    return {"ok": sum(p["ok"] for p in parts), "wrong": sum(p["wrong"] for p in parts),
            "lost": sum(p["lost"] for p in parts), "seconds": max(p["finished"] for p in parts) - start_at,
            "latencies": [t for p in parts for t in p["latencies"]],
            "requests": after[0] - before[0], "executions": after[1] - before[1], "infer_ns": after[2] - before[2],
            "server_cpu": server_cpu, "stub_cpu": stub_cpu, "client_cpu": sum(p["cpu_s"] for p in parts),
            "errors": errors}


def summarize(windows: list[dict]) -> dict:
    """The figures of one protocol and setting over its windows (--repeats)."""
    total = {k: sum(w[k] for w in windows) for k in ("ok", "wrong", "lost", "seconds", "requests", "executions",
                                                     "infer_ns", "server_cpu", "stub_cpu", "client_cpu")}
    latencies = np.array([t for w in windows for t in w["latencies"]]) * 1e3
    errors: dict[str, int] = {}
    for w in windows:
        for message, n in w["errors"].items():
            errors[message] = errors.get(message, 0) + n
    seconds, executions = total["seconds"], total["executions"]
    nan = float("nan")
    return {**total, "throughput": total["ok"] / seconds if seconds > 0 else 0.0,
            "per_window": [w["ok"] / w["seconds"] if w["seconds"] > 0 else 0.0 for w in windows],
            "p50": float(np.percentile(latencies, 50)) if len(latencies) else nan,
            "p99": float(np.percentile(latencies, 99)) if len(latencies) else nan,
            "avg_batch": total["requests"] / executions if executions else nan,
            "exec_ms": total["infer_ns"] / 1e6 / executions if executions else nan,
            "server_cores": total["server_cpu"] / seconds, "stub_cores": total["stub_cpu"] / seconds,
            "client_cores": total["client_cpu"] / seconds, "errors": errors}


def _line(name: str, protocol: str, setting: str, run: dict) -> str:
    return (f"{name} {protocol:4} {setting:9} {run['throughput']:8.1f}/s  p50 {run['p50']:7.2f} ms  "
            f"p99 {run['p99']:7.2f} ms  ok {run['ok']} wrong {run['wrong']} lost {run['lost']}  "
            f"requests {run['requests']} executions {run['executions']} "
            f"(avg batch {run['avg_batch']:.2f}, {run['exec_ms']:.2f} ms each)  cores: tritonserver "
            f"{run['server_cores']:.2f} stubs {run['stub_cores']:.2f} clients {run['client_cores']:.2f}"
            + (f"  errors {run['errors']}" if run["errors"] else ""))


def measure_model(name: str, args: argparse.Namespace, executor) -> dict:
    from trtc.serve.server import start_server

    path = MODELS / f"{name}.onnx"
    pool = make_pool(path, args.pool, args.seed, args.max_batch)
    results: dict = {"name": name, "row": list(pool.inputs.shape[1:]), "row_ms": pool.row_ms, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="serve_load.") as tmp:
        repo = Path(tmp) / "repo"
        reports = export_pair(path, pool, repo, args)
        results["exports"] = {s: {k: reports[s][k] for k in ("model", "max_batch_size", "preferred_batch_size")}
                              for s in SETTINGS}
        started = time.perf_counter()
        with start_server(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
            results["start_s"] = time.perf_counter() - started
            for setting in SETTINGS:
                warm_up(server.http_url, reports[setting]["model"], pool, args.max_batch)
            windows: dict[tuple[str, str], list[dict]] = {}
            turn = 0
            for _ in range(args.repeats):
                for protocol in args.protocols:
                    # batched first, then unbatched first, and so on: a drift in the machine's load
                    # falls on both settings alike
                    for setting in (SETTINGS if turn % 2 == 0 else SETTINGS[::-1]):
                        w = window(executor, server, protocol, reports[setting]["model"], pool, args)
                        windows.setdefault((protocol, setting), []).append(w)
                        print(_line(name, protocol, setting, summarize([w])), flush=True)
                    turn += 1
            results["runs"] = {key: summarize(ws) for key, ws in windows.items()}
    return results


def report(all_results: list[dict], args: argparse.Namespace, load: float) -> str:
    lines = [
        f"Triton (nvidia-pytriton's server, Python backend: trtc's CPU reference behind model.py) started by "
        f"trtc.serve.server.start_server, one server per model serving both exports; {args.clients} concurrent "
        f"clients (asyncio, one client object and connection each, over {args.client_processes} client "
        f"processes) send single-row requests for {args.repeats} x {args.seconds:g} s per protocol and setting "
        f"(the settings' order alternating), to 127.0.0.1. "
        f"batched: max_batch {args.max_batch}, profile OPT {args.opt_batch or args.max_batch}, max queue delay "
        f"{args.max_queue_delay_us} us; unbatched: max_batch 0; {args.instances} instance(s) each. Every answer "
        f"is checked against trtc's CPU reference of the same row (np.allclose rtol {args.rtol:g}, atol "
        f"{args.atol:g}; a pool of {args.pool} random rows); lost = an error or no answer within {args.timeout:g} s. "
        f"Throughput = right answers / window wall time; requests, executions and avg batch are Triton's own "
        f"statistics (inference_count, execution_count); ms per execution is Triton's compute_infer (the Python "
        f"model's execute: the IPC to the stub and the model run); cores = CPU seconds per second of window of "
        f"the tritonserver process, its Python-backend stub processes and the client processes. "
        f"Load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; the clients share the "
        f"machine's cores with the server, so compare "
        f"the ratios, not the absolute rates. Goal: batched >= {GOAL}x unbatched, no wrong or lost answer.",
    ]
    met = True
    for result in all_results:
        batched = result["exports"]["batched"]
        lines += ["", f"**{result['name']}** (rows of {'x'.join(map(str, result['row']))}; batched export: "
                  f"max_batch_size {batched['max_batch_size']}, preferred {batched['preferred_batch_size'] or 'none'}; "
                  f"server ready in {result['start_s']:.1f} s; the CPU reference in this process, idle server: "
                  + ", ".join(f"{ms:.3f} ms per row in a batch of {n}" for n, ms in result["row_ms"].items())
                  + ")", "",
                  "| protocol | setting | answers/s | each window | ratio | p50 ms | p99 ms | right | wrong | lost | "
                  "requests | executions | avg batch | ms per execution | cores: tritonserver | stubs | clients |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for protocol in args.protocols:
            on, off = result["runs"][(protocol, "batched")], result["runs"][(protocol, "unbatched")]
            ratio = on["throughput"] / off["throughput"] if off["throughput"] else float("nan")
            met &= ratio >= GOAL and not any(r["wrong"] or r["lost"] for r in (on, off))
            for setting, run in (("batched", on), ("unbatched", off)):
                shown = f"{ratio:.2f}x" if setting == "batched" else ""
                cells = [protocol, setting, f"{run['throughput']:.0f}",
                         ", ".join(f"{t:.0f}" for t in run["per_window"]), shown, f"{run['p50']:.2f}",
                         f"{run['p99']:.2f}", run["ok"], run["wrong"], run["lost"], run["requests"], run["executions"],
                         f"{run['avg_batch']:.2f}", f"{run['exec_ms']:.2f}", f"{run['server_cores']:.2f}",
                         f"{run['stub_cores']:.2f}", f"{run['client_cores']:.2f}"]
                lines.append("| " + " | ".join(map(str, cells)) + " |")
        errors = {m: n for run in result["runs"].values() for m, n in run["errors"].items()}
        if errors:
            lines.append("")
            lines += [f"- lost: {n} x {m}" for m, n in errors.items()]
    lines += ["", f"Goal met on every model and protocol: {'yes' if met else 'no'}."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="corpus names in ../shared/models")
    ap.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--client-processes", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each timed window")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched export's max_batch (and profile MAX)")
    ap.add_argument("--opt-batch", type=int, default=0,
                    help="the profile's OPT, which becomes Triton's preferred batch size (default: --max-batch)")
    ap.add_argument("--max-queue-delay-us", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2,
                    help="windows per protocol and setting, the settings' order alternating (figures over all)")
    ap.add_argument("--pool", type=int, default=64, help="distinct rows the clients send")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a client waits for an answer")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = ap.parse_args()
    if min(args.clients, args.client_processes, args.repeats, args.max_batch, args.instances, args.pool) < 1 \
            or args.seconds <= 0:
        ap.error("--clients, --client-processes, --repeats, --max-batch, --instances, --pool and --seconds "
                 "must be positive")
    args.client_processes = min(args.client_processes, args.clients)
    missing = [m for m in args.models if not (MODELS / f"{m}.onnx").is_file()]
    if missing:
        print(f"missing in {MODELS}: {', '.join(missing)}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC or a server
    with concurrent.futures.ProcessPoolExecutor(args.client_processes, mp_context=context) as executor:
        list(executor.map(worker_ready, [0.2] * args.client_processes))
        results = [measure_model(name, args, executor) for name in args.models]
    text = report(results, args, load)
    print("\n" + text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section

        write_section("Serving under load (benchmarks/serve_load.py)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
