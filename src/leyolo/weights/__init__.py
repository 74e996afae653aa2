"""Checkpoint formats: the authors' published ``.pt`` (read safely) and this library's safetensors.

``load_model`` turns a name or a weights file into a ``DetectionModel``.
"""

from .loading import load_model
from .native import atomic_write, load_native, read_native_metadata, save_native
from .published import load_published, published_state_dict

__all__ = ["atomic_write", "load_model", "load_native", "load_published", "published_state_dict",
           "read_native_metadata", "save_native"]
