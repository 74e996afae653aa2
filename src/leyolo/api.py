"""``Detector``: one object with the verbs a practitioner uses (predict, val, export, save, info).

``load()`` accepts a registered model name, the authors' published ``.pt`` checkpoint, this
library's ``.safetensors`` checkpoint, or an export: ``.onnx``, ``.torchscript`` or an OpenVINO
``*_openvino_model/`` folder (or its ``.xml``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .data.images import VIDEO_SUFFIXES
from .errors import LeyoloError
from .flops import count_gflops, count_params
from .inference.backends import BACKENDS, OnnxRuntimeBackend, OpenVinoBackend, TorchBackend, TorchScriptBackend
from .inference.predictor import PredictConfig, Predictor
from .inference.sources import Frame, iter_frames, resolve_source
from .models.detector import DetectionModel, ModelMeta
from .registry import create_model, get_entry, list_models
from .structures import Results
from .weights import load_native, load_published, published_state_dict, read_native_metadata, save_native

PUBLISHED_CANDIDATES = ("leyolo-n", "leyolo-s", "leyolo-m")
EXPORT_RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript", "openvino": "openvino"}


class Detector:
    """A detection model plus the metadata that travels with it.

    Either ``model`` (a PyTorch ``DetectionModel``) or an exported file is set. An export
    predicts and validates on its own runtime (``EXPORT_RUNTIMES``; ONNX also on OpenVINO);
    its export settings (``dynamic``, ``half``, ``nms``) are in ``meta.extra``.
    """

    def __init__(self, model: DetectionModel | None = None, onnx_path: Path | None = None,
                 meta: ModelMeta | None = None, *, export_path: Path | None = None, export_format: str | None = None):
        if onnx_path is not None:
            export_path, export_format = onnx_path, "onnx"
        if model is None and export_path is None:
            raise ValueError("a Detector needs a model or an exported file")
        if export_path is not None and export_format not in EXPORT_RUNTIMES:
            raise ValueError(f"unknown export format {export_format!r}")
        self.model = model
        self.export_path = export_path
        self.export_format = export_format if export_path is not None else None
        self.onnx_path = export_path if export_format == "onnx" else None
        self.meta = meta or model.meta  # type: ignore[union-attr]
        self._onnx_cache: dict[tuple[int, bool], Path] = {}
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    def __repr__(self) -> str:
        where = "torch" if self.model is not None else f"{self.export_format}:{self.export_path}"
        return f"Detector({self.meta.arch}, {len(self.names)} classes, imgsz={self.meta.imgsz}, {where})"

    @property
    def names(self) -> list[str]:
        return list(self.meta.names)

    # -- backends -------------------------------------------------------------------------
    def _require_model(self, verb: str) -> DetectionModel:
        if self.model is None:
            raise LeyoloError(f"{verb} needs PyTorch weights; "
                              f"{self.export_path} is an exported {self.export_format} model")
        return self.model

    def onnx_file(self, imgsz: int) -> Path:
        """An ONNX export of this model with dynamic shapes (cached in a temporary folder)."""
        if self.onnx_path is not None:
            return self.onnx_path
        from .deploy.export import export_onnx

        key = (imgsz, True)
        if key not in self._onnx_cache:
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="leyolo-")
            path = Path(self._tmpdir.name) / f"{self.meta.arch}-{imgsz}.onnx"
            self._onnx_cache[key] = export_onnx(self._require_model("export"), path, imgsz, dynamic=True)
        return self._onnx_cache[key]

    def backend(self, name: str = "torch", imgsz: int | None = None, device: str = "cpu"):
        """Instantiate a backend by name (``BACKENDS``).

        PyTorch weights run on any of them (the others through a temporary ONNX export or an
        in-memory trace); an export runs on its own runtime, "torch" being merely the default name.
        """
        if name not in BACKENDS:
            raise LeyoloError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        imgsz = imgsz or self.meta.imgsz
        if self.model is None:
            runtime = EXPORT_RUNTIMES[self.export_format]  # type: ignore[index]
            if name == "torch":
                name = runtime
            elif name != runtime and not (self.export_format == "onnx" and name == "openvino"):
                raise LeyoloError(f"{self.export_path} is a {self.export_format} export; "
                                  f"it runs on --backend {runtime}")
        nms, half = self.meta.extra.get("nms"), bool(self.meta.extra.get("half"))
        if name == "torch":
            return TorchBackend(self._require_model("the torch backend"), device)
        if name == "torchscript":
            if self.model is None:
                return TorchScriptBackend.from_file(self.export_path, device)  # type: ignore[arg-type]
            from .deploy.torchscript import trace_decoded

            return TorchScriptBackend(trace_decoded(self.model, imgsz), device)
        if name == "openvino":
            from .deploy.openvino import openvino_xml

            path = openvino_xml(self.export_path) if self.export_format == "openvino" else self.onnx_file(imgsz)
            return OpenVinoBackend(path, nms=nms, half=half)
        return OnnxRuntimeBackend(self.onnx_file(imgsz), nms=nms)

    def predictor(self, backend: str = "torch", device: str = "cpu", **config: Any) -> Predictor:
        """A ``Predictor`` with this model's preprocessing and the given thresholds."""
        config.setdefault("imgsz", self.meta.imgsz)
        engine = self.backend(backend, config["imgsz"], device)
        square = bool(config.pop("square", False))
        fixed = getattr(engine, "fixed_hw", None)
        if fixed is not None:
            if fixed[0] != fixed[1]:
                raise LeyoloError(f"{self.export_path}: fixed non-square input {fixed} is not supported")
            if config["imgsz"] != fixed[0]:
                raise LeyoloError(f"{self.export_path} was exported for --imgsz {fixed[0]}, not {config['imgsz']}")
            square = True
        cfg = PredictConfig(stride=self.meta.stride, pad_value=self.meta.pad_value, square=square, **config)
        return Predictor(engine, self.names, cfg)

    # -- verbs ----------------------------------------------------------------------------
    def predict(
        self,
        images: np.ndarray | str | Path | Sequence[np.ndarray | str | Path],
        *,
        backend: str = "torch",
        device: str = "cpu",
        **config: Any,
    ) -> list[Results]:
        """Detect objects in BGR arrays and/or image paths; one ``Results`` per image.

        Keyword arguments are ``PredictConfig`` fields (``imgsz``, ``conf``, ``iou``,
        ``max_det``, ``multi_label``, ``batch``). Unreadable paths raise ``LeyoloError``.
        """
        items = [images] if isinstance(images, (np.ndarray, str, Path)) else list(images)
        arrays, paths = [], []
        for item in items:
            if isinstance(item, np.ndarray):
                arrays.append(item)
                paths.append(None)
            else:
                if Path(item).suffix.lower() in VIDEO_SUFFIXES:
                    raise LeyoloError(f"{item}: a video; use Detector.stream() to predict on every frame")
                frame = next(iter_frames([Path(item)]))
                if frame.image is None:
                    raise LeyoloError(frame.error or f"{item}: unreadable")
                arrays.append(frame.image)
                paths.append(str(item))
        return self.predictor(backend, device, **config).predict_arrays(arrays, paths)

    def stream(
        self, source: str | Path, *, backend: str = "torch", device: str = "cpu", **config: Any
    ) -> Iterator[Results | Frame]:
        """Predict over an image, folder, glob or video lazily; unreadable files come back as ``Frame``."""
        files = resolve_source(source)
        return self.predictor(backend, device, **config).stream(iter_frames(files))

    def train(self, data: str | Path, **overrides: Any) -> dict[str, Any]:
        """Fine-tune this model on ``data`` (``TrainConfig`` fields as keywords); returns paths and metrics.

        This detector is left unchanged; load the returned ``best`` weights to use the result.
        """
        from .engine.trainer import train

        return train(self._require_model("train"), data, **overrides)

    def val(self, data: str | Path, **kwargs: Any) -> dict[str, Any]:
        """COCO metrics on a dataset's val split; see ``leyolo.engine.validate.validate``."""
        from .engine.validate import validate

        return validate(self, data, **kwargs)

    def export(self, path: str | Path | None = None, *, format: str | None = None, imgsz: int | None = None,
               dynamic: bool = False, half: bool = False, simplify: bool = False, nms: bool = False,
               conf: float = 0.25, iou: float = 0.7, max_det: int = 300, multi_label: bool = False) -> Path:
        """Write an export (``onnx``, ``torchscript`` or ``openvino``) atomically; returns its path.

        ``format`` defaults to what ``path`` implies (``.onnx``, ``.torchscript``, ``*_openvino_model``),
        else onnx; a contradiction between the two is an error.

        ``nms=True`` puts decoding + class-aware NMS in the graph (EfficientNMS-style outputs) with
        ``conf``/``iou``/``max_det``/``multi_label`` baked in; see ``leyolo.deploy.export``.
        Default path: ``<arch>-<imgsz>.onnx`` / ``.torchscript`` / ``_openvino_model/``.
        """
        from .deploy.export import export

        return export(self._require_model("export"), path, format, imgsz=imgsz or self.meta.imgsz, dynamic=dynamic,
                      half=half, simplify=simplify, nms=nms, conf=conf, iou=iou, max_det=max_det,
                      multi_label=multi_label)

    def save(self, path: str | Path) -> Path:
        """Save in this library's format (safetensors + metadata), atomically."""
        model = self._require_model("save")
        return save_native(model.state_dict(), self.meta.to_dict(model.nc), path)

    def info(self, imgsz: int | None = None) -> dict[str, Any]:
        """Parameter count and GFLOPs (2 x MACs, BatchNorm unfused) at ``imgsz``."""
        model = self._require_model("info")
        imgsz = imgsz or self.meta.imgsz
        if imgsz <= 0 or imgsz % 32:
            raise LeyoloError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
        return {"model": self.meta.arch, "params": count_params(model), "gflops": round(count_gflops(model, imgsz), 4),
                "imgsz": imgsz}


def _detect_published_arch(ck) -> DetectionModel:
    nc = len(ck.names) or 80
    errors = []
    for name in PUBLISHED_CANDIDATES:
        model = create_model(name, nc=nc, names=ck.names or None)
        try:
            model.load_state_dict(published_state_dict(ck, model))
            return model
        except LeyoloError as exc:
            errors.append(str(exc))
    raise LeyoloError(f"checkpoint matches no LeYOLO architecture ({errors[0]})")


def load(source: str | Path, *, arch: str | None = None) -> Detector:
    """Load a model by registered name or from a file.

    Args:
        source: ``"leyolo-n"`` (untrained), a published ``.pt``, a ``.safetensors`` written by
            this library, or an export (``.onnx``, ``.torchscript``, OpenVINO folder or ``.xml``).
        arch: force the architecture of a published ``.pt`` instead of detecting it.
    """
    text = str(source)
    if text in list_models():
        return Detector(create_model(text))
    path = Path(text)
    if not path.exists():
        hint = f"; known model names: {', '.join(list_models())}" if not path.suffix else ""
        raise LeyoloError(f"{path}: no such file{hint}")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".xml":
        if path.is_dir() and not any(path.glob("*.xml")):
            raise LeyoloError(f"{path}: is a directory, expected a model file or an OpenVINO export folder")
        from .deploy.openvino import openvino_xml, read_openvino_metadata

        return _exported(path, "openvino", read_openvino_metadata(openvino_xml(path)))
    if suffix == ".onnx":
        from .deploy.export import read_onnx_metadata

        return _exported(path, "onnx", read_onnx_metadata(path))
    if suffix == ".torchscript":
        from .deploy.torchscript import read_torchscript_metadata

        return _exported(path, "torchscript", read_torchscript_metadata(path))
    if suffix == ".safetensors":
        return _load_native(path)
    if suffix in (".pt", ".pth"):
        ck = load_published(path)
        if arch is not None:
            model = create_model(arch, nc=len(ck.names) or 80, names=ck.names or None)
            model.load_state_dict(published_state_dict(ck, model))
        else:
            model = _detect_published_arch(ck)
        imgsz = ck.train_args.get("imgsz") if isinstance(ck.train_args.get("imgsz"), int) else model.meta.imgsz
        model.meta.imgsz = imgsz
        return Detector(model.float().eval())
    raise LeyoloError(f"{path}: unknown model format {suffix!r} "
                      "(expected .pt, .safetensors, .onnx, .torchscript or an OpenVINO folder)")


def _exported(path: Path, fmt: str, info: dict[str, Any]) -> Detector:
    """A Detector for an export, its settings (format, dynamic, half, nms) in ``meta.extra``."""
    names = info.get("names")
    if not isinstance(names, list) or not names:
        raise LeyoloError(f"{path}: metadata has no class names")
    extra = {"format": fmt, "dynamic": bool(info.get("dynamic", False)), "half": bool(info.get("half", False)),
             "nms": info.get("nms")}
    meta = ModelMeta(str(info.get("arch", fmt)), [str(n) for n in names], int(info.get("imgsz", 640)),
                     int(info.get("stride", 32)), int(info.get("pad_value", 114)), extra)
    return Detector(meta=meta, export_path=path, export_format=fmt)


def _load_native(path: Path) -> Detector:
    meta = read_native_metadata(path)
    arch = str(meta["arch"])
    get_entry(arch)  # clear error for an unknown architecture
    names = meta.get("names")
    if not isinstance(names, list) or not names:
        raise LeyoloError(f"{path}: metadata has no class names")
    model = create_model(arch, nc=len(names), names=[str(n) for n in names])
    tensors, _ = load_native(path)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("train.")}  # resume state of a checkpoint
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise LeyoloError(f"{path}: weights do not fit {arch} with {len(names)} classes (e.g. {first})")
    mismatched = [key for key, tensor in tensors.items() if tensor.shape != own[key].shape]
    if mismatched:
        if not (meta.get("extra") or {}).get("pruned"):
            key = mismatched[0]
            raise LeyoloError(f"{path}: weights do not fit {arch}: {key} has shape {tuple(tensors[key].shape)}, "
                              f"expected {tuple(own[key].shape)}")
        from .deploy.prune import fit_to_state_dict  # channel-pruned weights: rebuild layers at the stored widths

        own = fit_to_state_dict(model, tensors, str(path))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    model.meta.imgsz = int(meta.get("imgsz", model.meta.imgsz))
    model.meta.extra = dict(meta.get("extra", {}))
    return Detector(model.eval())


def convert(source: str | Path, out: str | Path) -> Path:
    """Rewrite any loadable PyTorch model (e.g. a published ``.pt``) in this library's format."""
    return load(source).save(out)
