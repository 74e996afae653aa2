"""Validation: predict a dataset split with the reference protocol and score it with pycocotools."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..data.datasets import load_data_yaml
from ..errors import LeyoloError
from ..inference.sources import Frame, iter_frames
from .evaluator import CocoEvaluator

if TYPE_CHECKING:
    from ..api import Detector

log = logging.getLogger("leyolo")


def validate(
    detector: "Detector",
    data: str | Path,
    *,
    split: str = "val",
    imgsz: int | None = None,
    batch: int = 1,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    single_label: bool = False,
    backend: str = "torch",
    device: str = "cpu",
    json_path: str | Path | None = None,
    verbose: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``detector`` on a split of the dataset described by ``data`` (a data.yaml).

    Defaults follow the authors' protocol: each image letterboxed on its own, conf 0.001,
    IoU 0.7, 300 detections, multi-label NMS (``single_label=True`` keeps one class per box).
    Detections are written in COCO format (original pixels, COCO category ids) to
    ``json_path`` when given. Unreadable images are logged, skipped and counted.

    ``progress``, if given, is called with the number of images to expect and must return a
    callable advanced by one per image (a tqdm bar's ``update`` fits).
    """
    spec = load_data_yaml(data)
    evaluator = CocoEvaluator(spec, split)
    if len(spec.names) != len(detector.names):
        raise LeyoloError(f"{data}: dataset has {len(spec.names)} classes but the model has {len(detector.names)}")
    renamed = [(d, m) for d, m in zip(spec.names, detector.names) if d != m]
    if renamed:
        log.warning("%d class names differ between dataset and model (e.g. %r vs %r); scoring by index",
                    len(renamed), *renamed[0])
    predictor = detector.predictor(
        backend, device, imgsz=imgsz or detector.meta.imgsz, conf=conf, iou=iou, max_det=max_det,
        multi_label=not single_label, batch=batch,
    )
    advance = progress(len(evaluator.images)) if progress is not None else None
    skipped: list[str] = []
    start = time.perf_counter()
    for item in predictor.stream(iter_frames(list(evaluator.images))):
        if isinstance(item, Frame):
            skipped.append(item.error or item.path)
            log.warning("skipped %s", item.error)
        else:
            evaluator.add(item.path, item)
        if advance is not None:
            advance(1)
    seconds = time.perf_counter() - start
    if json_path is not None:
        evaluator.write_json(json_path)
    metrics = evaluator.summarize(verbose=verbose)
    metrics.update({"skipped": skipped, "seconds": seconds, "imgsz": predictor.config.imgsz, "backend": backend,
                    "multi_label": not single_label})
    return metrics
