"""Where ``leyolo predict`` puts its outputs: annotated images/videos, YOLO txt, COCO json.

The COCO json holds COCO category ids (``leyolo.coco.category_ids``: COCO's own for COCO's 80
classes, else class index + 1), the same ids ``leyolo val --json`` writes, and a
``file_name`` per record; image ids are numeric file stems where there are some.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..data.images import VIDEO_SUFFIXES
from ..errors import LeyoloError
from ..structures import Results
from ..fileio import atomic_write
from .sources import Frame, resolve_source, video_frame_count


def next_free_dir(base: Path) -> Path:
    """``base`` if it is free or empty, else ``base2``, ``base3``, ..."""
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}{n}")).exists():
        n += 1
    return candidate


@dataclass
class PredictSummary:
    images: int = 0
    detections: int = 0
    failed: list[str] = field(default_factory=list)
    save_dir: Path | None = None
    seconds: float = 0.0

    def report(self) -> list[str]:
        lines = [f"{len(self.failed)} unreadable file(s) skipped (listed above)"] if self.failed else []
        rate = f", {self.seconds / self.images * 1e3:.1f} ms/image" if self.images else ""
        lines.append(f"{self.images} images, {self.detections} detections{rate}")
        if self.save_dir is not None:
            lines.append(f"results saved to {self.save_dir}")
        return lines


class PredictionWriter:
    """Consumes a prediction stream and writes what was asked, atomically, file by file."""

    def __init__(self, save_dir: Path | None, source: str, *, save_images: bool = True, save_txt: bool = False,
                 save_json: bool = False, quiet: bool = False) -> None:
        self.source = source
        self.save_images, self.save_txt, self.save_json, self.quiet = save_images, save_txt, save_json, quiet
        wants_output = save_images or save_txt or save_json
        self.save_dir = (save_dir if save_dir is not None else next_free_dir(Path("runs/predict"))) if wants_output else None
        self._videos: dict[str, cv2.VideoWriter] = {}
        self._json: list[dict] = []
        self._image_ids: dict[str, int] = {}

    def _total(self) -> int:
        try:
            files = resolve_source(self.source)
        except LeyoloError:
            return 0
        return sum(video_frame_count(f) if f.suffix.lower() in VIDEO_SUFFIXES else 1 for f in files)

    def consume(self, stream: Iterable[Results | Frame]) -> PredictSummary:
        from tqdm import tqdm

        summary = PredictSummary(save_dir=self.save_dir)
        total = self._total()
        bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr, disable=self.quiet or total <= 1)
        start = time.perf_counter()
        try:
            for item in stream:
                bar.update(1)
                if isinstance(item, Frame):
                    summary.failed.append(item.error or f"{item.path}: unreadable")
                    bar.write(f"skipped: {item.error}", file=sys.stderr)
                    continue
                summary.images += 1
                summary.detections += len(item)
                if not self.quiet:
                    where = item.path or "array"
                    where += f" frame {item.frame}" if item.frame is not None else ""
                    ms = 1e3 * item.speed.get("inference", 0.0)
                    bar.write(f"{summary.images}/{total or '?'} {where}: {item.summary()} ({ms:.1f} ms)")
                self._write(item)
        finally:
            bar.close()
            for writer in self._videos.values():
                writer.release()
        summary.seconds = time.perf_counter() - start
        if self.save_json and self.save_dir is not None:
            data = json.dumps(self._json).encode()
            atomic_write(self.save_dir / "predictions.json", lambda tmp: Path(tmp).write_bytes(data))
        return summary

    def _stem(self, result: Results) -> str:
        stem = Path(result.path or "image").stem
        return stem if result.frame is None else f"{stem}_{result.frame}"

    def _write(self, result: Results) -> None:
        if self.save_dir is None:
            return
        path = Path(result.path or "image.jpg")
        if self.save_images and result.image is not None:
            canvas = result.draw()
            if result.frame is not None:
                self._video_writer(path, canvas).write(canvas)
            else:
                suffix = path.suffix.lower() if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} else ".jpg"
                ok, encoded = cv2.imencode(suffix, canvas)
                if not ok:
                    raise LeyoloError(f"cannot encode annotated image for {path}")
                atomic_write(self.save_dir / f"{path.stem}{suffix}", lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))
        if self.save_txt:
            text = "".join(line + "\n" for line in result.to_yolo_lines())
            atomic_write(self.save_dir / "labels" / f"{self._stem(result)}.txt", lambda tmp: Path(tmp).write_text(text))
        if self.save_json:
            key = self._stem(result)
            image_id = self._image_ids.get(key)
            if image_id is None:  # COCO-style numeric stems keep their number; others take a free id
                used = set(self._image_ids.values())
                image_id = int(key) if key.isdigit() and int(key) not in used else max(used, default=0) + 1
                self._image_ids[key] = image_id
            for record in result.to_coco(image_id):
                record["file_name"] = path.name if result.frame is None else key
                self._json.append(record)

    def _video_writer(self, path: Path, frame: np.ndarray) -> cv2.VideoWriter:
        key = str(path)
        if key not in self._videos:
            capture = cv2.VideoCapture(key)
            fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
            capture.release()
            self.save_dir.mkdir(parents=True, exist_ok=True)
            out = self.save_dir / f"{path.stem}.mp4"
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
            if not writer.isOpened():
                raise LeyoloError(f"cannot write video {out}")
            self._videos[key] = writer
        return self._videos[key]
