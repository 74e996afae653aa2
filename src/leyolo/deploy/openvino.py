"""OpenVINO export: IR (``.xml`` + ``.bin``) in a ``<name>_openvino_model/`` folder.

The IR is read from the ONNX export by OpenVINO's ONNX frontend (same graph, same NMS tail),
so every ONNX option carries over; ``--half`` stores FP16 weights (``compress_to_fp16``) and lets the CPU plugin pick
its fastest precision, otherwise inference is pinned to f32 (the plugin defaults to bf16 on
CPUs that have it, which moves boxes by pixels). Metadata sits in ``metadata.json`` beside
the IR and in the IR's ``rt_info`` under ``leyolo``. Running an IR is
``leyolo.inference.backends.OpenVinoBackend``'s job.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import LeyoloError
from ..fileio import atomic_dir
from ..models.base import DetectionModel
from ..optional import require
from .base import ExportOptions, export_metadata
from .onnx_export import export_onnx

METADATA_FILE = "metadata.json"
RT_INFO_PATH = ["leyolo", "metadata"]


def export_openvino(model: DetectionModel, path: str | Path, opts: ExportOptions) -> Path:
    """Convert the ONNX export of ``model`` to OpenVINO IR in the folder ``path``."""
    ov = require("openvino", "OpenVINO export")
    path = Path(path)
    meta = export_metadata(model, "openvino", opts)
    stem = path.name.removesuffix("_openvino_model") or "model"

    def write(tmp: Path) -> None:
        onnx_path = export_onnx(model, tmp / f"{stem}.onnx", **vars(replace(opts, half=False)))
        # Core.read_model, not convert_model: same ONNX frontend, but convert_model (the ovc tool)
        # sends usage telemetry to Google Analytics unless the user opted out beforehand.
        ov_model = ov.Core().read_model(str(onnx_path))
        ov_model.set_rt_info(json.dumps(meta), RT_INFO_PATH)
        ov.save_model(ov_model, str(tmp / f"{stem}.xml"), compress_to_fp16=bool(opts.half))
        onnx_path.unlink()
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))

    return atomic_dir(path, write)


def read_openvino_metadata(xml: Path) -> dict[str, Any]:
    """``metadata.json`` beside the IR, else the IR's ``rt_info`` (needs OpenVINO)."""
    file = xml.parent / METADATA_FILE
    info: Any = None
    try:
        if file.is_file():
            info = json.loads(file.read_text())
        else:
            ov_model = require("openvino", "reading an OpenVINO export").Core().read_model(str(xml))
            if ov_model.has_rt_info(RT_INFO_PATH):
                info = json.loads(ov_model.get_rt_info(RT_INFO_PATH).astype(str))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise LeyoloError(f"{xml}: corrupt leyolo metadata") from exc
    if isinstance(info, dict):
        return info
    if info is not None:
        raise LeyoloError(f"{xml}: corrupt leyolo metadata (not an object)")
    raise LeyoloError(f"{xml}: no leyolo metadata ({METADATA_FILE} or rt_info); not a leyolo export")
