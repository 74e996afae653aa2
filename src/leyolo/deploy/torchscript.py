"""TorchScript export: a ``torch.jit.trace`` of the fused ``DecodedModel`` plus ``leyolo.json``.

The trace records shape arithmetic (``aten::size``, ``arange``), so one trace serves every
batch size and every multiple-of-32 input size: TorchScript exports are always dynamic.
The metadata travels inside the archive as an extra file, readable with ``zipfile`` alone.
Loading an archive to run it is ``leyolo.inference.backends.load_torchscript``: it runs
TorchScript code, so it is meant for files the user made or trusts.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import LeyoloError
from ..fileio import atomic_write
from ..models.base import DetectionModel
from .base import decoded_graph

EXTRA_FILE = "leyolo.json"


def trace_decoded(model: DetectionModel, imgsz: int, sampling: str | None = None) -> torch.jit.ScriptModule:
    """Trace the CPU fp32 fused ``DecodedModel`` of ``model`` at ``imgsz``."""
    graph = decoded_graph(model, sampling=sampling)
    with warnings.catch_warnings():  # torch 2.13 marks jit.trace deprecated; it is still the portable archive
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(graph, torch.zeros(1, 3, imgsz, imgsz), check_trace=False)
    return traced


def export_torchscript(model: DetectionModel, path: str | Path, opts: Any, meta: dict[str, Any]) -> Path:
    """Write ``model`` as a TorchScript archive with ``meta`` in ``leyolo.json``, atomically."""
    traced = trace_decoded(model, opts.imgsz, opts.sampling)
    extra = {EXTRA_FILE: json.dumps(meta | {"dynamic": True})}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():  # deprecated in favour of torch.export, which has no loadable archive yet
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, tmp, _extra_files=extra)

    return atomic_write(path, write)


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The ``leyolo.json`` of an archive, read with ``zipfile``: nothing of the archive runs."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")), None)
            if member is None:
                raise LeyoloError(f"{path}: TorchScript archive without leyolo metadata (not a leyolo export)")
            return json.loads(archive.read(member))
    except (zipfile.BadZipFile, OSError) as exc:
        raise LeyoloError(f"{path}: not a TorchScript archive ({type(exc).__name__})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeyoloError(f"{path}: corrupt leyolo metadata in TorchScript archive") from exc
