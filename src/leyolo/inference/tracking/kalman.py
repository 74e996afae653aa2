"""Constant-velocity Kalman filters over box states, batched over tracks (numpy only).

Written here rather than imported: the filter is a few lines of linear algebra that ByteTrack
(Zhang et al., 2022) and BoT-SORT (Aharon et al., 2022) define with specific noise rules, and the
general-purpose packages (filterpy, pykalman) filter one state at a time in Python, which is what
makes trackers slow at 100+ objects. Here every step takes ``[N, 8]`` means and ``[N, 8, 8]``
covariances at once.

``KalmanFilterXYAH`` is ByteTrack's: state ``(cx, cy, a, h, vcx, vcy, va, vh)`` with ``a = w / h``;
process and measurement noise scale with the box height (``1/20`` of it for positions, ``1/160``
for velocities), the aspect ratio gets small fixed noise. ``KalmanFilterXYWH`` is BoT-SORT's:
state ``(cx, cy, w, h, ...)``, with the width-related entries scaled by the width instead.
"""

from __future__ import annotations

import numpy as np

STD_WEIGHT_POSITION = 1.0 / 20
STD_WEIGHT_VELOCITY = 1.0 / 160


class KalmanFilterXYAH:
    """8-state constant-velocity filter with ByteTrack's noise model (measurements ``cx, cy, a, h``)."""

    ndim = 4

    def __init__(self, dt: float = 1.0) -> None:
        self.motion = np.eye(2 * self.ndim)
        self.motion[np.arange(self.ndim), self.ndim + np.arange(self.ndim)] = dt
        self.wp, self.wv = STD_WEIGHT_POSITION, STD_WEIGHT_VELOCITY

    # Noise standard deviations, [N, k], from the relevant state (or measurement) columns.
    def _init_std(self, m: np.ndarray) -> np.ndarray:
        h = m[:, 3]
        wp, wv = self.wp, self.wv
        return np.stack([2 * wp * h, 2 * wp * h, np.full_like(h, 1e-2), 2 * wp * h,
                         10 * wv * h, 10 * wv * h, np.full_like(h, 1e-5), 10 * wv * h], 1)

    def _process_std(self, mean: np.ndarray) -> np.ndarray:
        h = mean[:, 3]
        wp, wv = self.wp, self.wv
        return np.stack([wp * h, wp * h, np.full_like(h, 1e-2), wp * h,
                         wv * h, wv * h, np.full_like(h, 1e-5), wv * h], 1)

    def _measurement_std(self, mean: np.ndarray) -> np.ndarray:
        h = mean[:, 3]
        return np.stack([self.wp * h, self.wp * h, np.full_like(h, 1e-1), self.wp * h], 1)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from ``[N, 4]`` measurements: zero velocity, wide velocity uncertainty."""
        m = np.asarray(measurements, dtype=np.float64).reshape(-1, self.ndim)
        mean = np.concatenate([m, np.zeros_like(m)], 1)
        return mean, _diag(self._init_std(m) ** 2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead: ``x = F x``, ``P = F P F^T + Q`` for every track."""
        if len(mean) == 0:
            return mean, cov
        q = _diag(self._process_std(mean) ** 2)
        f = self.motion
        return mean @ f.T, f @ cov @ f.T + q

    def project(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state's distribution in measurement space (``H x``, ``H P H^T + R``)."""
        r = _diag(self._measurement_std(mean) ** 2)
        return mean[:, : self.ndim], cov[:, : self.ndim, : self.ndim] + r

    def update(self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct every track with its measurement (``[N, 4]``)."""
        if len(mean) == 0:
            return mean, cov
        z_mean, s = self.project(mean, cov)
        pht = cov[:, :, : self.ndim]  # P H^T, [N, 8, 4]
        # K = P H^T S^-1, solved rather than inverted (S is symmetric positive definite)
        gain = np.linalg.solve(s, np.swapaxes(pht, 1, 2)).swapaxes(1, 2)
        innovation = np.asarray(measurements, dtype=np.float64) - z_mean
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = cov - gain @ s @ np.swapaxes(gain, 1, 2)
        return new_mean, new_cov


class KalmanFilterXYWH(KalmanFilterXYAH):
    """BoT-SORT's filter: state ``(cx, cy, w, h, vx, vy, vw, vh)``, noise scaled by width and height."""

    def _init_std(self, m: np.ndarray) -> np.ndarray:
        w, h = m[:, 2], m[:, 3]
        wp, wv = self.wp, self.wv
        return np.stack([2 * wp * w, 2 * wp * h, 2 * wp * w, 2 * wp * h,
                         10 * wv * w, 10 * wv * h, 10 * wv * w, 10 * wv * h], 1)

    def _process_std(self, mean: np.ndarray) -> np.ndarray:
        w, h = mean[:, 2], mean[:, 3]
        wp, wv = self.wp, self.wv
        return np.stack([wp * w, wp * h, wp * w, wp * h, wv * w, wv * h, wv * w, wv * h], 1)

    def _measurement_std(self, mean: np.ndarray) -> np.ndarray:
        w, h = mean[:, 2], mean[:, 3]
        return np.stack([self.wp * w, self.wp * h, self.wp * w, self.wp * h], 1)


def _diag(values: np.ndarray) -> np.ndarray:
    """``[N, k]`` -> ``[N, k, k]`` diagonal matrices."""
    n, k = values.shape
    out = np.zeros((n, k, k))
    out[:, np.arange(k), np.arange(k)] = values
    return out


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, w / np.maximum(h, 1e-6), h], 1)


def xyah_to_xyxy(state: np.ndarray) -> np.ndarray:
    s = np.asarray(state, dtype=np.float64).reshape(-1, state.shape[-1])
    h = s[:, 3]
    w = s[:, 2] * h
    return np.stack([s[:, 0] - w / 2, s[:, 1] - h / 2, s[:, 0] + w / 2, s[:, 1] + h / 2], 1)


def xyxy_to_xywh_center(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def xywh_center_to_xyxy(state: np.ndarray) -> np.ndarray:
    s = np.asarray(state, dtype=np.float64).reshape(-1, state.shape[-1])
    return np.stack([s[:, 0] - s[:, 2] / 2, s[:, 1] - s[:, 3] / 2, s[:, 0] + s[:, 2] / 2, s[:, 1] + s[:, 3] / 2], 1)
