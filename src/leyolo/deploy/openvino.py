"""OpenVINO export and loading: IR (``.xml`` + ``.bin``) in a ``<name>_openvino_model/`` folder.

The IR is read from the ONNX export by OpenVINO's ONNX frontend (same graph, same NMS tail),
so every ONNX option carries over; ``--half`` stores FP16 weights (``compress_to_fp16``) and lets the CPU plugin pick
its fastest precision, otherwise inference is pinned to f32 (the plugin defaults to bf16 on
CPUs that have it, which moves boxes by pixels). Metadata sits in ``metadata.json`` beside
the IR and in the IR's ``rt_info`` under ``leyolo``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import LeyoloError
from ..models.detector import DetectionModel

METADATA_FILE = "metadata.json"
RT_INFO_PATH = ["leyolo", "metadata"]


def require_openvino() -> Any:
    """Import OpenVINO or fail with the install command."""
    try:
        import openvino
    except ImportError as exc:
        raise LeyoloError("OpenVINO is not installed: pip install openvino (or pip install 'leyolo[export]')") from exc
    return openvino


def atomic_dir(path: Path, write: Callable[[Path], object]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then swap it in for ``path``.

    A crash leaves the old folder intact (at worst renamed to ``.<name>.old``, never half-written).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise LeyoloError(f"{path}: exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.parent / f".{path.name}.old"
    moved = False
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an output folder gets the usual mode
        write(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not path.exists():
            os.replace(old, path)  # the swap itself failed: put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def export_openvino(model: DetectionModel, path: str | Path, opts: Any) -> Path:
    """Convert the ONNX export of ``model`` to OpenVINO IR in the folder ``path``."""
    from .export import export_metadata, export_onnx

    ov = require_openvino()
    path = Path(path)
    meta = export_metadata(model, "openvino", opts)
    stem = path.name.removesuffix("_openvino_model") or "model"

    def write(tmp: Path) -> None:
        onnx_path = export_onnx(model, tmp / f"{stem}.onnx", **asdict(replace(opts, half=False)))
        # Core.read_model, not convert_model: same ONNX frontend, but convert_model (the ovc tool)
        # sends usage telemetry to Google Analytics unless the user opted out beforehand.
        ov_model = ov.Core().read_model(str(onnx_path))
        ov_model.set_rt_info(json.dumps(meta), RT_INFO_PATH)
        ov.save_model(ov_model, str(tmp / f"{stem}.xml"), compress_to_fp16=bool(opts.half))
        onnx_path.unlink()
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))

    return atomic_dir(path, write)


def openvino_xml(path: str | Path) -> Path:
    """The IR file of an export given as its folder or its ``.xml``."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise LeyoloError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
        path = xmls[0]
    if path.suffix.lower() != ".xml" or not path.is_file():
        raise LeyoloError(f"{path}: not an OpenVINO IR (.xml)")
    if not path.with_suffix(".bin").is_file():
        raise LeyoloError(f"{path}: weights file {path.with_suffix('.bin').name} is missing")
    return path


def read_openvino_metadata(xml: Path) -> dict[str, Any]:
    """``metadata.json`` beside the IR, else the IR's ``rt_info`` (needs OpenVINO)."""
    file = xml.parent / METADATA_FILE
    try:
        if file.is_file():
            return json.loads(file.read_text())
        ov_model = require_openvino().Core().read_model(str(xml))
        if ov_model.has_rt_info(RT_INFO_PATH):
            return json.loads(ov_model.get_rt_info(RT_INFO_PATH).astype(str))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeyoloError(f"{xml}: corrupt leyolo metadata") from exc
    raise LeyoloError(f"{xml}: no leyolo metadata ({METADATA_FILE} or rt_info); not a leyolo export")


def compile_openvino(model: str | Path, half: bool = False, threads: int | None = None) -> Any:
    """A CPU compiled model with the latency hint (one request, all cores)."""
    ov = require_openvino()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if not half:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return ov.Core().compile_model(str(model), "CPU", config)
    except Exception as exc:  # openvino raises RuntimeError with multi-line C++ messages
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise LeyoloError(f"{model}: OpenVINO cannot load this model ({first})") from exc
