"""Tracker thresholds (``TrackerConfig``), validated; re-exported by ``leyolo.inference.tracking``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ...errors import LeyoloError
from .cmc import METHODS as CMC_METHODS


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker thresholds; the defaults are Ultralytics' ``bytetrack.yaml`` / ``botsort.yaml``.

    ByteTrack's paper used 0.5 / 0.6 (high / new) on MOT17 with a detector trained for it; 0.25
    suits general detectors. Scores are detection confidences in [0, 1]; ``*_thresh`` for matches
    are IoU distances (``1 - IoU``, fused with the score in the first and third stages).
    """

    track_high_thresh: float = 0.25  # first association: detections scoring at least this
    track_low_thresh: float = 0.1  # second association: detections scoring above this (and below high)
    new_track_thresh: float = 0.25  # an unmatched detection starts a track from this score
    track_buffer: int = 30  # frames a lost track is kept (at 30 fps; scaled by frame_rate / 30)
    match_thresh: float = 0.8  # first association: largest (fused) IoU distance accepted
    second_match_thresh: float = 0.5  # second association, plain IoU distance
    unconfirmed_match_thresh: float = 0.7  # tracks born on the previous frame
    duplicate_thresh: float = 0.15  # tracked/lost pairs closer than this are one object
    fuse_score: bool = True  # IoU x score in the first and unconfirmed associations
    frame_rate: float = 30.0
    gmc_method: str = "sparseOptFlow"  # BoT-SORT camera-motion compensation: sparseOptFlow | ecc | none
    gmc_downscale: int = 2

    def validate(self) -> "TrackerConfig":
        for name in ("track_high_thresh", "track_low_thresh", "new_track_thresh", "match_thresh",
                     "second_match_thresh", "unconfirmed_match_thresh", "duplicate_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LeyoloError(f"tracker {name} must be in [0, 1], got {value}")
        if self.track_low_thresh > self.track_high_thresh:
            raise LeyoloError(f"tracker track_low_thresh {self.track_low_thresh} is above "
                              f"track_high_thresh {self.track_high_thresh}")
        if self.track_buffer < 1:
            raise LeyoloError(f"tracker track_buffer must be at least 1 frame, got {self.track_buffer}")
        if self.frame_rate <= 0:
            raise LeyoloError(f"tracker frame_rate must be positive, got {self.frame_rate}")
        if self.gmc_method not in CMC_METHODS:
            raise LeyoloError(f"unknown gmc_method {self.gmc_method!r}; choose from {', '.join(CMC_METHODS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = frozenset(f.name for f in fields(TrackerConfig))


def split_config(config: dict[str, Any]) -> tuple[TrackerConfig, dict[str, Any]]:
    """``TrackerConfig`` from the tracker keys of ``config``, and the other keys untouched."""
    ours = {k: v for k, v in config.items() if k in FIELDS}
    rest = {k: v for k, v in config.items() if k not in FIELDS}
    return replace(TrackerConfig(), **ours).validate(), rest
