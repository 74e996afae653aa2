"""Multi-object tracking over detections: ByteTrack and BoT-SORT (numpy, scipy, OpenCV; no torch).

``make_tracker("bytetrack" | "botsort", **thresholds)`` builds a tracker whose ``update(boxes,
scores, classes, image)`` is called once per frame and returns the confirmed tracks with ids
(``bytetrack.Tracks``). ``track_results`` runs trackers over a stream of ``Results``, one tracker
per sequence (a video, a live stream, the images of a folder), and gives back ``Results`` whose
``boxes.id`` holds the track ids; ``Detector.track`` and ``leyolo track`` are built on it.
``metrics.mot_metrics`` scores tracks against ground truth with the CLEAR MOT and identity measures.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator

from ...errors import LeyoloError
from ...structures import Results
from ..sources import Frame
from .botsort import BOTSORT
from .bytetrack import BYTETracker, Tracks
from .config import FIELDS, TrackerConfig, split_config

TRACKERS: dict[str, type[BYTETracker]] = {"bytetrack": BYTETracker, "botsort": BOTSORT}


def make_tracker(name: str = "bytetrack", config: TrackerConfig | None = None, **overrides: Any) -> BYTETracker:
    """A fresh ``BYTETracker`` or ``BOTSORT`` with ``config`` (default ``TrackerConfig()``) and overrides."""
    if name not in TRACKERS:
        raise LeyoloError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    unknown = sorted(set(overrides) - FIELDS)
    if unknown:
        raise LeyoloError(f"unknown tracker setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    config = replace(config or TrackerConfig(), **overrides).validate()
    return TRACKERS[name](config)


def sequence_key(result: Results) -> Hashable:
    """Which sequence a frame belongs to: its video or stream, else the folder of its image."""
    if result.frame is not None:
        return ("video", result.path)
    return ("images", str(Path(result.path).parent) if result.path else None)


def track_results(items: Iterable[Results | Frame], tracker: str = "bytetrack", config: TrackerConfig | None = None,
                  trackers: dict[Hashable, BYTETracker] | None = None) -> Iterator[Results | Frame]:
    """Track detections, frame by frame; unreadable ``Frame``s pass through unchanged.

    Each sequence (``sequence_key``) gets its own tracker, made on its first frame and kept in
    ``trackers`` (pass a dict you keep to continue the same tracks on a later call). The results
    hold the tracked boxes only (the filter's boxes, the matched detections' scores and classes)
    and ``boxes.id``; ``speed["track"]`` is the tracker's time.
    """
    store: dict[Hashable, BYTETracker] = {} if trackers is None else trackers
    config = (config or TrackerConfig()).validate()
    if tracker not in TRACKERS:
        raise LeyoloError(f"unknown tracker {tracker!r}; choose from {', '.join(TRACKERS)}")
    for item in items:
        if not isinstance(item, Results):
            yield item
            continue
        key = sequence_key(item)
        engine = store.get(key)
        if engine is None:
            engine = store[key] = make_tracker(tracker, config)
        start = time.perf_counter()
        tracks = engine.update(item.boxes.xyxy, item.scores, item.classes, item.image)
        speed = dict(item.speed, track=time.perf_counter() - start)
        yield Results(tracks.xyxy, tracks.scores, tracks.classes, item.names, item.orig_shape, item.path, item.frame,
                      speed, item.image, ids=tracks.ids)


__all__ = ["BOTSORT", "BYTETracker", "TRACKERS", "TrackerConfig", "Tracks", "make_tracker", "sequence_key",
           "split_config", "track_results"]
