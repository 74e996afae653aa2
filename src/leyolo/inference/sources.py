"""Turn a ``--source`` (image, folder, glob, video) into a stream of frames or per-file errors.

Webcams, network streams and ``.streams`` lists are in ``live.py`` (``open_source`` takes any source).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_image
from ..errors import LeyoloError


@dataclass
class Frame:
    """One image to predict on, or the reason it could not be read (``image is None``)."""

    path: str
    image: np.ndarray | None
    frame: int | None = None
    error: str | None = None


def resolve_source(source: str | Path) -> list[Path]:
    """Expand a path, folder or glob into a sorted list of image/video files.

    Raises ``LeyoloError`` when nothing usable is found, naming what was looked at.
    """
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise LeyoloError(f"{text}: the pattern matches no files")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        if not files:
            raise LeyoloError(f"{path}: folder holds no images or videos")
        return files
    if path.is_file():
        return [path]
    raise LeyoloError(f"{path}: no such file or folder")


def iter_video(path: Path, vid_stride: int = 1) -> Iterator[Frame]:
    """Every ``vid_stride``-th frame of a video file (skipped frames are grabbed, not decoded).

    ``Frame.frame`` is the index in the file (0, stride, 2 * stride, ...).
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        yield Frame(str(path), None, error=f"{path}: cannot open video")
        return
    index = read = 0
    try:
        while True:
            if index % vid_stride:
                if not capture.grab():
                    break
                index += 1
                continue
            ok, image = capture.read()
            if not ok:
                break
            yield Frame(str(path), image, frame=index)
            index += 1
            read += 1
    finally:
        capture.release()
    if read == 0:
        yield Frame(str(path), None, error=f"{path}: video has no readable frames")


def iter_frames(files: list[Path], vid_stride: int = 1) -> Iterator[Frame]:
    """Decode files one by one; unreadable images become error frames, never exceptions.

    ``vid_stride``: keep every n-th frame of videos (images are all kept).
    """
    if vid_stride < 1:
        raise LeyoloError(f"--vid-stride must be at least 1, got {vid_stride}")
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from iter_video(path, vid_stride)
            continue
        try:
            yield Frame(str(path), read_image(path))
        except LeyoloError as exc:
            yield Frame(str(path), None, error=str(exc))


def video_frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()
