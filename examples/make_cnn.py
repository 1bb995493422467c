"""Write examples/cnn.onnx: a small image classifier (Conv-BatchNorm-Relu blocks, pooling,
a linear head) with a dynamic batch, built with onnx.helper and seeded random weights.

    python examples/make_cnn.py [-o examples/cnn.onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name: str, *shape: int, scale: float = 0.1) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    x, channels = "image", 3
    for i, width in enumerate((16, 32)):
        w = weight(f"conv{i}.weight", width, channels, 3, 3)
        b = weight(f"conv{i}.bias", width)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        bn = [weight(f"bn{i}.{p}", width) for p in ("scale", "bias", "mean")]
        var = f"bn{i}.var"
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), var))
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *bn, var], [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        nodes.append(helper.make_node("MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2],
                                      strides=[2, 2], name=f"pool{i}"))
        x, channels = f"pool{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["features", weight("fc.weight", 10, channels), weight("fc.bias", 10)],
                                  ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtc-examples")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("cnn.onnx"))
    args = ap.parse_args()
    onnx.save(make_cnn(), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
