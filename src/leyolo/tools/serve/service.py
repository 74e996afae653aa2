"""``DetectionService``: the model, its predictors, the batcher and the metrics behind one app.

What happens to an image, and on which thread:

1. the event loop reads the (bounded) body and parses the parameters;
2. a worker thread of the app's decode pool (at most ``decode_threads`` at once) checks the
   header, decodes and letterboxes it with the predictor's own ``prepare``;
3. the batcher's single thread runs the backend on a batch of same-shape images;
4. the decode pool again runs the predictor's postprocess (NMS) for this image and maps the
   boxes back to original pixels, so NMS overlaps the next backend call.

Steps 2-4 are what ``leyolo predict`` does with each file, with the same functions, so the
answers are its answers.

The backend is built once per app and every predictor (one per distinct request settings) shares
it. For onnxruntime it is built here rather than by ``Detector.backend`` only to turn thread
spinning off (``ServeConfig.spinning``): spinning workers burn the cores that decoding and NMS
need. Measured with the published nano at 640 on the 2-core dev VM under other load: the backend
alone ran 41-50 images/s without spinning and 20-24 with it (batch 1-8).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import LeyoloError, first_line
from ...inference.cpus import usable_cpus
from ...inference.predictor import Predictor
from ...ops import LetterboxInfo, check_imgsz, unletterbox_boxes
from ...optional import require
from .batching import BatcherClosed, BatchResult, MicroBatcher, QueueFull
from .config import ServeConfig
from .limits import ApiError
from .metrics import Metrics
from .uploads import decode_image

log = logging.getLogger("leyolo.serve")

PARAMS = ("conf", "iou", "imgsz", "max_det", "classes")
MAX_PREDICTORS = 32  # distinct parameter sets kept (a predictor is cheap; the backend is shared)


def _version() -> str:
    try:
        return metadata.version("leyolo")
    except metadata.PackageNotFoundError:
        return "unknown"


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(422, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ApiError(422, f"{name} must be between 0 and 1, got {text}")
    return value


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}, got {value}")
    return value


@dataclass
class Prepared:
    blob: np.ndarray
    info: LetterboxInfo
    decode_s: float


class DetectionService:
    """Everything one app serves with. ``detector`` may be given (tests, one-process CLI) or is loaded."""

    def __init__(self, config: ServeConfig, detector: Any = None) -> None:
        self.config = config.validate()
        self.detector = detector
        self.metrics = Metrics()
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.error: str | None = None
        self.backend_name: str | None = None
        self.imgsz: int = config.imgsz or 0
        self._predictors: dict[tuple, Predictor] = {}
        self._backend: Any = None
        self._limiter: Any = None
        self._task: asyncio.Task | None = None
        self._incoming = 0  # requests between parameter check and batch submission (being decoded)
        self._anyio = require("anyio", "leyolo serve")

    # -- life cycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Load (if needed), build the backend once, warm it up, start the batcher. Blocking."""
        if self.detector is None:
            from ...api import load

            self.detector = load(self.config.model)
        meta = self.detector.meta
        self.imgsz = check_imgsz(self.config.imgsz or meta.imgsz, meta.stride)
        c = self.config
        self.backend_name = self.detector.resolve_backend(c.backend, c.device)
        self._backend = self.detector.backend(c.backend, self.imgsz, c.device, c.threads, spinning=c.spinning)
        predictor = self.predictor({})
        blob, _ = predictor.prepare(np.full((self.imgsz, self.imgsz, 3), meta.pad_value, np.uint8))
        for _ in range(2):  # first calls allocate and plan; keep them out of the first request
            predictor.backend(blob)
        self.batcher = MicroBatcher(predictor.backend, self.config.max_batch, self.config.max_wait_ms / 1e3,
                                    self.config.queue_size, self.metrics, incoming=lambda: self._incoming)
        self.metrics.bind_queue(self.batcher.depth)
        self.batcher.start()

    async def start(self) -> None:
        """Load: in the background (``/healthz`` answers at once, ``/readyz`` once warm) or before serving."""
        self._limiter = self._anyio.CapacityLimiter(self.config.decode_threads or usable_cpus())
        self._task = asyncio.create_task(self._load())
        if not self.config.background_load:
            await self._task

    async def _load(self) -> None:
        start = time.perf_counter()
        try:
            await self._anyio.to_thread.run_sync(self.load)
        except Exception as exc:  # the process stays up, unready, and says why
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("cannot serve %s: %s", self.config.model, self.error)
            return
        self.ready = True
        log.info("ready: %s on %s, imgsz %d, %d classes, warm in %.1f s", self.detector.meta.arch,
                 self.backend_name, self.imgsz, len(self.detector.names), time.perf_counter() - start)

    async def stop(self) -> None:
        """Called after the server has finished its in-flight requests: drain and stop the batcher."""
        self.ready = False
        if self._task is not None:
            await self._task
        if self.batcher is not None:
            await self._anyio.to_thread.run_sync(self.batcher.close)

    def check_ready(self) -> None:
        if not self.ready or self.batcher is None:
            reason = f"model failed to load: {self.error}" if self.error else "model is loading"
            raise ApiError(503, reason, {"Retry-After": "1"})

    def info(self) -> dict[str, Any]:
        meta = self.detector.meta if self.detector is not None else None
        c = self.config
        return {"model": meta.arch if meta else c.model, "source": c.model, "classes": meta.names if meta else [],
                "imgsz": self.imgsz, "backend": self.backend_name, "device": c.device, "version": _version(),
                "ready": self.ready, "defaults": {"conf": c.conf, "iou": c.iou, "max_det": c.max_det},
                "batching": {"max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms, "queue_size": c.queue_size},
                "limits": {"max_body_mb": c.max_body_mb, "max_pixels": c.max_pixels, "max_imgsz": c.max_imgsz,
                           "max_images": c.max_images, "timeout_s": c.timeout_s}}

    # -- parameters and predictors -------------------------------------------------------
    def settings(self, values: Mapping[str, str]) -> dict[str, Any]:
        """Request parameters (strings) -> predictor settings; ``ApiError`` 422 for anything off."""
        unknown = sorted(set(values) - set(PARAMS))
        if unknown:
            raise ApiError(422, f"unknown parameter {unknown[0]!r} (expected {', '.join(PARAMS)})")
        c, meta = self.config, self.detector.meta
        out: dict[str, Any] = {"imgsz": self.imgsz, "conf": c.conf, "iou": c.iou, "max_det": c.max_det}
        if values.get("conf", "") != "":
            out["conf"] = _float("conf", values["conf"])
        if values.get("iou", "") != "":
            out["iou"] = _float("iou", values["iou"])
        if values.get("max_det", "") != "":
            out["max_det"] = _int("max_det", values["max_det"], 1, max(c.max_det, 1000))
        if values.get("imgsz", "") != "":
            out["imgsz"] = _int("imgsz", values["imgsz"], meta.stride, max(c.max_imgsz, self.imgsz))
        if values.get("classes", "") != "":
            items = [t.strip() for t in values["classes"].split(",") if t.strip()]
            out["classes"] = tuple(_int("classes", t, 0, len(meta.names) - 1) for t in items) or None
        return out

    def predictor(self, settings: Mapping[str, Any]) -> Predictor:
        """The predictor for these settings, on the app's one backend (nothing is rebuilt per request)."""
        settings = {"imgsz": self.imgsz, **settings}
        key = tuple(sorted(settings.items()))
        cached = self._predictors.get(key)
        if cached is not None:
            return cached
        try:
            predictor = Predictor.for_meta(self._backend, self.detector.meta, **settings)
        except LeyoloError as exc:  # e.g. imgsz not a multiple of the stride, a fixed-shape export
            raise ApiError(422, str(exc).replace("--", "")) from None
        if len(self._predictors) >= MAX_PREDICTORS:
            self._predictors.pop(next(iter(self._predictors)))
        self._predictors[key] = predictor
        return predictor

    # -- detection -----------------------------------------------------------------------
    async def detect(self, images: Sequence[bytes], values: Mapping[str, str]) -> list[dict[str, Any]]:
        """Decode, batch, postprocess; one answer dict per image. ``ApiError`` for what is refused."""
        self.check_ready()
        predictor = self.predictor(self.settings(values))
        names = [f"image {i + 1}" if len(images) > 1 else "image" for i in range(len(images))]
        run = self._anyio.to_thread.run_sync
        batcher = self.batcher
        assert batcher is not None
        self._incoming += 1
        try:
            prepared = await run(functools.partial(self._prepare, images, names, predictor), limiter=self._limiter)
            jobs = self._submit(batcher, [p.blob for p in prepared], len(images))
        finally:
            self._incoming -= 1
            batcher.notify()
        try:
            results = await batcher.wait(jobs)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("timeout").inc(len(images))
            raise ApiError(504, f"not done within {self.config.timeout_s:g} s") from None
        except LeyoloError as exc:  # the backend refused this input (e.g. outside an engine's shape profile)
            raise ApiError(422, first_line(exc)) from None
        return await run(functools.partial(self._answers, prepared, results, predictor), limiter=self._limiter)

    def _submit(self, batcher: MicroBatcher, blobs: list[np.ndarray], n: int) -> list:
        try:
            return batcher.submit_many(blobs, self.config.timeout_s)
        except QueueFull:
            self.metrics.rejected.labels("queue_full").inc(n)
            raise ApiError(503, "server busy: the batching queue is full", {"Retry-After": "1"}) from None
        except BatcherClosed:
            raise ApiError(503, "server is shutting down", {"Retry-After": "1"}) from None

    def _prepare(self, images: Sequence[bytes], names: Sequence[str], predictor: Predictor) -> list[Prepared]:
        out = []
        for data, name in zip(images, names):
            start = time.perf_counter()
            image = decode_image(data, self.config.max_pixels, name)
            blob, info = predictor.prepare(image)
            out.append(Prepared(blob, info, time.perf_counter() - start))
        return out

    def _answers(self, prepared: Sequence[Prepared], results: Sequence[BatchResult],
                 predictor: Predictor) -> list[dict[str, Any]]:
        names = self.detector.names
        out = []
        for p, r in zip(prepared, results):
            start = time.perf_counter()
            # The predictor's own postprocess (NMS / top-k / end-to-end filtering) on this image's row of
            # the batch output: the very code `leyolo predict` runs, so detections match it exactly.
            det = predictor.detections(r.raw, r.index)
            boxes = unletterbox_boxes(det.boxes, p.info)
            h, w = p.info.original_shape
            detections = [{"box": [round(v, 3) for v in box], "score": round(score, 5), "class_id": cls,
                           "class_name": names[cls]}
                          for box, score, cls in zip(boxes.tolist(), det.scores.tolist(), det.classes.tolist())]
            post = time.perf_counter() - start
            out.append({"model": self.detector.meta.arch, "image": {"width": w, "height": h},
                        "detections": detections,
                        "time_ms": {"decode": round(p.decode_s * 1e3, 3), "queue": round(r.queue_s * 1e3, 3),
                                    "infer": round(r.infer_s * 1e3, 3), "post": round(post * 1e3, 3)},
                        "batch_size": r.size})
        return out
