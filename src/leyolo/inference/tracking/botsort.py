"""BoT-SORT (Aharon et al., 2022, arXiv 2206.14651) without re-identification: ByteTrack's
association with BoT-SORT's Kalman state (``cx, cy, w, h`` and velocities, noise scaled by width
and height) and camera-motion compensation (``cmc.py``) applied to the predicted tracks before
they are matched, for moving cameras.

Appearance features (BoT-SORT's ReID branch) need a re-identification network that this library
does not ship; with ``with_reid`` off, as in Ultralytics' default ``botsort.yaml``, BoT-SORT's
association reduces to ByteTrack's, which is why this is a subclass.
"""

from __future__ import annotations

import numpy as np

from .bytetrack import BYTETracker
from .cmc import CameraMotion
from .config import TrackerConfig
from .kalman import KalmanFilterXYWH, xywh_center_to_xyxy, xyxy_to_xywh_center



class BOTSORT(BYTETracker):
    """ByteTrack + camera-motion compensation (``config.gmc_method``) + the XYWH filter."""

    kalman_class = KalmanFilterXYWH
    frozen_when_lost = (6, 7)  # BoT-SORT zeroes the width and height velocities of lost tracks

    def __init__(self, config: TrackerConfig | None = None) -> None:
        super().__init__(config)
        self.cmc = CameraMotion(self.config.gmc_method, self.config.gmc_downscale)

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "cmc"):
            self.cmc.reset()

    def to_measurement(self, boxes: np.ndarray) -> np.ndarray:
        return xyxy_to_xywh_center(boxes)

    def to_xyxy(self, mean: np.ndarray) -> np.ndarray:
        return xywh_center_to_xyxy(mean)

    def camera_motion(self, image: np.ndarray | None, boxes: np.ndarray) -> np.ndarray | None:
        if image is None or self.config.gmc_method == "none":
            return None
        return self.cmc.apply(image, boxes)
