"""Shared services below the stages: the CPU reference executor (onnxruntime, then
`onnx.reference`), model inputs and feeds (read, generated, validated), calibration samples,
and the error metrics every stage judges outputs by."""

from trtc.reference.feeds import TensorSpec, make_feeds, model_inputs, model_outputs, validate_feeds
from trtc.reference.runner import ReferenceRunner, summarize, time_runs

__all__ = [
    "ReferenceRunner",
    "TensorSpec",
    "make_feeds",
    "model_inputs",
    "model_outputs",
    "summarize",
    "time_runs",
    "validate_feeds",
]
