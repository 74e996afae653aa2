"""Inference: image sources, backends (torch, onnxruntime) and the predictor that joins them."""
