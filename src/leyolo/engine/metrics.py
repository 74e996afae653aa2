"""Precision, recall and the confusion matrix, from the same matches ``COCOeval`` made.

COCO's numbers are AP and AR; practitioners also read precision and recall at one operating
point, per-class PR curves and a confusion matrix. These are derived here from pycocotools'
own per-image matching (IoU 0.5, all areas, 100 detections), so they can never disagree with
the mAP next to them; the operating point is the confidence that maximises the mean F1 over
classes, the convention of the YOLO tools. pycocotools has no confusion matrix, so that one is
computed here: greedy one-to-one matching by IoU at a fixed confidence, as the YOLO tools do.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..ops import box_iou

CONF_GRID = np.linspace(0.0, 1.0, 1001)


def _class_curves(coco_eval: Any, category_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scores (descending), precision and recall after each detection of one class, and its GT count."""
    params = coco_eval.params
    n_img, n_area = len(params.imgIds), len(params.areaRng)
    k = params.catIds.index(category_id)
    area_all = params.areaRngLbl.index("all")
    start = k * n_area * n_img + area_all * n_img
    records = [e for e in coco_eval.evalImgs[start:start + n_img] if e is not None]
    if not records:
        return np.zeros(0), np.zeros(0), np.zeros(0), 0
    scores = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for e in records])
    matched = np.concatenate([e["dtMatches"][0] > 0 for e in records])  # IoU threshold 0.5 is the first
    ignored = np.concatenate([e["dtIgnore"][0].astype(bool) for e in records])
    n_gt = int(sum(int((np.asarray(e["gtIgnore"]) == 0).sum()) for e in records))
    scores, matched = scores[~ignored], matched[~ignored]
    order = np.argsort(-scores, kind="mergesort")  # pycocotools' own order
    scores, matched = scores[order], matched[order]
    tp = np.cumsum(matched)
    fp = np.cumsum(~matched)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(n_gt, 1)
    return scores, precision, recall, n_gt


def precision_recall(coco_eval: Any, category_ids: Sequence[int]) -> dict[str, Any]:
    """Mean precision and recall at the confidence of best mean F1, and the curves behind them.

    Returns ``precision``, ``recall``, ``f1``, ``conf`` (the operating point) and, for plotting,
    ``curves``: per class ``(precision [101], recall_thresholds [101])`` from COCOeval at IoU 0.5
    (NaN rows for classes without ground truth), and ``f1_curve`` over ``CONF_GRID``.
    """
    p_at = np.full((len(category_ids), CONF_GRID.size), np.nan)
    r_at = np.full_like(p_at, np.nan)
    for i, cat in enumerate(category_ids):
        scores, precision, recall, n_gt = _class_curves(coco_eval, cat)
        if n_gt == 0:
            continue
        if scores.size == 0:
            p_at[i], r_at[i] = 0.0, 0.0
            continue
        # at threshold c: the detections scoring >= c (a step function; no interpolation between them)
        kept = np.searchsorted(-scores, -CONF_GRID, side="right")  # how many score >= c
        p_at[i] = np.where(kept > 0, precision[np.maximum(kept - 1, 0)], 1.0)
        r_at[i] = np.where(kept > 0, recall[np.maximum(kept - 1, 0)], 0.0)
    valid = ~np.isnan(p_at[:, 0])
    if not valid.any():
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan"), "conf": float("nan"),
                "curves": None, "f1_curve": None}
    mean_p, mean_r = p_at[valid].mean(0), r_at[valid].mean(0)
    f1 = 2 * mean_p * mean_r / np.maximum(mean_p + mean_r, 1e-16)
    best = int(np.argmax(f1))
    pr = coco_eval.eval["precision"][0, :, :, coco_eval.params.areaRngLbl.index("all"), -1]  # [R, K]
    order = [coco_eval.params.catIds.index(c) for c in category_ids]
    return {"precision": float(mean_p[best]), "recall": float(mean_r[best]), "f1": float(f1[best]),
            "conf": float(CONF_GRID[best]), "curves": (pr[:, order].T, coco_eval.params.recThrs), "f1_curve": f1}


def confusion_matrix(gt: Any, detections: Sequence[dict], category_ids: Sequence[int], conf: float = 0.25,
                     iou: float = 0.45) -> np.ndarray:
    """``[nc + 1, nc + 1]`` counts, rows = predicted class, columns = true class, last = background.

    Detections at or above ``conf`` are matched one-to-one to non-crowd ground truth of any class
    by IoU above ``iou``, highest IoU first. A matched pair counts at (predicted, true); an
    unmatched detection at (predicted, background); a missed object at (background, true).
    """
    nc = len(category_ids)
    index = {int(c): i for i, c in enumerate(category_ids)}
    matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    by_image: dict[int, list[dict]] = {}
    for d in detections:
        if d["score"] >= conf:
            by_image.setdefault(int(d["image_id"]), []).append(d)
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=False)) if a["category_id"] in index]
        dets = by_image.get(image_id, [])
        t_cls = np.array([index[a["category_id"]] for a in anns], dtype=np.int64)
        p_cls = np.array([index[d["category_id"]] for d in dets if d["category_id"] in index], dtype=np.int64)
        dets = [d for d in dets if d["category_id"] in index]
        t_box = xywh_to_xyxy_topleft(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
        p_box = xywh_to_xyxy_topleft(np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4))
        pairs = _one_to_one(box_iou(p_box, t_box), iou) if len(dets) and len(anns) else np.zeros((0, 2), int)
        matched_p, matched_t = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
        for pi, ti in pairs.tolist():
            matrix[p_cls[pi], t_cls[ti]] += 1
        for pi in set(range(len(dets))) - matched_p:
            matrix[p_cls[pi], nc] += 1
        for ti in set(range(len(anns))) - matched_t:
            matrix[nc, t_cls[ti]] += 1
    return matrix


def _one_to_one(ious: np.ndarray, threshold: float) -> np.ndarray:
    """(detection, truth) index pairs above ``threshold``, each index used once, highest IoU first."""
    pairs = np.argwhere(ious > threshold)
    pairs = pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")]
    taken_p: set[int] = set()
    taken_t: set[int] = set()
    keep = []
    for p, t in pairs.tolist():
        if p not in taken_p and t not in taken_t:
            taken_p.add(p)
            taken_t.add(t)
            keep.append((p, t))
    return np.asarray(keep, dtype=np.int64).reshape(-1, 2)


def xywh_to_xyxy_topleft(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (top-left corner) to corners."""
    out = boxes.copy()
    out[:, 2:] = boxes[:, :2] + boxes[:, 2:]
    return out


