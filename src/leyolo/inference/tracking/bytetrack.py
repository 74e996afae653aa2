"""ByteTrack (Zhang et al., ECCV 2022, arXiv 2110.06864): Kalman prediction + two-stage IoU association.

Written here from the paper and the authors' ``byte_tracker.py`` (MIT) because no maintained,
dependency-light ByteTrack package exists: the reference repository is a research codebase (YOLOX,
torch, cython_bbox, lap), and the packaged copies come inside whole frameworks. Only numpy, scipy
(the assignment) and the filter in ``kalman.py`` are used.

Per frame:

1. every confirmed and lost track is predicted one step (lost ones with their height velocity
   zeroed, as in the reference);
2. detections scoring at least ``track_high_thresh`` are matched to those tracks by IoU distance
   (fused with the score: ``1 - IoU * score``) with a ``match_thresh`` limit; matched lost tracks
   come back with their id;
3. the confirmed tracks left over are matched to the low-score detections
   (``track_low_thresh < score < track_high_thresh``) by plain IoU distance, limit
   ``second_match_thresh``: this is what recovers occluded, low-confidence objects; tracks still
   unmatched become lost;
4. unconfirmed tracks (born on the previous frame) get the leftover high-score detections, limit
   ``unconfirmed_match_thresh``; an unconfirmed track that misses is removed;
5. leftover high-score detections at or above ``new_track_thresh`` start unconfirmed tracks
   (confirmed at once on the first frame); lost tracks older than the buffer
   (``track_buffer * frame_rate / 30`` frames) are removed, and a tracked/lost pair overlapping
   at IoU distance below ``duplicate_thresh`` keeps only the older track.

The output holds the confirmed tracks updated on this frame, with their filtered boxes.
Association is class-agnostic, as in the paper; a track takes the class of its latest detection.
Ids start at 1 and are per tracker (``reset()`` starts again).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from .config import TrackerConfig
from .kalman import KalmanFilterXYAH, xyah_to_xyxy, xyxy_to_xyah
from .matching import fuse_score, iou_distance, linear_assignment



class TrackState:
    NEW, TRACKED, LOST, REMOVED = 0, 1, 2, 3


class STrack:
    """One track: its filter state, id and bookkeeping. ``box`` is the current xyxy estimate."""

    __slots__ = ("box", "score", "cls", "det_index", "mean", "cov", "track_id", "state", "is_activated",
                 "frame_id", "start_frame", "tracklet_len")

    def __init__(self, box: np.ndarray, score: float, cls: int, det_index: int) -> None:
        self.box = np.asarray(box, dtype=np.float64)
        self.score, self.cls, self.det_index = float(score), int(cls), int(det_index)
        self.mean: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        self.track_id = 0
        self.state = TrackState.NEW
        self.is_activated = False
        self.frame_id = self.start_frame = self.tracklet_len = 0

    def __repr__(self) -> str:
        return f"STrack(id={self.track_id}, state={self.state}, frames {self.start_frame}-{self.frame_id})"

    @property
    def end_frame(self) -> int:
        return self.frame_id


@dataclass
class Tracks:
    """What a tracker outputs for one frame: confirmed tracks updated on it."""

    xyxy: np.ndarray  # [K, 4] float32, the filtered boxes
    ids: np.ndarray  # [K] int64, from 1
    scores: np.ndarray  # [K] float32, of the matched detections
    classes: np.ndarray  # [K] int64
    det_index: np.ndarray  # [K] int64, rows of the input detections

    def __len__(self) -> int:
        return len(self.ids)


class BYTETracker:
    """ByteTrack over xyxy detections; ``update()`` once per frame, in order.

    Args:
        config: thresholds (``TrackerConfig``; default: its defaults).
    """

    kalman_class = KalmanFilterXYAH
    frozen_when_lost = (7,)  # state velocities zeroed while a track is lost (ByteTrack: the height's)

    def __init__(self, config: TrackerConfig | None = None) -> None:
        config = TrackerConfig() if config is None else config
        self.config = config.validate()
        self.kf = self.kalman_class()
        self.max_time_lost = max(int(config.frame_rate / 30.0 * config.track_buffer), 1)
        self.reset()

    def reset(self) -> None:
        """Forget every track and start ids and frame numbers again from 1."""
        self.frame_id = 0
        self.tracked: list[STrack] = []
        self.lost: list[STrack] = []
        self._next_id = 1

    # -- filter glue (BoT-SORT swaps the state space) --------------------------------------------
    def to_measurement(self, boxes: np.ndarray) -> np.ndarray:
        return xyxy_to_xyah(boxes)

    def to_xyxy(self, mean: np.ndarray) -> np.ndarray:
        return xyah_to_xyxy(mean)

    def _predict(self, tracks: list[STrack]) -> None:
        if not tracks:
            return
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        lost = np.array([t.state != TrackState.TRACKED for t in tracks])
        mean[np.ix_(lost, self.frozen_when_lost)] = 0.0
        mean, cov = self.kf.predict(mean, cov)
        self._store(tracks, mean, cov)

    def _store(self, tracks: list[STrack], mean: np.ndarray, cov: np.ndarray) -> None:
        boxes = self.to_xyxy(mean)
        for t, m, c, b in zip(tracks, mean, cov, boxes):
            t.mean, t.cov, t.box = m, c, b

    def _kalman_update(self, pairs: list[tuple[STrack, STrack]]) -> None:
        """Correct each track with its detection's box (one batched filter update)."""
        if not pairs:
            return
        tracks = [t for t, _ in pairs]
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        z = self.to_measurement(np.stack([d.box for _, d in pairs]))
        mean, cov = self.kf.update(mean, cov, z)
        self._store(tracks, mean, cov)

    def _activate(self, tracks: list[STrack]) -> None:
        if not tracks:
            return
        mean, cov = self.kf.initiate(self.to_measurement(np.stack([t.box for t in tracks])))
        self._store(tracks, mean, cov)
        for t in tracks:
            t.track_id, self._next_id = self._next_id, self._next_id + 1
            t.state, t.tracklet_len = TrackState.TRACKED, 0
            t.is_activated = self.frame_id == 1
            t.frame_id = t.start_frame = self.frame_id

    def camera_motion(self, image: np.ndarray | None, boxes: np.ndarray) -> np.ndarray | None:
        """A 2x3 warp from the previous frame to this one, or None (ByteTrack: a still camera)."""
        return None

    def _warp(self, tracks: list[STrack], warp: np.ndarray) -> None:
        """Move the tracks' states by the camera's motion (BoT-SORT's ``multi_gmc``)."""
        if not tracks:
            return
        rot, shift = warp[:, :2], warp[:, 2]
        big = np.kron(np.eye(4), rot)  # the same 2x2 acts on each (x, y)-like pair of the state
        mean = np.stack([t.mean for t in tracks]) @ big.T
        mean[:, :2] += shift
        cov = big @ np.stack([t.cov for t in tracks]) @ big.T
        self._store(tracks, mean, cov)

    def distance(self, tracks: list[STrack], dets: list[STrack], fuse: bool) -> np.ndarray:
        cost = iou_distance(np.array([t.box for t in tracks]), np.array([d.box for d in dets]))
        if fuse and self.config.fuse_score:
            cost = fuse_score(cost, np.array([d.score for d in dets]))
        return cost

    # -- the update -------------------------------------------------------------------------------
    def update(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None,
               image: np.ndarray | None = None) -> Tracks:
        """Advance one frame with its detections (``[N, 4]`` xyxy pixels, ``[N]`` scores, classes).

        ``image`` (BGR) is only used by trackers with camera-motion compensation.
        """
        cfg = self.config
        self.frame_id += 1
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.zeros(len(scores), dtype=np.int64) if classes is None else np.asarray(classes).reshape(-1)
        if not len(boxes) == len(scores) == len(classes):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes")
        high = np.flatnonzero(scores >= cfg.track_high_thresh)
        low = np.flatnonzero((scores > cfg.track_low_thresh) & (scores < cfg.track_high_thresh))
        dets = [STrack(boxes[i], scores[i], classes[i], i) for i in high]
        dets_low = [STrack(boxes[i], scores[i], classes[i], i) for i in low]

        unconfirmed = [t for t in self.tracked if not t.is_activated]
        confirmed = [t for t in self.tracked if t.is_activated]
        pool = _joint(confirmed, self.lost)
        self._predict(pool)
        warp = self.camera_motion(image, boxes[high])
        if warp is not None:
            self._warp(pool, warp)
            self._warp(unconfirmed, warp)

        updates: list[tuple[STrack, STrack]] = []  # (track, detection) pairs, filtered in one go at the end
        activated: list[STrack] = []
        refound: list[STrack] = []
        lost: list[STrack] = []

        def take(track: STrack, det: STrack) -> None:
            updates.append((track, det))
            if track.state == TrackState.TRACKED:
                track.tracklet_len += 1
                activated.append(track)
            else:
                track.tracklet_len = 0
                refound.append(track)
            track.state, track.is_activated, track.frame_id = TrackState.TRACKED, True, self.frame_id
            track.score, track.cls, track.det_index = det.score, det.cls, det.det_index

        # 1. high-score detections against confirmed + lost tracks
        matches, u_track, u_det = linear_assignment(self.distance(pool, dets, fuse=True), cfg.match_thresh)
        for it, idet in matches:
            take(pool[it], dets[idet])
        # 2. low-score detections against the confirmed tracks left over
        remaining = [pool[i] for i in u_track if pool[i].state == TrackState.TRACKED]
        matches, u_track2, _ = linear_assignment(self.distance(remaining, dets_low, fuse=False),
                                                 cfg.second_match_thresh)
        for it, idet in matches:
            take(remaining[it], dets_low[idet])
        for it in u_track2:
            track = remaining[it]
            if track.state != TrackState.LOST:
                track.state = TrackState.LOST
                lost.append(track)
        # 3. unconfirmed tracks against the high-score detections left over
        left = [dets[i] for i in u_det]
        matches, u_unconfirmed, u_det = linear_assignment(self.distance(unconfirmed, left, fuse=True),
                                                          cfg.unconfirmed_match_thresh)
        for it, idet in matches:
            take(unconfirmed[it], left[idet])
        for it in u_unconfirmed:
            unconfirmed[it].state = TrackState.REMOVED
        self._kalman_update(updates)
        # 4. new tracks
        new = [left[i] for i in u_det if left[i].score >= cfg.new_track_thresh]
        self._activate(new)
        activated.extend(new)
        # 5. bookkeeping
        for track in self.lost:
            if track.state == TrackState.LOST and self.frame_id - track.end_frame > self.max_time_lost:
                track.state = TrackState.REMOVED
        tracked = _joint([t for t in self.tracked if t.state == TrackState.TRACKED], activated)
        tracked = _joint(tracked, refound)
        kept_ids = {t.track_id for t in tracked}
        still_lost = [t for t in _joint(self.lost, lost) if t.state == TrackState.LOST and t.track_id not in kept_ids]
        self.tracked, self.lost = self._remove_duplicates(tracked, still_lost)

        out = [t for t in self.tracked if t.is_activated]
        return Tracks(
            xyxy=np.array([t.box for t in out], dtype=np.float32).reshape(-1, 4),
            ids=np.array([t.track_id for t in out], dtype=np.int64),
            scores=np.array([t.score for t in out], dtype=np.float32),
            classes=np.array([t.cls for t in out], dtype=np.int64),
            det_index=np.array([t.det_index for t in out], dtype=np.int64),
        )

    def _remove_duplicates(self, a: list[STrack], b: list[STrack]) -> tuple[list[STrack], list[STrack]]:
        """Tracked/lost pairs on the same object: keep the one tracked longer."""
        if not a or not b:
            return a, b
        dist = iou_distance(np.array([t.box for t in a]), np.array([t.box for t in b]))
        drop_a, drop_b = set(), set()
        for p, q in zip(*np.nonzero(dist < self.config.duplicate_thresh)):
            age_p = a[p].frame_id - a[p].start_frame
            age_q = b[q].frame_id - b[q].start_frame
            (drop_b.add(q) if age_p > age_q else drop_a.add(p))
        return ([t for i, t in enumerate(a) if i not in drop_a], [t for i, t in enumerate(b) if i not in drop_b])


def _joint(a: list[STrack], b: list[STrack]) -> list[STrack]:
    """``a`` then the tracks of ``b`` not in ``a`` (by id)."""
    seen = {t.track_id for t in a}
    return a + [t for t in b if t.track_id not in seen]
