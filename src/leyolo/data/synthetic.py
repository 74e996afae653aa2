"""A small synthetic detection dataset (circles, squares, triangles) for demos and tests.

Shapes are drawn with OpenCV from exact geometry, so every box is the tight bounding box of
the shape's pixels. Backgrounds vary (flat + noise, gradients, faint clutter) so a detector has
to learn shapes, not colours. Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from ..errors import LeyoloError
from ..ops import box_iou

NAMES = ["circle", "square", "triangle"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(30, 226, size=3)
    if kind == 0:
        image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    else:
        other = rng.integers(30, 226, size=3)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = t[None, :, None] if kind == 1 else t[:, None, None]
        image = base * (1 - ramp) + other * ramp
        image = np.broadcast_to(image, (size, size, 3)).astype(np.float32)
    image = image + rng.normal(0, rng.uniform(4, 14), (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):  # faint clutter lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        shade = np.clip(image[p1[1], p1[0]].astype(int) + rng.integers(-40, 41, 3), 0, 255)
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), tuple(int(v) for v in shade),
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def _polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if cls == 1:  # square of half-diagonal r
        ang = angle + np.arange(4) * math.pi / 2 + math.pi / 4
    else:  # equilateral triangle inscribed in radius r
        ang = angle + np.arange(3) * 2 * math.pi / 3
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour.astype(int) - background.astype(int)).sum() > 160:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])


def draw_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """One image with 1-5 shapes: (BGR image, boxes xyxy px [N, 4], classes [N], per-shape masks)."""
    image = _background(rng, size)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            cls = int(rng.integers(3))
            r = rng.uniform(0.04, 0.175) * size  # shapes span ~8%-35% of the side
            cx, cy = rng.uniform(r, size - r, 2)
            mask = np.zeros((size, size), np.uint8)
            if cls == 0:
                cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 255, -1, cv2.LINE_8)
            else:
                pts = np.round(_polygon(cls, cx, cy, r, rng.uniform(0, 2 * math.pi))).astype(np.int32)
                cv2.fillPoly(mask, [pts], 255, cv2.LINE_8)
            ys, xs = np.nonzero(mask)
            if xs.size < 16:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            if boxes and box_iou(box[None], np.stack(boxes)).max() > 0.3:
                continue
            colour = _contrasting_colour(rng, image[int(cy), int(cx)])
            image[mask > 0] = colour
            for m in masks:  # a later shape hides what it covers of the earlier ones
                m[mask > 0] = 0
            boxes.append(box)
            classes.append(cls)
            masks.append(mask)
            break
    # occlusion may shrink earlier shapes: recompute tight boxes from what stays visible
    kept_boxes, kept_classes, kept_masks = [], [], []
    for box, cls, mask in zip(boxes, classes, masks):
        ys, xs = np.nonzero(mask)
        if xs.size < 16:
            continue
        kept_boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
        kept_classes.append(cls)
        kept_masks.append(mask)
    return (image, np.array(kept_boxes, np.float32).reshape(-1, 4), np.array(kept_classes, np.int64), kept_masks)


def generate_shapes_dataset(out: str | Path, *, n_train: int = 400, n_val: int = 100, imgsz: int = 320,
                            seed: int = 0, progress: bool = True) -> Path:
    """Write ``images/{train,val}``, ``labels/{train,val}`` and ``data.yaml`` under ``out``; return the yaml path.

    An existing folder holding the same dataset (same parameters) is reused; a non-empty folder
    that is not one of ours is refused, so user data is never overwritten.
    """
    from tqdm import tqdm

    out = Path(out)
    params = {"n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed, "version": 1}
    marker, yaml_path = out / "synth.json", out / "data.yaml"
    if out.exists() and not out.is_dir():
        raise LeyoloError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise LeyoloError(f"{out}: folder is not empty and holds no leyolo synthetic dataset; choose another") from None
        if previous == params and yaml_path.exists():
            return yaml_path
        if previous != params:
            raise LeyoloError(f"{out}: holds a synthetic dataset with other parameters ({previous}); choose another")
    if imgsz < 32:
        raise LeyoloError("--imgsz must be at least 32 for the synthetic dataset")
    rng = np.random.default_rng(seed)
    total = n_train + n_val
    bar = tqdm(total=total, desc="synth", unit="img", disable=not progress or None)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(params))
    for split, count in (("train", n_train), ("val", n_val)):
        image_dir, label_dir = out / "images" / split, out / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, boxes, classes, _ = draw_sample(rng, imgsz)
            cv2.imwrite(str(image_dir / f"{split}_{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = []
            for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist()):
                lines.append(f"{c} {(x1 + x2) / 2 / imgsz:.6f} {(y1 + y2) / 2 / imgsz:.6f} "
                             f"{(x2 - x1) / imgsz:.6f} {(y2 - y1) / imgsz:.6f}")
            (label_dir / f"{split}_{i:05d}.txt").write_text("\n".join(lines) + "\n")
            bar.update(1)
    bar.close()
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    yaml_path.write_text("# synthetic shapes, generated by `leyolo synth`\npath: .\ntrain: images/train\n"
                         f"val: images/val\nnames:\n{names}\n")  # written last: its presence means complete
    return yaml_path
