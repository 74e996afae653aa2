"""Training losses: task-aligned assignment, BCE/focal classification, CIoU + DFL box regression."""

from .assigner import TaskAlignedAssigner
from .boxes import bbox_iou, bbox_to_dist, dist_to_bbox
from .criterion import YoloCriterion

__all__ = ["TaskAlignedAssigner", "YoloCriterion", "bbox_iou", "bbox_to_dist", "dist_to_bbox"]


def build_criterion(model, **options):
    """The criterion that trains ``model``: the family's head decides (dense anchor-free heads -> YOLO loss).

    ``options`` are the criterion's keyword arguments (gains, focal, class weights).
    """
    from ..models.heads import DenseHead

    head = getattr(model, "head", None)
    if isinstance(head, DenseHead):  # LeYOLO's DNiNHead, the YOLOv8/11/12 DecoupledHead
        return YoloCriterion(head.nc, head.strides, head.bins, **options)
    raise TypeError(f"no criterion known for heads of type {type(head).__name__}")


__all__ += ["build_criterion"]
