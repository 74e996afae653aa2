"""``leyolo track``: detect and track objects in videos, image sequences, webcams and streams.

Each box gets a track id (``Detector.track``, ByteTrack or BoT-SORT from
``leyolo.inference.tracking``). Outputs, per sequence (a video, a stream, the images of a folder):

* the annotated video (``<save-dir>/<name>.mp4`` H.264 with ffmpeg, else ``.avi`` MJPG), boxes
  labelled ``#id class score`` with a trail of each track's recent centres; annotated images for
  image folders;
* ``--save-mot FILE``: MOTChallenge rows ``frame,id,x,y,w,h,score,-1,-1,-1`` (frames from 1 as
  in the source, even with ``--vid-stride``; top-left corner and size in pixels of the original
  frame). Several sequences go to ``FILE-<name>.txt`` each;
* ``--save-json``: ``<save-dir>/tracks.json``, one record per frame with its tracked boxes and ids.

Files are written as frames come (live streams run for ever) and moved into place at the end,
Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path
from typing import Any, Hashable, Iterable

import cv2
import numpy as np

from ..fileio import PartialFile
from ..inference.backends import CHOICES as BACKEND_CHOICES
from ..inference.sources import Frame
from ..inference.tracking import TRACKERS, sequence_key
from ..inference.tracking.config import TrackerConfig
from ..data.images import VIDEO_SUFFIXES
from ..inference.writers import PredictionWriter, PredictSummary, next_free_dir, video_fps
from ..structures import Results

TRAIL = 30  # centres kept per track for the drawn trail


def id_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id."""
    hue = int((track_id * 47.0) % 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def mot_rows(frame: int, result: Results) -> list[str]:
    """MOTChallenge rows of one frame: ``frame,id,x,y,w,h,score,-1,-1,-1`` (x, y: top-left, pixels)."""
    ids = result.boxes.id
    if ids is None:
        return []
    return [f"{frame},{int(i)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{s:.4f},-1,-1,-1"
            for i, (x1, y1, x2, y2), s in zip(ids.tolist(), result.boxes.xyxy.tolist(), result.scores.tolist())]


class TrackWriter(PredictionWriter):
    """``PredictionWriter`` for tracked results: trails on the annotated frames, MOT rows, tracks json."""

    def __init__(self, save_dir: Path | None, source: str, *, save_images: bool = True, mot: Path | None = None,
                 save_json: bool = False, quiet: bool = False, vid_stride: int = 1, fps: Any = None) -> None:
        super().__init__(save_dir, source, save_images=save_images, quiet=quiet, vid_stride=vid_stride, fps=fps)
        if save_json and self.save_dir is None:
            self.save_dir = save_dir or next_free_dir(Path("runs/track"))
        self.mot = mot
        self._mot_files: dict[Hashable, tuple[str, PartialFile]] = {}
        self._tracks_json: PartialFile | None = None
        self._tracks_json_count = 0
        if save_json:
            self._tracks_json = PartialFile(self.save_dir / "tracks.json")  # type: ignore[operator]
            self._tracks_json.write("[")
        self._trails: dict[Hashable, dict[int, deque]] = {}
        self._last_seen: dict[Hashable, dict[int, int]] = {}
        self._counts: dict[Hashable, int] = {}  # frames seen per sequence (image sequences number from it)
        self.ids: dict[Hashable, set[int]] = {}
        self.boxes = 0
        self.track_seconds = 0.0
        self.outputs: list[Path] = []

    def frame_number(self, result: Results, key: Hashable) -> int:
        """1-based: the source's own frame index for videos and streams, the position for images."""
        return result.frame + 1 if result.frame is not None else self._counts[key]

    def canvas(self, result: Results) -> np.ndarray:
        canvas = result.draw()
        key = sequence_key(result)
        for track_id, points in self._trails.get(key, {}).items():
            if len(points) > 1:
                pts = np.array(points, dtype=np.int32).reshape(-1, 1, 2)
                cv2.polylines(canvas, [pts], False, id_colour(track_id), max(round(sum(canvas.shape[:2]) / 600), 1),
                              cv2.LINE_AA)
        return canvas

    def _update_trails(self, key: Hashable, result: Results) -> None:
        trails = self._trails.setdefault(key, {})
        seen = self._last_seen.setdefault(key, {})
        n = self._counts[key]
        ids = result.boxes.id if result.boxes.id is not None else np.empty(0, dtype=np.int64)
        for track_id, (x1, y1, x2, y2) in zip(ids.tolist(), result.boxes.xyxy.tolist()):
            trails.setdefault(track_id, deque(maxlen=TRAIL)).append((round((x1 + x2) / 2), round((y1 + y2) / 2)))
            seen[track_id] = n
        for track_id in [t for t, last in seen.items() if n - last > TRAIL]:  # bounded memory on endless streams
            del seen[track_id], trails[track_id]

    def _write(self, result: Results) -> None:
        key = sequence_key(result)
        self._counts[key] = self._counts.get(key, 0) + 1
        number = self.frame_number(result, key)
        ids = result.boxes.id if result.boxes.id is not None else np.empty(0, dtype=np.int64)
        self.ids.setdefault(key, set()).update(ids.tolist())
        self.boxes += len(result)
        self.track_seconds += result.speed.get("track", 0.0)
        self._update_trails(key, result)
        if self.mot is not None:
            if key not in self._mot_files:
                name = Path(result.path).stem if result.path else "arrays"
                if result.frame is None and result.path:
                    name = Path(result.path).parent.name or name
                taken = {n for n, _ in self._mot_files.values()}
                name = name if name not in taken else f"{name}-{len(self._mot_files) + 1}"
                self._mot_files[key] = (name, PartialFile(self.mot, f".{len(self._mot_files)}"))
            rows = mot_rows(number, result)
            if rows:
                self._mot_files[key][1].write("".join(r + "\n" for r in rows))
        if self._tracks_json is not None:
            record = {"source": result.path, "frame": number, "tracks": json.loads(result.to_json())}
            self._tracks_json.write(("," if self._tracks_json_count else "") + "\n" + json.dumps(record))
            self._tracks_json_count += 1
        super()._write(result)

    def consume(self, stream: Iterable[Results | Frame]) -> PredictSummary:
        try:
            return super().consume(stream)
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._tracks_json is not None:
            self._tracks_json.write("\n]\n")
            self.outputs.append(self._tracks_json.finish())
            self._tracks_json = None
        if self.mot is not None:
            files = list(self._mot_files.values())
            for name, part in files:
                target = self.mot if len(files) == 1 else self.mot.with_name(f"{self.mot.stem}-{name}{self.mot.suffix}")
                self.outputs.append(part.finish(target))
            if not files:  # nothing tracked at all: still an (empty) file, as asked
                self.mot.parent.mkdir(parents=True, exist_ok=True)
                self.mot.write_text("")
                self.outputs.append(self.mot)
            self._mot_files.clear()


def add_cli(subparsers: Any) -> None:
    """Register ``leyolo track``."""
    defaults = TrackerConfig()
    p = subparsers.add_parser(
        "track", help="detect and track objects (ByteTrack, BoT-SORT): annotated video, MOT rows, json",
        description=__doc__.split("\n\n")[0] + " Defaults are Ultralytics' bytetrack.yaml / botsort.yaml.")
    p.add_argument("--model", "-m", required=True, help="registered name, .pt, .safetensors or an export")
    p.add_argument("--source", "-s", required=True,
                   help="video, folder of frames, glob, webcam index (0), stream URL (rtsp/rtmp/http) or .streams list")
    p.add_argument("--tracker", default="bytetrack", choices=list(TRACKERS),
                   help="bytetrack, or botsort (adds camera-motion compensation for moving cameras)")
    p.add_argument("--conf", type=float,
                   help=f"detection score threshold (default: --track-low, {defaults.track_low_thresh}: "
                        "ByteTrack uses low-score boxes too)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--imgsz", type=int, help="longest image side fed to the network (default: model's)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per frame (default 300)")
    p.add_argument("--classes", type=int, nargs="+", help="track only these class indices")
    p.add_argument("--batch", type=int, help="frames per forward pass (default 1; the stream count for .streams)")
    p.add_argument("--vid-stride", type=int, default=1, help="keep every n-th video/stream frame (default 1)")
    p.add_argument("--track-high", type=float, default=defaults.track_high_thresh,
                   help=f"first association: detections scoring at least this (default {defaults.track_high_thresh})")
    p.add_argument("--track-low", type=float, default=defaults.track_low_thresh,
                   help=f"second association: detections above this (default {defaults.track_low_thresh})")
    p.add_argument("--new-track", type=float, default=defaults.new_track_thresh,
                   help=f"score that starts a new track (default {defaults.new_track_thresh})")
    p.add_argument("--track-buffer", type=int, default=defaults.track_buffer,
                   help=f"frames a lost track is kept, at 30 fps (default {defaults.track_buffer})")
    p.add_argument("--match-thresh", type=float, default=defaults.match_thresh,
                   help=f"largest IoU distance of a first-stage match (default {defaults.match_thresh})")
    p.add_argument("--no-fuse-score", action="store_true", help="match on IoU alone, not IoU x score")
    p.add_argument("--gmc", default=defaults.gmc_method, choices=["sparseOptFlow", "ecc", "none"],
                   help=f"botsort camera-motion compensation (default {defaults.gmc_method})")
    p.add_argument("--save-mot", type=Path, metavar="FILE",
                   help="write MOTChallenge rows frame,id,x,y,w,h,score,-1,-1,-1 (frames from 1, original pixels)")
    p.add_argument("--save-json", action="store_true", help="write <save-dir>/tracks.json (boxes with track ids)")
    p.add_argument("--save-dir", type=Path, help="where outputs go (default: runs/track, numbered if it exists)")
    p.add_argument("--no-save", action="store_true", help="do not write annotated videos/images")
    p.add_argument("--backend", default="auto", choices=list(BACKEND_CHOICES), help="inference engine (default auto)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for the runtime (default: the CPUs this process may use)")
    p.set_defaults(handler=cmd_track)


def cmd_track(args: argparse.Namespace) -> int:
    from ..api import load
    from ..errors import LeyoloError
    from ..inference.live import LiveSource, open_source

    for name in ("batch", "vid_stride", "imgsz", "max_det", "threads", "track_buffer"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LeyoloError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    detector = load(args.model)
    config: dict[str, Any] = dict(
        track_high_thresh=args.track_high, track_low_thresh=args.track_low, new_track_thresh=args.new_track,
        track_buffer=args.track_buffer, match_thresh=args.match_thresh, fuse_score=not args.no_fuse_score,
        gmc_method=args.gmc, iou=args.iou, max_det=args.max_det, batch=args.batch or 1,
        imgsz=args.imgsz or detector.meta.imgsz,
    )
    if args.conf is not None:
        config["conf"] = args.conf
    if args.classes:
        config["classes"] = tuple(args.classes)
    quiet = getattr(args, "quiet", False)
    frames = open_source(args.source, vid_stride=args.vid_stride)
    if isinstance(frames, LiveSource) and args.batch is None:
        config["batch"] = len(frames)  # one frame of each stream per forward pass
    source = Path(str(args.source))
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:  # the lost-track buffer counts real time
        config["frame_rate"] = video_fps(source) / args.vid_stride
    stream = detector.track(frames, tracker=args.tracker, backend=args.backend, device=args.device,
                            threads=args.threads, **config)
    wants_dir = not args.no_save or args.save_json
    save_dir = (args.save_dir or next_free_dir(Path("runs/track"))) if wants_dir else None
    writer = TrackWriter(save_dir, str(args.source), save_images=not args.no_save, mot=args.save_mot,
                         save_json=args.save_json, quiet=quiet, vid_stride=args.vid_stride,
                         fps=getattr(frames, "fps", None))
    summary = writer.consume(stream)
    count = summary.images
    tracks = sum(len(ids) for ids in writer.ids.values())
    rate = f", {summary.seconds / count * 1e3:.1f} ms/frame (tracker {writer.track_seconds / count * 1e3:.2f})" \
        if count else ""
    if summary.failed:
        print(f"{len(summary.failed)} unreadable file(s) or lost stream(s) skipped (listed above)", file=sys.stderr)
    print(f"{count} frames, {tracks} tracks, {writer.boxes} tracked boxes{rate}")
    if isinstance(frames, LiveSource):
        for stats in frames.stats():
            if stats["dropped"]:
                print(f"{stats['source']}: {stats['read']} frames read, {stats['dropped']} skipped to keep up "
                      f"(the model is slower than the source)")
    for path in [*summary.videos, *writer.outputs]:
        print(f"wrote {path}")
    if summary.save_dir is not None and summary.save_dir.exists():
        print(f"results saved to {summary.save_dir}")
    return 1 if summary.failed else 0
