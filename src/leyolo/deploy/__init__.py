"""Deployment: exports (ONNX, TorchScript, OpenVINO) with their metadata, ONNX graph edits, quantization graph facts."""
