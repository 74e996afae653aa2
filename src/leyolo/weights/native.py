"""This library's checkpoint format: one safetensors file whose header carries JSON metadata.

Safetensors holds only tensors, so loading it can never run code; the metadata
(architecture, class names, image size, preprocessing) rides in the header under the
``leyolo`` key, so one file is the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..errors import LeyoloError
from ..fileio import atomic_write

FORMAT_VERSION = 1
METADATA_KEY = "leyolo"


def save_native(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path) -> Path:
    """Write tensors + metadata atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    header = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_native_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a native checkpoint, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LeyoloError(f"{path}: not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in header:
        raise LeyoloError(f"{path}: safetensors file without leyolo metadata (architecture unknown)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise LeyoloError(f"{path}: corrupt leyolo metadata ({exc})") from exc
    if not isinstance(meta, dict) or "arch" not in meta:
        raise LeyoloError(f"{path}: leyolo metadata lacks 'arch'")
    return meta


def load_native(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a native checkpoint."""
    meta = read_native_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LeyoloError(f"{path}: corrupt safetensors data ({exc})") from exc
    return tensors, meta
