"""Triton's model configuration, read and written with Triton's own schema.

`tritonclient` (the `serve` extra) ships the ModelConfig protobuf that the server itself parses
`config.pbtxt` with, so a config we write or read is checked against the real field names and
enums, not a copy of them. Only syntax and names are checked here; meaning is `check.py`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtc.errors import TrtcError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

CONFIG_NAME = "config.pbtxt"

# numpy dtype name -> Triton's DataType name (model_config.proto). Types Triton has no name for
# (fp8, int4 and the other narrow types) are absent: such a tensor cannot be served.
TRITON_TYPES: dict[str, str] = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "object": "TYPE_STRING",
}
NUMPY_TYPES = {triton: numpy for numpy, triton in TRITON_TYPES.items()}


def triton_type(dtype: np.dtype | str) -> str | None:
    """Triton's name for a numpy dtype (TYPE_FP32), or None when Triton has none."""
    return TRITON_TYPES.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype)


def config_module():
    """tritonclient's ModelConfig protobuf module; a one-line error naming the extra when absent."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise TrtcError("Triton's model-config schema needs tritonclient",
                        hint='install it with: pip install "trtc[serve]"') from None
    return model_config_pb2


def parse_config(text: str, where: str) -> ModelConfig:
    """A config.pbtxt's text as Triton parses it; TrtcError with the parser's line:column otherwise."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, config_module().ModelConfig())
    except text_format.ParseError as exc:
        raise TrtcError(f"not a valid Triton model config: {exc}", where=where) from None


def read_config(path: Path) -> ModelConfig:
    """`path` (a config.pbtxt) parsed with Triton's schema."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TrtcError(f"cannot read the model config ({exc.strerror})", where=str(path)) from None
    except UnicodeDecodeError:
        raise TrtcError("the model config is not text", where=str(path)) from None
    return parse_config(text, str(path))


def config_text(config: ModelConfig) -> str:
    """The config as config.pbtxt holds it."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def model_backend(config: ModelConfig) -> str:
    """The backend Triton loads a model with: `backend`, else the one its `platform` implies."""
    if config.backend:
        return config.backend
    return {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
            "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}.get(config.platform, "")
