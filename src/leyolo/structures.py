"""``Results`` and ``Boxes``: what a prediction returns for one image, in original-image pixels.

The layout is the one Ultralytics users know (``r.boxes.xyxy``, ``.xywh``, ``.conf``, ``.cls``,
``.id``, ``r.plot()``, ``r.save()``), over plain numpy arrays: ``r.boxes.xyxy``, ``r.scores``
and ``r.classes`` are the arrays themselves, not copies.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .coco import category_ids as default_category_ids
from .errors import LeyoloError
from .fileio import atomic_write
from .ops import xyxy_to_xywh

IMAGE_WRITE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _palette(index: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class (golden-angle hues)."""
    hue = int((index * 137.508) % 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


class Boxes:
    """The boxes of one image.

    Attributes:
        xyxy: ``[N, 4]`` float32 corners in original-image pixels.
        conf: ``[N]`` float32 scores in [0, 1].
        cls: ``[N]`` int64 class indices.
        id: ``[N]`` int64 track ids, or ``None`` when not tracked.
        orig_shape: ``(h, w)`` of the original image.

    ``np.asarray(boxes)`` is ``xyxy``; indexing with an int, slice or mask gives the selected
    ``Boxes``; a 2-D index (``boxes[:, :2]``) indexes ``xyxy``.
    """

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, orig_shape: tuple[int, int],
                 id: np.ndarray | None = None) -> None:  # noqa: A002 (Ultralytics' name)
        self.xyxy, self.conf, self.cls, self.orig_shape, self.id = xyxy, conf, cls, tuple(orig_shape), id

    def __len__(self) -> int:
        return len(self.conf)

    def __repr__(self) -> str:
        return f"Boxes({len(self)} boxes, orig_shape={self.orig_shape})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.xyxy if dtype is None else self.xyxy.astype(dtype)

    def __getitem__(self, index: Any) -> "Boxes | np.ndarray":
        if isinstance(index, tuple):
            return self.xyxy[index]
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Boxes(self.xyxy[index], self.conf[index], self.cls[index], self.orig_shape,
                     None if self.id is None else self.id[index])

    @property
    def xywh(self) -> np.ndarray:
        """``[N, 4]`` centre x, centre y, width, height in pixels."""
        out = np.empty_like(self.xyxy)
        out[:, :2] = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2
        out[:, 2:] = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return out

    @property
    def xyxyn(self) -> np.ndarray:
        """``xyxy`` divided by the image width and height."""
        h, w = self.orig_shape
        return self.xyxy / np.array([w, h, w, h], dtype=np.float32)

    @property
    def xywhn(self) -> np.ndarray:
        """``xywh`` divided by the image width and height (YOLO txt coordinates)."""
        h, w = self.orig_shape
        return self.xywh / np.array([w, h, w, h], dtype=np.float32)

    @property
    def data(self) -> np.ndarray:
        """``[N, 6]`` rows ``x1, y1, x2, y2, conf, cls`` (``[N, 7]`` with the track id before conf)."""
        cols = [self.xyxy, *([self.id[:, None].astype(np.float32)] if self.id is not None else []),
                self.conf[:, None], self.cls[:, None].astype(np.float32)]
        return np.concatenate(cols, 1).astype(np.float32)


class Results:
    """Detections of one image.

    Attributes:
        boxes: the ``Boxes`` (xyxy, conf, cls, id) in original-image pixels.
        names: class names of the model.
        orig_shape: ``(h, w)`` of the original image.
        path: where the image came from (``None`` for arrays).
        frame: frame index for video sources.
        speed: seconds spent in ``preprocess``, ``inference`` and ``postprocess``.
        image: the original BGR image (a reference, not a copy), for drawing.
    """

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, names: Sequence[str],
                 orig_shape: tuple[int, int], path: str | None = None, frame: int | None = None,
                 speed: dict[str, float] | None = None, image: np.ndarray | None = None,
                 ids: np.ndarray | None = None) -> None:
        self.boxes = Boxes(boxes, scores, classes, orig_shape, ids)
        self.names = names
        self.orig_shape = tuple(orig_shape)
        self.path = path
        self.frame = frame
        self.speed = dict(speed or {})
        self.image = image

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        return f"Results({self.path or 'array'}: {self.summary()})"

    @property
    def scores(self) -> np.ndarray:
        return self.boxes.conf

    @property
    def classes(self) -> np.ndarray:
        return self.boxes.cls

    @property
    def class_names(self) -> list[str]:
        return [self.names[c] for c in self.classes.tolist()]

    def counts(self) -> dict[str, int]:
        """Detections per class name, most frequent first."""
        counts: dict[str, int] = {}
        for name in self.class_names:
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        """``"2 person, 1 car"``, or ``"no detections"``."""
        return ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "no detections"

    def default_image_id(self) -> int:
        """A COCO image id: a still image's numeric file stem (COCO's own file names), else a stable hash
        of the name (and of the frame index, for video frames)."""
        stem = Path(self.path).stem if self.path else ""
        if stem.isdigit() and self.frame is None:
            return int(stem)
        key = f"{stem}:{self.frame}" if self.frame is not None else stem
        return zlib.crc32(key.encode()) & 0x7FFFFFFF

    def to_coco(self, image_id: int | None = None, category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO result records (``bbox`` = x, y, w, h in original pixels).

        ``image_id`` defaults to ``default_image_id()``; ``category_ids[i]`` is the COCO id of class
        ``i``, by default ``leyolo.coco.category_ids(names)`` (COCO's ids for COCO's 80 classes,
        else index + 1), the ids ``leyolo val`` writes too.
        """
        image_id = self.default_image_id() if image_id is None else int(image_id)
        ids = default_category_ids(self.names) if category_ids is None else list(category_ids)
        xywh = xyxy_to_xywh(self.boxes.xyxy.astype(np.float64))
        return [{"image_id": image_id, "category_id": int(ids[cls]), "bbox": [round(v, 3) for v in box],
                 "score": round(float(score), 5)}
                for box, score, cls in zip(xywh.tolist(), self.scores.tolist(), self.classes.tolist())]

    def to_json(self) -> str:
        """The detections as a JSON list: name, class, confidence, box (x1, y1, x2, y2 pixels), track id if any."""
        rows = []
        for i, ((x1, y1, x2, y2), score, cls) in enumerate(zip(self.boxes.xyxy.tolist(), self.scores.tolist(),
                                                               self.classes.tolist())):
            row: dict[str, Any] = {"name": self.names[cls], "class": int(cls), "confidence": round(float(score), 5),
                                   "box": {"x1": round(x1, 2), "y1": round(y1, 2), "x2": round(x2, 2),
                                           "y2": round(y2, 2)}}
            if self.boxes.id is not None:
                row["track_id"] = int(self.boxes.id[i])
            rows.append(row)
        return json.dumps(rows)

    def to_yolo_lines(self, with_conf: bool = True) -> list[str]:
        """YOLO txt rows: ``class cx cy w h [conf]``, coordinates normalised by image size."""
        return [f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" + (f" {score:.5f}" if with_conf else "")
                for (cx, cy, w, h), score, cls in zip(self.boxes.xywhn.tolist(), self.scores.tolist(),
                                                      self.classes.tolist())]

    def plot(self, image: np.ndarray | None = None, line_width: int | None = None) -> np.ndarray:
        """A copy of ``image`` (default: the original) with boxes, class names and scores drawn on it."""
        if image is None:
            if self.image is None:
                raise LeyoloError("no image to draw on: pass one")
            image = self.image
        canvas = image.copy()
        height, width = canvas.shape[:2]
        lw = line_width or max(round(sum(canvas.shape[:2]) / 2 * 0.003), 2)
        font_scale = lw / 3
        thickness = max(lw - 1, 1)
        ids = self.boxes.id
        for i in np.argsort(self.scores).tolist():  # the most confident last, on top
            x1, y1, x2, y2 = (int(round(v)) for v in self.boxes.xyxy[i].tolist())
            color = _palette(int(self.classes[i]))
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
            label = f"{'' if ids is None else f'#{int(ids[i])} '}{self.names[int(self.classes[i])]} {self.scores[i]:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            tx = min(max(x1, 0), max(width - tw - 2, 0))  # keep the label inside the image at the edges
            ty = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else min(max(y1, 0), max(height - th - base - 2, 0))
            cv2.rectangle(canvas, (tx, ty), (tx + tw + 2, ty + th + base + 2), color, -1, cv2.LINE_AA)
            cv2.putText(canvas, label, (tx + 1, ty + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                        thickness, cv2.LINE_AA)
        return canvas

    draw = plot

    def save(self, path: str | Path, image: np.ndarray | None = None) -> Path:
        """Write ``plot()`` to ``path`` (.jpg, .png, .bmp or .webp), atomically; returns the path."""
        path = Path(path)
        if path.suffix.lower() not in IMAGE_WRITE_SUFFIXES:
            raise LeyoloError(f"{path}: save as one of {', '.join(IMAGE_WRITE_SUFFIXES)}")
        ok, encoded = cv2.imencode(path.suffix.lower(), self.plot(image))
        if not ok:
            raise LeyoloError(f"{path}: cannot encode the annotated image")
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))
