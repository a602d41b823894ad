"""Off-policy training on timelines, ONNX export and the local model registry."""
