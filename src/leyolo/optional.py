"""Optional dependencies: imported when a feature needs them, with the extra that installs them.

Nothing optional is imported when ``leyolo`` is; a missing one fails the feature that needs it
with one line naming the pip command, never at import time and never by installing anything.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import LeyoloError

# import name -> (pip package, leyolo extra that brings it)
PACKAGES: dict[str, tuple[str, str]] = {
    "openvino": ("openvino", "export"),
    "onnxslim": ("onnxslim", "export"),
    "torch_pruning": ("torch-pruning", "prune"),
    "pnnx": ("pnnx", "ncnn"),
    "ncnn": ("ncnn", "ncnn"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "natten": ("natten", "natten"),
    "fastapi": ("fastapi", "serve"),
    "starlette": ("fastapi", "serve"),
    "anyio": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "httpx": ("httpx", "serve"),
}


def require(module: str, feature: str) -> ModuleType:
    """``import module`` or a ``LeyoloError`` saying which extra to install for ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = PACKAGES.get(module.split(".")[0], (module.split(".")[0], ""))
        hint = f"pip install 'leyolo[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise LeyoloError(f"{feature} needs {package}, which is not installed: {hint}") from exc
