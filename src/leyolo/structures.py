"""``Results``: what a prediction returns for one image, in original-image pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .ops import xyxy_to_xywh


def _palette(index: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class (golden-angle hues)."""
    hue = int((index * 137.508) % 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


@dataclass
class Results:
    """Detections of one image.

    Attributes:
        boxes: ``[N, 4]`` float32 xyxy in original-image pixels.
        scores: ``[N]`` float32 confidences in [0, 1].
        classes: ``[N]`` int64 class indices into ``names``.
        names: class names of the model.
        orig_shape: ``(h, w)`` of the original image.
        path: where the image came from (``None`` for arrays).
        frame: frame index for video sources.
        image: the original BGR image (a reference, not a copy), for drawing.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: Sequence[str]
    orig_shape: tuple[int, int]
    path: str | None = None
    frame: int | None = None
    speed: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for c in self.classes.tolist():
            counts[self.names[c]] = counts.get(self.names[c], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no detections"
        return f"Results({self.path or 'array'}: {summary})"

    @property
    def class_names(self) -> list[str]:
        return [self.names[c] for c in self.classes.tolist()]

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO result records (``bbox`` = x, y, w, h in original pixels).

        ``category_ids[i]`` is the COCO id of class ``i`` (default: the class index itself).
        """
        xywh = xyxy_to_xywh(self.boxes.astype(np.float64))
        out = []
        for box, score, cls in zip(xywh.tolist(), self.scores.tolist(), self.classes.tolist()):
            cat = int(category_ids[cls]) if category_ids is not None else int(cls)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [round(v, 3) for v in box],
                    "score": round(float(score), 5),
                }
            )
        return out

    def to_yolo_lines(self, with_conf: bool = True) -> list[str]:
        """YOLO txt rows: ``class cx cy w h [conf]``, coordinates normalised by image size."""
        h, w = self.orig_shape
        lines = []
        for (x1, y1, x2, y2), score, cls in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            row = f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            lines.append(f"{row} {score:.5f}" if with_conf else row)
        return lines

    def draw(self, image: np.ndarray | None = None, line_width: int | None = None) -> np.ndarray:
        """A copy of ``image`` (default: the original) with boxes, class names and scores drawn on it."""
        if image is None:
            if self.image is None:
                raise ValueError("no image to draw on: pass one")
            image = self.image
        canvas = image.copy()
        lw = line_width or max(round(sum(canvas.shape[:2]) / 2 * 0.003), 2)
        font_scale = lw / 3
        thickness = max(lw - 1, 1)
        order = np.argsort(self.scores)  # draw the most confident last, on top
        for i in order.tolist():
            x1, y1, x2, y2 = (int(round(v)) for v in self.boxes[i].tolist())
            color = _palette(int(self.classes[i]))
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
            label = f"{self.names[int(self.classes[i])]} {self.scores[i]:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            above = y1 - th - base - 2 >= 0
            ty1 = y1 - th - base - 2 if above else y1
            cv2.rectangle(canvas, (x1, ty1), (x1 + tw + 2, ty1 + th + base + 2), color, -1, cv2.LINE_AA)
            cv2.putText(
                canvas, label, (x1 + 1, ty1 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                thickness, cv2.LINE_AA,
            )
        return canvas
