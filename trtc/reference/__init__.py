"""Shared services below the stages: the CPU reference executor (`runner`: onnxruntime, then
`onnx.reference`), model inputs and feeds read, generated and validated (`feeds`), calibration
samples, and the error metrics every stage judges outputs by (`metrics`). Import the module you
need: reading feeds must not load onnxruntime."""
