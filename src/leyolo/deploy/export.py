"""``export``: write a model in any supported format; the format follows the path unless given.

The formats' own modules do the work (``onnx_export``, ``torchscript``, ``openvino``); every
export records its metadata (``base.export_metadata``) and loads back into ``leyolo.load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LeyoloError
from ..models.base import DetectionModel
from .base import FORMATS, ExportOptions, export_metadata
from .onnx_export import export_onnx
from .openvino import export_openvino
from .torchscript import export_torchscript

__all__ = ["FORMATS", "default_path", "export", "path_format"]


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
        return export_onnx(model, path, **vars(opts))
    if fmt == "torchscript":
        return export_torchscript(model, path, opts, export_metadata(model, fmt, opts))
    return export_openvino(model, path, opts)
