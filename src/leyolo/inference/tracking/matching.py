"""Association costs (IoU distance, score fusion) and the thresholded assignment (scipy).

The solver is scipy's ``linear_sum_assignment`` (a declared dependency of leyolo, never installed
at run time). ByteTrack calls ``lap.lapjv(cost, extend_cost=True, cost_limit=thresh)``: an optimal
assignment in which no pair costs more than ``thresh`` and any row or column may stay unmatched.
``linear_assignment`` solves exactly that problem with a rectangular solve on
``min(cost - thresh, 0)``: a pair above the limit is worth the same as leaving both unmatched
(zero), so the optimum of the clipped problem is the optimum of the limited one, and the pairs the
solver puts on clipped entries are dropped afterwards.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ...ops import box_iou


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - IoU`` between ``[N, 4]`` and ``[M, 4]`` xyxy boxes (``[N, M]``; empty when either is)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return 1.0 - box_iou(a, b)


def fuse_score(cost: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ByteTrack's score fusion: ``1 - IoU * score``, so confident detections win close calls."""
    if cost.size == 0:
        return cost
    return 1.0 - (1.0 - cost) * np.asarray(scores, dtype=np.float64)[None, :]


def linear_assignment(cost: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal pairs of rows and columns with ``cost <= thresh``.

    Returns ``matches`` (``[K, 2]`` row, column), the unmatched rows and the unmatched columns.
    """
    rows, cols = cost.shape
    if cost.size == 0:
        return np.empty((0, 2), dtype=np.int64), np.arange(rows), np.arange(cols)
    clipped = np.minimum(np.nan_to_num(cost, nan=np.inf) - thresh, 0.0)
    r, c = linear_sum_assignment(clipped)
    keep = cost[r, c] <= thresh
    matches = np.stack([r[keep], c[keep]], 1).astype(np.int64)
    unmatched_rows = np.setdiff1d(np.arange(rows), matches[:, 0])
    unmatched_cols = np.setdiff1d(np.arange(cols), matches[:, 1])
    return matches, unmatched_rows, unmatched_cols
