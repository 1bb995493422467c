"""ONNX in: the parser (`parse_onnx`): checked, canonical, shape-inferred IR."""

from trtc.frontend.parse import parse_onnx

__all__ = ["parse_onnx"]
