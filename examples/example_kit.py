"""What the example scripts share: a little sugar over onnx.helper for writing models, and the
printout of a `trtc compile` report."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Graph:
    """A few lines of sugar over onnx.helper: every `op` call adds a node and returns its output's name."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, *shape: int, std: float = 0.02, mean: float = 0.0) -> str:
        """BERT and GPT-2 initialize weights from N(0, 0.02); LayerNorm scales sit around 1."""
        return self.const(name, (mean + std * self.rng.standard_normal(shape)).astype(np.float32))

    def op(self, op_type: str, *inputs: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name


def linear(g: Graph, x: str, n_in: int, n_out: int, name: str) -> str:
    """x @ W + b: exporters write nn.Linear (and GPT-2's Conv1D) on 3-D inputs as MatMul then Add."""
    y = g.op("MatMul", x, g.weight(f"{name}.weight", n_in, n_out), name=f"{name}.matmul")
    return g.op("Add", y, g.weight(f"{name}.bias", n_out), name=f"{name}.add")


def layer_norm(g: Graph, x: str, hidden: int, epsilon: float, name: str) -> str:
    scale, bias = g.weight(f"{name}.weight", hidden, mean=1.0), g.weight(f"{name}.bias", hidden)
    return g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=epsilon, name=name)


def print_summary(report: dict) -> None:
    """The headline numbers of report.json (report.md has them all)."""
    for stage, s in report["stages"].items():
        print(f"  {stage:9} {s['seconds']:7.2f}s{'  (reused)' if s['reused'] else ''}")
    print(f"  nodes {report['nodes']['parsed']} -> {report['nodes']['optimized']}")
    for name, counts in report["fusions"].items():  # what each pass rewrote, e.g. fuse-gelu: gelu-erf 2
        print(f"    {name}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    if report["precision"]:
        print(f"  {report['precision']['target']}: {report['precision']['flop_share']:.1%} of FLOPs")
    for name, m in report["predicted"]["outputs"].items():
        print(f"  predicted {name}: max error / range {m['max_rel_error']:.3g}, cosine {m['cosine']:.6f}")
    engine = report["engine"]
    print(f"  engine: {engine['backend']} {engine['backend_version']}, {engine['network_layers']} layers, "
          f"{engine['plan_bytes'] / 2**20:.1f} MiB")


def example_main(name: str, doc: str, build_model: Callable[[], onnx.ModelProto],
                 compile_example: Callable[[Path, Path, bool], dict]) -> None:
    """The command line every example shares: write the model into --out, compile it, print the summary."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / name)
    ap.add_argument("--fp32", action="store_true", help="Build in fp32 (skip the fp16 typing).")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / f"{name}.onnx"
    onnx.save(build_model(), model_path)
    print(f"wrote {model_path}; compiling...")
    report = compile_example(model_path, args.out, not args.fp32)
    print_summary(report)
    print(f"wrote {args.out / 'report.md'}")
