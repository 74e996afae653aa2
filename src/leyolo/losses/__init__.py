"""Training losses, and which one trains which model.

A model's registry entry names its criterion (``ModelEntry.criterion``, a key of ``CRITERIA``):
the trainer asks ``build_criterion(model, options)`` and never looks at the model's head. Every
criterion is called as ``criterion(raw, targets, **distill) -> (loss, items)`` with the model's
raw output and ``[M, 6]`` targets ``(batch_idx, class, x1, y1, x2, y2)`` in input pixels.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import LeyoloError
from ..models.base import DetectionModel
from ..models.registry import get_entry
from .assigner import TaskAlignedAssigner
from .boxes import bbox_iou, bbox_to_dist, dist_to_bbox
from .criterion import YoloCriterion
from .detr import DetrCriterion, HungarianMatcher, detr_criterion

CriterionFactory = Callable[[DetectionModel, Mapping[str, Any]], Callable[..., Any]]


def yolo_criterion(model: DetectionModel, options: Mapping[str, Any]) -> YoloCriterion:
    """The dense-head loss for the layer-graph YOLOs; ``options`` are ``TrainConfig`` names (box, cls, ...)."""
    head = getattr(model, "head", None)
    if not all(hasattr(head, a) for a in ("nc", "strides", "bins")):
        raise LeyoloError(f"{model.meta.arch}: the yolo criterion needs a dense DFL head (nc, strides, bins)")
    return YoloCriterion(head.nc, head.strides, head.bins, box_gain=options.get("box", 7.5),
                         cls_gain=options.get("cls", 0.5), dfl_gain=options.get("dfl", 1.5),
                         focal_gamma=options.get("focal_gamma", 0.0), focal_alpha=options.get("focal_alpha", 0.25),
                         class_weights=options.get("class_weights"))


CRITERIA: dict[str, CriterionFactory] = {"yolo": yolo_criterion, "detr": detr_criterion}


def register_criterion(name: str, factory: CriterionFactory) -> None:
    """Add a criterion that registry entries can name (a new family's loss)."""
    if name in CRITERIA:
        raise ValueError(f"criterion {name!r} registered twice")
    CRITERIA[name] = factory


def build_criterion(model: DetectionModel, options: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """The criterion the model's registry entry names, built for ``model`` with ``options``."""
    if not isinstance(model, DetectionModel):
        raise TypeError(f"build_criterion needs a DetectionModel, got {type(model).__name__}")
    name = get_entry(model.meta.arch).criterion
    if name not in CRITERIA:
        raise LeyoloError(f"{model.meta.arch}: its criterion {name!r} is not registered")
    return CRITERIA[name](model, dict(options or {}))


__all__ = ["CRITERIA", "DetrCriterion", "HungarianMatcher", "TaskAlignedAssigner", "YoloCriterion", "bbox_iou",
           "bbox_to_dist", "build_criterion", "detr_criterion", "dist_to_bbox", "register_criterion", "yolo_criterion"]
