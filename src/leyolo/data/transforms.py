"""Training augmentations (YOLOv8 recipe) as pure numpy/OpenCV functions.

Every geometric transform takes and returns ``(image, boxes, classes)``: a uint8 HxWx3 BGR image,
float32 ``[N, 4]`` xyxy boxes in that image's pixels and int64 ``[N]`` classes. Boxes and classes
always travel together, so a box dropped for being cut away or squashed loses its class too; a
target that silently points at the wrong object teaches the detector the wrong thing. Randomness
comes only from the ``rng`` argument, which keeps data-loader workers reproducible and independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..ops import letterbox

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class AugmentConfig:
    """Augmentation strengths, YOLOv8 defaults (probabilities for mosaic/mixup/fliplr, gains otherwise).

    ``TrainConfig`` extends it, so these defaults are the training defaults too.
    """

    mosaic: float = 1.0
    mixup: float = 0.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    fliplr: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4


def _boxes(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _classes(classes: np.ndarray) -> np.ndarray:
    return np.asarray(classes, dtype=np.int64).reshape(-1)


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A copy of xyxy ``boxes`` clipped to an image of ``shape`` (h, w)."""
    out = _boxes(boxes).copy()
    h, w = shape
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out


def box_candidates(
    old: np.ndarray, new: np.ndarray, wh_thr: float = 2.0, ar_thr: float = 100.0, area_thr: float = 0.1
) -> np.ndarray:
    """Which transformed boxes are still worth learning from (YOLOv8's rule).

    A box survives when it is wider and taller than ``wh_thr`` pixels, keeps more than ``area_thr``
    of its area (``old`` should already carry the transform's scale so zooming out is not
    punished), and is not a sliver with aspect ratio ``>= ar_thr``.
    """
    eps = 1e-16
    old, new = _boxes(old), _boxes(new)
    w1, h1 = old[:, 2] - old[:, 0], old[:, 3] - old[:, 1]
    w2, h2 = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (aspect < ar_thr)


def resize_long_side(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the longer side is ``size`` (up or down, aspect kept); boxes scaled per axis.

    Per-axis factors (not the nominal ratio) keep boxes exact despite the rounding of the new size.
    """
    h, w = image.shape[:2]
    r = size / max(h, w)
    boxes = _boxes(boxes)
    if r == 1:
        return image, boxes.copy()
    new_w, new_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return image, boxes * np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)


def letterbox_train(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    size: int,
    stride: int = 32,
    pad_value: int = 114,
    scaleup: bool = True,
    *,
    drop_small: bool = True,
) -> Sample:
    """Fit the image in a ``size x size`` square (the inference letterbox, ``auto=False``), boxes mapped.

    ``scaleup=False`` only pads images smaller than ``size``. ``stride`` is accepted for symmetry with
    the inference letterbox; a full square is always a multiple of it when ``size`` is.
    ``drop_small=False`` keeps tiny boxes (validation targets should match the labels exactly).
    """
    del stride  # the square output does not depend on it
    boxes, classes = _boxes(boxes), _classes(classes)
    h, w = image.shape[:2]
    if scaleup or max(h, w) > size:
        out, info = letterbox(image, size, pad_value=pad_value, auto=False)
        sx, sy = int(round(w * info.ratio)) / w, int(round(h * info.ratio)) / h  # the exact resize, per axis
        left, top = info.pad
    else:
        dw, dh = size - w, size - h
        top, left = int(round(dh / 2 - 0.1)), int(round(dw / 2 - 0.1))
        bottom, right = dh - top, dw - left
        out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
        sx = sy = 1.0
    scaled = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    new = scaled + np.array([left, top, left, top], dtype=np.float32)
    if drop_small:
        keep = box_candidates(scaled, new)
        new, classes = new[keep], classes[keep]
    return out, new, classes


def horizontal_flip(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> Sample:
    """Mirror left-right: ``x -> w - x`` (so x1 and x2 swap roles)."""
    w = image.shape[1]
    boxes = _boxes(boxes)
    out = boxes.copy()
    out[:, 0] = w - boxes[:, 2]
    out[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out, _classes(classes).copy()


def hsv_jitter(
    image: np.ndarray, rng: np.random.Generator, h: float = 0.015, s: float = 0.7, v: float = 0.4
) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables (cheap: three 256-entry LUTs).

    Modifies ``image`` in place when it is contiguous uint8 BGR, and returns it.
    """
    if not (h or s or v):
        return image
    gains = rng.uniform(-1, 1, 3) * np.array([h, s, v]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=np.float64)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)  # OpenCV hue is 0..179 and wraps around
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    if image.flags["C_CONTIGUOUS"] and image.dtype == np.uint8:
        cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=image)
        return image
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def affine_matrix(
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    *,
    angle: float = 0.0,
    scale: float = 1.0,
    shear: tuple[float, float] = (0.0, 0.0),
    translate: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """3x3 matrix: move the input centre to the origin, rotate/scale, shear, then place it at
    ``translate`` (fractions of the output width, height; 0.5, 0.5 = centred).

    Exposed separately from ``random_affine`` so callers and tests can build a known transform.
    """
    centre = np.eye(3)
    centre[0, 2] = -in_shape[1] / 2
    centre[1, 2] = -in_shape[0] / 2
    rotate = np.eye(3)
    rotate[:2] = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=scale)
    shear_m = np.eye(3)
    shear_m[0, 1] = math.tan(shear[0] * math.pi / 180)
    shear_m[1, 0] = math.tan(shear[1] * math.pi / 180)
    move = np.eye(3)
    move[0, 2] = translate[0] * out_shape[1]
    move[1, 2] = translate[1] * out_shape[0]
    return move @ shear_m @ rotate @ centre


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Transform xyxy boxes through their four corners, take the enclosing box, clip to ``out_shape``."""
    boxes = _boxes(boxes)
    n = len(boxes)
    if n == 0:
        return boxes.copy()
    corners = np.ones((n * 4, 3), dtype=np.float64)
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = (corners @ matrix.T)[:, :2].reshape(n, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1).astype(np.float32)
    return clip_boxes(out, out_shape)


def apply_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    matrix: np.ndarray,
    out_shape: tuple[int, int],
    *,
    scale: float = 1.0,
    pad_value: int = 114,
) -> Sample:
    """Warp image and boxes with ``matrix`` into ``out_shape`` (h, w); drop boxes that did not survive.

    ``scale`` is the zoom inside ``matrix``; it is applied to the old boxes before the area test
    so a zoomed-out object is not mistaken for a cut-off one.
    """
    boxes, classes = _boxes(boxes), _classes(classes)
    out_h, out_w = out_shape
    if image.shape[:2] != (out_h, out_w) or not np.allclose(matrix, np.eye(3)):
        image = cv2.warpAffine(image, matrix[:2], dsize=(out_w, out_h), borderValue=(pad_value,) * 3)
    new = warp_boxes(boxes, matrix, out_shape)
    keep = box_candidates(boxes * scale, new)
    return image, new[keep], classes[keep]


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    border: tuple[int, int] = (0, 0),
    pad_value: int = 114,
) -> Sample:
    """YOLOv8's random perspective without the perspective term.

    The output is ``image.shape + 2 * border`` (h, w): ``border=(0, 0)`` on a ``size`` letterbox, or
    ``border=(-size // 2, -size // 2)`` on a ``2 * size`` mosaic canvas, both give ``size x size``;
    any other combination is a caller bug and raises ``ValueError``. Draw order (angle, scale,
    shear x/y, translate x/y) follows YOLOv8.
    """
    out_shape = (image.shape[0] + 2 * border[0], image.shape[1] + 2 * border[1])
    if out_shape != (size, size):
        raise ValueError(f"random_affine: image {image.shape[:2]} with border {border} gives {out_shape}, not {size}")
    angle = rng.uniform(-degrees, degrees)
    zoom = rng.uniform(1 - scale, 1 + scale)
    shear_xy = (rng.uniform(-shear, shear), rng.uniform(-shear, shear))
    move = (rng.uniform(0.5 - translate, 0.5 + translate), rng.uniform(0.5 - translate, 0.5 + translate))
    matrix = affine_matrix(image.shape[:2], out_shape, angle=angle, scale=zoom, shear=shear_xy, translate=move)
    return apply_affine(image, boxes, classes, matrix, out_shape, scale=zoom, pad_value=pad_value)


def mosaic4(samples: Sequence[Sample], size: int, rng: np.random.Generator, pad_value: int = 114) -> Sample:
    """Tile four samples around a random centre of a ``2 size x 2 size`` canvas (YOLOv8 layout).

    Each image should already have its long side resized to ``size``. Order: top-left, top-right,
    bottom-left, bottom-right, each touching the centre. Boxes are shifted, clipped to the canvas,
    and dropped when too little of them is left. The caller then crops back to ``size`` with
    ``random_affine(..., border=(-size // 2, -size // 2))``.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    s = size
    xc, yc = (int(rng.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, 3), pad_value, dtype=np.uint8)
    all_boxes, all_classes = [], []
    for i, (image, boxes, classes) in enumerate(samples):
        h, w = image.shape[:2]
        if i == 0:  # top-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y2b, x1b:x2b]
        # Only the pasted window of this image is visible: clip to it (not just to the canvas).
        shifted = _boxes(boxes) + np.array([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)
        clipped = shifted.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], x1a, x2a)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], y1a, y2a)
        keep = box_candidates(shifted, clipped)
        all_boxes.append(clipped[keep])
        all_classes.append(_classes(classes)[keep])
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_classes)


def mixup(a: Sample, b: Sample, rng: np.random.Generator, alpha: float = 32.0) -> Sample:
    """Blend two same-size samples with a Beta(alpha, alpha) ratio (~0.5) and keep both sets of boxes."""
    (image_a, boxes_a, classes_a), (image_b, boxes_b, classes_b) = a, b
    if image_a.shape != image_b.shape:
        raise ValueError(f"mixup needs images of one shape, got {image_a.shape} and {image_b.shape}")
    ratio = rng.beta(alpha, alpha)
    image = (image_a.astype(np.float32) * ratio + image_b.astype(np.float32) * (1 - ratio)).astype(np.uint8)
    boxes = np.concatenate([_boxes(boxes_a), _boxes(boxes_b)])
    return image, boxes, np.concatenate([_classes(classes_a), _classes(classes_b)])
