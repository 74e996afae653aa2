"""Export to ONNX with the preprocessing facts embedded as metadata.

The exported graph is ``DecodedModel`` on a BatchNorm-folded copy: input ``images``
``[B, 3, H, W]`` RGB in [0, 1], output ``output`` ``[B, 4 + nc, A]`` (xyxy input pixels, then
sigmoid class scores). Folding happens here rather than in the exporter: the TorchScript
exporter's own Conv+BN folding mis-handles convs that carry a bias (the LeYOLO convs do).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import LeyoloError
from ..models.detector import DecodedModel, DetectionModel
from ..fileio import atomic_write

ONNX_OPSET = 17
METADATA_KEY = "leyolo"


def model_metadata(model: DetectionModel, imgsz: int) -> dict[str, Any]:
    meta = model.meta
    return {
        "arch": meta.arch,
        "names": list(meta.names),
        "imgsz": int(imgsz),
        "stride": int(meta.stride),
        "pad_value": int(meta.pad_value),
        "strides": list(model.strides),
        "nc": model.nc,
        "output": "xyxy+scores",
    }


def export_onnx(
    model: DetectionModel, path: str | Path, imgsz: int = 640, dynamic: bool = False, batch: int = 1
) -> Path:
    """Write ``model`` as ONNX (opset 17); ``dynamic`` makes batch, height and width symbolic."""
    import onnx

    if imgsz <= 0 or imgsz % 32:
        raise LeyoloError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
    graph = DecodedModel(copy.deepcopy(model).float().cpu().eval().fuse())
    dummy = torch.zeros(batch, 3, imgsz, imgsz)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "anchors"}} if dynamic else None

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, dummy, tmp, dynamo=False, opset_version=ONNX_OPSET, input_names=["images"],
                output_names=["output"], dynamic_axes=axes, do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        info = model_metadata(model, imgsz) | {"dynamic": bool(dynamic)}
        for key, value in {METADATA_KEY: json.dumps(info), "names": json.dumps(info["names"]), "stride": "32",
                           "imgsz": str(imgsz)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "leyolo"
        onnx.save(proto, tmp)

    return atomic_write(path, write)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The leyolo metadata of an exported ONNX file (names, image size, stride)."""
    import onnx

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
    if len(outputs) != 1:
        raise LeyoloError(f"{path}: not a leyolo detection export (expected one output)")
    dims = outputs[0].type.tensor_type.shape.dim
    nc = dims[1].dim_value - 4 if len(dims) == 3 and dims[1].dim_value > 4 else None
    if nc is None:
        raise LeyoloError(f"{path}: not a leyolo detection export (output is not [B, 4 + nc, A])")
    return {"arch": "onnx", "names": [f"class{i}" for i in range(nc)], "imgsz": 640, "stride": 32, "pad_value": 114}
