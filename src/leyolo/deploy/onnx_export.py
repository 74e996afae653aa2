"""ONNX export (opset 17) and reading the metadata of an ONNX file back."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import LeyoloError
from ..fileio import atomic_write
from ..models.base import DetectionModel
from . import onnx_graph
from .base import METADATA_KEY, ExportOptions, decoded_graph, export_metadata

ONNX_OPSET = 17


def onnx_proto(model: DetectionModel, opts: ExportOptions, tmp: str) -> Any:
    """Trace to ONNX (FP16 trunk with ``half``), then simplify and append the postprocess as asked."""
    import onnx

    dummy = torch.zeros(opts.batch, 3, opts.imgsz, opts.imgsz)
    axes = ({"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "anchors"}}
            if opts.dynamic else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoded_graph(model, opts.half, opts.sampling), dummy, tmp, dynamo=False, opset_version=ONNX_OPSET, input_names=["images"],
            output_names=["output"], dynamic_axes=axes, do_constant_folding=True,
        )
    proto = onnx.load(tmp)
    if opts.simplify:
        simplified = onnx_graph.simplify(proto)
        onnx_graph.check_same_outputs(proto, simplified, opts.imgsz, "--simplify")
        proto = simplified
    if opts.nms and model.output_kind == "set":
        onnx_graph.append_topk(proto, model.nc, opts.conf, opts.max_det)
    elif opts.nms:
        onnx_graph.append_nms(proto, model.nc, opts.conf, opts.iou, opts.max_det, opts.multi_label)
    if opts.nms:
        onnx.checker.check_model(proto)
    return proto


def export_onnx(model: DetectionModel, path: str | Path, imgsz: int = 640, dynamic: bool = True,
                **options: Any) -> Path:
    """Write ``model`` as ONNX (opset 17); ``dynamic`` makes batch, height and width symbolic.

    ``options`` are the other ``ExportOptions`` fields (half, simplify, nms, conf, iou, ...).
    """
    import onnx

    opts = ExportOptions(imgsz=imgsz, dynamic=dynamic, **options).validate("onnx")
    info = export_metadata(model, "onnx", opts)

    def write(tmp: str) -> None:
        proto = onnx_proto(model, opts, tmp)
        stamp_metadata(proto, info)
        onnx.save(proto, tmp)

    return atomic_write(path, write)


def stamp_metadata(proto: Any, info: dict[str, Any]) -> Any:
    """Write ``info`` under ``leyolo`` (plus the plain ``names``/``stride``/``imgsz`` keys other tools read)."""
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({METADATA_KEY: json.dumps(info), "names": json.dumps(info["names"]),
                  "stride": str(info.get("stride", 32)), "imgsz": str(info["imgsz"])})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "leyolo"
    return proto


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The leyolo metadata of an exported ONNX file (names, image size, stride, kind, NMS settings)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise LeyoloError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY in props:
        try:
            info = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise LeyoloError(f"{path}: corrupt leyolo metadata in ONNX file") from exc
        if not isinstance(info, dict):
            raise LeyoloError(f"{path}: corrupt leyolo metadata in ONNX file (not an object)")
        return info
    outputs = proto.graph.output
    names = tuple(o.name for o in outputs)
    if names == onnx_graph.NMS_OUTPUTS:  # a foreign end-to-end export: thresholds unknown, classes unnamed
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


__all__ = ["ONNX_OPSET", "export_onnx", "onnx_proto", "read_onnx_metadata", "stamp_metadata"]
