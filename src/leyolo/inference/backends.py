"""Backends run a letterboxed float batch ``[B, 3, H, W]`` and return decoded ``[B, 4 + nc, A]``.

Both backends return the same decoded layout, so one numpy postprocess serves them.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import LeyoloError
from ..models.detector import DecodedModel, DetectionModel

BACKENDS = ("torch", "onnxruntime")


class Backend(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """Eager PyTorch on a BatchNorm-folded copy of the model."""

    name = "torch"

    def __init__(self, model: DetectionModel, device: str = "cpu") -> None:
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise LeyoloError(f"unknown device {device!r}") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LeyoloError("device 'cuda' requested but CUDA is not available")
        self.model = DecodedModel(copy.deepcopy(model).eval().fuse()).to(self.device)
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device)
        return self.model(x).float().cpu().numpy()


def onnxruntime_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise LeyoloError(f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0][:200]})") from exc


class OnnxRuntimeBackend:
    """ONNX Runtime on an exported file (or on a model exported to a temporary file)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnxruntime_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.fixed_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return np.concatenate([self(batch[i : i + 1]) for i in range(batch.shape[0])])
        return self.session.run(None, {self.input_name: batch})[0]
