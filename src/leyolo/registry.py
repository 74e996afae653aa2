"""Model registry: every family registers named builders here; nothing is looked up by class name."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from .errors import LeyoloError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the facts that travel with it."""

    name: str
    builder: Callable[..., object]  # (*, nc, names) -> DetectionModel
    imgsz: int
    family: str
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model; names are unique."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _ensure_families() -> None:
    from . import models  # noqa: F401  (registration happens on import)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (``"leyolo*"``)."""
    _ensure_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LeyoloError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def create_model(name: str, *, nc: int = 80, names: list[str] | None = None):
    """Build an untrained registered model (``create_model("leyolo-n", nc=3)``)."""
    entry = get_entry(name)
    if names is not None and len(names) != nc:
        nc = len(names)
    return entry.builder(nc=nc, names=names)
