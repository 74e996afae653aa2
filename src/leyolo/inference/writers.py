"""Where ``leyolo predict`` puts its outputs: annotated images/videos, YOLO txt, COCO json.

Videos are written so that they play (``VideoSink``): H.264 in ``.mp4`` through an ``ffmpeg``
binary when one is on the PATH (``LEYOLO_FFMPEG`` names another, or ``0`` to not use it), else
Motion-JPEG in ``.avi`` with OpenCV (pip builds of OpenCV cannot encode H.264, and the ``mp4v``
they can write does not play in browsers). Nothing is installed at run time.

The COCO json holds COCO category ids (``leyolo.coco.category_ids``: COCO's own for COCO's 80
classes, else class index + 1), the same ids ``leyolo val --json`` writes, and a
``file_name`` per record; image ids are numeric file stems where there are some.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from ..data.images import VIDEO_SUFFIXES
from ..errors import LeyoloError, first_line
from ..structures import Results
from ..fileio import PartialFile, atomic_write
from .sources import Frame, resolve_source, video_frame_count


def next_free_dir(base: Path) -> Path:
    """``base`` if it is free or empty, else ``base2``, ``base3``, ..."""
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}{n}")).exists():
        n += 1
    return candidate


FFMPEG_ENV = "LEYOLO_FFMPEG"


def ffmpeg_binary() -> str | None:
    """The ffmpeg to encode H.264 with: ``$LEYOLO_FFMPEG`` (``0``/``none``: none), else ``ffmpeg`` on the PATH."""
    chosen = os.environ.get(FFMPEG_ENV)
    if chosen is not None:
        if chosen.strip().lower() in ("", "0", "no", "none", "off", "false"):
            return None
        return shutil.which(chosen)
    return shutil.which("ffmpeg")


class VideoSink:
    """An annotated video being written: ``<stem>.mp4`` (H.264, ffmpeg) or ``<stem>.avi`` (MJPG, OpenCV).

    Frames go to a hidden partial file renamed into place by ``close()``, so a video that is
    there is complete. Frames of another size than the first (a stream that reconnected at
    another resolution) are resized to it; an odd width or height gets one black column or row
    (H.264's yuv420p and OpenCV's MJPG both need even sides; OpenCV would crop instead).
    ``frames`` counts what was written.
    """

    def __init__(self, stem: Path, fps: float, size: tuple[int, int], ffmpeg: str | None | bool = True) -> None:
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.size = (int(size[0]), int(size[1]))  # width, height
        binary = ffmpeg_binary() if ffmpeg is True else (ffmpeg or None)
        self.path = stem.with_name(stem.name + (".mp4" if binary else ".avi"))
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._proc: subprocess.Popen | None = None
        self._writer: cv2.VideoWriter | None = None
        self._stderr = None
        w, h = self.size
        w, h = w + w % 2, h + h % 2
        if binary:
            self._stderr = tempfile.TemporaryFile()
            cmd = [binary, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                   "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-", "-an",
                   "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", "-f", "mp4", str(self._partial)]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        else:
            self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise LeyoloError(f"cannot write video {self.path}")

    def _ffmpeg_error(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text.splitlines()[-1] if text else "ffmpeg exited"

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        if self.size[0] % 2 or self.size[1] % 2:
            frame = cv2.copyMakeBorder(frame, 0, self.size[1] % 2, 0, self.size[0] % 2, cv2.BORDER_CONSTANT)
        if self._proc is not None:
            try:
                self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())  # type: ignore
            except (BrokenPipeError, OSError):
                self._proc.wait()
                raise LeyoloError(f"ffmpeg failed writing {self.path}: {self._ffmpeg_error()}") from None
        else:
            self._writer.write(frame)  # type: ignore[union-attr]
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; returns its path (``None`` if no frame was written)."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            code = proc.wait()
            if code != 0:
                self._partial.unlink(missing_ok=True)
                raise LeyoloError(f"ffmpeg failed writing {self.path}: {self._ffmpeg_error()}")
        elif self._writer is not None:
            self._writer.release()
            self._writer = None
        else:
            return self.path if self.path.exists() else None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self.frames == 0:
            self._partial.unlink(missing_ok=True)
            return None
        os.replace(self._partial, self.path)
        return self.path


def video_fps(path: str | Path, default: float = 30.0) -> float:
    """The frame rate a video file declares; ``default`` for anything else (streams are never opened here)."""
    if not Path(path).is_file():
        return default
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return fps if fps and 0 < fps < 1000 else default


@dataclass
class PredictSummary:
    images: int = 0
    detections: int = 0
    failed: list[str] = field(default_factory=list)
    save_dir: Path | None = None
    seconds: float = 0.0
    videos: list[Path] = field(default_factory=list)  # annotated videos written

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
                 save_json: bool = False, quiet: bool = False, vid_stride: int = 1,
                 fps: Callable[[str], float | None] | None = None) -> None:
        self.source = source
        self.vid_stride = max(int(vid_stride), 1)
        self.fps = fps  # frame rate of a source that is not a file (a live stream), by its path
        self.save_images, self.save_txt, self.save_json, self.quiet = save_images, save_txt, save_json, quiet
        wants_output = save_images or save_txt or save_json
        self.save_dir = (save_dir if save_dir is not None else next_free_dir(Path("runs/predict"))) if wants_output else None
        self._videos: dict[str, VideoSink] = {}
        self._json: PartialFile | None = None  # predictions.json, streamed: an endless source keeps memory flat
        self._json_records = 0
        self._image_ids: dict[str, int] = {}
        self._used_ids: set[int] = set()
        self._next_id = 1
        self._stems: dict[str, str] = {}  # source path -> its unique output stem
        self._taken: set[str] = set()

    def _total(self) -> int:
        from .live import is_live

        if is_live(self.source):
            return 0  # streams have no end to count to
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
        except BaseException:
            if self._json is not None:
                self._json.discard()
                self._json = None
            raise
        finally:
            bar.close()
            errors = []
            for writer in self._videos.values():  # every sink is closed, even when one fails
                try:
                    written = writer.close()
                except Exception as exc:  # noqa: BLE001 (reported below, after the others closed)
                    errors.append(exc)
                    continue
                if written is not None:
                    summary.videos.append(written)
            if errors and sys.exc_info()[0] is None:
                raise LeyoloError(f"cannot finish a video: {first_line(errors[0])}") from errors[0]
        summary.seconds = time.perf_counter() - start
        if self._json is not None:
            self._json.write("\n]\n")
            self._json.finish()
            self._json = None
        elif self.save_json and self.save_dir is not None:
            atomic_write(self.save_dir / "predictions.json", lambda tmp: Path(tmp).write_text("[]\n"))
        return summary

    def output_stem(self, path: Path) -> str:
        """The stem outputs of ``path`` get: its own, or ``stem-2``, ``stem-3``... when another source
        already has it (``a.jpg`` and ``a.png``, or two streams both ending in ``/stream1``)."""
        key = str(path)
        stem = self._stems.get(key)
        if stem is None:
            stem, n = path.stem or "image", 2
            while stem in self._taken:
                stem, n = f"{path.stem}-{n}", n + 1
            self._stems[key] = stem
            self._taken.add(stem)
        return stem

    def _stem(self, result: Results) -> str:
        stem = self.output_stem(Path(result.path or "image"))
        return stem if result.frame is None else f"{stem}_{result.frame}"

    def _write(self, result: Results) -> None:
        if self.save_dir is None:
            return
        path = Path(result.path or "image.jpg")
        if self.save_images and result.image is not None:
            canvas = self.canvas(result)
            if result.frame is not None:
                self._video_writer(path, canvas).write(canvas)
            else:
                suffix = path.suffix.lower() if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} else ".jpg"
                ok, encoded = cv2.imencode(suffix, canvas)
                if not ok:
                    raise LeyoloError(f"cannot encode annotated image for {path}")
                atomic_write(self.save_dir / f"{self.output_stem(path)}{suffix}",
                             lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))
        if self.save_txt:
            text = "".join(line + "\n" for line in result.to_yolo_lines())
            atomic_write(self.save_dir / "labels" / f"{self._stem(result)}.txt", lambda tmp: Path(tmp).write_text(text))
        if self.save_json:
            key = self._stem(result)
            image_id = self._image_ids.get(key)
            if image_id is None:  # COCO-style numeric stems keep their number; others take the next free id
                if key.isdigit() and int(key) not in self._used_ids:
                    image_id = int(key)
                else:
                    while self._next_id in self._used_ids:
                        self._next_id += 1
                    image_id = self._next_id
                self._image_ids[key] = image_id
                self._used_ids.add(image_id)
            if self._json is None:
                self._json = PartialFile(self.save_dir / "predictions.json")
                self._json.write("[")
            for record in result.to_coco(image_id):
                record["file_name"] = path.name if result.frame is None else key
                self._json.write(("," if self._json_records else "") + "\n" + json.dumps(record))
                self._json_records += 1

    def canvas(self, result: Results) -> np.ndarray:
        """The annotated image written for ``result`` (subclasses draw more)."""
        return result.draw()

    def _video_writer(self, path: Path, frame: np.ndarray) -> VideoSink:
        key = str(path)
        if key not in self._videos:
            fps = (self.fps(key) if self.fps is not None else None) or video_fps(path)
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._videos[key] = VideoSink(self.save_dir / self.output_stem(path), fps / self.vid_stride,
                                          (frame.shape[1], frame.shape[0]))
        return self._videos[key]
