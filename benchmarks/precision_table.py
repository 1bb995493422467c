"""The fp16 (or bf16) precision pass on every corpus model: FLOP share in the low type,
predicted error against the fp32 reference, fp32 islands and casts.

    python benchmarks/precision_table.py [--bf16] [--filter NAME] [--write-results]

Calibration and evaluation use the models' reference inputs (../shared/models/*.npz; the
light models' arange inputs). Also imported by tests/test_precision_corpus.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import CorpusModel, light_models, shared_models  # noqa: E402

TRANSFORMERS = ("bert", "distilbert", "gpt2", "t5_encoder", "vit")


def family_floor(name: str) -> float:
    """The acceptance floor of the low-precision FLOP share: transformers 80%, the rest 90%."""
    return 0.8 if name.split("-")[0] in TRANSFORMERS else 0.9


def precision_row(model: CorpusModel, target: str = "fp16") -> dict:
    from trtc.frontend import parse_onnx
    from trtc.passes.pipeline import optimize
    from trtc.precision import PrecisionOptions, apply_precision

    inputs, _ = model.reference()
    start = time.perf_counter()
    ir_model = parse_onnx(model.path).model
    optimize(ir_model)
    report = apply_precision(ir_model, [inputs], PrecisionOptions(target=target))
    worst_cos = min(m["cosine"] for m in report.predicted.values())
    worst_rel = max(m["max_rel_error"] for m in report.predicted.values())
    return {"model": model.name, "flop_share": report.flop_share, "cosine": worst_cos, "max_rel_error": worst_rel,
            "islands": report.islands, "fp32_nodes": len(report.fp32_nodes), "casts": report.counts["casts"],
            "seconds": time.perf_counter() - start, "floor": family_floor(model.name)}


def passes(row: dict) -> bool:
    return row["cosine"] >= 0.999 and row["max_rel_error"] <= 1e-2 and row["flop_share"] >= row["floor"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--filter", default="")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    target = "bf16" if args.bf16 else "fp16"
    models = [m for m in shared_models() + light_models() if args.filter in m.name]
    rows = []
    for model in models:
        row = precision_row(model, target)
        rows.append(row)
        print(f"{row['model']}: share {row['flop_share']:.3f} cos {row['cosine']:.6f} rel {row['max_rel_error']:.2e} "
              f"islands {row['islands']} casts {row['casts']} {'ok' if passes(row) else 'FAIL'}", flush=True)
    lines = [f"Target {target}; goal: cosine >= 0.999, max error <= 1e-2 of the output's range, {target} FLOP share "
             ">= 90% (convolutional) / 80% (transformers).", "",
             f"| model | {target} FLOP share | cosine | max error / range | fp32 islands | fp32 nodes | casts | "
             "meets goal |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['flop_share']:.1%} | {r['cosine']:.6f} | {r['max_rel_error']:.2e} | {r['islands']} "
              f"| {r['fp32_nodes']} | {r['casts']} | {'yes' if passes(r) else 'no'} |" for r in rows]
    lines += ["", f"{sum(passes(r) for r in rows)} of {len(rows)} models meet every goal."]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        from results import write_section

        write_section(f"Precision {target} on the corpus (benchmarks/precision_table.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
