"""Shared numeric primitives: letterbox geometry, box formats, IoU, class-aware NMS, postprocess.

Everything here works on numpy arrays so the torch and onnxruntime backends share one
postprocess and agree by construction. Boxes are ``xyxy`` in pixels unless said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import LeyoloError


def check_imgsz(imgsz: int, stride: int = 32, option: str = "--imgsz") -> int:
    """``imgsz`` if it is a positive multiple of ``stride``, else a ``LeyoloError`` naming the nearest ones.

    Every network here halves its maps five times and concatenates across levels, so inputs
    must divide by the largest stride; the message offers the two valid sizes around the value.
    """
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz <= 0 or imgsz % stride:
        if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0:
            low = max(stride, imgsz // stride * stride)
            hint = f" (try {low} or {low + stride})" if low != imgsz else ""
        else:
            hint = ""
        raise LeyoloError(f"{option} must be a positive multiple of {stride}, got {imgsz}{hint}")
    return imgsz


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed in the network input; inverts boxes back to the original."""

    ratio: float  # resize factor applied to the original image
    pad: tuple[int, int]  # (left, top) padding in pixels
    original_shape: tuple[int, int]  # (h, w) of the original image
    input_shape: tuple[int, int]  # (h, w) of the letterboxed image


def _resized(h: int, w: int, size: int) -> tuple[float, int, int]:
    """Scale and (w, h) that put the longest side at ``size``; thin strips keep 1 pixel."""
    r = min(size / h, size / w)
    return r, max(1, int(round(w * r))), max(1, int(round(h * r)))


def letterbox_shape(shape: tuple[int, int], size: int, stride: int = 32, auto: bool = True) -> tuple[int, int]:
    """Network input (h, w) for an image of ``shape`` (h, w): longest side ``size``, padded to ``stride``."""
    _, new_w, new_h = _resized(*shape, size)
    if not auto:
        return size, size
    return new_h + (size - new_h) % stride, new_w + (size - new_w) % stride


def letterbox(
    image: np.ndarray, size: int = 640, stride: int = 32, pad_value: int = 114, auto: bool = True
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping aspect (longest side = ``size``, bilinear) and pad evenly to a multiple of ``stride``.

    ``auto=False`` pads to the full ``size x size`` square instead (fixed-shape exports).
    This is the reference protocol: padding split on both sides, odd pixel at bottom/right.
    """
    h, w = image.shape[:2]
    r, new_w, new_h = _resized(h, w, size)
    dw, dh = size - new_w, size - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh / 2 - 0.1)), int(round(dh / 2 + 0.1))
    left, right = int(round(dw / 2 - 0.1)), int(round(dw / 2 + 0.1))
    if top or bottom or left or right:
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return image, LetterboxInfo(r, (left, top), (h, w), image.shape[:2])


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes from network input pixels back to the original image, clipped."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] -= info.pad[0]
    out[:, [1, 3]] -= info.pad[1]
    out /= info.ratio
    h, w = info.original_shape
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)  # (fancy indexing copies: ``out=`` would clip nothing)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre-size boxes to corners."""
    out = np.empty_like(boxes)
    half = boxes[..., 2:4] / 2
    out[..., :2] = boxes[..., :2] - half
    out[..., 2:4] = boxes[..., :2] + half
    return out


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Corners to top-left + size (COCO's ``bbox`` convention)."""
    out = boxes.copy()
    out[..., 2:4] = boxes[..., 2:4] - boxes[..., :2]
    return out


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray, area: float, areas: np.ndarray) -> np.ndarray:
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    return inter / np.maximum(area + areas - inter, 1e-12)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy class-aware NMS; indices of kept boxes, highest score first.

    Exactly greedy NMS per class (a box is dropped when its IoU with a kept box of the same
    class exceeds ``iou_threshold``), visited in global score order so it can stop after
    ``max_keep`` boxes. Each step compares one box with the survivors of its own class only,
    which keeps the work proportional to (kept x same-class candidates).
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    areas = box_area(boxes)
    by_class = np.argsort(classes, kind="stable")  # positions grouped by class, score order inside
    sorted_classes = classes[by_class]
    ends = np.searchsorted(sorted_classes, sorted_classes, side="right")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n)  # position of each box inside by_class
    alive = np.ones(n, dtype=bool)
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        r = rank[i]
        rest = by_class[r + 1 : ends[r]]
        if rest.size == 0:
            continue
        rest = rest[alive[rest]]
        if rest.size == 0:
            continue
        iou = _iou_one_to_many(boxes[i], boxes[rest], areas[i], areas[rest])
        alive[rest[iou > iou_threshold]] = False
    return order[np.asarray(keep, dtype=np.int64)]


@dataclass
class Detections:
    """Boxes of one image: ``xyxy [N, 4]`` float32 pixels, ``scores [N]``, ``classes [N]`` int64."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def topk_postprocess(prediction: np.ndarray, conf: float = 0.25, max_det: int = 300,
                     classes: np.ndarray | None = None) -> Detections:
    """Decoded output of a set predictor ``[4 + nc, Q]`` -> its ``max_det`` best (query, class) pairs.

    A set predictor (a DETR) gives each object one query, so no NMS runs: the detections are
    the highest scores over all queries x classes above ``conf``, a query appearing once per
    class it scores (the DETR evaluation protocol), highest first, ties by query then class.
    """
    boxes_all, scores_all = prediction[:4], prediction[4:]  # [4, Q], [nc, Q]
    if classes is not None:
        mask_cls = np.zeros(scores_all.shape[0], dtype=bool)
        mask_cls[classes] = True
        scores_all = np.where(mask_cls[:, None], scores_all, 0)
    flat = np.ascontiguousarray(scores_all.T).reshape(-1)  # query-major: index = q * nc + c
    k = min(max_det, flat.size)
    if k == 0:
        return Detections.empty()
    top = np.sort(np.argpartition(-flat, k - 1)[:k]) if k < flat.size else np.arange(flat.size)
    top = top[np.argsort(-flat[top], kind="stable")]
    top = top[flat[top] > conf]
    if top.size == 0:
        return Detections.empty()
    nc = scores_all.shape[0]
    query, cls = top // nc, top % nc
    boxes = np.ascontiguousarray(boxes_all[:, query].T, dtype=np.float32)
    return Detections(boxes, flat[top].astype(np.float32), cls.astype(np.int64))


def postprocess(
    prediction: np.ndarray,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    multi_label: bool = False,
    max_candidates: int = 30000,
    classes: np.ndarray | None = None,
) -> Detections:
    """Decoded network output of one image ``[4 + nc, A]`` -> NMS'd detections (input pixels).

    ``multi_label=True`` keeps a box once for every class whose score passes ``conf`` (the
    reference validation protocol); otherwise each box keeps only its best class (predict).
    At most ``max_candidates`` highest-scoring candidates enter NMS, as in the reference.
    """
    boxes_all = prediction[:4]  # [4, A]
    scores_all = prediction[4:]  # [nc, A]
    if classes is not None:
        mask_cls = np.zeros(scores_all.shape[0], dtype=bool)
        mask_cls[classes] = True
        scores_all = np.where(mask_cls[:, None], scores_all, 0)
    if multi_label:
        cls_idx, anchor_idx = np.nonzero(scores_all > conf)
        scores = scores_all[cls_idx, anchor_idx]
        order = np.argsort(anchor_idx * scores_all.shape[0] + cls_idx, kind="stable")  # anchor-major, as reference
        cls_idx, anchor_idx, scores = cls_idx[order], anchor_idx[order], scores[order]
    else:
        # max over classes is ~10x cheaper than argmax in numpy; argmax only the few anchors above conf
        anchor_idx = np.flatnonzero(scores_all.max(0) > conf)
        candidates = scores_all[:, anchor_idx]
        cls_idx = candidates.argmax(0)
        scores = candidates[cls_idx, np.arange(anchor_idx.size)]
    if scores.size == 0:
        return Detections.empty()
    if scores.size > max_candidates:
        top = np.argsort(-scores, kind="stable")[:max_candidates]
        cls_idx, anchor_idx, scores = cls_idx[top], anchor_idx[top], scores[top]
    boxes = np.ascontiguousarray(boxes_all[:, anchor_idx].T, dtype=np.float32)
    keep = batched_nms(boxes, scores, cls_idx, iou, max_det)
    return Detections(boxes[keep], scores[keep].astype(np.float32), cls_idx[keep].astype(np.int64))
