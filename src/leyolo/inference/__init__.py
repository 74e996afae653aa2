"""Inference: image sources, backends (torch, onnxruntime, torchscript, openvino) and the predictor that joins them."""
