"""Test-time augmentation: the image at three scales (one flipped), each pass descaled, duplicates merged.

The usual YOLO recipe (scales 1, 0.83, 0.67; the 0.83 pass mirrored left-right). Here each pass
letterboxes the *original* image at its own size and maps its decoded output back to original
pixels before merging, so every backend (and end-to-end exports) serves it unchanged. For dense
models the full-scale pass drops its stride-32 level (large objects: the smaller passes see
them better) and the 0.67 pass its stride-8 level (small objects it sees too coarsely), which is
what the recipe intends; the passes' candidates are then merged by class-aware NMS, or each pass
is NMS'd and the passes fused by weighted box fusion (``--tta-merge wbf``).

Weighted box fusion is written here in numpy because its reference implementation
(``ensemble_boxes``) pulls numba and pandas for a few dozen lines of arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..ops import Detections, LetterboxInfo, box_iou, letterbox, unletterbox_boxes

SCALES = (1.0, 0.83, 0.67)
FLIPS = (False, True, False)
MERGES = ("nms", "wbf")
# The recipe runs on a ~30% larger input than the model's, so that its smallest view is near the
# size the model was trained at; at the model's own size the downscaled views only lose small
# objects (published nano on coco-mini: 0.4166 with TTA at 640 vs 0.4266 without; 0.4327 at 832).
AUGMENT_SIZE = 1.3


def augment_imgsz(imgsz: int, stride: int) -> int:
    """The default input size of an augmented run: ``AUGMENT_SIZE`` x ``imgsz``, a stride multiple."""
    return max(stride, int(round(imgsz * AUGMENT_SIZE / stride)) * stride)


@dataclass(frozen=True)
class Pass:
    """One augmented view: its network input, how it was letterboxed, whether it is mirrored."""

    blob: np.ndarray  # [1, 3, H, W] float32 RGB in [0, 1]
    info: LetterboxInfo
    flip: bool
    scale: float


def augmented_passes(image: np.ndarray, imgsz: int, stride: int, pad_value: int, square: bool) -> list[Pass]:
    """The TTA views of a BGR image; each scale's size is rounded to a stride multiple (at least one stride)."""
    passes = []
    for scale, flip in zip(SCALES, FLIPS):
        size = max(stride, int(round(imgsz * scale / stride)) * stride)
        view = image[:, ::-1] if flip else image
        boxed, info = letterbox(np.ascontiguousarray(view), size, stride, pad_value, auto=not square)
        passes.append(Pass(cv2.dnn.blobFromImage(boxed, 1 / 255.0, swapRB=True), info, flip, scale))
    return passes


def level_slices(input_hw: tuple[int, int], strides: Sequence[int], anchors: int) -> list[slice] | None:
    """Anchor ranges of each level of a dense head in decode order, or None when they do not add up."""
    h, w = input_hw
    counts = [(h // s) * (w // s) for s in strides]
    if sum(counts) != anchors:
        return None
    edges = np.cumsum([0, *counts])
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def to_original(decoded: np.ndarray, view: Pass, strides: Sequence[int] | None) -> np.ndarray:
    """A pass's decoded ``[4 + nc, A]`` with boxes in original-image pixels (unmirrored), levels clipped."""
    out = decoded
    if strides is not None and len(strides) > 1 and view.scale != SCALES[1]:
        slices = level_slices(view.info.input_shape, strides, decoded.shape[1])
        if slices is not None:  # full scale: no stride-32 level; smallest scale: no stride-8 level
            keep = slices[:-1] if view.scale == SCALES[0] else slices[1:]
            out = np.concatenate([decoded[:, s] for s in keep], 1)
    boxes = unletterbox_boxes(out[:4].T, view.info)
    if view.flip:
        width = view.info.original_shape[1]
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return np.concatenate([boxes.T, out[4:]], 0).astype(np.float32, copy=False)


def weighted_box_fusion(parts: Sequence[Detections], iou_threshold: float = 0.55, max_det: int = 300) -> Detections:
    """Fuse detections of several views (Solovyev et al., 2021), class by class.

    Boxes are visited by falling score; each joins the fused box of its class it overlaps most, if
    that overlap is above ``iou_threshold`` (else it starts one). A fused box is the score-weighted mean of its
    members; its score is their mean, scaled by ``min(members, views) / views``, so a box seen in
    one view of three counts a third.
    """
    views = max(len(parts), 1)
    boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), np.float32)
    scores = np.concatenate([p.scores for p in parts]) if parts else np.zeros(0, np.float32)
    classes = np.concatenate([p.classes for p in parts]) if parts else np.zeros(0, np.int64)
    out_boxes, out_scores, out_classes = [], [], []
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        fused: list[np.ndarray] = []  # current fused box per cluster
        members: list[list[int]] = []
        for i in idx:
            if fused:
                ious = box_iou(boxes[i : i + 1], np.stack(fused))[0]
                j = int(np.argmax(ious))
                if ious[j] > iou_threshold:
                    members[j].append(i)
                    w = scores[members[j]]
                    fused[j] = (boxes[members[j]] * w[:, None]).sum(0) / w.sum()
                    continue
            fused.append(boxes[i].astype(np.float64))
            members.append([i])
        for box, group in zip(fused, members):
            out_boxes.append(box)
            out_scores.append(scores[group].mean() * min(len(group), views) / views)
            out_classes.append(cls)
    if not out_scores:
        return Detections.empty()
    order = np.argsort(-np.asarray(out_scores), kind="stable")[:max_det]
    return Detections(np.asarray(out_boxes, np.float32)[order], np.asarray(out_scores, np.float32)[order],
                      np.asarray(out_classes, np.int64)[order])
