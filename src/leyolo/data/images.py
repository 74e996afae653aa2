"""Robust image decoding: every odd image a user has becomes 8-bit BGR or a clear error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import LeyoloError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


def to_bgr8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Grayscale, RGBA/BGRA, 16-bit or float images -> contiguous uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if image.size and float(image.max()) <= 1.0 else 1.0
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise LeyoloError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3:
        raise LeyoloError(f"{source}: expected an HxW or HxWxC image, got shape {image.shape}")
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if channels != 3:
        raise LeyoloError(f"{source}: unsupported channel count {channels}")
    return np.ascontiguousarray(image)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 BGR; ``LeyoloError`` for missing, empty, corrupt or truncated files."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise LeyoloError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LeyoloError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise LeyoloError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise LeyoloError(f"{path}: empty file")
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:].tobytes():
        raise LeyoloError(f"{path}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation; gray, RGBA, 16-bit -> 8-bit BGR
    if image is None:
        raise LeyoloError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if image.size == 0 or min(image.shape[:2]) < 1:
        raise LeyoloError(f"{path}: image has no pixels")
    return to_bgr8(image, str(path))
