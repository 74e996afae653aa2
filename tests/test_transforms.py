"""Training augmentations: boxes must follow the pixels through every transform.

The "painted rectangle" checks draw filled rectangles of distinct colours, transform image and
boxes together, and recover each rectangle's extent from the output pixels: whatever the random
draw, the returned box of class ``k`` must enclose exactly the pixels of colour ``k``.
"""

from __future__ import annotations

import numpy as np
import pytest

from leyolo.data.transforms import (
    affine_matrix,
    apply_affine,
    box_candidates,
    horizontal_flip,
    hsv_jitter,
    letterbox_train,
    mixup,
    mosaic4,
    random_affine,
    resize_long_side,
)

# BGR colours, one per class; none of them is mistaken for the 114 grey padding or black.
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)]


def _painted(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Black image with rect ``k`` = pixels [x1, x2) x [y1, y2) in colour ``k``; box = the rect itself."""
    image = np.zeros((h, w, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        image[y1:y2, x1:x2] = COLOURS[k]
    return image, np.array(rects, np.float32).reshape(-1, 4), np.arange(len(rects), dtype=np.int64)


def _mask(image: np.ndarray, k: int) -> np.ndarray:
    if k == 3:  # white
        return (image > 150).all(axis=2)
    want = np.array(COLOURS[k]) > 0
    return (image[:, :, want] > 150).all(axis=2) & (image[:, :, ~want] < 100).all(axis=2)


def _extent(image: np.ndarray, k: int) -> np.ndarray | None:
    ys, xs = np.nonzero(_mask(image, k))
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _check_painted(
    image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, tol: float = 2.0, rotated: bool = False
) -> None:
    """Each kept box equals its colour's pixel extent.

    A rotated rectangle cut by the frame is the one exception: its box (the corners' enclosing box,
    clipped, as in YOLOv8) may be larger than what is left visible, so there it must only contain it.
    """
    assert len(boxes) == len(classes)
    assert len(set(classes.tolist())) == len(classes)
    h, w = image.shape[:2]
    for box, k in zip(boxes, classes.tolist()):
        extent = _extent(image, k)
        assert extent is not None, f"class {k} kept but not visible"
        at_edge = box[0] <= 0 or box[1] <= 0 or box[2] >= w or box[3] >= h
        if rotated and at_edge:
            assert (box[:2] <= extent[:2] + tol).all() and (box[2:] >= extent[2:] - tol).all(), f"class {k}"
        else:
            np.testing.assert_allclose(box, extent, atol=tol, err_msg=f"class {k}")


def test_flip_maps_known_box() -> None:
    image = np.zeros((50, 100, 3), np.uint8)
    out, boxes, classes = horizontal_flip(image, np.array([[10, 20, 30, 40]], np.float32), np.array([4]))
    np.testing.assert_array_equal(boxes, [[70, 20, 90, 40]])
    assert classes.tolist() == [4] and out.shape == image.shape


def test_flip_painted() -> None:
    image, boxes, classes = _painted(40, 100, [(10, 5, 30, 20), (60, 22, 95, 38), (0, 0, 4, 4)])
    out, new, cls = horizontal_flip(image, boxes, classes)
    _check_painted(out, new, cls, tol=0.0)


def test_letterbox_train_exact_box() -> None:
    # 200x100 (w x h) at 64: r = 0.32 -> 64x32 resized, 16 px of padding above and below.
    image = np.zeros((100, 200, 3), np.uint8)
    out, boxes, classes = letterbox_train(image, np.array([[50, 25, 150, 75]], np.float32), np.array([1]), 64)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(boxes, [[16, 24, 48, 40]], atol=1e-5)
    assert classes.tolist() == [1]
    assert (out[:16] == 114).all() and (out[48:] == 114).all()


def test_letterbox_train_painted_and_no_scaleup() -> None:
    image, boxes, classes = _painted(60, 90, [(10, 10, 40, 30), (50, 35, 85, 58)])
    _check_painted(*letterbox_train(image, boxes, classes, 128), tol=1.5)
    out, new, _ = letterbox_train(image, boxes, classes, 128, scaleup=False)
    assert out.shape == (128, 128, 3)
    np.testing.assert_allclose(new, boxes + np.array([19, 34, 19, 34]))  # pad (128-90)/2, (128-60)/2
    _check_painted(out, new, classes, tol=0.0)


def test_letterbox_train_drops_tiny_boxes_unless_asked() -> None:
    image = np.zeros((640, 640, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [100, 100, 300, 300]], np.float32)  # 10 px -> 1 px at 64
    _, new, cls = letterbox_train(image, boxes, np.array([0, 1]), 64)
    assert cls.tolist() == [1]
    np.testing.assert_allclose(new, [[10, 10, 30, 30]], atol=1e-5)
    _, new, cls = letterbox_train(image, boxes, np.array([0, 1]), 64, drop_small=False)
    assert cls.tolist() == [0, 1]


def test_resize_long_side() -> None:
    image = np.zeros((50, 100, 3), np.uint8)
    out, boxes = resize_long_side(image, np.array([[10, 10, 20, 30]], np.float32), 200)
    assert out.shape == (100, 200, 3)
    np.testing.assert_allclose(boxes, [[20, 20, 40, 60]])


def test_random_affine_identity() -> None:
    image, boxes, classes = _painted(64, 64, [(5, 6, 30, 40), (40, 40, 60, 62)])
    out, new, cls = random_affine(image, boxes, classes, np.random.default_rng(0), size=64, translate=0.0, scale=0.0)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(new, boxes)
    assert cls.tolist() == [0, 1]


def test_random_affine_rejects_inconsistent_border() -> None:
    with pytest.raises(ValueError):
        random_affine(np.zeros((64, 64, 3), np.uint8), np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0), size=32)


def test_pure_scale_matrix() -> None:
    image, boxes, classes = _painted(64, 64, [(8, 8, 24, 24), (32, 40, 56, 60)])
    matrix = affine_matrix((64, 64), (64, 64), scale=0.5)  # shrink about the centre: x -> 0.5 x + 16
    out, new, cls = apply_affine(image, boxes, classes, matrix, (64, 64), scale=0.5)
    np.testing.assert_allclose(new, boxes * 0.5 + 16, atol=1e-5)
    assert cls.tolist() == [0, 1]
    _check_painted(out, new, cls, tol=1.0)


def test_boxes_pushed_out_are_dropped_with_their_class() -> None:
    image, boxes, classes = _painted(64, 64, [(2, 2, 12, 12), (40, 40, 60, 60), (20, 30, 30, 50)])
    matrix = affine_matrix((64, 64), (64, 64), translate=(0.5 - 20 / 64, 0.5))  # shift 20 px left
    out, new, cls = apply_affine(image, boxes, classes, matrix, (64, 64))
    assert cls.tolist() == [1, 2]  # class 0 left the frame
    np.testing.assert_allclose(new, [[20, 40, 40, 60], [0, 30, 10, 50]], atol=1e-5)
    _check_painted(out, new, cls, tol=0.0)


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_random_affine_painted(seed: int, rotated: bool) -> None:
    rects = [(10, 10, 50, 40), (70, 20, 110, 60), (20, 70, 60, 110), (80, 80, 120, 120)]
    image, boxes, classes = _painted(128, 128, rects)
    rng = np.random.default_rng(seed)
    degrees, shear = (15, 5) if rotated else (0, 0)
    out, new, cls = random_affine(
        image, boxes, classes, rng, size=128, degrees=degrees, translate=0.2, scale=0.5, shear=shear
    )
    assert out.shape == (128, 128, 3)
    assert ((new >= 0) & (new <= 128)).all()
    _check_painted(out, new, cls, tol=2.0, rotated=rotated)


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_painted_then_crop(seed: int) -> None:
    size = 64
    shapes_rects = [
        ((64, 64), (5, 5, 40, 30)),
        ((48, 64), (20, 10, 60, 40)),
        ((64, 40), (4, 20, 36, 60)),
        ((64, 64), (30, 30, 60, 62)),
    ]
    samples = []
    for k, ((h, w), rect) in enumerate(shapes_rects):
        image = np.zeros((h, w, 3), np.uint8)
        image[rect[1] : rect[3], rect[0] : rect[2]] = COLOURS[k]
        samples.append((image, np.array([rect], np.float32), np.array([k])))
    rng = np.random.default_rng(seed)
    canvas, boxes, classes = mosaic4(samples, size, rng)
    assert canvas.shape == (2 * size, 2 * size, 3)
    _check_painted(canvas, boxes, classes, tol=0.0)
    for k in set(range(4)) - set(classes.tolist()):  # a dropped box may leave at most a sliver visible
        assert _mask(canvas, k).sum() <= 0.1 * np.prod(np.diff(np.array(shapes_rects[k][1]).reshape(2, 2), axis=0))
    out, new, cls = random_affine(canvas, boxes, classes, rng, size=size, border=(-size // 2, -size // 2))
    assert out.shape == (size, size, 3)
    _check_painted(out, new, cls, tol=2.0)


def test_mosaic_needs_four() -> None:
    with pytest.raises(ValueError):
        mosaic4([], 64, np.random.default_rng(0))


def test_mixup_blends_and_concatenates() -> None:
    a = (np.full((8, 8, 3), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([0]))
    b = (np.full((8, 8, 3), 0, np.uint8), np.array([[2, 2, 8, 8], [1, 1, 5, 5]], np.float32), np.array([1, 2]))
    image, boxes, classes = mixup(a, b, np.random.default_rng(0))
    assert image.dtype == np.uint8 and 60 < image[0, 0, 0] < 140  # Beta(32, 32) stays near 0.5
    assert boxes.shape == (3, 4) and classes.tolist() == [0, 1, 2]


def test_hsv_jitter_deterministic_and_no_op() -> None:
    base = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    same = hsv_jitter(base.copy(), np.random.default_rng(0), 0, 0, 0)
    np.testing.assert_array_equal(same, base)
    one = hsv_jitter(base.copy(), np.random.default_rng(5))
    two = hsv_jitter(base.copy(), np.random.default_rng(5))
    np.testing.assert_array_equal(one, two)
    assert one.shape == base.shape and one.dtype == np.uint8 and not np.array_equal(one, base)


def test_box_candidates_rule() -> None:
    old = np.array([[0, 0, 10, 10]] * 4, np.float32)
    new = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 9, 9]], np.float32)
    assert box_candidates(old, new).tolist() == [True, False, False, True]  # too narrow; area 9% < 10%
    assert not box_candidates(np.array([[0, 0, 500, 3]]), np.array([[0, 0, 500, 4]]))[0]  # aspect >= 100
