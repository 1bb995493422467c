"""A small image classifier compiled with trtc: the simplest end-to-end example.

The model is the CNN of make_cnn.py (two Conv-BatchNorm-Relu-MaxPool blocks, GlobalAveragePool, a
Gemm head; seeded random weights) with a dynamic batch. `trtc compile` folds each BatchNormalization
into its Conv's weights, types the graph for fp16 and builds an engine for batch 1..8; the report
says how far the engine's outputs are predicted to be from the fp32 model's.

    python examples/cnn.py [--out examples/out/cnn] [--fp32]
"""

from __future__ import annotations

from pathlib import Path

from example_kit import example_main  # examples/ is on sys.path when this file runs as a script
from make_cnn import make_cnn

# The dynamic-shape profile for `image`: (MIN, OPT, MAX) shapes. Only the batch dim is dynamic;
# the engine accepts any batch from 1 to 8 and is tuned for 4.
PROFILE = ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))


def compile_example(model_path: Path, out: Path, fp16: bool) -> dict:
    """`trtc compile` through the library: the same stages and report as the command line.

    The command-line equivalent is
        trtc compile cnn.onnx -o OUT --fp16 --shapes image:1x3x32x32,4x3x32x32,8x3x32x32
    """
    from trtc.pipeline import BuildOptions, OptimizeOptions, PrecisionOptions, compile_model

    build = BuildOptions(profiles=[{"image": PROFILE}])  # one optimization profile
    # The CLI's defaults (`trtc compile --help`): fp16 everywhere except the nodes the precision pass
    # keeps in fp32 (large values, long reductions), each with a reason. Calibration (seed 0) and the
    # predicted-error check (another seed) use random images at the profile's OPT shape.
    optimize = OptimizeOptions(precision=PrecisionOptions(target="fp16") if fp16 else None)
    return compile_model(model_path, out, optimize_options=optimize, build_options=build)


if __name__ == "__main__":
    example_main("cnn", __doc__, lambda: make_cnn(seed=0), compile_example)
