"""``Detector``: one object with the verbs a practitioner uses (predict, val, train, export, save, info).

``load()`` accepts a registered model name, the authors' published ``.pt`` checkpoint, this
library's ``.safetensors`` checkpoint, or an export: ``.onnx``, ``.torchscript`` or an OpenVINO
``*_openvino_model/`` folder (or its ``.xml``).

Backends are built once per (backend, device, threads) and kept: a hundred ``predict`` calls on
one detector fuse the model or open an onnxruntime session once. ``backend="auto"`` (the default)
picks the fastest runtime for the device (``leyolo.inference.backends.auto_backend``).
"""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .data.images import VIDEO_SUFFIXES
from .deploy.export import export as export_model
from .deploy.ncnn import is_ncnn_export, ncnn_files, read_ncnn_metadata
from .deploy.onnx_export import export_onnx, read_onnx_metadata
from .deploy.openvino import read_openvino_metadata
from .deploy.tensorrt import ENGINE_SUFFIX, read_engine, read_engine_metadata
from .deploy.torchscript import read_torchscript_metadata, trace_decoded
from .engine.trainer import train as train_model
from .engine.validate import val_settings, validate
from .errors import LeyoloError
from .inference.backends import (
    BACKENDS,
    CHOICES,
    Backend,
    NcnnBackend,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    TorchBackend,
    TorchScriptBackend,
    TensorRTBackend,
    auto_backend,
    openvino_xml,
)
from .inference.live import open_source
from .inference.predictor import Predictor
from .inference.sources import Frame, iter_frames, resolve_source
from .models.base import DetectionModel, ModelMeta
from .models.flops import count_gflops, count_params
from .ops import check_imgsz
from .structures import Results
from .weights import load_model, save_native

EXPORT_RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript", "openvino": "openvino", "ncnn": "ncnn",
                   "engine": "tensorrt"}


class Detector:
    """A detection model plus the metadata that travels with it.

    Either ``model`` (a PyTorch ``DetectionModel``) or an exported file is set. An export
    predicts and validates on its own runtime (``EXPORT_RUNTIMES``; ONNX also on OpenVINO);
    its export settings (``dynamic``, ``half``, ``nms``) are in ``meta.extra``.

    Backends are cached per (backend, device, threads, spinning). Loading weights into the model
    (``load_state_dict``) or assigning another model rebuilds them; after changing tensors in
    place by hand (an optimizer step, ``p.add_()``), call ``clear_cache()``.
    """

    def __init__(self, model: DetectionModel | None = None, onnx_path: Path | None = None,
                 meta: ModelMeta | None = None, *, export_path: Path | None = None, export_format: str | None = None):
        if onnx_path is not None:
            export_path, export_format = onnx_path, "onnx"
        if model is None and export_path is None:
            raise ValueError("a Detector needs a model or an exported file")
        if export_path is not None and export_format not in EXPORT_RUNTIMES:
            raise ValueError(f"unknown export format {export_format!r}")
        self._model: DetectionModel | None = None
        self._generation = 0  # bumped when weights are loaded into the model: cached backends are stale
        self.model = model
        self.export_path = export_path
        self.export_format = export_format if export_path is not None else None
        self.onnx_path = export_path if export_format == "onnx" else None
        self.meta = meta or model.meta  # type: ignore[union-attr]
        self._backends: dict[tuple, tuple[Any, Backend]] = {}
        self._onnx_export: tuple[Any, Path] | None = None  # (model version it was made from, file)
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._persistent_trackers: tuple[Any, dict] | None = None  # track(persist=True): (settings, trackers)

    def __repr__(self) -> str:
        where = "torch" if self.model is not None else f"{self.export_format}:{self.export_path}"
        return f"Detector({self.meta.arch}, {len(self.names)} classes, imgsz={self.meta.imgsz}, {where})"

    @property
    def model(self) -> DetectionModel | None:
        return self._model

    @model.setter
    def model(self, model: DetectionModel | None) -> None:
        """A new model (or new weights loaded into it later) makes the cached backends stale."""
        self._model = model
        self._generation += 1
        if model is not None:
            model.register_load_state_dict_post_hook(_generation_bumper(self))

    @property
    def names(self) -> list[str]:
        return list(self.meta.names)

    # -- backends -------------------------------------------------------------------------
    def _require_model(self, verb: str) -> DetectionModel:
        if self.model is None:
            raise LeyoloError(f"{verb} needs PyTorch weights; "
                              f"{self.export_path} is an exported {self.export_format} model")
        return self.model

    def onnx_file(self, imgsz: int | None = None) -> Path:
        """An ONNX file of this model: the export itself, or a dynamic-shape export into a temp folder, made
        again only when the weights have changed."""
        if self.onnx_path is not None:
            return self.onnx_path
        version = self._version()
        if self._onnx_export is None or self._onnx_export[0] != version or not self._onnx_export[1].is_file():
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="leyolo-")
            path = Path(self._tmpdir.name) / f"{self.meta.arch}.onnx"
            model = self._require_model("export")
            self._onnx_export = version, export_onnx(model, path, imgsz or self.meta.imgsz, dynamic=True)
        return self._onnx_export[1]

    def resolve_backend(self, name: str = "auto", device: str = "cpu") -> str:
        """The backend that will run: ``auto`` resolved for the device, an export's own runtime checked."""
        if name not in CHOICES:
            raise LeyoloError(f"unknown backend {name!r}; choose from {', '.join(CHOICES)}")
        if name == "auto":
            if self.model is None and self.export_format in ("ncnn", "engine"):
                return EXPORT_RUNTIMES[self.export_format]  # these run on their own runtime only
            return auto_backend(device, self.export_format)
        if name == "tensorrt" and self.model is not None:
            raise LeyoloError("--backend tensorrt runs an engine: build one with leyolo export --format engine, "
                              "then load the .engine")
        if self.model is None:
            runtime = EXPORT_RUNTIMES[self.export_format]  # type: ignore[index]
            if name == "torch":
                return runtime  # "torch" is merely the default name for an export
            if name != runtime and not (self.export_format == "onnx" and name == "openvino"):
                raise LeyoloError(f"{self.export_path} is a {self.export_format} export; "
                                  f"it runs on --backend {runtime}")
        return name

    def _version(self) -> int:
        """Changes when another model is assigned or weights are loaded into this one (free to compute)."""
        return self._generation

    def backend(self, name: str = "auto", imgsz: int | None = None, device: str = "cpu",
                threads: int | None = None, spinning: bool = True) -> Backend:
        """The backend ``name`` (``CHOICES``), built on first use and cached per (backend, device, threads).

        PyTorch weights run on any backend (the others through a dynamic-shape ONNX export or an
        in-memory trace, both valid for every input size); an export runs on its own runtime.
        """
        name = self.resolve_backend(name, device)
        key = (name, device, threads, spinning if name == "onnxruntime" else True)
        version = self._version()
        cached = self._backends.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        engine = self._build_backend(name, imgsz or self.meta.imgsz, device, threads, spinning)
        self._backends[key] = (version, engine)
        return engine

    def _build_backend(self, name: str, imgsz: int, device: str, threads: int | None, spinning: bool) -> Backend:
        nms, half = self.meta.extra.get("nms"), bool(self.meta.extra.get("half"))
        if name == "torch":
            return TorchBackend(self._require_model("the torch backend"), device, threads)
        if name == "torchscript":
            if self.model is None:
                return TorchScriptBackend.from_file(self.export_path, device)  # type: ignore[arg-type]
            return TorchScriptBackend(trace_decoded(self.model, imgsz), device)
        if name == "openvino":
            path = openvino_xml(self.export_path) if self.export_format == "openvino" else self.onnx_file(imgsz)
            return OpenVinoBackend(path, nms=nms, half=half, threads=threads)
        if name == "ncnn":
            if self.model is None:
                info = read_ncnn_metadata(self.export_path)  # type: ignore[arg-type]
                files = ncnn_files(self.export_path)  # type: ignore[arg-type]
            else:  # PyTorch weights: a dynamic-shape NCNN export made into the temp folder for this backend
                if self._tmpdir is None:
                    self._tmpdir = tempfile.TemporaryDirectory(prefix="leyolo-")
                folder = export_model(self.model, Path(self._tmpdir.name) / f"{self.meta.arch}_ncnn_model", "ncnn",
                                      imgsz=imgsz, dynamic=True)
                info, files = read_ncnn_metadata(folder), ncnn_files(folder)
            fixed = None if info.get("dynamic", True) else (int(info["imgsz"]), int(info["imgsz"]))
            return NcnnBackend(*files, threads=threads, fp16=bool(info.get("half")),
                               output=str(info.get("output", "xyxy+scores")), strides=info.get("strides"),
                               fixed_hw=fixed)
        if name == "tensorrt":
            _, plan = read_engine(self.export_path)  # type: ignore[arg-type]
            return TensorRTBackend(plan, self.export_path, device=device, nms=nms)
        return OnnxRuntimeBackend(self.onnx_file(imgsz), threads=threads, nms=nms, spinning=spinning)

    def clear_cache(self) -> None:
        """Forget the built backends (and the temporary ONNX export)."""
        self._backends.clear()
        self._onnx_export = None

    def predictor(self, backend: str = "auto", device: str = "cpu", threads: int | None = None,
                  spinning: bool = True, **config: Any) -> Predictor:
        """A ``Predictor`` on the (cached) backend with this model's preprocessing and the given thresholds.

        ``spinning``: onnxruntime's idle threads busy-wait between calls (fastest alone, slower when
        other work shares the cores; the server turns it off).
        """
        engine = self.backend(backend, config.get("imgsz"), device, threads, spinning)
        return Predictor.for_meta(engine, self.meta, **config)

    # -- verbs ----------------------------------------------------------------------------
    def predict(
        self,
        images: np.ndarray | str | Path | Sequence[np.ndarray | str | Path],
        *,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        **config: Any,
    ) -> list[Results]:
        """Detect objects in BGR arrays and/or image paths, folders or globs; one ``Results`` per image.

        Keyword arguments are ``PredictConfig`` fields (``imgsz``, ``conf``, ``iou``, ``max_det``,
        ``multi_label``, ``batch``, ``classes``, ``augment``, ``tta_merge``). Files are decoded a few
        ahead of the network, in a helper thread. Unreadable images and videos raise ``LeyoloError``
        (``stream()`` goes through videos and skips unreadable files instead).
        """
        items = [images] if isinstance(images, (np.ndarray, str, Path)) else list(images)
        frames: list[Frame | Path] = []
        for item in items:
            if isinstance(item, np.ndarray):
                frames.append(Frame("", item))
                continue
            for file in resolve_source(item):  # fails early, before any inference, on a missing path
                if file.suffix.lower() in VIDEO_SUFFIXES:
                    raise LeyoloError(f"{file}: a video; use Detector.stream() to predict on every frame")
                frames.append(file)

        def decoded() -> Iterator[Frame]:
            for entry in frames:
                yield entry if isinstance(entry, Frame) else next(iter_frames([entry]))

        results: list[Results] = []
        predictor = self.predictor(backend, device, threads, **config)
        for item in predictor.stream(decoded(), prefetch=len(frames) > 1):  # one image: no thread to hand it to
            if isinstance(item, Frame):
                raise LeyoloError(item.error or f"{item.path}: unreadable")
            item.path = item.path or None
            results.append(item)
        return results

    __call__ = predict

    def stream(self, source: Any, *, backend: str = "auto", device: str = "cpu", threads: int | None = None,
               vid_stride: int = 1, **config: Any) -> Iterator[Results | Frame]:
        """Predict lazily over an image, folder, glob, video, webcam index, stream URL or ``.streams`` list.

        Unreadable files and lost streams come back as ``Frame`` (with ``error``) instead of raising.
        ``vid_stride``: every n-th video or stream frame.
        """
        frames = open_source(source, vid_stride=vid_stride)
        return self.predictor(backend, device, threads, **config).stream(frames)

    def track(self, source: Any, *, tracker: str = "bytetrack", persist: bool = False, backend: str = "auto",
              device: str = "cpu", threads: int | None = None, vid_stride: int = 1,
              **config: Any) -> Iterator[Results | Frame] | list[Results]:
        """Detect and track objects; every result's ``boxes.id`` holds one track id per box.

        ``source``: a video, folder, glob, webcam index, stream URL (rtsp/rtmp/http...) or
        ``.streams`` list (or an iterable of ``Frame``, such as ``inference.live.open_source(...)``),
        streamed lazily (an iterator, as ``stream()``; unreadable files and lost streams come back
        as ``Frame``); or one BGR array (or a list of them), tracked at once and returned as a
        list, for calling frame by frame with ``persist=True``. ``vid_stride``: every n-th frame.

        ``tracker``: ``"bytetrack"`` or ``"botsort"`` (with camera-motion compensation). Keyword
        arguments are ``TrackerConfig`` fields (``track_high_thresh``, ``track_buffer``,
        ``gmc_method``, ...) and ``PredictConfig`` fields (``conf`` defaults to the tracker's
        ``track_low_thresh``, 0.1, since ByteTrack uses low-score boxes too). Each sequence (video,
        stream, image folder) gets a fresh tracker, unless ``persist=True``: then the trackers are
        kept on this detector and later calls continue their tracks (a change of tracker or
        settings starts over).
        """
        from .inference.tracking import TRACKERS, split_config, track_results

        if tracker not in TRACKERS:
            raise LeyoloError(f"unknown tracker {tracker!r}; choose from {', '.join(TRACKERS)}")
        tracker_config, predict_config = split_config(config)
        predict_config.setdefault("conf", tracker_config.track_low_thresh)
        trackers: dict = {}
        if persist:
            key = (tracker, tracker_config)
            kept = self._persistent_trackers
            if kept is None or kept[0] != key:
                kept = self._persistent_trackers = (key, {})
            trackers = kept[1]
        predictor = self.predictor(backend, device, threads, **predict_config)
        arrays = [source] if isinstance(source, np.ndarray) else source
        if isinstance(arrays, (list, tuple)) and arrays and all(isinstance(a, np.ndarray) for a in arrays):
            results = predictor.predict_arrays(list(arrays))
            return [r for r in track_results(results, tracker, tracker_config, trackers) if isinstance(r, Results)]
        if isinstance(source, (str, Path, int, list, tuple)):
            frames = open_source(source, vid_stride=vid_stride)
        else:  # already frames, e.g. ``leyolo.inference.live.open_source(...)``
            frames = source
        return track_results(predictor.stream(frames), tracker, tracker_config, trackers)

    def train(self, data: str | Path, **overrides: Any) -> dict[str, Any]:
        """Fine-tune this model on ``data`` (``TrainConfig`` fields as keywords); returns paths and metrics.

        This detector is left unchanged; load the returned ``best`` weights to use the result.
        """
        return train_model(self._require_model("train"), data, **overrides)

    def val(self, data: str | Path, *, split: str = "val", imgsz: int | None = None, batch: int = 1,
            conf: float | None = None, iou: float | None = None, max_det: int | None = None,
            single_label: bool = False, backend: str = "auto", device: str = "cpu", threads: int | None = None,
            augment: bool = False, tta_merge: str = "nms", json_path: str | Path | None = None, verbose: bool = False, progress: Any = None,
            plots_dir: str | Path | None = None) -> dict[str, Any]:
        """COCO metrics on a split of ``data`` with the standard protocol of the model's output kind.

        Dense models: conf 0.001, IoU 0.7, 300 detections, multi-label NMS (``single_label``
        keeps one class per box); set predictors: the 300 best (query, class) pairs. Each image
        is letterboxed on its own. ``plots_dir``: where ``pr_curve.png`` and ``confusion_matrix.png``
        go. See ``leyolo.engine.validate.validate``.
        """
        settings = val_settings(self.meta.kind, conf=conf, iou=iou, max_det=max_det,
                                multi_label=False if single_label else None)
        predictor = self.predictor(backend, device, threads, imgsz=imgsz, batch=batch, augment=augment,
                                   tta_merge=tta_merge, **settings)
        return validate(predictor, data, split=split, json_path=json_path, verbose=verbose, progress=progress,
                        plots_dir=plots_dir)

    def export(self, path: str | Path | None = None, *, format: str | None = None, imgsz: int | None = None,
               dynamic: bool = True, half: bool = False, simplify: bool = False, nms: bool = False,
               conf: float = 0.25, iou: float = 0.7, max_det: int = 300, multi_label: bool = False,
               int8: bool = False, data: str | Path | None = None, sampling: str | None = None) -> Path:
        """Write an export (``onnx``, ``torchscript``, ``openvino``, ``ncnn``, ``engine``) atomically; returns its path.

        ``dynamic`` (the default) keeps batch, height and width symbolic, so each image is
        letterboxed to its own rectangle and the export's detections are torch's; ``dynamic=False``
        fixes a square ``imgsz`` input (padding changes detections slightly) for runtimes that need it.

        ``format`` defaults to what ``path`` implies (``.onnx``, ``.torchscript``, ``*_openvino_model``),
        else onnx; a contradiction between the two is an error.

        ``nms=True`` puts the postprocess in the graph (class-aware NMS, or top-k for set
        predictors; EfficientNMS-style outputs) with ``conf``/``iou``/``max_det``/``multi_label``
        baked in; see ``leyolo.deploy.base``. Default path: ``<arch>-<imgsz>.onnx`` /
        ``.torchscript`` / ``_openvino_model/`` / ``_ncnn_model/`` / ``.engine``.

        ``int8`` (``engine`` only) calibrates TensorRT INT8 on the train images of ``data`` (a
        data.yaml); see ``leyolo.deploy.tensorrt``. ``sampling`` (Le-DETR): ``"gather"`` exports the
        deformable attention without GridSample (same results).
        """
        return export_model(self._require_model("export"), path, format, imgsz=imgsz or self.meta.imgsz,
                            dynamic=dynamic, half=half, simplify=simplify, nms=nms, conf=conf, iou=iou,
                            max_det=max_det, multi_label=multi_label, int8=int8,
                            data=str(data) if data is not None else None, sampling=sampling)

    def set_decoder_layers(self, layers: int) -> None:
        """Le-DETR: run the first ``layers`` decoder layers at inference (trained ones are all kept)."""
        model = self._require_model("set the decoder depth of")
        if not hasattr(model, "set_eval_layers"):
            raise LeyoloError(f"{self.meta.arch} has no decoder layers to choose (a set predictor such as le-detr)")
        try:
            model.set_eval_layers(layers)
        except ValueError as err:
            raise LeyoloError(str(err)) from None
        self._generation += 1  # cached exports of the old depth are stale

    def save(self, path: str | Path) -> Path:
        """Save in this library's format (safetensors + metadata), atomically."""
        model = self._require_model("save")
        return save_native(model.state_dict(), self.meta.to_dict(model.nc), path)

    def info(self, imgsz: int | None = None) -> dict[str, Any]:
        """Parameter count and GFLOPs (2 x MACs, BatchNorm unfused) at ``imgsz``.

        An export gives what its metadata says (format, classes, input size, output kind) and, for
        ONNX, the parameter count of its weights; GFLOPs need the PyTorch model.
        """
        if self.model is None:
            return {"model": self.meta.arch, "format": self.export_format, "classes": len(self.names),
                    "imgsz": self.meta.imgsz, "kind": self.meta.kind, "dynamic": self.meta.extra.get("dynamic"),
                    "nms": self.meta.extra.get("nms"), "params": self._export_params(), "gflops": None}
        model = self.model
        imgsz = check_imgsz(imgsz or self.meta.imgsz, model.stride)
        return {"model": self.meta.arch, "params": count_params(model), "gflops": round(count_gflops(model, imgsz), 4),
                "imgsz": imgsz}


    def _export_params(self) -> int | None:
        """Weights stored in an ONNX export (its float initializers), or None for other formats."""
        if self.export_format != "onnx":
            return None
        import onnx

        proto = onnx.load(str(self.export_path), load_external_data=False)
        return sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.dims) > 0)


def _generation_bumper(detector: Detector) -> Any:
    """A ``load_state_dict`` post-hook that marks ``detector``'s backends stale (holding it weakly)."""
    ref = weakref.ref(detector)

    def bump(module: Any, incompatible_keys: Any) -> None:
        target = ref()
        if target is not None:
            target._generation += 1

    return bump


def load(source: str | Path, *, arch: str | None = None) -> Detector:
    """Load a model by registered name or from a file.

    Args:
        source: ``"leyolo-n"`` (untrained), a published ``.pt``, a ``.safetensors`` written by
            this library, or an export (``.onnx``, ``.torchscript``, OpenVINO folder or ``.xml``, NCNN
            ``*_ncnn_model/`` folder or its ``.param``, TensorRT ``.engine``).
        arch: force the architecture of a published ``.pt`` instead of detecting it.
    """
    path = Path(str(source))
    suffix = path.suffix.lower()
    if path.exists() and is_ncnn_export(path):
        return _exported(path, "ncnn", read_ncnn_metadata(path))
    if path.exists() and suffix == ENGINE_SUFFIX:
        return _exported(path, "engine", read_engine_metadata(path))
    if path.exists() and (path.is_dir() or suffix == ".xml"):
        if path.is_dir() and not any(path.glob("*.xml")):
            raise LeyoloError(f"{path}: is a directory, expected a model file or an OpenVINO export folder")
        xml = openvino_xml(path)
        return _exported(path, "openvino", read_openvino_metadata(xml))
    if path.exists() and suffix == ".onnx":
        return _exported(path, "onnx", read_onnx_metadata(path))
    if path.exists() and suffix == ".torchscript":
        return _exported(path, "torchscript", read_torchscript_metadata(path))
    if path.exists() and suffix not in (".pt", ".pth", ".safetensors"):
        raise LeyoloError(f"{path}: unknown model format {suffix!r} "
                          "(expected .pt, .safetensors, .onnx, .torchscript, .engine, an OpenVINO or NCNN folder)")
    return Detector(load_model(source, arch=arch))


def _exported(path: Path, fmt: str, info: dict[str, Any]) -> Detector:
    """A Detector for an export, its settings (format, dynamic, half, nms) in ``meta.extra``."""
    names = info.get("names")
    if not isinstance(names, list) or not names:
        raise LeyoloError(f"{path}: metadata has no class names")
    extra = {"format": fmt, "dynamic": bool(info.get("dynamic", False)), "half": bool(info.get("half", False)),
             "nms": info.get("nms")}
    try:
        strides = info.get("strides")
        meta = ModelMeta(str(info.get("arch", fmt)), [str(n) for n in names], int(info.get("imgsz", 640)),
                         int(info.get("stride", 32)), int(info.get("pad_value", 114)), extra,
                         kind=str(info.get("kind", "dense")),
                         strides=tuple(int(s) for s in strides) if isinstance(strides, list) and strides else None)
    except (TypeError, ValueError) as exc:
        raise LeyoloError(f"{path}: malformed leyolo metadata ({exc})") from None
    return Detector(meta=meta, export_path=path, export_format=fmt)


def train(model: str | Path | DetectionModel = "leyolo-n", data: str | Path = "", **overrides: Any) -> dict[str, Any]:
    """Train from scratch (model name), fine-tune (weights file) or resume (``resume=run_dir``).

    Keyword arguments are ``TrainConfig`` fields (``epochs``, ``imgsz``, ``batch``, ``time``, ...)
    plus ``resume`` and ``callbacks``; see ``leyolo.engine.trainer.train``.
    """
    return train_model(model, data, **overrides)


def convert(source: str | Path, out: str | Path) -> Path:
    """Rewrite any loadable PyTorch model (e.g. a published ``.pt``) in this library's format."""
    return load(source).save(out)


__all__ = ["BACKENDS", "Detector", "convert", "load", "train"]
