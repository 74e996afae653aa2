"""The predictor: frames -> letterbox -> batched backend -> shared postprocess -> ``Results``.

The postprocess follows the model's output kind (``PredictConfig.kind``): class-aware NMS for
dense predictors, top-k over queries x classes for set predictors. End-to-end backends (an
export with that postprocess in the graph) skip it; their detections are only filtered by
``conf``/``max_det`` (stricter than the baked values is all they can do) and un-letterboxed
like any other.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..data.images import to_bgr8
from ..errors import LeyoloError
from ..models.base import OUTPUT_KINDS, ModelMeta
from ..ops import (
    Detections,
    LetterboxInfo,
    batched_nms,
    check_imgsz,
    letterbox,
    postprocess,
    topk_postprocess,
    unletterbox_boxes,
)
from ..structures import Results
from .backends import Backend, Output
from .sources import Frame
from .tta import MERGES, Pass, augment_imgsz, augmented_passes, to_original, weighted_box_fusion

log = logging.getLogger("leyolo")


@dataclass(frozen=True)
class PredictConfig:
    """Knobs of one prediction run. Defaults are the ``predict`` ones; validation overrides them."""

    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False
    batch: int = 1
    stride: int = 32
    pad_value: int = 114
    square: bool = False  # pad to imgsz x imgsz (fixed-shape exports) instead of the next multiple of stride
    max_candidates: int = 30000
    kind: str = "dense"  # the model's output kind: "dense" -> NMS, "set" -> top-k
    classes: tuple[int, ...] | None = None  # keep only these class indices
    augment: bool = False  # test-time augmentation (``inference.tta``): 3 scales, one mirrored
    tta_merge: str = "nms"  # how the augmented passes are merged: nms | wbf
    strides: tuple[int, ...] | None = None  # a dense head's level strides (TTA drops a level per scale)

    def validate(self) -> "PredictConfig":
        check_imgsz(self.imgsz, self.stride)
        if self.kind not in OUTPUT_KINDS:
            raise LeyoloError(f"unknown output kind {self.kind!r} (expected one of {', '.join(OUTPUT_KINDS)})")
        if not 0.0 <= self.conf <= 1.0:
            raise LeyoloError(f"--conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise LeyoloError(f"--iou must be in [0, 1], got {self.iou}")
        if self.max_det < 1:
            raise LeyoloError(f"--max-det must be at least 1, got {self.max_det}")
        if self.batch < 1:
            raise LeyoloError(f"--batch must be at least 1, got {self.batch}")
        if self.tta_merge not in MERGES:
            raise LeyoloError(f"--tta-merge must be one of {', '.join(MERGES)}, got {self.tta_merge!r}")
        if self.classes is not None and any(isinstance(c, bool) or not isinstance(c, int) or c < 0
                                            for c in self.classes):
            raise LeyoloError(f"--classes must be class indices (non-negative integers), got {list(self.classes)}")
        return self


@dataclass
class _Prepared:
    frame: Frame
    blob: np.ndarray | None  # [1, 3, H, W] float32 RGB in [0, 1]
    info: LetterboxInfo | None
    seconds: float = 0.0
    passes: list[Pass] | None = None  # the test-time augmentation views
    image: np.ndarray | None = None  # the frame as 8-bit BGR (what results draw on)


class Predictor:
    """Runs a backend over images with the reference letterbox and NMS.

    Args:
        backend: produces decoded ``[B, 4 + nc, A]`` from a float batch (or an ``NmsBatch`` when
            its ``end_to_end`` is true).
        names: class names.
        config: thresholds, image size, batch size.
    """

    def __init__(self, backend: Backend, names: Sequence[str], config: PredictConfig) -> None:
        self.backend = backend
        self.names = list(names)
        self.config = config.validate()
        if config.classes is not None and any(c >= len(self.names) for c in config.classes):
            raise LeyoloError(f"--classes {list(config.classes)}: the model has {len(self.names)} classes")
        self._classes = None if config.classes is None else np.asarray(config.classes, dtype=np.int64)
        self.end_to_end = bool(getattr(backend, "end_to_end", False))
        if self.end_to_end:
            self._warn_baked(getattr(backend, "nms", None))

    @classmethod
    def for_meta(cls, backend: Backend, meta: ModelMeta, **config: Any) -> "Predictor":
        """A predictor with the preprocessing and output kind of ``meta`` (config: ``PredictConfig`` fields).

        A backend with a fixed input shape (a static export) gets square padding at its size. With
        ``augment`` and no ``imgsz``, the input is the recipe's: 1.3x the model's size (``tta.AUGMENT_SIZE``).
        """
        if config.get("imgsz") is None:
            config["imgsz"] = augment_imgsz(meta.imgsz, meta.stride) if config.get("augment") else meta.imgsz
        fixed = getattr(backend, "fixed_hw", None)
        square = bool(config.pop("square", False))
        if fixed is not None:
            where = getattr(backend, "path", meta.arch)
            if config.get("augment"):
                raise LeyoloError(f"{where} has a fixed input shape; test-time augmentation needs a dynamic export")
            if fixed[0] != fixed[1]:
                raise LeyoloError(f"{where}: fixed non-square input {fixed} is not supported")
            if config["imgsz"] != fixed[0]:
                raise LeyoloError(f"{where} was exported for --imgsz {fixed[0]}, not {config['imgsz']}")
            square = True
        cfg = PredictConfig(stride=meta.stride, pad_value=meta.pad_value, kind=meta.kind, square=square,
                            strides=meta.strides, **config)
        return cls(backend, meta.names, cfg)

    def _warn_baked(self, baked: dict | None) -> None:
        """Say which requested settings an in-graph NMS cannot honour (it can only filter further)."""
        cfg = self.config
        if not baked:
            log.warning("the model has NMS in its graph with unknown settings; conf/max_det only filter its output")
            return
        ignored = []
        if cfg.conf < baked["conf"]:
            ignored.append(f"conf {cfg.conf} (baked {baked['conf']})")
        if cfg.kind == "dense" and abs(cfg.iou - baked.get("iou", cfg.iou)) > 1e-6:
            ignored.append(f"iou {cfg.iou} (baked {baked['iou']})")
        if cfg.max_det > baked["max_det"]:
            ignored.append(f"max_det {cfg.max_det} (baked {baked['max_det']})")
        if cfg.kind == "dense" and cfg.multi_label != baked.get("multi_label", cfg.multi_label):
            ignored.append(f"multi_label {cfg.multi_label} (baked {baked['multi_label']})")
        if ignored:
            log.warning("the model has NMS in its graph; re-export with --nms to change: %s", ", ".join(ignored))

    def detections(self, raw: Output, i: int) -> Detections:
        """Detections of image ``i`` of a backend output, in letterboxed pixels (this predictor's postprocess)."""
        cfg = self.config
        if not self.end_to_end:
            if cfg.kind == "set":
                return topk_postprocess(raw[i], cfg.conf, cfg.max_det, self._classes)
            return postprocess(raw[i], cfg.conf, cfg.iou, cfg.max_det, cfg.multi_label, cfg.max_candidates,
                               self._classes)
        det = raw.detections(i)
        keep = det.scores > cfg.conf
        if self._classes is not None:
            keep &= np.isin(det.classes, self._classes)
        keep = np.flatnonzero(keep)[: cfg.max_det]  # rows come highest score first
        return Detections(det.boxes[keep], det.scores[keep], det.classes[keep]) if len(keep) < len(det) else det

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR uint8 image -> network blob ``[1, 3, H, W]`` and the letterbox it used."""
        cfg = self.config
        boxed, info = letterbox(image, cfg.imgsz, cfg.stride, cfg.pad_value, auto=not cfg.square)
        return cv2.dnn.blobFromImage(boxed, 1 / 255.0, swapRB=True), info

    def _prepare_frame(self, frame: Frame) -> _Prepared:
        if frame.image is None:
            return _Prepared(frame, None, None)
        start = time.perf_counter()
        cfg = self.config
        try:
            image = to_bgr8(frame.image, frame.path)
            if cfg.augment:
                passes = augmented_passes(image, cfg.imgsz, cfg.stride, cfg.pad_value, cfg.square)
                return _Prepared(frame, passes[0].blob, passes[0].info, time.perf_counter() - start, passes, image)
            blob, info = self.prepare(image)
        except LeyoloError as exc:
            return _Prepared(Frame(frame.path, None, frame.frame, str(exc)), None, None)
        return _Prepared(frame, blob, info, time.perf_counter() - start, image=image)

    def _run_group(self, group: list[_Prepared]) -> list[Results]:
        start = time.perf_counter()
        batch = group[0].blob if len(group) == 1 else np.concatenate([p.blob for p in group])
        raw = self.backend(batch)
        infer = time.perf_counter() - start
        out = []
        for i, p in enumerate(group):
            t0 = time.perf_counter()
            det = self.detections(raw, i)
            boxes = unletterbox_boxes(det.boxes, p.info)
            speed = {"preprocess": p.seconds, "inference": infer / len(group), "postprocess": time.perf_counter() - t0}
            out.append(
                Results(boxes, det.scores, det.classes, self.names, p.info.original_shape, p.frame.path, p.frame.frame, speed,
                        p.image)
            )
        return out

    def stream(self, frames: Iterable[Frame], prefetch: bool = True) -> Iterator[Results | Frame]:
        """Yield a ``Results`` per readable frame and the ``Frame`` itself (with ``error``) per unreadable one.

        Decoding and letterboxing of the next images run in a helper thread while the
        backend works (OpenCV releases the GIL), so they mostly hide behind inference.
        Images with the same letterboxed shape are batched together, up to ``batch``.
        """
        # a live source already keeps only its latest frame: a prefetch queue in front would delay results
        prefetch = prefetch and not getattr(frames, "live", False)
        prepared = self._prefetched(frames) if prefetch else map(self._prepare_frame, frames)
        group: list[_Prepared] = []
        for item in prepared:
            if item.blob is None:
                yield from self._flush(group)
                group = []
                yield item.frame
                continue
            if item.passes is not None:
                yield self._run_augmented(item)
                continue
            if group and (item.blob.shape != group[0].blob.shape or len(group) >= self.config.batch):
                yield from self._flush(group)
                group = []
            group.append(item)
        yield from self._flush(group)

    def _pass_detections(self, raw: Output, view: Pass) -> Detections:
        """One augmented view's detections, in original-image pixels."""
        cfg = self.config
        if self.end_to_end:
            det = self.detections(raw, 0)
            boxes = to_original(det.boxes.T, view, None)[:4].T  # only the box rows: mapped and unmirrored
            return Detections(np.ascontiguousarray(boxes), det.scores, det.classes)
        decoded = to_original(raw[0], view, None)
        if cfg.kind == "set":
            return topk_postprocess(decoded, cfg.conf, cfg.max_det, self._classes)
        return postprocess(decoded, cfg.conf, cfg.iou, cfg.max_det, cfg.multi_label, cfg.max_candidates, self._classes)

    def _run_augmented(self, p: _Prepared) -> Results:
        """Test-time augmentation: every view through the backend, mapped back, then merged."""
        cfg = self.config
        passes = p.passes or []
        start = time.perf_counter()
        raws = [self.backend(view.blob) for view in passes]
        infer = time.perf_counter() - start
        t0 = time.perf_counter()
        if cfg.tta_merge == "nms" and not self.end_to_end and cfg.kind == "dense":
            # the recipe: every view's candidates (less its clipped level) through one NMS
            merged = np.concatenate([to_original(raw[0], view, cfg.strides) for raw, view in zip(raws, passes)], 1)
            det = postprocess(merged, cfg.conf, cfg.iou, cfg.max_det, cfg.multi_label, cfg.max_candidates,
                              self._classes)
        else:  # each view's own detections, fused (wbf) or NMS'd together (set predictors, end-to-end exports)
            parts = [self._pass_detections(raw, view) for raw, view in zip(raws, passes)]
            if cfg.tta_merge == "wbf":
                det = weighted_box_fusion(parts, max_det=cfg.max_det)
            else:
                boxes = np.concatenate([d.boxes for d in parts])
                scores = np.concatenate([d.scores for d in parts])
                classes = np.concatenate([d.classes for d in parts])
                keep = batched_nms(boxes, scores, classes, cfg.iou, cfg.max_det)
                det = Detections(boxes[keep], scores[keep], classes[keep])
        h, w = p.info.original_shape
        boxes = det.boxes.copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        speed = {"preprocess": p.seconds, "inference": infer, "postprocess": time.perf_counter() - t0}
        return Results(boxes, det.scores, det.classes, self.names, (h, w), p.frame.path, p.frame.frame, speed,
                       p.image)

    def _flush(self, group: list[_Prepared]) -> Iterator[Results]:
        if group:
            yield from self._run_group(group)

    def _prefetched(self, frames: Iterable[Frame]) -> Iterator[_Prepared]:
        """Decode + letterbox in a producer thread, a bounded queue ahead of the consumer."""
        items: queue.Queue = queue.Queue(maxsize=max(2, 2 * self.config.batch))
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for frame in frames:
                    if stop.is_set():
                        return
                    items.put(self._prepare_frame(frame))
            except BaseException as exc:  # handed to the consumer, re-raised there
                items.put(exc)
            finally:
                items.put(done)

        worker = threading.Thread(target=produce, name="leyolo-decode", daemon=True)
        worker.start()
        try:
            while True:
                item = items.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def predict_arrays(self, images: Sequence[np.ndarray], paths: Sequence[str | None] | None = None) -> list[Results]:
        """Predict on in-memory BGR images (any of: HxW, HxWx3, HxWx4, uint8/uint16/float)."""
        paths = list(paths) if paths is not None else [None] * len(images)
        frames = [Frame(p or "", img) for p, img in zip(paths, images)]
        results: list[Results] = []
        for item in self.stream(frames, prefetch=False):
            if isinstance(item, Frame):
                raise LeyoloError(item.error or "unreadable image")
            if not item.path:
                item.path = None
            results.append(item)
        return results
