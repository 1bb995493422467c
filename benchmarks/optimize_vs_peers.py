"""`trtc optimize` beside onnxslim, onnxsim and polygraphy's constant folding, in the same run,
on every corpus model: node count after optimization and wall time.

    python benchmarks/optimize_vs_peers.py [--real] [--filter NAME] [--write-results]

--real: the real production models of ../shared/models/real instead of the corpus.

Each tool runs in a fresh process, timed around its own work (load + optimize + save; imports
excluded). Node counts exclude `Constant` nodes (an initializer by another name), count fused
ops as one node each, and are of the main graph. Peers that are not installed are skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "models"

CHILD = r"""
import json, sys, time, onnx
tool, src, dst = sys.argv[1:4]
def count(proto):
    return sum(1 for n in proto.graph.node if n.op_type != "Constant")
if tool == "trtc":
    from trtc.frontend import parse_onnx
    from trtc.ir.onnx_export import to_model_proto
    from trtc.ir import save_artifact
    from trtc.passes.pipeline import optimize, optimized_meta
    start = time.perf_counter()
    artifact = parse_onnx(src)
    report = optimize(artifact.model)
    save_artifact(artifact.model, dst, optimized_meta(artifact.meta, report, {}))
    seconds = time.perf_counter() - start
    nodes = sum(1 for n in artifact.model.graph if n.op_type != "Constant")
elif tool == "onnxslim":
    import onnxslim
    start = time.perf_counter()
    onnxslim.slim(src, dst)
    seconds = time.perf_counter() - start
    nodes = count(onnx.load(dst, load_external_data=False))
elif tool == "onnxsim":
    import onnxsim
    start = time.perf_counter()
    model, ok = onnxsim.simplify(onnx.load(src))
    onnx.save(model, dst)
    seconds = time.perf_counter() - start
    nodes = count(model)
elif tool == "polygraphy":
    from polygraphy.backend.onnx import fold_constants
    start = time.perf_counter()
    model = fold_constants(onnx.load(src), error_ok=False)
    onnx.save(model, dst)
    seconds = time.perf_counter() - start
    nodes = count(model)
print(json.dumps({"seconds": seconds, "nodes": nodes}))
"""

TOOLS = {"trtc": "trtc", "onnxslim": "onnxslim", "onnxsim": "onnxsim", "polygraphy": "polygraphy"}


def corpus(real: bool = False) -> list[Path]:
    import onnx

    if real:
        return sorted((SHARED / "real").glob("*.onnx"))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(SHARED.glob("*.onnx")) + sorted(light.glob("light_*.onnx"))


def installed(tool: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(TOOLS[tool]) is not None


def run_tool(tool: str, model: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / ("out.trtir" if tool == "trtc" else "out.onnx")
        try:
            # In a scratch cwd: the peers leave temporary files (external data, shape-inference dumps) there.
            proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(model), str(dst)], capture_output=True,
                                  text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f}s"}
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            return {"error": tail[:160]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def original_nodes(model: Path) -> int:
    import onnx

    return sum(1 for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type != "Constant")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--real", action="store_true", help="the real production models (../shared/models/real)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    tools = [t for t in TOOLS if installed(t)]
    models = [m for m in corpus(args.real) if args.filter in m.name]
    if not models:
        print(f"skipped: no corpus models found (looked in {SHARED})")
        return 0
    rows, totals, wins = [], {t: 0.0 for t in tools}, 0
    for model in models:
        results = {t: run_tool(t, model, args.timeout) for t in tools}
        for t, r in results.items():
            totals[t] += r.get("seconds", 0.0)
        peers = [r["nodes"] for t, r in results.items() if t != "trtc" and "nodes" in r]
        ours = results["trtc"].get("nodes")
        best = min(peers) if peers else None
        wins += int(ours is not None and (best is None or ours <= best))
        rows.append((model.stem, original_nodes(model), results, best))
        print(model.stem, {t: r.get("nodes", r.get("error")) for t, r in results.items()}, flush=True)
    peer_tools = [t for t in tools if t != "trtc"]
    header = "| model | exported | " + " | ".join(f"{t} nodes (s)" for t in tools) + " | trtc <= best peer |"
    lines = [f"Tools: {', '.join(tools)}. Node counts exclude Constant nodes; time = load + optimize + save.", "",
             header, "|" + "---|" * (len(tools) + 3)]
    for name, exported, results, best in rows:
        cells = [f"{r['nodes']} ({r['seconds']:.2f})" if "nodes" in r else f"error: {r['error']}"
                 for r in (results[t] for t in tools)]
        ours = results["trtc"].get("nodes")
        ok = "yes" if ours is not None and (best is None or ours <= best) else "no"
        lines.append(f"| {name} | {exported} | " + " | ".join(cells) + f" | {ok} |")
    best_peer_total = min((totals[t] for t in peer_tools), default=0.0)
    lines += ["", f"trtc's node count <= the best peer's on {wins} of {len(rows)} models.",
              "Total wall time: " + ", ".join(f"{t} {totals[t]:.1f}s" for t in tools)
              + (f"; trtc / best peer = {totals['trtc'] / best_peer_total:.2f}x" if best_peer_total else "")]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section(f"Optimizer vs peers{' on real models' if args.real else ''} "
                      "(benchmarks/optimize_vs_peers.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
