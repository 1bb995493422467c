"""The report `trtc compile` writes beside its artifacts (report.md; report.json is the dict)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LISTED = 50  # fp32 nodes listed in the report; inspect --precision has them all


def report_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# trtc compile report: {report['model']}", "", f"trtc {report['trtc_version']}", "",
             "| stage | seconds | reused |", "|---|---|---|"]
    lines += [f"| {name} | {s['seconds']:.3f} | {'yes' if s['reused'] else 'no'} |"
              for name, s in report["stages"].items()]
    lines += ["", f"Nodes: {report['nodes']['parsed']} parsed -> {report['nodes']['optimized']} optimized.", "",
              "## Rewrites", ""]
    lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r.items()) for name, r in report["fusions"].items()]
    precision = report["precision"]
    lines += ["", "## Precision", ""]
    if precision:
        lines.append(f"{precision['target']}: {precision['flop_share']:.1%} of FLOPs, {len(precision['fp32_nodes'])} "
                     f"nodes kept fp32 in {precision['islands']} islands, {precision['counts']['casts']} casts.")
        kept = list(precision["fp32_nodes"].items())
        lines += [f"- `{n}` ({e['op']}): {e['reason']}" for n, e in kept[:LISTED]]
        if len(kept) > LISTED:
            lines.append(f"- ... {len(kept) - LISTED} more: `trtc inspect {report['stages']['optimize']['output']} "
                         "--precision` lists them all")
    else:
        lines.append("fp32 (no precision pass requested).")
    if report["predicted"].get("skipped"):  # nothing ran: a weight-stripped model
        lines += ["", "## Predicted error", "", f"Not predicted: {report['predicted']['skipped']}."]
    else:
        lines += ["", f"## Predicted error ({report['predicted']['runs_on']} vs fp32 reference)", "",
                  "| output | max abs error | max error / range | cosine |", "|---|---|---|---|"]
        lines += [f"| {n} | {m['max_abs_error']:.3g} | {m['max_rel_error']:.3g} | {m['cosine']:.6f} |"
                  for n, m in report["predicted"]["outputs"].items()]
    engine = report["engine"]
    # The stage table times this run; a reused engine was built earlier, and says so.
    built = (f"reused (built in {engine['build_seconds']:.1f}s when first made)" if report["stages"]["build"]["reused"]
             else f"built in {engine['build_seconds']:.1f}s")
    lines += ["", "## Engine", "", f"{engine['backend']} {engine['backend_version']}, targets "
              f"{','.join(engine['targets']) or 'default'}, {engine['network_layers']} layers, "
              f"{engine['plan_bytes'] / 2**20:.1f} MiB, {built}.", ""]
    return "\n".join(lines)
