"""CLEAR MOT (Bernardin & Stiefelhagen, 2008) and identity (Ristani et al., 2016) measures, numpy + scipy.

The reference implementation is py-motmetrics; this one follows its event rules exactly (its
``MOTAccumulator`` with ``max_switch_time = inf`` and ``compare_to_groundtruth(..., "iou", 0.5)``)
so that the numbers agree with it (``tests/test_tracking.py`` checks both on motmetrics' own
TUD-Campus and TUD-Stadtmitte files). It is here rather than a dependency because motmetrics is
unmaintained (1.4.0, 2022, calls ``np.asfarray``, removed in numpy 2) and pulls in pandas for what
is a few loops; motmetrics stays a test dependency, to check this module.

Per frame, ground-truth and hypothesis boxes closer than ``1 - iou_thresh`` in IoU distance may
pair. Correspondences of the previous frames are kept while they still overlap; the rest are
paired by a maximum-cardinality, minimum-distance assignment, and a ground-truth object paired
with another hypothesis than before counts one identity switch. Unpaired objects are misses,
unpaired hypotheses false positives. MOTA = 1 - (FN + FP + IDSW) / GT, MOTP = mean distance
``1 - IoU`` of the pairs (motmetrics' convention: lower is better). IDF1 comes from the one-to-one
assignment of whole identities that maximises the frames in which they overlap.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from ...ops import box_iou

# frame -> (ids [N], xyxy boxes [N, 4])
Sequence = Mapping[int, tuple[np.ndarray, np.ndarray]]

COUNTS = ("num_frames", "num_objects", "num_predictions", "num_matches", "num_switches", "num_false_positives",
          "num_misses", "num_fragmentations", "num_unique_objects", "mostly_tracked", "partially_tracked",
          "mostly_lost", "idtp", "idfp", "idfn")


def read_mot(path: str | Path, min_confidence: float | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A MOTChallenge txt file (``frame,id,x,y,w,h,conf,...``) -> {frame: (ids, xyxy)}, rows in file order.

    ``min_confidence``: keep rows whose 7th column is at least this (ground truth marks ignored
    rows with 0); ``None`` keeps every row.
    """
    text = Path(path).read_text().strip()
    rows = np.array([[float(v) for v in line.split(",")[:7]] for line in text.splitlines() if line.strip()]) \
        if text else np.empty((0, 7))
    if min_confidence is not None and len(rows):
        rows = rows[rows[:, 6] >= min_confidence]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for frame in dict.fromkeys(rows[:, 0].astype(int).tolist()):
        sel = rows[rows[:, 0] == frame]
        xyxy = np.concatenate([sel[:, 2:4], sel[:, 2:4] + sel[:, 4:6]], 1)
        out[frame] = (sel[:, 1].astype(np.int64), xyxy)
    return out


def _assign_max_cardinality(dist: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of finite entries: as many as possible, then the smallest total (motmetrics' rule)."""
    valid = np.isfinite(dist)
    if not valid.any():
        return []
    costs = dist
    if not valid.all():
        big = 2 * min(dist.shape) * (np.abs(dist[valid]).max() + 1) + 1
        costs = np.where(valid, dist, big)
    rows, cols = linear_sum_assignment(costs)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if valid[i, j]]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.int64), np.empty((0, 4))


def evaluate_sequence(gt: Sequence, hyp: Sequence, iou_thresh: float = 0.5) -> dict[str, float]:
    """The counts and measures of one sequence (see ``summarize`` for the names)."""
    max_dist = 1.0 - iou_thresh
    current: dict[int, int] = {}  # object -> hypothesis it is paired with
    obj_frames: dict[int, int] = defaultdict(int)
    hyp_frames: dict[int, int] = defaultdict(int)
    overlaps: dict[tuple[int, int], int] = defaultdict(int)  # frames in which (object, hypothesis) may pair
    status: dict[int, list[bool]] = defaultdict(list)  # per object and frame present: paired?
    c = dict.fromkeys(COUNTS, 0)
    dist_sum = 0.0
    for frame in sorted(set(gt) | set(hyp)):
        oids, oboxes = gt.get(frame, _empty())
        hids, hboxes = hyp.get(frame, _empty())
        oids, hids = np.asarray(oids).astype(np.int64), np.asarray(hids).astype(np.int64)
        c["num_frames"] += 1
        if len(oids) and len(hids):
            dist = 1.0 - box_iou(np.asarray(oboxes, dtype=np.float64).reshape(-1, 4),
                                 np.asarray(hboxes, dtype=np.float64).reshape(-1, 4))
            dist[dist > max_dist] = np.nan
        else:
            dist = np.full((len(oids), len(hids)), np.nan)
        for i, j in zip(*np.nonzero(np.isfinite(dist))):
            overlaps[(int(oids[i]), int(hids[j]))] += 1
        for o in oids.tolist():
            obj_frames[o] += 1
        for h in hids.tolist():
            hyp_frames[h] += 1
        o_done = np.zeros(len(oids), dtype=bool)
        h_done = np.zeros(len(hids), dtype=bool)
        if len(oids) and len(hids):
            for i, o in enumerate(oids.tolist()):  # 1. keep the correspondences that still overlap
                if o not in current:
                    continue
                js = np.flatnonzero(~h_done & (hids == current[o]))
                if len(js) and np.isfinite(dist[i, js[0]]):
                    o_done[i] = h_done[js[0]] = True
                    c["num_matches"] += 1
                    dist_sum += dist[i, js[0]]
            rest = dist.copy()  # 2. assign the others
            rest[o_done, :] = np.nan
            rest[:, h_done] = np.nan
            for i, j in _assign_max_cardinality(rest):
                o, h = int(oids[i]), int(hids[j])
                if o in current and current[o] != h:
                    c["num_switches"] += 1
                else:
                    c["num_matches"] += 1
                dist_sum += rest[i, j]
                current[o] = h
                o_done[i] = h_done[j] = True
        c["num_misses"] += int((~o_done).sum())
        c["num_false_positives"] += int((~h_done).sum())
        for o, done in zip(oids.tolist(), o_done.tolist()):
            status[o].append(done)

    c["num_objects"] = sum(obj_frames.values())
    c["num_predictions"] = sum(hyp_frames.values())
    c["num_unique_objects"] = len(obj_frames)
    for o, seen in status.items():
        ratio = sum(seen) / len(seen)
        key = "mostly_tracked" if ratio >= 0.8 else "partially_tracked" if ratio >= 0.2 else "mostly_lost"
        c[key] += 1
        tracked = np.flatnonzero(seen)
        if len(tracked):  # tracked -> missed transitions between the first and last tracked frame
            span = np.asarray(seen[tracked[0]: tracked[-1] + 1], dtype=int)
            c["num_fragmentations"] += int((np.diff(1 - span) == 1).sum())
    c["idtp"] = _id_true_positives(obj_frames, hyp_frames, overlaps)
    c["idfn"] = c["num_objects"] - c["idtp"]
    c["idfp"] = c["num_predictions"] - c["idtp"]
    c["_dist_sum"] = float(dist_sum)
    return summarize([c])


def _id_true_positives(obj_frames: Mapping[int, int], hyp_frames: Mapping[int, int],
                       overlaps: Mapping[tuple[int, int], int]) -> int:
    """Frames covered by the best one-to-one pairing of object and hypothesis identities."""
    if not overlaps:
        return 0
    oids = {o: i for i, o in enumerate(sorted(obj_frames))}
    hids = {h: i for i, h in enumerate(sorted(hyp_frames))}
    gain = np.zeros((len(oids), len(hids)))
    for (o, h), n in overlaps.items():
        gain[oids[o], hids[h]] = n
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return int(gain[rows, cols].sum())


def summarize(parts: list[dict[str, float]]) -> dict[str, float]:
    """Counts added over sequences and the measures computed from them (motmetrics' OVERALL)."""
    total = {k: sum(int(p[k]) for p in parts) for k in COUNTS}
    dist_sum = sum(p["_dist_sum"] for p in parts)
    detections = total["num_matches"] + total["num_switches"]
    gt, pred = total["num_objects"], total["num_predictions"]

    def div(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        **total,
        "_dist_sum": dist_sum,
        "num_detections": detections,
        "mota": 1.0 - div(total["num_misses"] + total["num_switches"] + total["num_false_positives"], gt),
        "motp": div(dist_sum, detections),
        "recall": div(detections, gt),
        "precision": div(detections, detections + total["num_false_positives"]),
        "idf1": div(2 * total["idtp"], gt + pred),
        "idp": div(total["idtp"], total["idtp"] + total["idfp"]),
        "idr": div(total["idtp"], total["idtp"] + total["idfn"]),
    }


def mot_metrics(gt: Sequence, hyp: Sequence, iou_thresh: float = 0.5) -> dict[str, float]:
    """MOTA, MOTP, IDF1 (+ IDP, IDR), recall, precision, ID switches, fragmentations, MT/PT/ML of one sequence."""
    return evaluate_sequence(gt, hyp, iou_thresh)
