"""Validation: predict a dataset split with a ``Predictor`` and score it with pycocotools."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..data.datasets import load_data_yaml
from ..errors import LeyoloError
from ..inference.predictor import Predictor
from ..inference.sources import Frame, iter_frames
from .evaluator import CocoEvaluator

log = logging.getLogger("leyolo")

# The authors' protocol: conf 0.001, IoU 0.7, 300 detections, multi-label NMS (every class above
# conf keeps the box). Set predictors take the top 300 (query, class) pairs, no NMS: the DETR protocol.
VAL_SETTINGS: dict[str, dict[str, Any]] = {
    "dense": {"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True},
    "set": {"conf": 0.0, "max_det": 300},
}


def val_settings(kind: str, **overrides: Any) -> dict[str, Any]:
    """``PredictConfig`` fields for validating a model of output ``kind``; ``None`` overrides are ignored."""
    return {**VAL_SETTINGS[kind], **{k: v for k, v in overrides.items() if v is not None}}


def validate(
    predictor: Predictor,
    data: str | Path,
    *,
    split: str = "val",
    json_path: str | Path | None = None,
    verbose: bool = False,
    progress: Callable[[int], Any] | None = None,
    plots_dir: str | Path | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``predictor``'s detections on a split of the dataset described by ``data``.

    The predictor carries the protocol (``val_settings`` gives the standard one). Detections are
    written in COCO format (original pixels, COCO category ids) to ``json_path`` when given.
    Unreadable images are logged, skipped and counted. With ``plots_dir``, the PR curves and the
    confusion matrix are drawn there.

    ``progress``, if given, is called with the number of images to expect and must return a
    callable advanced by one per image (a tqdm bar's ``update`` fits).
    """
    spec = load_data_yaml(data)
    evaluator = CocoEvaluator(spec, split)
    names = predictor.names
    if len(spec.names) != len(names):
        raise LeyoloError(f"{data}: dataset has {len(spec.names)} classes but the model has {len(names)}")
    renamed = [(d, m) for d, m in zip(spec.names, names) if d != m]
    if renamed:
        log.warning("%d class names differ between dataset and model (e.g. %r vs %r); scoring by index",
                    len(renamed), *renamed[0])
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
    metrics = evaluator.summarize(verbose=verbose, plots_dir=plots_dir)
    metrics.update({"skipped": skipped, "seconds": seconds, "imgsz": predictor.config.imgsz,
                    "backend": getattr(predictor.backend, "name", "?"), "multi_label": predictor.config.multi_label})
    return metrics
