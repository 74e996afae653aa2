"""Synthetic tracking scenes with ground-truth identities: coloured boxes that move, cross and leave.

For tests and benchmarks of the trackers (``tests/test_tracking.py``, ``benchmarks/bench_tracking.py``)
and for trying ``leyolo track`` without footage: ``scene.write_video(path)`` writes an MJPG ``.avi``
and ``scene.write_mot(path)`` its ground truth as MOTChallenge rows.

Each object has its own hue on a low-saturation textured background and moves with a constant
velocity plus a slow sinusoidal drift. Ground truth is what is *visible*: the box of an object's
unoccluded pixels inside the frame, present while at least ``min_visible`` of its area shows
(objects are drawn in a fixed depth order, so crossings occlude). ``detections()`` turns it into
what a detector would give: jittered boxes, scores, dropped boxes and a few false positives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


@dataclass
class MovingBox:
    """One object: present from ``start`` to ``end`` (frames, 1-based, inclusive)."""

    track_id: int
    start: int
    end: int
    xy: tuple[float, float]  # top-left at ``start``
    size: tuple[float, float]  # w, h
    velocity: tuple[float, float]  # pixels per frame
    wobble: float = 0.0  # amplitude (pixels) of a slow vertical sine
    hue: int = 0  # OpenCV hue, 0-179

    def box(self, frame: int) -> np.ndarray:
        t = frame - self.start
        x = self.xy[0] + self.velocity[0] * t
        y = self.xy[1] + self.velocity[1] * t + self.wobble * np.sin(t / 9.0)
        return np.array([x, y, x + self.size[0], y + self.size[1]])


@dataclass
class SyntheticScene:
    objects: list[MovingBox]
    frames: int
    width: int = 320
    height: int = 240
    min_visible: float = 0.2
    seed: int = 0
    camera: tuple[float, float] = (0.0, 0.0)  # camera pan, pixels per frame
    shake: float = 0.0  # camera shake: a random jump of up to this many pixels each frame (x and y)
    _gt: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _background: np.ndarray | None = field(default=None, repr=False)

    # -- rendering ----------------------------------------------------------------------------
    def background(self) -> np.ndarray:
        """A textured grey canvas larger than the frame (so that a panning camera has texture to show)."""
        if self._background is None:
            rng = np.random.default_rng(self.seed)
            pad = int(abs(self.camera[0]) * self.frames + abs(self.camera[1]) * self.frames + 2 * self.shake) + 8
            h, w = self.height + 2 * pad, self.width + 2 * pad
            noise = rng.uniform(60, 190, size=(h // 8 + 1, w // 8 + 1)).astype(np.float32)
            grey = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)[:h, :w]
            grey = np.clip(grey + rng.normal(0, 6, size=(h, w)), 0, 255).astype(np.uint8)
            self._background = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        return self._background

    def _offset(self, frame: int) -> np.ndarray:
        """Where the camera looks on ``frame``: the pan so far plus this frame's shake."""
        pan = np.array(self.camera) * (frame - 1)
        if not self.shake:
            return pan
        jitter = np.random.default_rng([self.seed, frame]).uniform(-1, 1, size=2) * self.shake
        return pan + np.round(jitter)

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``frame`` (1-based): BGR image, visible ids and their visible xyxy boxes."""
        bg = self.background()
        pad = (bg.shape[0] - self.height) // 2
        dx, dy = self._offset(frame)
        x0, y0 = int(round(pad + dx)), int(round(pad + dy))
        image = bg[y0:y0 + self.height, x0:x0 + self.width].copy()
        owner = np.zeros((self.height, self.width), dtype=np.int32)
        drawn: list[tuple[int, float, tuple[int, int, int, int]]] = []  # id, full area, clipped rectangle
        for obj in self.objects:  # later objects are in front
            if not obj.start <= frame <= obj.end:
                continue
            x1, y1, x2, y2 = obj.box(frame) - np.array([dx, dy, dx, dy])
            c1, r1 = int(round(max(x1, 0))), int(round(max(y1, 0)))
            c2, r2 = int(round(min(x2, self.width))), int(round(min(y2, self.height)))
            if c2 <= c1 or r2 <= r1:
                continue
            colour = cv2.cvtColor(np.uint8([[[obj.hue, 230, 220]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
            image[r1:r2, c1:c2] = colour
            owner[r1:r2, c1:c2] = obj.track_id
            drawn.append((obj.track_id, (x2 - x1) * (y2 - y1), (c1, r1, c2, r2)))
        ids, boxes = [], []
        for tid, area, (c1, r1, c2, r2) in drawn:
            rows, cols = np.nonzero(owner[r1:r2, c1:c2] == tid)
            if len(rows) < self.min_visible * area:
                continue
            ids.append(tid)
            boxes.append([c1 + cols.min(), r1 + rows.min(), c1 + cols.max() + 1, r1 + rows.max() + 1])
        return image, np.array(ids, dtype=np.int64), np.array(boxes, dtype=np.float64).reshape(-1, 4)

    @property
    def gt(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{frame: (ids, xyxy)} of the visible objects, frames from 1."""
        if not self._gt:
            for f in range(1, self.frames + 1):
                _, ids, boxes = self.render(f)
                self._gt[f] = (ids, boxes)
        return self._gt

    def hue_of(self) -> dict[int, int]:
        return {o.track_id: o.hue for o in self.objects}

    # -- detections -----------------------------------------------------------------------------
    def detections(self, seed: int = 0, jitter: float = 0.03, drop: float = 0.1, low: float = 0.1,
                   false_positives: float = 0.05) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{frame: (xyxy, scores)}: ground truth with Gaussian jitter (a fraction of the size), a
        ``drop`` chance of missing each box, a ``low`` chance of a low score (0.12-0.25, for
        ByteTrack's second association) and ``false_positives`` random boxes per frame on average."""
        rng = np.random.default_rng(seed)
        out = {}
        for f, (ids, boxes) in self.gt.items():
            keep = rng.random(len(ids)) >= drop
            b = boxes[keep].copy()
            wh = np.concatenate([b[:, 2:] - b[:, :2]] * 2, 1)
            b += rng.normal(0, jitter, size=b.shape) * wh
            scores = rng.uniform(0.5, 0.95, size=len(b))
            lows = rng.random(len(b)) < low
            scores[lows] = rng.uniform(0.12, 0.25, size=int(lows.sum()))
            n_fp = rng.poisson(false_positives)
            if n_fp:
                xy = rng.uniform(0, 1, size=(n_fp, 2)) * [self.width - 30, self.height - 30]
                fp = np.concatenate([xy, xy + rng.uniform(10, 30, size=(n_fp, 2))], 1)
                b = np.concatenate([b, fp])
                scores = np.concatenate([scores, rng.uniform(0.25, 0.6, size=n_fp)])
            out[f] = (b, scores)
        return out

    # -- files -----------------------------------------------------------------------------------
    def write_video(self, path: str | Path, fps: float = 30.0) -> Path:
        """An MJPG video of the scene (``.avi``), every frame."""
        path = Path(path)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (self.width, self.height))
        if not writer.isOpened():
            raise OSError(f"cannot write {path}")
        for f in range(1, self.frames + 1):
            writer.write(self.render(f)[0])
        writer.release()
        return path

    def write_mot(self, path: str | Path) -> Path:
        """Ground truth as MOTChallenge rows ``frame,id,x,y,w,h,1,-1,-1,-1``."""
        lines = [f"{f},{i},{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},1,-1,-1,-1"
                 for f, (ids, boxes) in self.gt.items() for i, (x1, y1, x2, y2) in zip(ids.tolist(), boxes.tolist())]
        Path(path).write_text("".join(line + "\n" for line in lines))
        return Path(path)


def crossing_scene(frames: int = 90, width: int = 320, height: int = 240, seed: int = 0,
                   camera: tuple[float, float] = (0.0, 0.0), shake: float = 0.0) -> SyntheticScene:
    """Seven objects: a tall one passing behind a wide one (head-on), a diagonal crossing in which
    one hides a third of the other, one leaving through the right edge, one appearing late, one
    vanishing early, a slow one."""
    w, h = width, height
    objs = [
        MovingBox(1, 1, frames, (10, 0.52 * h - 40), (30, 80), (3.2, 0.0), 3, hue=0),  # tall, behind ...
        MovingBox(2, 1, frames, (w - 50, 0.52 * h - 20), (44, 40), (-3.0, 0.0), 2, hue=25),  # ... the wide one
        MovingBox(3, 1, frames, (20, 20), (30, 30), (2.6, 1.5), 0, hue=50),  # diagonal crossing
        MovingBox(4, 1, frames, (w - 60, 34), (28, 36), (-2.4, 1.6), 0, hue=75),  # ... hiding a third of it
        MovingBox(5, 1, frames, (0.55 * w, 0.78 * h), (26, 30), (2.5, 0.0), 0, hue=100),  # leaves through the right
        MovingBox(6, frames // 3, frames, (0.42 * w, 0.05 * h), (32, 40), (0.5, 0.9), 0, hue=125),  # appears late
        MovingBox(7, 1, 2 * frames // 3, (0.06 * w, 0.84 * h), (22, 26), (0.5, -0.3), 1, hue=150),  # slow, ends early
    ]
    return SyntheticScene(objs, frames, width, height, seed=seed, camera=camera, shake=shake)


def random_scene(n_objects: int, frames: int = 100, width: int = 1280, height: int = 720,
                 seed: int = 0) -> SyntheticScene:
    """``n_objects`` boxes with random sizes, speeds and lifetimes (for timing the trackers)."""
    rng = np.random.default_rng(seed)
    objs = []
    for i in range(n_objects):
        size = rng.uniform(20, 60, size=2)
        start = int(rng.integers(1, max(frames // 4, 2)))
        objs.append(MovingBox(i + 1, start, frames, tuple(rng.uniform(0, 1, 2) * [width - size[0], height - size[1]]),
                              tuple(size), tuple(rng.normal(0, 2.0, size=2)), float(rng.uniform(0, 3)),
                              hue=int(i * 179 / max(n_objects, 1))))
    return SyntheticScene(objs, frames, width, height, seed=seed)
