"""ONNX in and out: the parser (`parse_onnx`) and the exporter (`export_onnx_file`)."""

from trtc.frontend.onnx_export import export_onnx_file, to_model_proto
from trtc.frontend.parse import parse_onnx

__all__ = ["export_onnx_file", "parse_onnx", "to_model_proto"]
