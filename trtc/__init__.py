"""trtc: compile ONNX models into NVIDIA TensorRT engines, with a CPU reference for every stage."""

__version__ = "0.1.0"
