"""trtc (parse + optimize + build through the network-definition API) against TensorRT-RTX's
own ONNX parser + build, with the same profile and targets, in the same run, on every corpus
model and every real model of ../shared/models/real: success, wall time, network layer counts
(the layers of the network handed to the builder; the goal: trtc has no more than the parser).

    python benchmarks/build_vs_parser.py [--filter NAME] [--fp16] [--write-results]

Each contender runs in a fresh process, timed around its work (imports excluded; trtc's
imports of onnx/onnxruntime cost about 1 s more per process than tensorrt_rtx alone). With
--fp16, trtc runs its precision pass; the parser gets the fp32 model (TensorRT-RTX has no
fp16 flag: a parser build of an fp32 model is an fp32 engine). Corpus models get a profile
around their reference shapes; real models the `build_shapes` of their manifest.json. Where the
parser parses a model but cannot build it, its layer count is still given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import light_models, shared_models  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np
tool, path, profile_json, fp16 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
profile = {k: tuple(tuple(d) for d in v) for k, v in json.loads(profile_json).items()}
if tool == "trtc":
    from trtc.frontend import parse_onnx
    from trtc.lower.backend import load_backend
    from trtc.lower.build import BuildOptions, build_engine
    from trtc.passes.pipeline import optimize
    import tensorrt_rtx
    start = time.perf_counter()
    artifact = parse_onnx(path)
    optimize(artifact.model)
    if fp16:
        from trtc.precision import PrecisionOptions, apply_precision
        from trtc.reference.feeds import FeedOptions, make_feeds, model_inputs
        from pathlib import Path
        npz = Path(path).with_suffix(".npz")  # the model's reference inputs calibrate where it has them
        if npz.is_file():
            with np.load(npz) as data:
                names = [v.name for v in artifact.model.graph.inputs]
                # The LLM corpus keys its cases (`in:input_ids`): the prefill case calibrates.
                prefix = "" if any(n in data.files for n in names) else "in:"
                feeds = {n: data[prefix + n] for n in names if prefix + n in data.files}
        else:
            shapes = {k: v[1] for k, v in profile.items()}
            feeds = make_feeds(model_inputs(artifact.model), FeedOptions(shapes=shapes))
        apply_precision(artifact.model, [feeds], PrecisionOptions())
    result = build_engine(artifact.model, artifact.meta, load_backend("tensorrt-rtx"),
                          BuildOptions(profiles=[profile] if profile else []))
    layers = result.sidecar["network_layers"]
else:
    import tensorrt_rtx as trt
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(path):
        raise SystemExit("parse failed: " + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))[:300])
    config = builder.create_builder_config()
    if profile:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    layers = network.num_layers
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        print(json.dumps({"error": "build failed", "layers": layers}))
        raise SystemExit(0)
print(json.dumps({"seconds": time.perf_counter() - start, "layers": layers}))
"""
REAL = REPO.parent / "shared" / "models" / "real"


def profile_for(model) -> dict:
    import onnx

    inputs, _ = model.reference()
    proto = onnx.load(str(model.path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    profile = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        opt = list(inputs[vi.name].shape)
        lo = [o if d.HasField("dim_value") else max(1, o // 2) for d, o in zip(dims, opt)]
        hi = [o if d.HasField("dim_value") else o * 2 for d, o in zip(dims, opt)]
        profile[vi.name] = [lo, opt, hi]
    return profile


def real_models() -> list[tuple[SimpleNamespace, dict]]:
    """The real models of ../shared/models/real with manifest.json's `build_shapes` profile."""
    manifest = REAL / "manifest.json"
    if not manifest.is_file():
        return []
    models = []
    for entry in json.loads(manifest.read_text()):
        if not (REAL / entry["file"]).is_file():
            continue
        models.append((SimpleNamespace(name=entry["name"], path=REAL / entry["file"]), manifest_profile(entry)))
    return models


def manifest_profile(entry: dict) -> dict:
    """manifest.json's `build_shapes` (`--shapes` values) as {name: (min, opt, max)}, read as trtc reads them."""
    from trtc.lower.profiles import parse_range

    return dict(parse_range(spec) for spec in entry.get("build_shapes") or [])


def run(tool: str, model, profile: dict, fp16: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(model.path), json.dumps(profile), str(int(fp16))],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": tail[:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in result and (why := _builder_error(proc.stderr)):
        result["error"] += f" ({why})"
    return result


def _builder_error(log: str) -> str | None:
    """The builder's last error line (TensorRT logs them as `[E] ...` or `Internal Error: ...`), shortened."""
    lines = [line for line in log.splitlines() if "[E]" in line or "Error" in line]
    if not lines:
        return None
    text = lines[-1].split("[E]", 1)[-1].strip()
    return text.split(". ", 1)[0][:160]


def _table(models: list, fp16: bool, goal: float) -> list[str]:
    """Both contenders on each model: the table's lines and its summary."""
    rows, totals = [], {"trtc": 0.0, "parser": 0.0}
    for model, profile in models:
        result = {tool: run(tool, model, profile, fp16) for tool in ("trtc", "parser")}
        if all("seconds" in r for r in result.values()):  # the time ratio compares models both build
            for tool, r in result.items():
                totals[tool] += r["seconds"]
        rows.append((model.name, result))
        print(model.name, result, flush=True)
    lines = ["| model | trtc s | trtc layers | parser s | parser layers |", "|---|---|---|---|---|"]
    for name, r in rows:
        cells = []
        for tool in ("trtc", "parser"):
            seconds = f"{r[tool]['seconds']:.2f}" if "seconds" in r[tool] else f"failed: {r[tool]['error']}"
            cells += [seconds, str(r[tool].get("layers", "-"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ok = {t: sum("seconds" in r[t] for _, r in rows) for t in totals}
    wherever = all("seconds" in r["trtc"] for _, r in rows if "seconds" in r["parser"])
    counted = [(r["trtc"]["layers"], r["parser"]["layers"]) for _, r in rows
               if "layers" in r["trtc"] and "layers" in r["parser"]]
    lean = sum(ours <= theirs for ours, theirs in counted)
    ratio = totals["trtc"] / totals["parser"] if totals["parser"] else float("nan")
    return lines + ["", f"Successes: trtc {ok['trtc']}/{len(rows)}, parser {ok['parser']}/{len(rows)}; trtc succeeds "
                    f"wherever the parser does: {'yes' if wherever else 'no'}. Total time where both build: "
                    f"trtc {totals['trtc']:.1f}s, "
                    f"parser {totals['parser']:.1f}s, ratio {ratio:.2f}x (goal <= {goal}x). Layers: trtc has no more "
                    f"than the parser on {lean}/{len(counted)} models (total {sum(o for o, _ in counted)} against "
                    f"{sum(t for _, t in counted)})."]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    corpus = [(m, profile_for(m)) for m in shared_models() + light_models() if args.filter in m.name]
    real = [(m, p) for m, p in real_models() if args.filter in m.name]
    lines = [f"TensorRT-RTX, no GPU; trtc {'with --fp16' if args.fp16 else 'fp32'}; profiles: reference shape as "
             "OPT, half/double it as MIN/MAX for each dynamic dim (real models: manifest.json's build_shapes). "
             "Layers: the network handed to the builder (trtc's after its optimizer; the parser's from the file "
             "as given).", ""]
    # Time goals: the corpus' (this benchmark's own), the real models' (issue 11's acceptance).
    for title, models, goal in (("Corpus", corpus, 1.2), ("Real models (../shared/models/real)", real, 1.5)):
        if models:
            lines += [f"{title}:", "", *_table(models, args.fp16, goal), ""]
    text = "\n".join(lines).rstrip()
    print(text)
    if args.write_results:
        from results import write_section

        write_section(f"Build vs TensorRT-RTX's ONNX parser{' (fp16)' if args.fp16 else ''} "
                      "(benchmarks/build_vs_parser.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
