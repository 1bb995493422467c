"""Running built engines: the sidecar's view of an engine, feed validation and profile choice
(no GPU needed), and the cuda-python runner."""
