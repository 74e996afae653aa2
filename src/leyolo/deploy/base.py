"""What every export shares: the options it bakes in, the metadata it records, the module it traces.

The exported graph is ``DecodedModel`` on a BatchNorm-folded copy: input ``images``
``[B, 3, H, W]`` RGB in [0, 1] (letterboxed, pad value in the metadata), output ``output``
``[B, 4 + nc, N]`` (xyxy input pixels, then sigmoid class scores). With ``nms=True`` the ONNX
graph ends in the model's postprocess instead (class-aware NMS for dense models, top-k for set
predictors) and has the four EfficientNMS-style outputs described in ``onnx_graph``. Folding
happens here rather than in the exporter: the TorchScript exporter's own Conv+BN folding
mis-handles convs that carry a bias (the LeYOLO convs do).

``half``: the network runs in FP16 between casts; inputs, outputs and the modules the model names
in ``fp32_modules`` (its decoding arithmetic) stay FP32 (``HalfDecodedModel``), so the file drops
in wherever the FP32 one does. It halves the file; it is meant for GPU runtimes (CUDA/TensorRT
execution providers). ONNX Runtime's CPU provider runs it correctly but, measured on an
AVX2/AVX-512 x86, no faster than FP32; OpenVINO IR gets FP16-compressed weights and its CPU
plugin then picks its own precision (bf16 where available).

Metadata (a JSON object under ``leyolo``): arch, names, imgsz, stride, pad_value, strides, nc,
kind, output (``"xyxy+scores"`` or ``"efficient_nms"``), dynamic, half, nms (``{conf, iou,
max_det, multi_label}`` or null), format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import LeyoloError
from ..models.base import DecodedModel, DetectionModel
from ..ops import check_imgsz

METADATA_KEY = "leyolo"
FORMATS = ("onnx", "torchscript", "openvino", "triton", "ncnn", "engine")


@dataclass(frozen=True)
class ExportOptions:
    """What an export bakes in. ``conf``/``iou``/``max_det``/``multi_label`` only matter with ``nms``."""

    imgsz: int = 640
    dynamic: bool = True  # every image keeps its own letterbox, as in torch; False: fixed square input
    half: bool = False
    simplify: bool = False
    nms: bool = False
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False
    batch: int = 1  # engine: the largest batch of the optimisation profile
    int8: bool = False  # engine only: INT8 with entropy calibration on ``data``'s train images
    data: str | None = None  # engine --int8: the data.yaml to calibrate on
    sampling: str | None = None  # Le-DETR deformable attention: grid_sample | gather (no GridSample op)

    def validate(self, fmt: str) -> "ExportOptions":
        if fmt not in FORMATS:
            raise LeyoloError(f"unsupported export format {fmt!r} (available: {', '.join(FORMATS)})")
        check_imgsz(self.imgsz)
        if self.batch < 1:
            raise LeyoloError(f"batch must be at least 1, got {self.batch}")
        if self.nms:
            if not 0.0 <= self.conf <= 1.0 or not 0.0 <= self.iou <= 1.0:
                raise LeyoloError(f"--conf and --iou must be in [0, 1], got {self.conf} and {self.iou}")
            if self.max_det < 1:
                raise LeyoloError(f"--max-det must be at least 1, got {self.max_det}")
        if fmt == "torchscript":
            # The trace is CPU fp32: fp16 convs on CPU are slow in torch, and there is no in-graph NMS
            # op for TorchScript without torchvision. ONNX/OpenVINO cover both.
            for flag in ("half", "simplify", "nms"):
                if getattr(self, flag):
                    raise LeyoloError(f"--{flag} is not available for torchscript (use --format onnx or openvino)")
        if fmt == "ncnn":  # pnnx converts the torch graph itself: no ONNX passes, no in-graph NMS, batch 1
            for flag in ("simplify", "nms"):
                if getattr(self, flag):
                    raise LeyoloError(f"--{flag} is not available for ncnn (use --format onnx or openvino)")
            if self.batch != 1:
                raise LeyoloError(f"ncnn runs one image at a time (batch 1), got batch {self.batch}")
        if self.int8 and fmt != "engine":
            raise LeyoloError("--int8 is for --format engine (for ONNX Runtime INT8 use leyolo quantize)")
        if self.data is not None and not self.int8:
            raise LeyoloError("--data is only used by --format engine --int8 (the calibration images)")
        if self.int8 and not self.data:
            raise LeyoloError("--int8 needs --data data.yaml: the engine is calibrated on its train images")
        if self.sampling not in (None, "grid_sample", "gather"):
            raise LeyoloError(f"--sampling must be grid_sample or gather, got {self.sampling!r}")
        if fmt == "engine" and self.nms:
            raise LeyoloError("--nms is not available for engine yet (export --format onnx --nms for TensorRT's "
                              "ONNX parser, or use the default decoded output)")
        return self

    def nms_info(self, kind: str = "dense") -> dict[str, Any] | None:
        """The postprocess settings baked into an end-to-end export (None without ``nms``)."""
        if not self.nms:
            return None
        info: dict[str, Any] = {"layout": "efficient_nms", "conf": float(self.conf), "max_det": int(self.max_det)}
        if kind == "dense":  # set predictors take the top-k: no IoU, every class of a query may appear
            info.update(iou=float(self.iou), multi_label=bool(self.multi_label))
        return info


def model_metadata(model: DetectionModel, imgsz: int) -> dict[str, Any]:
    """The model's metadata as exports record it (strides of dense heads included)."""
    strides = getattr(model, "strides", (model.stride,))
    return model.meta.to_dict(model.nc, imgsz, extra=False) | {"strides": list(strides), "output": "xyxy+scores"}


def export_metadata(model: DetectionModel, fmt: str, opts: ExportOptions) -> dict[str, Any]:
    """The JSON object stored with every export (and read back by ``leyolo.load``)."""
    nms = opts.nms_info(model.output_kind)
    return model_metadata(model, opts.imgsz) | {
        "format": fmt, "dynamic": bool(opts.dynamic), "half": bool(opts.half), "nms": nms,
        "output": nms["layout"] if nms else "xyxy+scores",
    }


def _to_float(raw: Any) -> Any:
    """Cast every tensor of a raw output (tensor, list, tuple or dict of them) to fp32."""
    if isinstance(raw, torch.Tensor):
        return raw.float()
    if isinstance(raw, (list, tuple)):
        return type(raw)(_to_float(r) for r in raw)
    if isinstance(raw, dict):
        return {k: _to_float(v) for k, v in raw.items()}
    return raw


class HalfDecodedModel(torch.nn.Module):
    """FP16 network between FP32 input and FP32 decoding.

    The model's ``fp32_modules`` (e.g. the DFL expectation; FP16 has a 0.5 px step at 640 px) and
    the decode arithmetic stay FP32. The casts are traced into the graph, so the export keeps
    FP32 inputs and outputs and needs no ONNX float16 converter.
    """

    def __init__(self, model: DetectionModel) -> None:
        super().__init__()
        self.model = model.half()
        for module in model.fp32_modules():
            module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(_to_float(self.model(x.half())))


def decoded_graph(model: DetectionModel, half: bool = False, sampling: str | None = None) -> torch.nn.Module:
    """A CPU, BatchNorm-folded, gradient-free ``DecodedModel`` copy (FP32, or FP16 trunk): what gets exported."""
    fused = copy.deepcopy(model).float().cpu().eval().fuse()
    if sampling is not None:
        if not hasattr(fused, "set_sampling"):
            raise LeyoloError(f"--sampling is for models with deformable attention (Le-DETR), not {model.meta.arch}")
        fused.set_sampling(sampling)
    graph = (HalfDecodedModel(fused) if half else DecodedModel(fused)).eval()
    graph.requires_grad_(False)
    return graph
