"""This library's checkpoint format: one safetensors file whose header carries JSON metadata.

Safetensors holds only tensors, so loading it can never run code; the metadata
(architecture, class names, image size, preprocessing) rides in the header under the
``leyolo`` key, so one file is the whole model. ``validate_metadata`` checks its fields' types,
so a hand-edited or crafted header ends in one ``LeyoloError`` line, not a ``TypeError`` later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import LeyoloError
from ..fileio import atomic_write

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "atomic_write", "load_native", "read_native_metadata", "save_native",
           "validate_metadata"]

FORMAT_VERSION = 1
METADATA_KEY = "leyolo"


def save_native(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path) -> Path:
    """Write tensors + metadata atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    header = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _is_int(value: Any, low: int, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value <= high)


def validate_metadata(meta: Any, path: str | Path) -> dict[str, Any]:
    """``meta`` (the decoded JSON) checked field by field; a copy with ``names`` as a fresh list.

    Required: ``arch`` (non-empty string), ``names`` (non-empty list of strings). Optional, when
    present: ``nc`` (== len(names)), ``imgsz`` and ``stride`` (positive ints), ``pad_value`` (0-255),
    ``extra`` and ``train`` (objects), ``format_version`` (an int this library can read). Other keys
    pass through. Raises ``LeyoloError`` naming ``path`` and the first bad field.
    """
    def bad(what: str) -> LeyoloError:
        return LeyoloError(f"{path}: leyolo metadata {what}")

    if not isinstance(meta, dict):
        raise bad(f"is {_JSON_KINDS.get(type(meta), 'not JSON')}, not an object")
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise bad("has no 'arch' (a non-empty string naming the architecture)")
    names = meta.get("names")
    if not isinstance(names, list) or not names:
        raise bad("has no class names")
    if not all(isinstance(n, str) for n in names):
        raise bad("'names' is not a list of strings")
    if "nc" in meta and not (type(meta["nc"]) is int and meta["nc"] == len(names)):
        raise bad(f"'nc' does not match its {len(names)} class names")
    for key, low, high in (("imgsz", 1, None), ("stride", 1, None), ("pad_value", 0, 255)):
        if key in meta and not _is_int(meta[key], low, high):
            raise bad(f"'{key}' is not an integer in [{low}, {high if high is not None else 'inf'}]")
    for key in ("extra", "train"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(f"'{key}' is {_JSON_KINDS.get(type(meta[key]), 'not JSON')}, not an object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version, 1, FORMAT_VERSION):
        shown = version if type(version) is int else _JSON_KINDS.get(type(version), "not JSON")
        raise bad(f"has format_version {shown}; this leyolo reads 1 to {FORMAT_VERSION}")
    return {**meta, "names": list(names)}


def read_native_metadata(path: str | Path) -> dict[str, Any]:
    """The validated JSON metadata of a native checkpoint, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LeyoloError(f"{path}: not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in header:
        raise LeyoloError(f"{path}: safetensors file without leyolo metadata (architecture unknown)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (ValueError, RecursionError) as exc:  # bad JSON, nesting past the recursion limit, huge integers
        raise LeyoloError(f"{path}: corrupt leyolo metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
    return validate_metadata(meta, path)


def load_native(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and validated metadata of a native checkpoint."""
    meta = read_native_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LeyoloError(f"{path}: corrupt safetensors data ({exc})") from exc
    return tensors, meta
