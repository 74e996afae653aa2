"""Export to ONNX, TorchScript and OpenVINO with the preprocessing facts embedded as metadata.

The exported graph is ``DecodedModel`` on a BatchNorm-folded copy: input ``images``
``[B, 3, H, W]`` RGB in [0, 1] (letterboxed, pad value in the metadata), output ``output``
``[B, 4 + nc, A]`` (xyxy input pixels, then sigmoid class scores). With ``nms=True`` the ONNX
graph ends in class-aware NMS instead and has the four EfficientNMS-style outputs described in
``onnx_graph``. Folding happens here rather than in the exporter: the TorchScript exporter's own
Conv+BN folding mis-handles convs that carry a bias (the LeYOLO convs do).

``half``: the convolutional trunk runs in FP16 between casts, inputs, outputs and decoding stay
FP32 (``HalfDecodedModel``), so the file drops in wherever the FP32 one does. It halves the file;
it is meant for GPU runtimes (CUDA/TensorRT execution providers). ONNX Runtime's CPU provider
runs it correctly but, measured on an AVX2/AVX-512 x86, no faster than FP32; OpenVINO IR gets
FP16-compressed weights and its CPU plugin then picks its own precision (bf16 where available).

Metadata (a JSON object under ``leyolo``): arch, names, imgsz, stride, pad_value, strides, nc,
output (``"xyxy+scores"`` or ``"efficient_nms"``), dynamic, half, nms (``{conf, iou, max_det,
multi_label}`` or null), format.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LeyoloError
from ..fileio import atomic_write
from ..models.detector import DecodedModel, DetectionModel

ONNX_OPSET = 17
METADATA_KEY = "leyolo"
FORMATS = ("onnx", "torchscript", "openvino")


@dataclass(frozen=True)
class ExportOptions:
    """What an export bakes in. ``conf``/``iou``/``max_det``/``multi_label`` only matter with ``nms``."""

    imgsz: int = 640
    dynamic: bool = False
    half: bool = False
    simplify: bool = False
    nms: bool = False
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False
    batch: int = 1

    def validate(self, fmt: str) -> "ExportOptions":
        if fmt not in FORMATS:
            raise LeyoloError(f"unsupported export format {fmt!r} (available: {', '.join(FORMATS)})")
        if self.imgsz <= 0 or self.imgsz % 32:
            raise LeyoloError(f"--imgsz must be a positive multiple of 32, got {self.imgsz}")
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
        return self

    def nms_info(self) -> dict[str, Any] | None:
        if not self.nms:
            return None
        return {"layout": "efficient_nms", "conf": float(self.conf), "iou": float(self.iou),
                "max_det": int(self.max_det), "multi_label": bool(self.multi_label)}


def model_metadata(model: DetectionModel, imgsz: int) -> dict[str, Any]:
    return model.meta.to_dict(model.nc, imgsz, extra=False) | {"strides": list(model.strides), "output": "xyxy+scores"}


def export_metadata(model: DetectionModel, fmt: str, opts: ExportOptions) -> dict[str, Any]:
    """The JSON object stored with every export (and read back by ``leyolo.load``)."""
    nms = opts.nms_info()
    return model_metadata(model, opts.imgsz) | {
        "format": fmt, "dynamic": bool(opts.dynamic), "half": bool(opts.half), "nms": nms,
        "output": nms["layout"] if nms else "xyxy+scores",
    }


class HalfDecodedModel(torch.nn.Module):
    """FP16 network between FP32 input and FP32 decoding.

    Only the convolutional trunk runs in FP16: the DFL expectation and box arithmetic stay FP32
    (FP16 has a 0.5 px step at 640 px). The casts are traced into the graph, so the export keeps
    FP32 inputs and outputs and needs no ONNX float16 converter.
    """

    def __init__(self, model: DetectionModel) -> None:
        super().__init__()
        self.model = model.half()
        self.model.head.dfl.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model(x.half())
        return self.model.decode([m.float() for m in maps])


def decoded_graph(model: DetectionModel, half: bool = False) -> torch.nn.Module:
    """A CPU, BatchNorm-folded, gradient-free ``DecodedModel`` copy (FP32, or FP16 trunk): what gets exported."""
    fused = copy.deepcopy(model).float().cpu().eval().fuse()
    graph = (HalfDecodedModel(fused) if half else DecodedModel(fused)).eval()
    graph.requires_grad_(False)
    return graph


def default_path(arch: str, fmt: str, imgsz: int) -> Path:
    stem = f"{arch}-{imgsz}"
    names = {"onnx": f"{stem}.onnx", "torchscript": f"{stem}.torchscript", "openvino": f"{stem}_openvino_model"}
    return Path(names[fmt])


def path_format(path: Path) -> str | None:
    """The format a path's name implies, if any."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".torchscript":
        return "torchscript"
    if path.name.endswith("_openvino_model"):
        return "openvino"
    return None


def export(model: DetectionModel, path: str | Path | None, fmt: str | None = None, **options: Any) -> Path:
    """Write ``model`` in ``fmt`` (default: what ``path`` implies, else onnx); ``options``: ``ExportOptions``."""
    implied = path_format(Path(path)) if path is not None else None
    if fmt is not None and implied is not None and fmt != implied:
        raise LeyoloError(f"{path}: the name says {implied} but the format asked is {fmt}")
    fmt = fmt or implied or "onnx"
    opts = ExportOptions(**options).validate(fmt)
    path = Path(path) if path is not None else default_path(model.meta.arch, fmt, opts.imgsz)
    if fmt == "onnx":
        return export_onnx(model, path, **asdict(opts))
    if fmt == "torchscript":
        from .torchscript import export_torchscript

        return export_torchscript(model, path, opts, export_metadata(model, fmt, opts))
    from .openvino import export_openvino

    return export_openvino(model, path, opts)


def onnx_proto(model: DetectionModel, opts: ExportOptions, tmp: str) -> Any:
    """Trace to ONNX (FP16 trunk with ``half``), then simplify and append NMS as asked; returns the ModelProto."""
    import onnx

    from . import onnx_graph

    dummy = torch.zeros(opts.batch, 3, opts.imgsz, opts.imgsz)
    axes = ({"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "anchors"}}
            if opts.dynamic else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoded_graph(model, opts.half), dummy, tmp, dynamo=False, opset_version=ONNX_OPSET, input_names=["images"],
            output_names=["output"], dynamic_axes=axes, do_constant_folding=True,
        )
    proto = onnx.load(tmp)
    if opts.simplify:
        simplified = onnx_graph.simplify(proto)
        onnx_graph.check_same_outputs(proto, simplified, opts.imgsz, "--simplify")
        proto = simplified
    if opts.nms:
        onnx_graph.append_nms(proto, model.nc, opts.conf, opts.iou, opts.max_det, opts.multi_label)
        onnx.checker.check_model(proto)
    return proto


def export_onnx(model: DetectionModel, path: str | Path, imgsz: int = 640, dynamic: bool = False,
                **options: Any) -> Path:
    """Write ``model`` as ONNX (opset 17); ``dynamic`` makes batch, height and width symbolic.

    ``options`` are the other ``ExportOptions`` fields (half, simplify, nms, conf, iou, ...).
    """
    import onnx

    opts = ExportOptions(imgsz=imgsz, dynamic=dynamic, **options).validate("onnx")
    info = export_metadata(model, "onnx", opts)

    def write(tmp: str) -> None:
        proto = onnx_proto(model, opts, tmp)
        for key, value in {METADATA_KEY: json.dumps(info), "names": json.dumps(info["names"]), "stride": "32",
                           "imgsz": str(opts.imgsz)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "leyolo"
        onnx.save(proto, tmp)

    return atomic_write(path, write)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The leyolo metadata of an exported ONNX file (names, image size, stride, NMS settings)."""
    import onnx

    from .onnx_graph import NMS_OUTPUTS

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise LeyoloError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        try:
            return json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise LeyoloError(f"{path}: corrupt leyolo metadata in ONNX file") from exc
    outputs = proto.graph.output
    names = tuple(o.name for o in outputs)
    if names == NMS_OUTPUTS:  # a foreign end-to-end export: thresholds unknown, classes unnamed
        nc = 80
        return {"arch": "onnx", "names": [f"class{i}" for i in range(nc)], "imgsz": 640, "stride": 32,
                "pad_value": 114, "output": "efficient_nms", "nms": None}
    if len(outputs) != 1:
        raise LeyoloError(f"{path}: not a leyolo detection export (expected one output)")
    dims = outputs[0].type.tensor_type.shape.dim
    nc = dims[1].dim_value - 4 if len(dims) == 3 and dims[1].dim_value > 4 else None
    if nc is None:
        raise LeyoloError(f"{path}: not a leyolo detection export (output is not [B, 4 + nc, A])")
    return {"arch": "onnx", "names": [f"class{i}" for i in range(nc)], "imgsz": 640, "stride": 32, "pad_value": 114}
