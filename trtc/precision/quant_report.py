"""The quantization report as text: the summary `optimize`/`build` print, and the table
`trtc inspect --precision` shows (every quantized tensor with its range method and range, every
node left in float with its reason, the nodes adding the most error)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtc.precision.qdq_placement import FAMILIES


def quantization_summary_text(report: Mapping[str, Any]) -> str:
    q = report["quantization"]
    kept_weighted = sum(1 for e in q["kept"].values() if e["op"] in ("Conv", "ConvTranspose", "MatMul", "Gemm",
                                                                     "Attention"))
    lines = [f"{report['target']}: {len(q['nodes'])} weighted layers quantized ({q['format']}), "
             f"{q['flop_share']:.1%} of their FLOPs; {kept_weighted} left in float; "
             f"{report['counts'].get('activations', 0)} activation and {report['counts'].get('weights', 0)} weight "
             "Q/DQ inserted",
             "  range methods: " + ", ".join(f"{family} {q['methods'][family]}" for family in FAMILIES
                                             if family in q["methods"])
             + (f" (--calib-method {' '.join(q['overrides'])})" if q["overrides"] else "")]
    if q.get("note"):
        lines.append(f"  {q['note']}")
    if q["split_attention"]:
        lines.append(f"  {len(q['split_attention'])} fused attentions split into MatMul/Softmax/MatMul to quantize "
                     "both matmuls")
    for entry in q.get("smoothed", []):
        what = (f"outlier channels (x{entry['outlier_ratio']:.0f} the median) moved into "
                f"{len(entry['readers'])} weights, SmoothQuant alpha {entry['alpha']}") if "alpha" in entry \
            else f"outlier channels (x{entry['outlier_ratio']:.0f} the median) left: {entry['not_smoothed']}"
        lines.append(f"  {entry['node']}: {what}")
    if report["target"].count("+"):
        lines.append(f"  the rest {report['target'].split('+')[-1]}: {len(report['fp32_nodes'])} nodes kept fp32 in "
                     f"{report['islands']} islands, {report['counts'].get('casts', 0)} casts")
    for name, m in report["predicted"].items():
        lines.append(f"  predicted {name}: max abs error {m['max_abs_error']:.3g}, relative to range "
                     f"{m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    return "\n".join(lines)


def quantization_table(report: Mapping[str, Any]) -> str:
    q = report["quantization"]
    lines = [quantization_summary_text(report), "", f"{'quantized tensor':60} {'family':13} {'method':16} "
             f"{'range':>10} {'max':>10}"]
    for name, t in q["tensors"].items():
        lines.append(f"{name:60} {t['family']:13} {t['method']:16} {t['amax']:10.4g} {t['max']:10.4g}"
                     + (f"  ({t['left_out']} values beyond 1e30 saturate)" if t["left_out"] else ""))
    lines += ["", f"{'left in float':60} {'op':22} reason"]
    lines += [f"{name:60} {e['op']:22} {e['reason']}" for name, e in q["kept"].items()]
    if report["target"].count("+") and report["fp32_nodes"]:
        lines += ["", f"{'kept fp32 (not ' + report['target'].split('+')[-1] + ')':60} {'op':22} reason"]
        lines += [f"{name:60} {e['op']:22} {e['reason']}" for name, e in report["fp32_nodes"].items()]
    if report["contributions"]:
        lines += ["", f"{'largest error added':60} {'op':22} relative error (added)"]
        lines += [f"{c['node']:60} {c['op']:22} {c['relative_error']:.3g} (+{c['added']:.3g})"
                  for c in report["contributions"]]
    return "\n".join(lines)
