"""Camera-motion compensation: the 2x3 warp that maps the previous frame onto this one (OpenCV).

BoT-SORT (Aharon et al., 2022) predicts tracks in the image plane, so a panning or shaking camera
moves every object at once and breaks IoU association; the warp estimated here moves the
predicted states first. Methods, as in BoT-SORT's ``gmc.py`` and Ultralytics:

- ``sparseOptFlow`` (default): Shi-Tomasi corners tracked by pyramidal Lucas-Kanade optical flow,
  a similarity transform fitted with RANSAC (``cv2.estimateAffinePartial2D``). Corners are taken
  outside the detection boxes where enough remain, so moving objects do not vote for the camera's
  motion (BoT-SORT masks them for its feature-based methods only);
- ``ecc``: OpenCV's enhanced-correlation-coefficient alignment (``cv2.findTransformECC``, Euclidean
  motion), coarse to fine over two pyramid levels (one level, as in BoT-SORT, loses jumps of more
  than a few pixels): dense, needs no corners, slower;
- ``none``: identity.

Frames are downscaled by ``downscale`` first (translations are scaled back). A failed estimate is
the identity, never an error.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger("leyolo")

METHODS = ("sparseOptFlow", "ecc", "none")


class CameraMotion:
    """Stateful estimator: ``apply(frame, boxes)`` once per frame returns previous -> current warp."""

    def __init__(self, method: str = "sparseOptFlow", downscale: int = 2) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown camera-motion method {method!r}; choose from {', '.join(METHODS)}")
        self.method = method
        self.downscale = max(1, int(downscale))
        self.reset()

    def reset(self) -> None:
        self._prev: np.ndarray | None = None
        self._prev_points: np.ndarray | None = None

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        if self.downscale > 1:
            h, w = gray.shape[:2]
            gray = cv2.resize(gray, (max(w // self.downscale, 1), max(h // self.downscale, 1)),
                              interpolation=cv2.INTER_AREA)
        return gray

    def apply(self, frame: np.ndarray | None, boxes: np.ndarray | None = None) -> np.ndarray:
        """The warp (2x3, float64) from the previous frame's pixels to this frame's; identity at first."""
        eye = np.eye(2, 3)
        if self.method == "none" or frame is None:
            return eye
        gray = self._gray(frame)
        if self._prev is not None and self._prev.shape != gray.shape:
            self.reset()  # a new video of another size: start over
        if self.method == "ecc":
            warp = self._ecc(gray)
        else:
            warp = self._flow(gray, boxes)
        return eye if warp is None else warp

    def _ecc(self, gray: np.ndarray) -> np.ndarray | None:
        gray = cv2.GaussianBlur(gray, (3, 3), 1.5)
        prev, self._prev = self._prev, gray
        if prev is None:
            return None
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
        # coarse to fine: ECC converges only from within a few pixels, a shaking camera jumps more
        warp = np.eye(2, 3, dtype=np.float32)
        for level in (1, 0):
            scale = 2 ** level
            a, b = (cv2.pyrDown(prev), cv2.pyrDown(gray)) if level else (prev, gray)
            if min(a.shape[:2]) < 16:
                continue
            start = warp.copy()
            start[:, 2] /= scale
            try:
                _, found = cv2.findTransformECC(a, b, start, cv2.MOTION_EUCLIDEAN, criteria, None, 1)
            except cv2.error as exc:  # no convergence (e.g. a flat frame)
                log.debug("ECC camera motion failed: %s", exc)
                return None
            warp = found.copy()
            warp[:, 2] *= scale
        if np.abs(warp[:, 2]).max() > 0.25 * min(gray.shape[:2]):  # diverged: no camera jumps a quarter frame
            return None
        warp = warp.astype(np.float64)
        warp[:, 2] *= self.downscale
        return warp

    def _corners(self, gray: np.ndarray, boxes: np.ndarray | None) -> np.ndarray | None:
        kwargs = dict(maxCorners=1000, qualityLevel=0.01, minDistance=1, blockSize=3, useHarrisDetector=False, k=0.04)
        if boxes is not None and len(boxes):
            mask = np.full(gray.shape[:2], 255, dtype=np.uint8)
            for x1, y1, x2, y2 in (np.asarray(boxes, dtype=np.float64) / self.downscale).astype(int).tolist():
                mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 0
            points = cv2.goodFeaturesToTrack(gray, mask=mask, **kwargs)
            if points is not None and len(points) >= 10:
                return points
        return cv2.goodFeaturesToTrack(gray, mask=None, **kwargs)

    def _flow(self, gray: np.ndarray, boxes: np.ndarray | None) -> np.ndarray | None:
        points = self._corners(gray, boxes)
        prev, prev_points = self._prev, self._prev_points
        self._prev, self._prev_points = gray, points
        if prev is None or prev_points is None or len(prev_points) == 0:
            return None
        moved, status, _ = cv2.calcOpticalFlowPyrLK(prev, gray, prev_points, None)
        if moved is None:
            return None
        ok = status.reshape(-1) == 1
        if ok.sum() <= 4:
            log.debug("camera motion: %d matched corners, too few", int(ok.sum()))
            return None
        warp, _ = cv2.estimateAffinePartial2D(prev_points[ok], moved[ok], method=cv2.RANSAC)
        if warp is None:
            return None
        warp = warp.astype(np.float64)
        warp[:, 2] *= self.downscale
        return warp
