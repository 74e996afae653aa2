"""Image decoding: odd formats become 8-bit BGR, broken files become a LeyoloError naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from leyolo.data.images import read_image, to_bgr8
from leyolo.errors import LeyoloError


def _write(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 7 % 256).astype(np.uint8)


def _assert_bgr8(image: np.ndarray, h: int, w: int) -> None:
    assert image.dtype == np.uint8
    assert image.shape == (h, w, 3)
    assert image.flags["C_CONTIGUOUS"]


def test_color_png_round_trip(tmp_path):
    bgr = np.stack([_gradient(), 255 - _gradient(), np.full((24, 32), 50, np.uint8)], -1)
    image = read_image(_write(tmp_path / "c.png", bgr))
    _assert_bgr8(image, 24, 32)
    np.testing.assert_array_equal(image, bgr)


def test_grayscale_png(tmp_path):
    gray = _gradient()
    image = read_image(_write(tmp_path / "g.png", gray))
    _assert_bgr8(image, 24, 32)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


def test_rgba_png(tmp_path):
    bgra = np.zeros((24, 32, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 10, 20, 30
    bgra[..., 3] = _gradient()  # varying alpha: must not leak into the colour channels
    image = read_image(_write(tmp_path / "a.png", bgra))
    _assert_bgr8(image, 24, 32)
    assert (image[..., 0] == 10).all() and (image[..., 1] == 20).all() and (image[..., 2] == 30).all()


def test_16bit_png(tmp_path):
    gray16 = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 85).astype(np.uint16)
    path = _write(tmp_path / "d.png", gray16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really a 16-bit file
    image = read_image(path)
    _assert_bgr8(image, 24, 32)
    np.testing.assert_array_equal(image[..., 1], (gray16 >> 8).astype(np.uint8))
    color16 = np.stack([gray16, gray16 // 2, np.full_like(gray16, 65535)], -1)
    image = read_image(_write(tmp_path / "e.png", color16))
    _assert_bgr8(image, 24, 32)
    np.testing.assert_array_equal(image[..., 0], (gray16 >> 8).astype(np.uint8))
    assert (image[..., 2] == 255).all()


def test_jpeg_and_odd_suffix(tmp_path):
    bgr = np.full((40, 30, 3), (200, 100, 50), np.uint8)
    image = read_image(_write(tmp_path / "p.jpg", bgr))
    _assert_bgr8(image, 40, 30)
    assert np.abs(image.astype(int) - bgr).max() <= 3
    # the decoder goes by content, not by suffix
    renamed = tmp_path / "really_a_jpeg.png"
    renamed.write_bytes((tmp_path / "p.jpg").read_bytes())
    _assert_bgr8(read_image(renamed), 40, 30)


def test_to_bgr8_conversions():
    np.testing.assert_array_equal(to_bgr8(np.full((2, 3), 7, np.uint8)), np.full((2, 3, 3), 7, np.uint8))
    np.testing.assert_array_equal(to_bgr8(np.full((2, 3, 1), 7, np.uint8)), np.full((2, 3, 3), 7, np.uint8))
    np.testing.assert_array_equal(to_bgr8(np.full((2, 3), 0x1234, np.uint16)), np.full((2, 3, 3), 0x12, np.uint8))
    np.testing.assert_array_equal(to_bgr8(np.full((2, 3, 3), 0.5, np.float32)), np.full((2, 3, 3), 127, np.uint8))
    with pytest.raises(LeyoloError):
        to_bgr8(np.zeros((2, 3, 2), np.uint8))
    with pytest.raises(LeyoloError):
        to_bgr8(np.zeros((2, 3), np.int32))
    with pytest.raises(LeyoloError):
        to_bgr8(np.zeros((2, 3, 3, 1), np.uint8))


def _truncated_jpeg(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert ok
    data = buf.tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "random", "truncated_jpeg", "truncated_png", "text",
                                  "directory"])
def test_broken_files(tmp_path, case):
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path = tmp_path / "random.jpg"
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "truncated_jpeg":
        path = _truncated_jpeg(tmp_path)
    elif case == "truncated_png":
        data = _write(tmp_path / "full.png", np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))
        raw = data.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "text":
        path.write_text("hello, not an image\n")
    elif case == "directory":
        path = tmp_path / "folder.jpg"
        path.mkdir()
    with pytest.raises(LeyoloError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
