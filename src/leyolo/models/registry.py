"""The model registry: every family's named scales, looked up by name, never by class name.

Built-in families are listed here explicitly (each family module exports ``ENTRIES`` and knows
nothing of the registry, so imports point one way: registry -> families -> base). Other code
may add models with ``register_model`` (a test's toy model, a user's own family).
"""

from __future__ import annotations

import difflib
import fnmatch

from ..errors import LeyoloError
from . import ledetr, leyolo, yolov12
from .base import DetectionModel, ModelEntry

_BUILTIN: tuple[ModelEntry, ...] = (*leyolo.ENTRIES, *yolov12.ENTRIES, *ledetr.ENTRIES)
_REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in _BUILTIN}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model; names are unique."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove a model added with ``register_model`` (built-in models stay)."""
    if any(entry.name == name for entry in _BUILTIN):
        raise ValueError(f"{name!r} is a built-in model")
    _REGISTRY.pop(name, None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (``"leyolo*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The entry of a registered model, or a ``LeyoloError`` suggesting the nearest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LeyoloError(f"unknown model {name!r}{suggest(name)}") from None


def suggest(name: str) -> str:
    """``"; did you mean leyolo-n?"`` for a near miss, else the list of known names."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return f"; known: {', '.join(list_models())}"


def create_model(name: str, *, nc: int = 80, names: list[str] | None = None) -> DetectionModel:
    """Build an untrained registered model (``create_model("leyolo-n", nc=3)``)."""
    entry = get_entry(name)
    if names is not None and len(names) != nc:
        nc = len(names)
    return entry.builder(nc=nc, names=names)
