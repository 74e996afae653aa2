"""Live sources: webcams, network streams and ``.streams`` lists, with bounded memory and reconnects.

``open_source(source)`` is what ``--source`` means everywhere: a webcam index (``0``), a stream URL
(``rtsp://``, ``rtmp://``, ``http(s)://``, ``tcp://``, ``udp://``, ``srt://``), a ``.streams`` text
file (one webcam index or URL a line, ``#`` comments; read together, frame by frame in turn, so
that same-sized frames batch), else files, folders, globs and videos (``sources.iter_frames``).

Each live source is read by its own thread, as fast as it delivers, into a buffer of ``buffer``
frames (default 1: the latest frame). When the model is slower than the camera, older frames are
dropped rather than queued, so memory stays bounded and results stay current; ``buffer > 1``
keeps short bursts, still dropping the oldest beyond it. ``vid_stride`` keeps every n-th frame
(the others are grabbed, not decoded). ``Frame.frame`` counts the source's frames, gaps included.

A stream that stops delivering (network drop, camera unplugged, server restart) is reopened up to
``reconnect`` times, ``retry_delay`` seconds apart, with a warning each time; one that cannot be
reopened ends with an error ``Frame`` saying so. A finite file served over HTTP that reaches its
end (its frame count is known) simply ends. Passwords in URLs are masked in names and messages.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2

from ..errors import LeyoloError
from .sources import Frame, iter_frames, resolve_source

log = logging.getLogger("leyolo")

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "srt", "rtp")
STREAMS_SUFFIX = ".streams"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_stream_url(text: str) -> bool:
    match = _SCHEME.match(text)
    return bool(match) and match.group(1).lower() in STREAM_SCHEMES


def is_live(source: Any) -> bool:
    """A webcam index, a stream URL or a ``.streams`` list (as opposed to files)."""
    if isinstance(source, int) and not isinstance(source, bool):
        return True
    text = str(source).strip()
    if text.isdigit():
        return not Path(text).exists()  # a folder or file named "2024" is a path, not webcam 2024
    return is_stream_url(text) or text.lower().endswith(STREAMS_SUFFIX)


def mask_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/:@]*):[^/@]*@", r"\1:***@", url)


def read_streams_file(path: str | Path) -> list[int | str]:
    """The sources of a ``.streams`` list: webcam indices as ints, URLs as strings."""
    path = Path(path)
    if not path.is_file():
        raise LeyoloError(f"{path}: no such .streams file")
    entries: list[int | str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        # comments: whole lines, or after " #"; a URL keeps a "#" of its own (a fragment)
        line = line.split(" #", 1)[0].strip() if is_stream_url(line) else line.split("#", 1)[0].strip()
        if line:
            entries.append(int(line) if line.isdigit() else line)
    if not entries:
        raise LeyoloError(f"{path}: lists no sources (one webcam index or stream URL a line)")
    return entries


def source_name(source: int | str) -> str:
    """The ``Frame.path`` of a live source: ``webcam0`` for index 0, else the (masked) URL."""
    return f"webcam{source}" if isinstance(source, int) else mask_url(str(source))


TIMEOUT_MS = 5000  # OpenCV's FFmpeg backend: give up opening or reading a silent stream after this


def open_capture(source: int | str) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of a webcam index or URL; URLs through FFmpeg with open and read timeouts,
    so that a stalled stream counts as dropped instead of blocking forever."""
    if isinstance(source, int):
        return cv2.VideoCapture(source)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, TIMEOUT_MS]
    try:
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    except (cv2.error, TypeError):  # an OpenCV without these properties
        return cv2.VideoCapture(source)


class StreamReader:
    """Reads one capture in a thread into a bounded deque; reopens it when it drops.

    ``capture_factory(source)`` returns an object with OpenCV's ``VideoCapture`` interface
    (``isOpened``, ``grab``, ``retrieve``, ``read``, ``get``, ``release``); tests pass a fake one.
    """

    def __init__(self, source: int | str, *, buffer: int = 1, vid_stride: int = 1, reconnect: int = 5,
                 retry_delay: float = 1.0, capture_factory: Callable[[Any], Any] | None = None,
                 wake: threading.Condition | None = None) -> None:
        self.source = source
        self.name = source_name(source)
        self.frames: deque = deque(maxlen=buffer)
        self.vid_stride, self.reconnect, self.retry_delay = vid_stride, reconnect, retry_delay
        self.factory = capture_factory or open_capture
        self.wake = wake or threading.Condition()
        self.stop = threading.Event()
        self.done = False
        self.error: str | None = None
        self.fps: float | None = None
        self.read = 0  # frames taken from the source (decoded)
        self.dropped = 0  # decoded frames pushed out of the buffer before anyone took them
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"leyolo-{self.name}", daemon=True)

    def start(self) -> "StreamReader":
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self._thread.join(timeout)

    def _open(self) -> Any:
        capture = self.factory(self.source)
        if capture is not None and capture.isOpened():
            return capture
        if capture is not None:
            capture.release()
        return None

    def _push(self, index: int, image: Any) -> None:
        with self.wake:
            if len(self.frames) == self.frames.maxlen:
                self.dropped += 1
            self.frames.append((index, image))
            self.wake.notify_all()

    def _run(self) -> None:
        index = 0  # the source's frame counter, across reconnects
        failures = 0
        try:
            while not self.stop.is_set():
                capture = self._open()
                if capture is None:
                    failures += 1
                    what = "cannot open" if self.read == 0 else "cannot reopen"
                    if failures > self.reconnect:
                        self.error = (f"{self.name}: {what} the stream after {failures} attempt(s); "
                                      f"giving up" + (f" after {self.read} frames" if self.read else ""))
                        break
                    log.warning("%s: %s the stream; retrying in %.1fs (attempt %d/%d)", self.name, what,
                                self.retry_delay, failures, self.reconnect)
                    self.stop.wait(self.retry_delay)
                    continue
                fps = capture.get(cv2.CAP_PROP_FPS)
                self.fps = fps if fps and 0 < fps < 1000 else self.fps
                total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                got_one = False
                try:
                    while not self.stop.is_set():
                        if index % self.vid_stride:
                            ok = capture.grab()
                        else:
                            ok, image = capture.read()
                            ok = bool(ok) and image is not None
                            if ok:
                                self._push(index, image)
                                self.read += 1
                        if not ok:
                            break
                        got_one = True
                        failures = 0
                        index += 1
                finally:
                    capture.release()
                if self.stop.is_set():
                    break
                if total > 0 and index >= total - 1:  # a finite file (over http, say) that reached its end
                    break
                if not got_one:
                    failures += 1
                if failures > self.reconnect:
                    self.error = f"{self.name}: the stream delivers no frames; giving up after {failures} attempt(s)"
                    break
                self.reconnects += 1
                if got_one:
                    log.warning("%s: stream dropped after %d frames; reconnecting", self.name, index)
                else:
                    log.warning("%s: the stream opened but delivered no frames; retrying in %.1fs (attempt %d/%d)",
                                self.name, self.retry_delay, failures, self.reconnect)
                    self.stop.wait(self.retry_delay)
        except Exception as exc:  # a capture that raises: end this stream with its reason
            self.error = f"{self.name}: {exc}"
        finally:
            with self.wake:
                self.done = True
                self.wake.notify_all()


class LiveSource:
    """Frames from one or more live sources, in turn; iterate once.

    Args:
        sources: webcam indices and/or stream URLs.
        buffer: frames kept per source while the consumer is busy (1: the latest only).
        vid_stride: keep every n-th frame of each source.
        reconnect: reopen attempts after a drop before giving up on a source.
        retry_delay: seconds between attempts.
        capture_factory: ``open_capture`` unless given (tests pass a fake).

    ``live`` tells the predictor not to queue frames ahead: the readers already keep the latest.
    """

    live = True

    def __init__(self, sources: Iterable[int | str], *, buffer: int = 1, vid_stride: int = 1, reconnect: int = 5,
                 retry_delay: float = 1.0, capture_factory: Callable[[Any], Any] | None = None) -> None:
        self.sources = list(sources)
        if not self.sources:
            raise LeyoloError("no live sources given")
        if buffer < 1:
            raise LeyoloError(f"stream buffer must hold at least 1 frame, got {buffer}")
        if vid_stride < 1:
            raise LeyoloError(f"--vid-stride must be at least 1, got {vid_stride}")
        self.wake = threading.Condition()
        self.readers = [StreamReader(s, buffer=buffer, vid_stride=vid_stride, reconnect=reconnect,
                                     retry_delay=retry_delay, capture_factory=capture_factory, wake=self.wake)
                        for s in self.sources]
        self._started = False

    def __len__(self) -> int:
        return len(self.readers)

    def fps(self, name: str) -> float | None:
        """The frame rate a source reported (``None`` if it said nothing usable)."""
        return next((r.fps for r in self.readers if r.name == name), None)

    def stats(self) -> list[dict[str, Any]]:
        return [{"source": r.name, "read": r.read, "dropped": r.dropped, "reconnects": r.reconnects,
                 "error": r.error} for r in self.readers]

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise LeyoloError("a live source can be iterated only once")
        self._started = True
        for reader in self.readers:
            reader.start()
        reported: set[int] = set()
        try:
            while True:
                batch: list[Frame] = []
                with self.wake:
                    while True:
                        ready = [r for r in self.readers if r.frames]
                        failed = [i for i, r in enumerate(self.readers) if r.done and r.error and i not in reported]
                        if ready or failed or all(r.done for r in self.readers):
                            break
                        self.wake.wait(0.5)
                    for reader in self.readers:  # one frame from each source with one, in order: a batch
                        if reader.frames:
                            index, image = reader.frames.popleft()
                            batch.append(Frame(reader.name, image, frame=index))
                    for i in failed:
                        reported.add(i)
                        batch.append(Frame(self.readers[i].name, None, error=self.readers[i].error))
                    finished = not batch and all(r.done for r in self.readers)
                yield from batch
                if finished:
                    return
        finally:
            for reader in self.readers:
                reader.stop.set()
            for reader in self.readers:
                reader.close()


def open_source(source: Any, *, vid_stride: int = 1, buffer: int = 1, reconnect: int = 5, retry_delay: float = 1.0,
                capture_factory: Callable[[Any], Any] | None = None) -> Iterable[Frame]:
    """Frames of any ``--source``: live (``LiveSource``) or files (``iter_frames``)."""
    if vid_stride < 1:
        raise LeyoloError(f"--vid-stride must be at least 1, got {vid_stride}")
    if isinstance(source, (list, tuple)):
        if not source:
            raise LeyoloError("no sources given")
        if not all(is_live(s) for s in source):
            return iter_frames([f for s in source for f in resolve_source(s)], vid_stride)
        entries = [int(str(s).strip()) if str(s).strip().isdigit() else str(s) for s in source]
    elif is_live(source):
        text = str(source).strip()
        if text.lower().endswith(STREAMS_SUFFIX) and not is_stream_url(text):
            entries = read_streams_file(text)
        else:
            entries = [int(text) if text.isdigit() else text]
    else:
        return iter_frames(resolve_source(source), vid_stride)
    return LiveSource(entries, buffer=buffer, vid_stride=vid_stride, reconnect=reconnect, retry_delay=retry_delay,
                      capture_factory=capture_factory)
