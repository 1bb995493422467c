"""trtc's fp16 precision pass beside its peers, in the same run, on the same models: ModelOpt
AutoCast (keeps a node fp32 when calibration sees a value above data_max), onnxslim's
`--dtype fp16` and polygraphy's `--fp-to-fp16` (both cast the whole model through
onnxconverter-common).

    python benchmarks/precision_vs_peers.py [--filter NAME] [--no-outliers] [--timeout S] [--write-results]

Models: ../shared/models, the onnx wheel's light_* models, and two outlier models built here
(a few weight channels scaled so activations reach ~1e3..1e5, as real transformers have; the
corpus models have small random weights, on which whole-model fp16 tends to pass).

Every tool's fp16 ONNX is judged the same way: checked (onnx's full check, strict type
inference; a file that passes only without its value_info is marked 'stale value_info', and
judged without it), parsed by trtc, rounded through fp16 wherever
the graph stores fp16 (`trtc.precision.simulate.simulation_model`: what TensorRT computes),
run on the model's reference inputs and compared with the fp32 model's outputs (worst output).
fp16 FLOP share: FLOPs (`node_flops`, shapes from that run, weights included) of nodes whose
float outputs are fp16, over all nodes but Casts. trtc's accuracy and time are those of
`precision_table.precision_row`; its typed graph is judged by the same yardstick as well.
Each peer runs in a fresh process, timed around its conversion (imports excluded); ModelOpt
gets the same calibration data as trtc (the reference inputs, as an .npz). Peers that are not
installed are skipped with a note (ModelOpt's ONNX code also imports onnxscript and lief, which
its `[onnx]` extra would bring with an older onnx pinned: install them alone; onnxslim's and
polygraphy's fp16 casts need onnxconverter-common; torch: the CPU build).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from corpus import MODELS, CorpusModel, light_models, shared_models  # noqa: E402

TITLE = "Precision vs peers (benchmarks/precision_vs_peers.py)"
DATA_MAX, INIT_MAX = 512.0, 65504.0

CHILD = r"""
import json, sys, time
tool, src, dst, calib = sys.argv[1:5]
start = time.perf_counter()
import onnx
if tool == "modelopt":
    from modelopt.onnx.autocast import convert_to_mixed_precision
elif tool == "onnxslim":
    import onnxslim
elif tool == "polygraphy":
    from polygraphy.backend.onnx import convert_to_fp16
imported = time.perf_counter()
if tool == "modelopt":
    model = convert_to_mixed_precision(src, low_precision_type="fp16", data_max=float(sys.argv[5]),
                                       init_max=float(sys.argv[6]), keep_io_types=True, calibration_data=calib)
    onnx.save(model, dst)
elif tool == "onnxslim":
    onnxslim.slim(src, dst, dtype="fp16")
elif tool == "polygraphy":
    onnx.save(convert_to_fp16(onnx.load(src)), dst)
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "import_seconds": imported - start}))
"""

# peer -> (modules it needs, how it is called, as a user would)
PEERS = {
    "modelopt": (("modelopt", "torch", "onnxscript", "lief"),
                 f"AutoCast convert_to_mixed_precision(fp16, data_max={DATA_MAX:g}, init_max={INIT_MAX:g}, "
                 "keep_io_types=True, calibration_data=.npz)"),
    "onnxslim": (("onnxslim", "onnxconverter_common"), "onnxslim.slim(dtype='fp16') (= onnxslim --dtype fp16)"),
    "polygraphy": (("polygraphy", "onnxconverter_common"), "convert_to_fp16 (= polygraphy convert --fp-to-fp16)"),
}
FLOATS = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")
LOW = ("FLOAT16", "BFLOAT16")


# ---------------------------------------------------------------- outlier models

def _outlier_model(path: Path, *, scale: float, temperature: float, decomposed_ln: bool, seed: int,
                   logit_gain: float = 1.0) -> None:
    """x -> MatMul (3 weight channels scaled by `scale`) -> LayerNorm -> MatMul -> x temperature ->
    Softmax, as tests/test_precision.py::outlier_transformer_block. `decomposed_ln` writes the
    LayerNorm the way the TorchScript exporter does before opset 17 (ReduceMean, Sub, Pow, ...),
    whose Pow squares the outliers. Saved with an .npz of reference inputs and outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    hidden = 64
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.1
    w1[:, :3] *= scale
    w2 = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.2 * logit_gain
    inits = {"w1": w1, "w2": w2, "g": np.ones(hidden), "b": np.zeros(hidden), "temp": np.array(temperature)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="blocks.0.mlp.fc1")]
    if decomposed_ln:
        inits.update({"two": np.array(2.0), "eps": np.array(1e-5)})
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
        nodes += [
            helper.make_node("Constant", [], ["ln_axes"], name="blocks.0.ln.axes", value=axes),
            helper.make_node("ReduceMean", ["h", "ln_axes"], ["mu"], name="blocks.0.ln.mean"),
            helper.make_node("Sub", ["h", "mu"], ["d"], name="blocks.0.ln.sub"),
            helper.make_node("Pow", ["d", "two"], ["d2"], name="blocks.0.ln.pow"),
            helper.make_node("ReduceMean", ["d2", "ln_axes"], ["var"], name="blocks.0.ln.var"),
            helper.make_node("Add", ["var", "eps"], ["var_eps"], name="blocks.0.ln.add_eps"),
            helper.make_node("Sqrt", ["var_eps"], ["std"], name="blocks.0.ln.sqrt"),
            helper.make_node("Div", ["d", "std"], ["z"], name="blocks.0.ln.div"),
            helper.make_node("Mul", ["z", "g"], ["zg"], name="blocks.0.ln.mul"),
            helper.make_node("Add", ["zg", "b"], ["n"], name="blocks.0.ln.add"),
        ]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="blocks.0.ln", axis=-1))
    nodes += [
        helper.make_node("MatMul", ["n", "w2"], ["logits"], name="blocks.0.attn.qk"),
        helper.make_node("Mul", ["logits", "temp"], ["scaled"], name="blocks.0.attn.scale"),
        helper.make_node("Softmax", ["scaled"], ["y"], name="blocks.0.attn.softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "outlier_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    x = (rng.standard_normal((2, 16, hidden)) * 4).astype(np.float32)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.savez(path.with_suffix(".npz"), x=x, y=y)


def outlier_models(folder: Path) -> list[CorpusModel]:
    """Two blocks with activation outliers. `-ln`: ~2.5e5 after the first MatMul (overflows fp16
    there), then LayerNormalization and Softmax over logits up to ~20. `-decomposed_ln`: ~2.6e3
    (fits fp16) into a decomposed LayerNorm whose Pow reaches ~7e6 (overflows), then sharp
    attention: Softmax over logits up to ~370, below data_max=512 but where fp16's spacing is 0.25."""
    specs = {
        "outlier_block-ln": dict(scale=30000.0, temperature=4.0, decomposed_ln=False, seed=0),
        "outlier_block-decomposed_ln": dict(scale=300.0, temperature=8.0, decomposed_ln=True, seed=1,
                                            logit_gain=10.0),
    }
    models = []
    for name, spec in specs.items():
        path = folder / f"{name}.onnx"
        _outlier_model(path, **spec)
        models.append(CorpusModel(name, path))
    return models


# ---------------------------------------------------------------- judging an fp16 graph

def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


def _io_types(model) -> str:
    """'fp32' when every float input and output of the graph is fp32, else what they are."""
    names = {_dtype_name(v.dtype) for v in list(model.graph.inputs) + list(model.graph.outputs)
             if _dtype_name(v.dtype) in FLOATS}
    return "fp32" if names <= {"FLOAT"} else "/".join(sorted({"FLOAT": "fp32", "FLOAT16": "fp16"}.get(n, n.lower())
                                                              for n in names))


def _fp16_flop_share(model, shapes: dict) -> float:
    """Share of FLOPs in nodes whose float outputs are all fp16 (Casts left out)."""
    from trtc.precision.flops import node_flops

    low = total = 0
    for node in model.graph:
        if node.op_type == "Cast":
            continue
        flops = node_flops(node, shapes)
        total += flops
        floats = [_dtype_name(v.dtype) for v in node.outputs if _dtype_name(v.dtype) in FLOATS]
        if floats and all(d in LOW for d in floats):
            low += flops
    return low / total if total else 0.0


def judge(model, inputs: dict, reference: dict) -> dict:
    """Predicted error of a typed IR model against fp32 reference outputs, and its fp16 FLOP share."""
    from trtc.ir.walk import all_initializers
    from trtc.precision.simulate import simulation_model
    from trtc.reference.metrics import error_metrics, worst
    from trtc.reference.runner import ReferenceRunner

    io_types = _io_types(model)
    sim = simulation_model(model)
    typed_names = {v.name for node in model.graph for v in node.outputs if v.name}
    fetch = [v for node in sim.graph for v in node.outputs if v.name in typed_names]
    wanted = {v.name: v.dtype for v in sim.graph.inputs}
    feeds = {name: (np.asarray(value).astype(np.float32) if np.asarray(value).dtype.kind == "f" else value)
             for name, value in inputs.items() if name in wanted}
    runner = ReferenceRunner(sim, fetch=fetch)
    try:
        results = runner.run(feeds)
        backend = runner.backend
    finally:
        runner.close()
    shapes = {name: a.shape for name, a in results.items() if isinstance(a, np.ndarray)}
    shapes.update({name: np.asarray(a).shape for name, a in feeds.items()})
    shapes.update({v.name: tuple(v.const_value.shape) for v in all_initializers(model.graph)
                   if v.const_value is not None})
    out_names = [v.name for v in sim.graph.outputs]
    metrics = []
    for i, (name, want) in enumerate(reference.items()):
        got = results.get(name, results.get(out_names[i]) if i < len(out_names) else None)
        if isinstance(want, np.ndarray) and want.dtype.kind == "f" and got is not None:
            metrics.append(error_metrics(want, np.asarray(got, dtype=np.float64)))
    if not metrics:
        raise RuntimeError("no float output to compare")
    m = worst(metrics)
    return {"flop_share": _fp16_flop_share(model, shapes), "max_rel_error": m["max_rel_error"],
            "cosine": m["cosine"], "nonfinite": m["nonfinite"], "io": io_types, "backend": backend}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:150]}" if text else type(exc).__name__


# ---------------------------------------------------------------- tools

def peer_available(tool: str) -> str | None:
    """None when the peer can run here, else why not."""
    missing = [m for m in PEERS[tool][0] if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(missing)})" if missing else None


def run_peer(tool: str, model: CorpusModel, inputs: dict, reference: dict, tmp: Path, timeout: float) -> dict:
    from trtc.frontend import parse_onnx

    calib = tmp / f"{model.name}.calib.npz"
    if not calib.exists():
        np.savez(calib, **inputs)
    dst = tmp / f"{model.name}.{tool}.onnx"
    cmd = [sys.executable, "-c", CHILD, tool, str(model.path), str(dst), str(calib), str(DATA_MAX), str(INIT_MAX)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        last = (errors or lines or [f"exit {proc.returncode}"])[-1].strip()
        last = last.replace("onnx.onnx_cpp2py_export.checker.", "").replace(str(tmp) + "/", "")
        return {"error": f"{tool} failed: {last[:160]}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    import onnx

    proto = onnx.load(str(dst))
    row["valid"] = validity(proto)
    if row["valid"] not in ("yes", STALE):
        return {**row, "error": f"invalid ONNX: {row['valid']}"}
    del proto.graph.value_info[:]  # judge the graph by its ops' types, not by stale annotations
    clean = tmp / f"{model.name}.{tool}.clean.onnx"
    onnx.save(proto, str(clean))
    try:
        typed = parse_onnx(clean).model
    except Exception as exc:
        why = _first_line(exc).replace(f"{clean}: ", "").replace(str(clean), "its output")
        return {**row, "error": f"trtc cannot parse its output: {why}"}
    try:
        return {**row, **judge(typed, inputs, reference)}
    except Exception as exc:
        return {**row, "error": f"simulation failed: {_first_line(exc)}"}


STALE = "stale value_info"


def validity(proto) -> str:
    """'yes' when the model passes onnx's full check (strict type inference) as written; STALE
    when it passes only without its value_info (onnxruntime refuses it as written; TensorRT's
    parser does not read intermediate value_info); else the checker's complaint, in short."""
    import onnx

    def complaint(p) -> str | None:
        try:
            onnx.checker.check_model(p, full_check=True)
            return None
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return text.replace("[ShapeInferenceError] ", "").replace("Inference error(s): ", "")[:140]

    first = complaint(proto)
    if first is None:
        return "yes"
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.graph.value_info[:]
    again = complaint(stripped)
    return STALE if again is None else again


def run_trtc(model: CorpusModel, inputs: dict, reference: dict) -> dict:
    """precision_table's row, and trtc's typed graph judged by the same yardstick as the peers'."""
    from trtc.frontend import parse_onnx
    from trtc.ir.onnx_export import to_model_proto
    from trtc.passes.pipeline import optimize
    from trtc.precision import PrecisionOptions, apply_precision

    from precision_table import precision_row

    try:
        row = precision_row(model)
        typed = parse_onnx(model.path).model
        optimize(typed)
        apply_precision(typed, [inputs], PrecisionOptions(target="fp16"))
        valid = validity(to_model_proto(typed))
        same = judge(typed, inputs, reference)
    except Exception as exc:
        return {"error": f"trtc failed: {_first_line(exc)}"}
    return {"seconds": row["seconds"], "cosine": row["cosine"], "max_rel_error": row["max_rel_error"],
            "nonfinite": same["nonfinite"], "flop_share": same["flop_share"], "reported_share": row["flop_share"],
            "io": same["io"], "valid": valid, "backend": same["backend"], "yardstick": same}


def fp32_reference(model: CorpusModel) -> tuple[dict, dict]:
    """The model's reference inputs and the fp32 model's outputs on them (as trtc's own row
    compares against: the CPU reference run of the parsed model)."""
    from trtc.frontend import parse_onnx
    from trtc.reference.runner import ReferenceRunner

    inputs, _ = model.reference()
    runner = ReferenceRunner(parse_onnx(model.path).model)
    try:
        outputs = runner.run(inputs)
    finally:
        runner.close()
    return inputs, outputs


# ---------------------------------------------------------------- report

def accurate(r: dict) -> bool:
    return ("error" not in r and r.get("valid", "yes") in ("yes", STALE) and r["nonfinite"] == 0
            and r["cosine"] >= 0.999 and r["max_rel_error"] <= 1e-2)


def invalid(r: dict) -> bool:
    return "valid" in r and r["valid"] not in ("yes", STALE)


def numeric_miss(r: dict) -> bool:
    """Ran, but off numerically (NaN/Inf or beyond the goal)."""
    return "error" not in r and not (r["nonfinite"] == 0 and r["cosine"] >= 0.999 and r["max_rel_error"] <= 1e-2)


def _cell_rel(r: dict) -> str:
    return "inf" if math.isinf(r["max_rel_error"]) else f"{r['max_rel_error']:.2e}"


def _cell_cos(r: dict) -> str:
    return "nan" if math.isnan(r["cosine"]) else f"{r['cosine']:.6f}"


def table(rows: list[tuple[str, dict]], tools: list[str]) -> list[str]:
    lines = ["| model | tool | fp16 FLOP share | max error / range | cosine | NaN/Inf | I/O | valid ONNX | accurate | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, results in rows:
        for tool in tools:
            r = results[tool]
            seconds = f"{r['seconds']:.2f}" if "seconds" in r else "—"
            if "error" in r:
                why = r["error"].split("; the file is")[0].replace("|", "/")
                valid = r.get("valid", "—") if r.get("valid") in ("yes", STALE) else ("no" if "valid" in r else "—")
                lines.append(f"| {name} | {tool} | — | — | — | — | — | {valid} | error: {why} | {seconds} |")
                continue
            share = f"{r['flop_share']:.1%}"
            if "reported_share" in r and abs(r["reported_share"] - r["flop_share"]) > 0.005:
                share += f" (reports {r['reported_share']:.1%})"
            valid = r.get("valid", "yes") if r.get("valid", "yes") in ("yes", STALE) else f"no: {r['valid']}"
            note = "" if r.get("backend", "onnxruntime") == "onnxruntime" else f" (run by {r['backend']})"
            lines.append(f"| {name} | {tool} | {share} | {_cell_rel(r)} | {_cell_cos(r)} | {r['nonfinite']} | "
                         f"{r['io']} | {valid} | {'yes' if accurate(r) else 'no'}{note} | {seconds} |")
    return lines


def summary(rows: list[tuple[str, dict]], tools: list[str]) -> list[str]:
    lines = ["| tool | accurate | NaN/Inf on | max error > 1e-2 (finite) on | invalid ONNX on | tool failed on | "
             "median fp16 FLOP share | total seconds |", "|---|---|---|---|---|---|---|---|"]
    for tool in tools:
        res = [(n, r[tool]) for n, r in rows]
        bad = [n for n, r in res if "error" not in r and r["nonfinite"]]
        off = [n for n, r in res if numeric_miss(r) and not r["nonfinite"]]
        bad_onnx = [n for n, r in res if invalid(r)]
        failed = [n for n, r in res if "error" in r and not invalid(r)]
        shares = [r["flop_share"] for _, r in res if "error" not in r]
        median = f"{float(np.median(shares)):.1%}" if shares else "—"
        seconds = sum(r.get("seconds", 0.0) for _, r in res)
        lines.append(f"| {tool} | {sum(accurate(r) for _, r in res)} of {len(res)} | {', '.join(bad) or '—'} | "
                     f"{', '.join(off) or '—'} | {', '.join(bad_onnx) or '—'} | {', '.join(failed) or '—'} | "
                     f"{median} | {seconds:.1f} |")
    return lines


def reading(rows: list[tuple[str, dict]], tools: list[str], import_seconds: dict) -> str:
    """One paragraph, written from the rows (reruns change it with the numbers)."""
    def ran(tool: str, group: list[str]) -> list[tuple[str, dict]]:
        return [(n, res[tool]) for n, res in rows if n in group and "error" not in res[tool]]

    def listing(items: list[str]) -> str:
        return ", ".join(items) if items else "none"

    groups = {"corpus": [n for n, _ in rows if not n.startswith(("light_", "outlier_"))],
              "light": [n for n, _ in rows if n.startswith("light_")],
              "outlier": [n for n, _ in rows if n.startswith("outlier_")]}
    parts = []
    for tool in tools:
        bits = []
        for group, members in groups.items():
            if not members:
                continue
            done = ran(tool, members)
            every = [(n, dict(rows)[n][tool]) for n in members]
            failed = [n for n, r in every if "error" in r and not invalid(r)]
            bad_onnx = [n for n, r in every if invalid(r)]
            text = f"{group} {sum(accurate(r) for _, r in done)}/{len(members)} accurate"
            nan = [n for n, r in done if r["nonfinite"]]
            off = [n for n, r in done if numeric_miss(r) and not r["nonfinite"]]
            if nan:
                text += f", NaN/Inf on {listing(nan)}"
            if off:
                text += ", finite but off on " + listing(
                    [f"{n} ({r['max_rel_error']:.1e} of the range)" for n, r in done if n in off])
            if bad_onnx:
                text += f", invalid ONNX on {len(bad_onnx)}"
            if failed:
                text += f", tool failed on {len(failed)}"
            shares = [r["flop_share"] for _, r in done]
            if shares:
                low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
                text += f", fp16 FLOP share {low}" + ("" if low == high else f"..{high}")
            bits.append(text)
        parts.append(f"**{tool}**: " + "; ".join(bits) + ".")
    text = " ".join(parts)
    corpus_ok = not any(numeric_miss(dict(rows)[n][t]) for n in groups["corpus"] for t in tools)
    if groups["corpus"]:
        text += (" Reading: the corpus models have small random weights and no value leaves fp16's range"
                 + (", so every fp16 graph that runs, the whole-model casts included, is numerically within the goal "
                    "there." if corpus_ok else "."))
    if groups["light"]:
        text += (" The light_* models (IR v3, opset 9) generate their weights as constants (ConstantOfShape), so "
                 "activations in the deeper CNNs can grow large: where a whole-model cast runs there, it may overflow.")
    if groups["outlier"]:
        text += (" The outlier blocks are where the tools part: outlier_block-ln reaches ~2.5e5 after its first "
                 "MatMul (Inf in fp16, NaN after LayerNorm); outlier_block-decomposed_ln's outliers (~2.6e3) fit "
                 "fp16 but its LayerNorm's Pow reaches ~7e6 (Inf variance: a finite, wrong output), and its "
                 f"logits reach ~370, below data_max={DATA_MAX:g}, where fp16's spacing is 0.25. ModelOpt keeps a "
                 "node fp32 only when calibration sees a value above data_max (so it keeps the outlier MatMul and "
                 "the Pow, not the logits). Per tool (fp16 FLOP share, max error / range): ")
        per_model = []
        for name in groups["outlier"]:
            cells = []
            for tool in tools:
                r = dict(rows)[name][tool]
                cells.append(f"{tool} error" if "error" in r else
                             f"{tool} {r['flop_share']:.0%}, {_cell_rel(r)}" + (" NaN/Inf" if r["nonfinite"] else ""))
            per_model.append(f"{name}: " + "; ".join(cells))
        text += ". ".join(per_model) + "."
    peer_invalid = any(invalid(res[t]) for _, res in rows for t in tools if t != "trtc")
    text += (" Validity ('valid ONNX': onnx's full check with strict type inference; 'stale value_info': passes "
             "only once the file's value_info is dropped, and onnxruntime refuses it as written) separates the tools "
             "as much as accuracy does: the whole-model casts go through onnxconverter-common, which leaves the "
             "exporters' own Casts to fp32 (e.g. after GPT-2's Softmax) and some weights in types that no longer "
             "match their op's other inputs: onnxruntime refuses those files, and a strongly typed TensorRT network "
             "cannot mix fp16 and fp32 inputs of one op.") if peer_invalid else ""
    light_fail = [t for t in tools if groups["light"] and all("error" in dict(rows)[n][t] for n in groups["light"])]
    if light_fail:
        text += (f" {' and '.join(light_fail)} fail on every light model (IR v3: initializers must also be graph "
                 "inputs there, which their rewrites break).")
    trtc_bad = [(n, res["trtc"]["valid"]) for n, res in rows if "trtc" in res and invalid(res["trtc"])]
    if trtc_bad:
        text += " trtc's own typed graph fails that check on " + ", ".join(n for n, _ in trtc_bad)
        if all("RMSNormalization" in why for _, why in trtc_bad):
            text += (": an fp32 RMSNormalization fed fp16 X with fp32 scale — the spec's type constraints (X: T, "
                     "scale and Y: V) allow it, onnx's type inference and onnxruntime do not")
        text += "."
    text += (" ModelOpt (with keep_io_types) and polygraphy keep fp32 I/O; onnxslim turns I/O to fp16. FLOP "
             "shares count Conv/MatMul FLOPs from the weights' shapes for every tool; trtc's own report "
             "(precision_table) counts a Conv as one FLOP per output element, because weight shapes are not "
             "among its observed values — shown as 'reports' where it differs. Seconds: trtc's include parsing, "
             "graph optimization, calibration and its own error prediction; the peers' are the conversion call "
             "alone")
    if import_seconds.get("modelopt"):
        text += (f" (importing ModelOpt, which imports torch, took a further "
                 f"{float(np.median(import_seconds['modelopt'])):.1f} s per process)")
    return text + "."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="", help="only models whose name contains this")
    ap.add_argument("--no-outliers", action="store_true", help="leave out the two outlier models built here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per peer conversion")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    # Overflow in the simulated fp16 graphs is what is being measured: numpy's warnings about it are noise.
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    notes = []
    if not MODELS.is_dir():
        notes.append(f"../shared/models not found (looked in {MODELS}): corpus models skipped.")
    skipped = {t: why for t in PEERS if (why := peer_available(t))}
    notes += [f"{t} skipped: {why}." for t, why in skipped.items()]
    peers = [t for t in PEERS if t not in skipped]
    tools = ["trtc"] + peers
    for note in notes:
        print("note:", note, flush=True)

    with tempfile.TemporaryDirectory(prefix="trtc-precision-peers-") as tmp_name:
        tmp = Path(tmp_name)
        models = shared_models() + light_models() + ([] if args.no_outliers else outlier_models(tmp))
        models = [m for m in models if args.filter in m.name]
        rows, import_seconds = [], {}
        for model in models:
            start = time.perf_counter()
            inputs, reference = fp32_reference(model)
            results = {"trtc": run_trtc(model, inputs, reference)}
            for tool in peers:
                results[tool] = run_peer(tool, model, inputs, reference, tmp, args.timeout)
                if "import_seconds" in results[tool]:
                    import_seconds.setdefault(tool, []).append(results[tool]["import_seconds"])
            rows.append((model.name, results))
            cells = []
            for tool in tools:
                r = results[tool]
                cells.append(f"{tool} error ({r['error']})" if "error" in r else
                             f"{tool} {r['flop_share']:.0%} rel {_cell_rel(r)} cos {_cell_cos(r)} nf {r['nonfinite']}")
            print(f"{model.name} [{time.perf_counter() - start:.0f}s]: " + "; ".join(cells), flush=True)

    how = "; ".join(f"{t}: {PEERS[t][1]}" for t in peers)
    lines = [f"fp16, judged by trtc's TensorRT simulation (fp16-stored values rounded, ops in fp32) against the fp32 "
             f"model on its reference inputs, worst output. Peers: {how or 'none installed'}. trtc: `trtc optimize "
             "--fp16` (precision_table.precision_row). accurate = valid ONNX, no NaN/Inf, cosine >= 0.999 and max "
             "error <= 1e-2 of the output's range.", ""]
    lines += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    lines += summary(rows, tools) + [""] + table(rows, tools) + ["", reading(rows, tools, import_seconds)]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
