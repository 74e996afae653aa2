"""Exact COCO box evaluation with pycocotools, from a COCO json or from YOLO txt labels.

The numbers must match what the COCO toolkit reports, so this wraps ``COCOeval`` itself rather
than re-implementing it; the work here is mapping images and classes to COCO ids correctly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.datasets import DatasetSpec, image_size, label_path, read_yolo_labels, split_images
from ..errors import LeyoloError
from ..structures import Results
from ..fileio import atomic_write
from .metrics import confusion_matrix, precision_recall
from .plots import plot_confusion_matrix, plot_pr_curves

LOGGER = logging.getLogger("leyolo")
_MAX_LOGGED_PROBLEMS = 10

# COCOeval.stats positions, in the order pycocotools prints them.
STAT_KEYS = (
    "mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)

T = TypeVar("T")
CONFUSION_CONF, CONFUSION_IOU = 0.25, 0.45  # the operating point of the confusion matrix (the YOLO tools' too)


def _quiet(fn: Callable[[], T]) -> tuple[T, str]:
    """Run a pycocotools call with its prints captured instead of spilled on the console."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = fn()
    return value, buffer.getvalue()


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def _log_problems(problems: list[str]) -> None:
    for problem in problems[:_MAX_LOGGED_PROBLEMS]:
        LOGGER.warning("skipped label: %s", problem)
    if len(problems) > _MAX_LOGGED_PROBLEMS:
        LOGGER.warning("... and %d more bad label lines skipped", len(problems) - _MAX_LOGGED_PROBLEMS)


class CocoEvaluator:
    """Collects detections for the images of one split and scores them with ``COCOeval``.

    With a COCO json for the split, its image ids and category ids are used (class ``i`` is the
    ``i``-th category id in sorted order, the data.yaml convention). Without one, ground truth is
    built from the YOLO txt labels: image ids ``1..N`` in sorted file order, category id ``i + 1``.
    """

    def __init__(self, spec: DatasetSpec, split: str = "val") -> None:
        self.spec = spec
        self.split = split
        self.names = list(spec.names)
        self.problems: list[str] = []
        self.category_ids: list[int] = []  # class index -> COCO category id; set with the ground truth
        folder_images = split_images(spec, split)
        if split in spec.jsons:
            self._gt = self._gt_from_json(spec.jsons[split])
            self.images, self._ids, self._basename_ids = self._match_json_images(folder_images)
        else:
            self._gt, self.images, self._ids = self._gt_from_labels(folder_images)
            self._basename_ids = {}
        self._detections: list[dict] = []
        self._added: set[int] = set()

    # -- ground truth -----------------------------------------------------------------------------

    def _gt_from_json(self, json_path: Path) -> COCO:
        try:
            gt, _ = _quiet(lambda: COCO(str(json_path)))
        except (OSError, ValueError, AssertionError, KeyError, TypeError) as exc:
            raise LeyoloError(f"{json_path}: not a usable COCO annotation file ({exc})") from None
        categories = sorted(gt.cats)
        if len(categories) != len(self.names):
            yaml_name = self.spec.yaml_path.name
            raise LeyoloError(
                f"{json_path}: {len(categories)} categories but {yaml_name} names {len(self.names)} classes"
            )
        self.category_ids = categories
        for i, cat_id in enumerate(categories):
            json_name = str(gt.cats[cat_id].get("name", ""))
            if json_name and json_name != self.names[i]:
                LOGGER.warning("class %d is '%s' in data.yaml but category %d is '%s' in %s",
                               i, self.names[i], cat_id, json_name, json_path.name)
                break
        return gt

    def _match_json_images(self, folder_images: list[Path]) -> tuple[list[Path], dict[str, int], dict[str, int]]:
        by_name: dict[str, int] = {}
        for image in self._gt.dataset.get("images", []):
            name = Path(str(image.get("file_name", ""))).name
            if name in by_name:
                raise LeyoloError(f"{self.spec.jsons[self.split]}: two images named {name}; cannot match files to ids")
            by_name[name] = int(image["id"])
        images = [p for p in folder_images if p.name in by_name]
        missing = [p for p in folder_images if p.name not in by_name]
        if missing:
            LOGGER.warning("%d images of '%s' are not in %s and are skipped (e.g. %s)",
                           len(missing), self.split, self.spec.jsons[self.split].name, missing[0].name)
        if not images:
            raise LeyoloError(f"{self.spec.jsons[self.split]}: none of the '{self.split}' images appear in it")
        ids = {_key(p): by_name[p.name] for p in images}
        return images, ids, {p.name: by_name[p.name] for p in images}

    def _gt_from_labels(self, folder_images: list[Path]) -> tuple[COCO, list[Path], dict[str, int]]:
        nc = len(self.names)
        self.category_ids = list(range(1, nc + 1))
        records: list[dict] = []
        annotations: list[dict] = []
        images: list[Path] = []
        ids: dict[str, int] = {}
        for path in folder_images:
            try:
                h, w = image_size(path)
            except LeyoloError as exc:
                LOGGER.warning("skipped image: %s", exc)
                continue
            image_id = len(images) + 1
            images.append(path)
            ids[_key(path)] = image_id
            records.append({"id": image_id, "file_name": path.name, "height": h, "width": w})
            classes, boxes, problems = read_yolo_labels(label_path(path), nc)
            self.problems.extend(problems)
            for cls, (cx, cy, bw, bh) in zip(classes.tolist(), boxes.astype(np.float64).tolist()):
                x1, y1 = max((cx - bw / 2) * w, 0.0), max((cy - bh / 2) * h, 0.0)
                x2, y2 = min((cx + bw / 2) * w, float(w)), min((cy + bh / 2) * h, float(h))
                box = [x1, y1, x2 - x1, y2 - y1]
                annotations.append({
                    "id": len(annotations) + 1,  # ids must start at 1: COCOeval treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                })
        _log_problems(self.problems)
        if not images:
            raise LeyoloError(f"{self.spec.yaml_path}: no readable images in the '{self.split}' split")
        gt = COCO()
        gt.dataset = {
            "images": records,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.names)],
        }
        _quiet(gt.createIndex)
        return gt, images, ids

    # -- detections -------------------------------------------------------------------------------

    def image_id(self, path: str | Path) -> int:
        """COCO image id of one of ``images`` (matched by full path, or by file name for a json)."""
        image_id = self._ids.get(_key(path))
        if image_id is None:
            image_id = self._basename_ids.get(Path(path).name)
        if image_id is None:
            raise LeyoloError(f"{path}: not an image of the '{self.split}' split being evaluated")
        return image_id

    def add(self, path: str | Path, results: Results) -> None:
        """Record the detections of one image (once per image: repeats would count as false positives)."""
        image_id = self.image_id(path)
        if image_id in self._added:
            raise LeyoloError(f"{path}: detections already added for this image")
        if len(results) and (int(results.classes.min()) < 0 or int(results.classes.max()) >= len(self.names)):
            raise LeyoloError(
                f"{path}: class index {int(results.classes.max())} outside the dataset's {len(self.names)} classes"
            )
        self._added.add(image_id)
        self._detections.extend(results.to_coco(image_id, self.category_ids))

    @property
    def detections(self) -> list[dict]:
        return list(self._detections)

    def write_json(self, path: str | Path) -> Path:
        """The detections as a COCO results file, written atomically."""
        payload = json.dumps(self._detections)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))

    # -- scoring ----------------------------------------------------------------------------------

    def _results_coco(self) -> COCO:
        if self._detections:
            # loadRes writes area/id/segmentation into the dicts it gets: hand it copies.
            res, _ = _quiet(lambda: self._gt.loadRes([dict(d) for d in self._detections]))
            return res
        # loadRes cannot take an empty list; an empty result set still scores every GT as missed.
        res = COCO()
        res.dataset = {"images": list(self._gt.dataset["images"]), "categories": list(self._gt.dataset["categories"]),
                       "annotations": []}
        _quiet(res.createIndex)
        return res

    def summarize(self, verbose: bool = False, plots_dir: str | Path | None = None) -> dict[str, Any]:
        """COCO metrics; ``nan`` where pycocotools reports -1 (nothing of that kind in the ground truth).

        Also ``precision`` and ``recall`` (class means at the confidence ``pr_conf`` of best mean
        F1, IoU 0.5, from COCOeval's matches). With ``plots_dir``: ``pr_curve.png`` and
        ``confusion_matrix.png`` (conf 0.25, IoU 0.45) there, listed under ``plots``.
        """
        coco_eval = COCOeval(self._gt, self._results_coco(), "bbox")
        coco_eval.params.imgIds = sorted(set(self._ids.values()))
        _quiet(coco_eval.evaluate)
        _quiet(coco_eval.accumulate)
        _, text = _quiet(coco_eval.summarize)
        metrics: dict[str, Any] = {
            key: (float(v) if v > -1 else math.nan) for key, v in zip(STAT_KEYS, coco_eval.stats.tolist())
        }
        pr = precision_recall(coco_eval, self.category_ids)
        metrics.update(precision=pr["precision"], recall=pr["recall"], pr_conf=pr["conf"])
        if plots_dir is not None:
            matrix = confusion_matrix(self._gt, self._detections, self.category_ids, CONFUSION_CONF, CONFUSION_IOU)
            written = [plot_confusion_matrix(matrix, self.names, Path(plots_dir) / "confusion_matrix.png",
                                             CONFUSION_CONF, CONFUSION_IOU)]
            if pr["curves"] is not None:
                written.append(plot_pr_curves(pr["curves"], self.names, Path(plots_dir) / "pr_curve.png"))
            metrics["plots"] = [str(p) for p in written if p is not None]
            metrics["confusion_matrix"] = matrix.tolist()
        if verbose:
            precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
            area_all = coco_eval.params.areaRngLbl.index("all")
            max_dets = len(coco_eval.params.maxDets) - 1
            per_class: dict[str, float] = {}
            for i, name in enumerate(self.names):
                k = coco_eval.params.catIds.index(self.category_ids[i])
                values = precision[:, :, k, area_all, max_dets]
                valid = values[values > -1]
                per_class[name] = float(valid.mean()) if valid.size else math.nan
            metrics["per_class"] = per_class
        metrics["images"] = len(self.images)
        metrics["detections"] = len(self._detections)
        metrics["text"] = text
        return metrics


def _fmt(value: float) -> str:
    return "     n/a" if math.isnan(value) else f"{value:8.4f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """A readable table: counts, overall metrics, then AP50-95 per class in class order."""
    lines = [f"images {metrics.get('images', 0)}, detections {metrics.get('detections', 0)}"]
    for key in STAT_KEYS:
        if key in metrics:
            lines.append(f"  {key:<12}{_fmt(float(metrics[key]))}")
    if "precision" in metrics:
        lines.append(f"  {'precision':<12}{_fmt(float(metrics['precision']))}   (IoU 0.5, at conf "
                     f"{metrics.get('pr_conf', float('nan')):.3f}, where mean F1 peaks)")
        lines.append(f"  {'recall':<12}{_fmt(float(metrics['recall']))}")
    per_class = metrics.get("per_class")
    if per_class:
        width = max(12, *(len(n) for n in per_class)) + 2
        lines.append(f"  {'class':<{width}} AP50-95")
        for name, ap in per_class.items():
            note = "  (no labels)" if math.isnan(ap) else ""
            lines.append(f"  {name:<{width}}{_fmt(ap)}{note}")
    return "\n".join(lines)
