"""Deployment: export (ONNX), later quantization and pruning."""
