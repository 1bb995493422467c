"""Running models: the CPU reference executor and the shared input handling."""

from trtc.runtime.io import TensorSpec, make_feeds, model_inputs, model_outputs, validate_feeds
from trtc.runtime.reference import ReferenceRunner, summarize, time_runs

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
