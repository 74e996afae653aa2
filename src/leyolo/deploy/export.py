"""``export``: write a model in any supported format; the format follows the path unless given.

The formats' own modules do the work (``onnx_export``, ``torchscript``, ``openvino``, ``ncnn``,
``tensorrt``); every
export records its metadata (``base.export_metadata``) and loads back into ``leyolo.load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LeyoloError
from ..models.base import DetectionModel
from .base import FORMATS, ExportOptions, export_metadata
from .ncnn import FOLDER_SUFFIX as NCNN_SUFFIX
from .ncnn import export_ncnn
from .onnx_export import export_onnx
from .openvino import export_openvino
from .tensorrt import ENGINE_SUFFIX, export_engine
from .torchscript import export_torchscript
from .triton import export_triton

__all__ = ["FORMATS", "default_path", "export", "path_format"]


def default_path(arch: str, fmt: str, imgsz: int) -> Path:
    stem = f"{arch}-{imgsz}"
    names = {"onnx": f"{stem}.onnx", "torchscript": f"{stem}.torchscript", "openvino": f"{stem}_openvino_model",
             "triton": f"{stem}_triton", "ncnn": f"{stem}{NCNN_SUFFIX}", "engine": f"{stem}{ENGINE_SUFFIX}"}
    return Path(names[fmt])


def path_format(path: Path) -> str | None:
    """The format a path's name implies, if any."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".torchscript":
        return "torchscript"
    if path.name.endswith("_openvino_model"):
        return "openvino"
    if path.name.endswith("_triton"):
        return "triton"
    if path.name.endswith(NCNN_SUFFIX):
        return "ncnn"
    if path.suffix.lower() == ENGINE_SUFFIX:
        return "engine"
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
        return export_onnx(model, path, **vars(opts))
    if fmt == "torchscript":
        return export_torchscript(model, path, opts, export_metadata(model, fmt, opts))
    if fmt == "triton":
        return export_triton(model, path, opts)
    if fmt == "ncnn":
        return export_ncnn(model, path, opts)
    if fmt == "engine":
        return export_engine(model, path, opts)
    return export_openvino(model, path, opts)
