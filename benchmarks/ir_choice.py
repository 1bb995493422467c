#!/usr/bin/env python3
"""Which in-memory graph library should trtc's IR be built on?

Measures, for each candidate library, the wall time and peak RSS of

    load -> full-graph rewrite -> save

on real exported models and on a synthetic 10,000+-node transformer, plus a load-only
run on a large (multi-GB, external-data) model to show which libraries avoid reading
the weights.  Candidates:

    onnx-ir       onnx_ir: Model/Graph/Node/Value with def-use links
    graphsurgeon  onnx_graphsurgeon: gs.import_onnx / Tensor / Node / cleanup().toposort()
    protobuf      raw onnx.ModelProto manipulation with name maps (what a minimal own IR
                  would be built on)

The full-graph rewrite, implemented idiomatically for each library:

    1. insert an Identity after every node output that feeds another node, and rewire
       all of that value's consumers to the Identity's output (replace-all-uses);
    2. identity elimination: remove every Identity whose output is not a graph output,
       rewiring its consumers to its input (this also removes Identities that were in
       the model to begin with);
    3. topological sort.

The result is checked afterwards (not timed): node count and op histogram must equal the
original minus its removable Identities, the node list must be topologically ordered,
onnx.checker must pass, and onnxruntime must give the same outputs as on the original.

Every case runs in a fresh subprocess (``--child``), which reports its own phase times
and peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), under a per-case timeout.

Usage:
    python benchmarks/ir_choice.py                      # all cases, results in a table
    python benchmarks/ir_choice.py --big-full           # also rewrite+save the big model
    python benchmarks/ir_choice.py --markdown out.md    # also write the markdown section
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_MODELS = ("mobilenet_v2-ts-op17", "swin-ts-op17", "vit-ts-op17", "gpt2-ts-op17")
DEFAULT_BIG = Path("/tmp/big/model.onnx")
LIBS = ("onnx-ir", "graphsurgeon", "protobuf")
# Reference row for the load-only case: plain onnx.load, which reads all external data.
EAGER = "protobuf+data"
DATA_NAME = "model.onnx.data"
SUFFIX = "__id"
MIN_MANY_NODES = 10_000


# --------------------------------------------------------------------------- child side


def _peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB.

    On Linux this is VmHWM from /proc/self/status: getrusage's ru_maxrss survives
    fork+exec, so a child would report at least the parent's RSS at fork time.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Clock:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.rss_import_mib = 0.0
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._t
        if name == "import":  # baseline: interpreter + the library's imports
            self.rss_import_mib = _peak_rss_mib()
        self._t = time.perf_counter()


def _is_identity(op_type: str, domain: str) -> bool:
    return op_type == "Identity" and domain in ("", "ai.onnx")


# onnx-ir ------------------------------------------------------------------------------


def _run_onnx_ir(src: Path, dst: Path | None, external: bool, clock: _Clock) -> dict:
    import onnx_ir as ir

    clock.lap("import")
    model = ir.load(src)  # external tensors are memory-mapped lazily, not read
    graph = model.graph
    clock.lap("load")
    stats = {"nodes_before": len(graph)}
    if dst is None:
        return stats

    # 1. Identity after every consumed output; O(uses) replace-all-uses via def-use links.
    inserted = 0
    for node in list(graph):
        identities = []
        for value in node.outputs:
            if not value.uses():
                continue
            shape = value.shape.copy() if value.shape is not None else None
            new = ir.Value(name=f"{value.name}{SUFFIX}", shape=shape, type=value.type)
            # Rewire before the Identity exists (so its own input is not rewired).
            if value.is_graph_output():
                # replace_all_uses_with refuses graph outputs (unless it may move the
                # graph output too); rewire only the node uses.
                for user, index in tuple(value.uses()):
                    user.replace_input_with(index, new)
            else:
                value.replace_all_uses_with(new)
            identities.append(ir.Node("", "Identity", [value], outputs=[new], name=f"{value.name}{SUFFIX}"))
        if identities:
            graph.insert_after(node, identities)
            inserted += len(identities)
    clock.lap("insert")

    # 2. Identity elimination.
    removed = 0
    for node in list(graph):
        if not _is_identity(node.op_type, node.domain):
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        out.replace_all_uses_with(node.inputs[0])
        graph.remove(node, safe=True)
        removed += 1
    clock.lap("eliminate")

    # 3. Topological sort.
    graph.sort()
    clock.lap("sort")

    if external:
        ir.save(model, dst, external_data=DATA_NAME)
    else:
        ir.save(model, dst)
    clock.lap("save")
    stats.update(inserted=inserted, removed=removed, nodes_after=len(graph))
    return stats


# onnx-graphsurgeon --------------------------------------------------------------------


def _gs_rewire(consumers, old, new) -> None:
    for consumer in consumers:
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new  # SynchronizedList keeps both directions in sync


def _run_graphsurgeon(src: Path, dst: Path | None, external: bool, clock: _Clock) -> dict:
    import onnx
    import onnx_graphsurgeon as gs
    from onnx.external_data_helper import load_external_data_for_model

    clock.lap("import")
    graph = gs.import_onnx(onnx.load(src, load_external_data=False))
    clock.lap("load")
    stats = {"nodes_before": len(graph.nodes)}
    if dst is None:
        return stats

    # 1. Identity after every consumed output (appended; toposort fixes the order).
    new_nodes = []
    for node in list(graph.nodes):
        for out in node.outputs:
            consumers = list(out.outputs)
            if not consumers:
                continue
            new = gs.Variable(f"{out.name}{SUFFIX}", dtype=out.dtype, shape=out.shape)
            _gs_rewire(consumers, out, new)
            new_nodes.append(gs.Node(op="Identity", name=f"{out.name}{SUFFIX}", inputs=[out], outputs=[new]))
    graph.nodes.extend(new_nodes)
    inserted = len(new_nodes)
    clock.lap("insert")

    # 2. Identity elimination: disconnect, then cleanup() drops the dead nodes.
    graph_outputs = {id(t) for t in graph.outputs}
    removed = 0
    for node in graph.nodes:
        if not _is_identity(node.op, node.domain or ""):
            continue
        out = node.outputs[0]
        if id(out) in graph_outputs:
            continue
        _gs_rewire(list(out.outputs), out, node.inputs[0])
        node.inputs.clear()
        node.outputs.clear()
        removed += 1
    clock.lap("eliminate")

    # 3. cleanup + topological sort.
    graph.cleanup().toposort()
    clock.lap("sort")

    model = gs.export_onnx(graph)
    if external:
        # The exported initializers still point at the source directory's data file;
        # onnx can only write them to a new location after reading them into memory.
        load_external_data_for_model(model, str(src.parent))
        onnx.save_model(
            model,
            dst,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_NAME,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, dst)
    clock.lap("save")
    stats.update(inserted=inserted, removed=removed, nodes_after=len(graph.nodes))
    return stats


# raw protobuf ---------------------------------------------------------------------------


def _proto_insert(graph) -> int:
    from onnx import helper

    nodes = list(graph.node)
    consumers = collections.defaultdict(list)  # value name -> [(node, input index)]
    for node in nodes:
        for i, name in enumerate(node.input):
            if name:
                consumers[name].append((node, i))
    new_nodes = []
    inserted = 0
    for node in nodes:
        new_nodes.append(node)
        for out in node.output:
            uses = consumers.get(out) if out else None
            if not uses:
                continue
            new = f"{out}{SUFFIX}"
            for consumer, i in uses:
                consumer.input[i] = new
            new_nodes.append(helper.make_node("Identity", [out], [new], name=new))
            inserted += 1
    del graph.node[:]
    graph.node.extend(new_nodes)  # copies the messages
    return inserted


def _proto_eliminate(graph) -> int:
    graph_outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if _is_identity(node.op_type, node.domain) and node.output[0] not in graph_outputs:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                while name in alias:
                    name = alias[name]
                node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def _proto_toposort(graph) -> None:
    nodes = list(graph.node)
    producer = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = idx
    indegree = [0] * len(nodes)
    successors: list[list[int]] = [[] for _ in nodes]
    for idx, node in enumerate(nodes):
        for name in node.input:
            p = producer.get(name)
            if p is not None:
                indegree[idx] += 1
                successors[p].append(idx)
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)  # stable: keep the original order where possible
    order = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for s in successors[idx]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, s)
    if len(order) != len(nodes):
        raise RuntimeError("graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _run_protobuf(src: Path, dst: Path | None, external: bool, clock: _Clock) -> dict:
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    clock.lap("import")
    model = onnx.load(src, load_external_data=False)
    clock.lap("load")
    stats = {"nodes_before": len(model.graph.node)}
    if dst is None:
        return stats
    inserted = _proto_insert(model.graph)
    clock.lap("insert")
    removed = _proto_eliminate(model.graph)
    clock.lap("eliminate")
    _proto_toposort(model.graph)
    clock.lap("sort")
    if external:
        load_external_data_for_model(model, str(src.parent))
        onnx.save_model(
            model,
            dst,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_NAME,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, dst)
    clock.lap("save")
    stats.update(inserted=inserted, removed=removed, nodes_after=len(model.graph.node))
    return stats


def _run_eager(src: Path, dst: Path | None, external: bool, clock: _Clock) -> dict:
    import onnx

    clock.lap("import")
    model = onnx.load(src)  # reads every external tensor into memory
    clock.lap("load")
    return {"nodes_before": len(model.graph.node)}


RUNNERS = {
    "onnx-ir": _run_onnx_ir,
    "graphsurgeon": _run_graphsurgeon,
    "protobuf": _run_protobuf,
    EAGER: _run_eager,
}


def child_main(lib: str, src: str, dst: str, external: bool, no_gc: bool) -> None:
    if no_gc:
        import gc

        gc.disable()
    clock = _Clock()
    record: dict = {"lib": lib}
    try:
        stats = RUNNERS[lib](Path(src), Path(dst) if dst else None, external, clock)
        record.update(stats)
        record["status"] = "ok"
    except Exception as exc:  # report, don't crash: the parent prints the reason
        record["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    phases = clock.phases
    record["phases"] = phases
    record["total_s"] = sum(v for k, v in phases.items() if k != "import")
    record["rss_import_mib"] = clock.rss_import_mib
    record["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(record), flush=True)


# -------------------------------------------------------------------------- parent side


def _has_external_data(path: Path) -> bool:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _removable_identities(model) -> int:
    outputs = {o.name for o in model.graph.output}
    return sum(1 for n in model.graph.node if _is_identity(n.op_type, n.domain) and n.output[0] not in outputs)


def _op_histogram(model) -> collections.Counter:
    return collections.Counter((n.domain, n.op_type) for n in model.graph.node if not _is_identity(n.op_type, n.domain))


def _is_topological(model) -> bool:
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    available.add("")
    for node in model.graph.node:
        if any(name not in available for name in node.input):
            return False
        available.update(node.output)
    return True


def _ort_inputs(session, npz: Path | None):
    import numpy as np

    if npz is not None and npz.exists():
        data = np.load(npz)
        return {i.name: data[i.name] for i in session.get_inputs()}
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else (2 if k == 0 else 8) for k, d in enumerate(inp.shape)]
        if "int" in inp.type:
            feeds[inp.name] = rng.integers(0, 100, size=shape, dtype=np.int64)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def verify(src: Path, dst: Path, record: dict, run_ort: bool) -> str:
    """Untimed correctness check of a rewritten model; returns 'ok' or a reason."""
    import numpy as np
    import onnx

    original = onnx.load(src, load_external_data=False)
    result = onnx.load(dst, load_external_data=False)
    expected = len(original.graph.node) - _removable_identities(original)
    if len(result.graph.node) != expected:
        return f"nodes {len(result.graph.node)} != expected {expected}"
    if _op_histogram(result) != _op_histogram(original):
        return "op histogram differs"
    if not _is_topological(result):
        return "not topologically sorted"
    if not run_ort:
        return "ok (structure only)"
    try:
        onnx.checker.check_model(str(dst))
    except Exception as exc:
        return f"checker: {str(exc)[:120]}"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
    feeds = _ort_inputs(ref, src.with_suffix(".npz"))
    names = [o.name for o in ref.get_outputs()]
    for name, a, b in zip(names, ref.run(names, feeds), new.run(names, feeds), strict=True):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            return f"ort output {name} differs (max abs {float(np.max(np.abs(a - b))):.2e})"
    return "ok"


def run_case(lib: str, src: Path, mode: str, work: Path, timeout: float, run_ort: bool, keep: bool) -> dict:
    external = _has_external_data(src)
    out_dir = Path(tempfile.mkdtemp(prefix=f"{lib}-", dir=work))
    dst = out_dir / "model.onnx" if mode == "full" else None
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        lib,
        str(src),
        str(dst) if dst else "",
        "1" if external else "0",
        *(["--no-gc"] if ARGS.no_gc else []),
    ]
    wall = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"lib": lib, "status": f"timeout (> {timeout:g} s)", "phases": {}}
    wall = time.perf_counter() - wall
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        shutil.rmtree(out_dir, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {
            "lib": lib,
            "status": f"crashed rc={proc.returncode}: {tail[0][:160]}",
            "phases": {},
        }
    record = json.loads(lines[-1][len("RESULT ") :])
    record["process_s"] = wall
    if record["status"] == "ok" and dst is not None:
        record["check"] = verify(src, dst, record, run_ort)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return record


def run_repeated(lib, src, mode, work, timeout, run_ort, keep, repeat) -> dict:
    records = []
    for i in range(repeat):
        rec = run_case(lib, src, mode, work, timeout, run_ort and i == 0, keep)
        records.append(rec)
        if rec["status"] != "ok":
            return rec
    best = dict(records[0])
    best["repeat"] = repeat
    best["total_s"] = statistics.median(r["total_s"] for r in records)
    best["phases"] = {k: statistics.median(r["phases"][k] for r in records) for k in records[0]["phases"]}
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in records)
    return best


def ensure_many_model(work: Path, layers: int) -> Path | None:
    """Generate the many-small-layers model with make_big_model.py (reused if present)."""
    import onnx

    tool = ARGS.shared / "tools" / "make_big_model.py"
    out = work / f"many-{layers}" / "model.onnx"
    while True:
        if not out.exists():
            if not tool.exists():
                print(f"skip many-node model: {tool} not found")
                return None
            cmd = [
                sys.executable,
                str(tool),
                "--out",
                str(out),
                "--layers",
                str(layers),
                "--hidden",
                "64",
                "--heads",
                "4",
                "--ffn",
                "160",
                "--vocab",
                "500",
                "--seq-len",
                "64",
            ]
            subprocess.run(cmd, check=True, capture_output=True)
        n = len(onnx.load(out, load_external_data=False).graph.node)
        if n >= MIN_MANY_NODES:
            return out
        layers = int(layers * MIN_MANY_NODES / n) + 1
        out = work / f"many-{layers}" / "model.onnx"


def _fmt_s(x: float | None) -> str:
    return "" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def table_rows(model_label: str, nodes: int, records: list[dict], mode: str) -> list[list[str]]:
    rows = []
    for r in records:
        p = r.get("phases", {})
        ok = r["status"] == "ok"
        rewrite = sum(p.get(k, 0.0) for k in ("insert", "eliminate", "sort")) if ok else None
        row = [
            model_label,
            str(nodes),
            r["lib"],
            _fmt_s(p.get("load")) if ok else r["status"],
        ]
        if mode == "full":
            row += [
                _fmt_s(rewrite) if ok else "",
                "/".join(_fmt_s(p.get(k)) for k in ("insert", "eliminate", "sort")) if ok else "",
                _fmt_s(p.get("save")) if ok else "",
                _fmt_s(r.get("total_s")) if ok else "",
            ]
        row += [
            f"{r['peak_rss_mib']:.0f}" if ok else "",
            f"{r['peak_rss_mib'] - r['rss_import_mib']:.0f}" if ok else "",
        ]
        if mode == "full":
            row.append(r.get("check", "") if ok else "")
        rows.append(row)
    return rows


FULL_HEADER = [
    "model",
    "nodes",
    "library",
    "load s",
    "rewrite s",
    "insert/elim/sort s",
    "save s",
    "total s",
    "peak RSS MiB",
    "RSS over import MiB",
    "check",
]
LOAD_HEADER = ["model", "nodes", "library", "load s", "peak RSS MiB", "RSS over import MiB"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--shared",
        type=Path,
        default=DEFAULT_SHARED,
        help="shared folder with models/ and tools/ (default: <repo>/../shared)",
    )
    ap.add_argument(
        "--models",
        nargs="*",
        default=list(DEFAULT_MODELS),
        help="model names under <shared>/models (missing ones are skipped)",
    )
    ap.add_argument("--libs", nargs="*", default=list(LIBS), choices=LIBS)
    ap.add_argument(
        "--many-layers",
        type=int,
        default=200,
        help="layers of the generated many-node model (raised until >= 10,000 nodes); 0 skips it",
    )
    ap.add_argument(
        "--big",
        type=Path,
        default=DEFAULT_BIG,
        help="large external-data model for the load-only case (skipped if "
        "absent; make it with <shared>/tools/make_big_model.py --out PATH)",
    )
    ap.add_argument(
        "--big-full",
        action="store_true",
        help="also run load+rewrite+save on --big (writes its weights again)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per case; median time, max RSS (big model: always 1)",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "trtc-ir-choice",
        help="scratch folder (generated model, outputs)",
    )
    ap.add_argument("--no-ort", action="store_true", help="skip checker/onnxruntime checks")
    ap.add_argument("--keep", action="store_true", help="keep the rewritten models")
    ap.add_argument("--no-gc", action="store_true", help="run the cases with Python's cyclic GC disabled")
    ap.add_argument("--markdown", type=Path, help="write the results section to this file")
    ap.add_argument(
        "--results",
        action="store_true",
        help="also replace this script's section of benchmarks/RESULTS.md (via results.py)",
    )
    ap.add_argument("--child", nargs=4, metavar=("LIB", "SRC", "DST", "EXT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


ARGS: argparse.Namespace


def main(argv=None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    if ARGS.child:
        lib, src, dst, ext = ARGS.child
        child_main(lib, src, dst, ext == "1", ARGS.no_gc)
        return 0

    work = ARGS.work_dir
    work.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path]] = []
    if ARGS.shared.is_dir():
        for name in ARGS.models:
            path = ARGS.shared / "models" / f"{name}.onnx"
            if path.exists():
                cases.append((name, path))
            else:
                print(f"skip {name}: {path} not found")
        if ARGS.many_layers > 0:
            many = ensure_many_model(work, ARGS.many_layers)
            if many is not None:
                cases.append((f"synthetic {many.parent.name}", many))
    else:
        print(f"skip shared models and the many-node model: {ARGS.shared} not found")

    import onnx

    def node_count(path: Path) -> int:
        return len(onnx.load(path, load_external_data=False).graph.node)

    full_rows: list[list[str]] = []
    load_rows: list[list[str]] = []
    raw: list[dict] = []
    for label, path in cases:
        nodes = node_count(path)
        records = []
        for lib in ARGS.libs:
            rec = run_repeated(lib, path, "full", work, ARGS.timeout, not ARGS.no_ort, ARGS.keep, ARGS.repeat)
            print(
                f"  {label:<28} {lib:<13} {rec['status']:<10} {_fmt_s(rec.get('total_s'))} s  {rec.get('check', '')}",
                flush=True,
            )
            records.append(rec)
            raw.append({"model": label, "mode": "full", **rec})
        full_rows += table_rows(label, nodes, records, "full")

    big = ARGS.big
    if big.exists():
        nodes = node_count(big)
        size_gb = sum(f.stat().st_size for f in big.parent.iterdir() if f.is_file()) / 1e9
        label = f"{big.name} ({size_gb:.1f} GB)"
        records = []
        for lib in [*ARGS.libs, EAGER]:
            rec = run_repeated(lib, big, "load", work, ARGS.timeout, False, False, 1)
            print(
                f"  {label:<28} {lib:<13} load  {rec['status']:<10} {_fmt_s(rec.get('total_s'))} s",
                flush=True,
            )
            records.append(rec)
            raw.append({"model": label, "mode": "load", **rec})
        load_rows += table_rows(label, nodes, records, "load")
        if ARGS.big_full:
            records = []
            for lib in ARGS.libs:
                rec = run_repeated(lib, big, "full", work, ARGS.timeout, False, False, 1)
                print(
                    f"  {label:<28} {lib:<13} full  {rec['status']:<10} "
                    f"{_fmt_s(rec.get('total_s'))} s  {rec.get('check', '')}",
                    flush=True,
                )
                records.append(rec)
                raw.append({"model": label, "mode": "full", **rec})
            full_rows += table_rows(label, nodes, records, "full")
    else:
        print(
            f"skip big-model load: {big} not found (make it with "
            f"{ARGS.shared / 'tools' / 'make_big_model.py'} --out {big})"
        )

    env = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {_versions()}" + (", cyclic GC disabled" if ARGS.no_gc else "")
    )
    print()
    print(env)
    if full_rows:
        print("\nload + rewrite + save (median of runs; peak RSS = max)\n")
        print(text_table(FULL_HEADER, full_rows))
    if load_rows:
        print("\nload only\n")
        print(text_table(LOAD_HEADER, load_rows))

    md = ["## Measurements", "", f"Environment: {env}.", ""]
    if full_rows:
        md += [
            f"Load + full-graph rewrite + save (median of {ARGS.repeat} runs, peak RSS = max; big model: 1 run):",
            "",
            markdown_table(FULL_HEADER, full_rows),
            "",
        ]
    if load_rows:
        md += ["Load only:", "", markdown_table(LOAD_HEADER, load_rows), ""]
    text = "\n".join(md)
    if ARGS.markdown:
        ARGS.markdown.write_text(text)
        ARGS.markdown.with_suffix(".json").write_text(json.dumps(raw, indent=1))
        print(f"\nwrote {ARGS.markdown} (+ .json)")
    if ARGS.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import RESULTS, write_section

        write_section("IR library choice (benchmarks/ir_choice.py)", "\n".join(md[2:]))
        print(f"updated {RESULTS}")
    return 0


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("onnx", "onnx-ir", "onnx-graphsurgeon", "protobuf"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
