"""Live sources (webcams, streams, .streams lists) and video output, without cameras or the network.

Webcams and streams are tested with a fake capture (``FakeCapture``: OpenCV's ``VideoCapture``
interface over generated frames, with drops and failed reopens on demand) and, where an ``ffmpeg``
binary is installed (Debian: ``apt-get install ffmpeg``), with a real HTTP stream that ffmpeg
serves on 127.0.0.1 and restarts, to see a reconnect. Without ffmpeg those tests skip and the
video writer falls back to MJPG ``.avi`` (tested both ways: ``LEYOLO_FFMPEG=0`` forces the fallback).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from leyolo.api import Detector
from leyolo.cli import main
from leyolo.errors import LeyoloError
from leyolo.inference import live
from leyolo.inference.live import LiveSource, is_live, mask_url, open_source, read_streams_file
from leyolo.inference.sources import iter_frames
from leyolo.inference.writers import VideoSink, ffmpeg_binary
from leyolo.models.base import ModelMeta

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg binary (Debian: apt-get install ffmpeg)")


def numbered(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A frame that says which it is: pixel (0, 0) holds i % 256, (0, 1) holds i // 256."""
    img = np.full((h, w, 3), 90, np.uint8)
    img[0, 0], img[0, 1] = i % 256, i // 256
    return img


def number_of(img: np.ndarray) -> int:
    return int(img[0, 0, 0]) + 256 * int(img[0, 1, 0])


class FakeCapture:
    """``cv2.VideoCapture`` stand-in: ``frames`` frames (None: endless) at ``delay`` seconds each,
    numbered from ``start``; ``opened=False`` never opens."""

    def __init__(self, frames: int | None = None, start: int = 0, delay: float = 0.0, opened: bool = True,
                 fps: float = 25.0):
        self.left, self.n, self.delay, self.opened, self.fps = frames, start, delay, opened, fps
        self.grabs = self.decodes = 0
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened and not self.released

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def grab(self) -> bool:
        if not self.isOpened() or self.left == 0:
            return False
        if self.delay:
            time.sleep(self.delay)
        self.grabs += 1
        self.n += 1
        if self.left is not None:
            self.left -= 1
        return True

    def retrieve(self):
        self.decodes += 1
        return True, numbered(self.n - 1)

    def read(self):
        return (True, self.retrieve()[1]) if self.grab() else (False, None)

    def release(self) -> None:
        self.released = True


class Factory:
    """Hands out the captures given, in order, then ones that do not open; remembers what it was asked."""

    def __init__(self, *captures: FakeCapture):
        self.captures = list(captures)
        self.asked: list = []

    def __call__(self, source):
        self.asked.append(source)
        return self.captures.pop(0) if self.captures else FakeCapture(opened=False)


# -- parsing ------------------------------------------------------------------------------------------------------


def test_what_counts_as_live(tmp_path):
    assert is_live(0) and is_live("1") and is_live("rtsp://127.0.0.1:8554/cam") and is_live("RTMP://host/app")
    assert is_live("http://127.0.0.1:8080/feed.mjpg") and is_live("list.streams")
    assert not is_live("video.mp4") and not is_live(str(tmp_path)) and not is_live("images/*.jpg")
    assert mask_url("rtsp://admin:secret@10.0.0.5/h264") == "rtsp://admin:***@10.0.0.5/h264"
    assert mask_url("http://host/x") == "http://host/x"
    listing = tmp_path / "cams.streams"
    listing.write_text("# my cameras\n0  # the laptop's\n\nrtsp://user:pw@127.0.0.1:8554/a  # door\nhttp://127.0.0.1/b#frag\n")
    assert read_streams_file(listing) == [0, "rtsp://user:pw@127.0.0.1:8554/a", "http://127.0.0.1/b#frag"]
    (tmp_path / "empty.streams").write_text("# nothing\n")
    with pytest.raises(LeyoloError, match="lists no sources"):
        read_streams_file(tmp_path / "empty.streams")
    with pytest.raises(LeyoloError, match="vid-stride"):
        open_source("0", vid_stride=0)


# -- fake captures ------------------------------------------------------------------------------------------------


def test_webcam_index_reads_every_frame_when_the_consumer_keeps_up():
    factory = Factory(FakeCapture(frames=20, delay=0.002))
    source = open_source("0", capture_factory=factory, reconnect=0, buffer=64)
    assert isinstance(source, LiveSource) and len(source) == 1
    frames = list(source)
    assert factory.asked[0] == 0, "a digit source opens the webcam by index"
    good = [f for f in frames if f.image is not None]
    assert [f.frame for f in good] == list(range(20)) and [number_of(f.image) for f in good] == list(range(20))
    assert all(f.path == "webcam0" for f in frames)
    assert frames[-1].image is None and "giving up" in frames[-1].error, "the end of a webcam is reported"


def test_slow_consumer_gets_the_latest_frame_and_memory_stays_bounded():
    capture = FakeCapture(frames=300, delay=0.001)
    source = LiveSource([0], capture_factory=Factory(capture), reconnect=0)  # buffer=1: latest frame only
    seen = []
    for frame in source:
        if frame.image is None:
            break
        seen.append(frame.frame)
        assert len(source.readers[0].frames) <= 1
        time.sleep(0.02)  # a model 20x slower than the camera
    stats = source.stats()[0]
    assert stats["read"] == 300 and stats["dropped"] > 200, stats
    assert len(seen) < 100 and seen == sorted(seen) and seen[-1] >= 290, "frames are recent and in order"
    assert capture.released


def test_vid_stride_decodes_only_the_kept_frames():
    capture = FakeCapture(frames=30)
    frames = [f for f in LiveSource([0], vid_stride=3, buffer=64, capture_factory=Factory(capture), reconnect=0)
              if f.image is not None]
    assert [f.frame for f in frames] == list(range(0, 30, 3)) == [number_of(f.image) for f in frames]
    assert capture.decodes == 10 and capture.grabs == 30


def test_vid_stride_on_video_files(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    frames = list(iter_frames([path], vid_stride=4))
    assert [f.frame for f in frames] == [0, 4, 8]
    assert [int(f.image.mean() / 20 + 0.5) for f in frames] == [0, 4, 8]
    assert [f.frame for f in open_source(str(path), vid_stride=4)] == [0, 4, 8]


def test_a_dropped_stream_reconnects_then_gives_up_with_a_clear_message(caplog):
    url = "rtsp://user:secret@127.0.0.1:8554/cam"
    factory = Factory(FakeCapture(frames=5), FakeCapture(opened=False), FakeCapture(frames=4, start=100))
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        frames = list(LiveSource([url], buffer=64, reconnect=2, retry_delay=0.01, capture_factory=factory))
    good = [f for f in frames if f.image is not None]
    assert [number_of(f.image) for f in good] == [0, 1, 2, 3, 4, 100, 101, 102, 103]
    assert [f.frame for f in good] == list(range(9)), "the frame counter runs on across reconnects"
    assert len(factory.asked) == 6  # first open, a failed reopen, a good one, then 3 failures (2 retries)
    error = frames[-1]
    assert error.image is None and error.path == "rtsp://user:***@127.0.0.1:8554/cam"
    assert "cannot reopen the stream after 3 attempt(s); giving up after 9 frames" in error.error
    text = caplog.text
    assert "stream dropped after 5 frames; reconnecting" in text and "retrying in" in text
    assert "secret" not in text and "secret" not in error.error, "passwords stay out of messages"


def test_streams_list_reads_every_source_in_turn(tmp_path):
    listing = tmp_path / "two.streams"
    listing.write_text("0\nrtsp://127.0.0.1:9/x\n")
    captures = {0: FakeCapture(frames=6, delay=0.003), "rtsp://127.0.0.1:9/x": FakeCapture(frames=6, start=50,
                                                                                             delay=0.003)}
    source = open_source(str(listing), buffer=16, reconnect=0, capture_factory=lambda s: captures[s])
    assert isinstance(source, LiveSource) and len(source) == 2
    frames = [f for f in source if f.image is not None]
    by_source = {p: [number_of(f.image) for f in frames if f.path == p] for p in ("webcam0", "rtsp://127.0.0.1:9/x")}
    assert by_source == {"webcam0": list(range(6)), "rtsp://127.0.0.1:9/x": list(range(50, 56))}
    assert source.fps("webcam0") == 25.0


def test_a_source_that_never_opens_is_an_error_frame_not_a_hang():
    start = time.perf_counter()
    frames = list(LiveSource([3], reconnect=1, retry_delay=0.01, capture_factory=Factory()))
    assert time.perf_counter() - start < 5
    assert len(frames) == 1 and frames[0].image is None and "webcam3: cannot open the stream" in frames[0].error


def test_stopping_early_releases_the_capture():
    capture = FakeCapture(frames=None, delay=0.001)  # endless
    source = LiveSource([0], capture_factory=Factory(capture))
    for i, frame in enumerate(source):
        if i == 3:
            break
    for _ in range(100):
        if capture.released:
            break
        time.sleep(0.01)
    assert capture.released and not source.readers[0]._thread.is_alive()


# -- video output ---------------------------------------------------------------------------------------------------


def _count(path: Path) -> tuple[int, tuple[int, int], str]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape[:2]
    cap.release()
    return n, shape, fourcc


@pytest.mark.parametrize("encoder", ["ffmpeg", "opencv"])
def test_video_sink_writes_every_frame(tmp_path, monkeypatch, encoder):
    if encoder == "ffmpeg" and FFMPEG is None:
        pytest.skip("no ffmpeg binary (Debian: apt-get install ffmpeg)")
    monkeypatch.setenv("LEYOLO_FFMPEG", "ffmpeg" if encoder == "ffmpeg" else "0")
    sink = VideoSink(tmp_path / "out", 12.0, (161, 121))  # odd sizes: both encoders need even ones (padded)
    for i in range(17):
        sink.write(np.full((121, 161, 3), 10 * i, np.uint8))
    sink.write(np.zeros((60, 80, 3), np.uint8))  # another size (a stream that reconnected): resized
    path = sink.close()
    n, shape, fourcc = _count(path)
    assert n == 18 and sink.frames == 18
    if encoder == "ffmpeg":
        assert path.name == "out.mp4" and fourcc.lower() in ("avc1", "h264") and shape == (122, 162)
    else:
        assert path.name == "out.avi" and fourcc == "MJPG" and shape == (122, 162)
    assert not list(tmp_path.glob(".*")), "no partial file left"


def test_ffmpeg_binary_follows_the_environment(monkeypatch):
    monkeypatch.setenv("LEYOLO_FFMPEG", "0")
    assert ffmpeg_binary() is None
    monkeypatch.delenv("LEYOLO_FFMPEG")
    assert ffmpeg_binary() == FFMPEG


class FlatBackend:
    """One fixed box per image (in letterboxed pixels): a detector whose output is known."""

    name = "flat"
    end_to_end = False

    def __call__(self, batch):
        out = np.zeros((batch.shape[0], 5, 1), np.float32)
        out[:, :4, 0] = [8, 8, 40, 40]
        out[:, 4, 0] = 0.9
        return out


class FlatDetector(Detector):
    def __init__(self):
        super().__init__(meta=ModelMeta("flat", ["thing"], imgsz=64), export_path=Path("flat.onnx"),
                         export_format="onnx")

    def backend(self, *args, **kwargs):
        return FlatBackend()


@pytest.mark.parametrize("encoder", ["ffmpeg", "opencv"])
def test_predict_video_output_plays_with_every_frame(tmp_path, monkeypatch, capsys, encoder):
    if encoder == "ffmpeg" and FFMPEG is None:
        pytest.skip("no ffmpeg binary (Debian: apt-get install ffmpeg)")
    monkeypatch.setenv("LEYOLO_FFMPEG", "ffmpeg" if encoder == "ffmpeg" else "0")
    monkeypatch.setattr("leyolo.api.load", lambda *a, **k: FlatDetector())
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for i in range(11):
        writer.write(np.full((64, 96, 3), 10 + 10 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    rc = main(["predict", "--model", "flat", "--source", str(clip), "--save-dir", str(out), "--vid-stride", "2",
               "--save-txt", "-q"])
    assert rc == 0, capsys.readouterr().err
    video = out / ("clip.mp4" if encoder == "ffmpeg" else "clip.avi")
    n, _, fourcc = _count(video)
    assert n == 6 and fourcc.lower() in (("avc1", "h264") if encoder == "ffmpeg" else ("mjpg",))
    assert sorted(p.name for p in (out / "labels").glob("*.txt")) == sorted(f"clip_{i}.txt" for i in range(0, 11, 2))
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0, abs=0.01), "the frame rate follows --vid-stride"
    cap.release()


def test_predict_and_track_on_a_webcam(tmp_path, monkeypatch, capsys):
    """``--source 0`` through the commands, the webcam faked: annotated video and MOT rows, every frame."""
    monkeypatch.setattr("leyolo.api.load", lambda *a, **k: FlatDetector())
    original = live.LiveSource.__init__

    def quick(self, sources, **kw):  # a 12-frame camera that cannot be reopened; no waits between attempts
        assert sources == [0]
        kw.update(reconnect=0, retry_delay=0.0, buffer=64, capture_factory=Factory(FakeCapture(frames=12, delay=0.01)))
        original(self, sources, **kw)

    monkeypatch.setattr(live.LiveSource, "__init__", quick)
    out = tmp_path / "p"
    rc = main(["predict", "--model", "flat", "--source", "0", "--save-dir", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "webcam0" in err and "giving up" in err, "the end of the camera is reported as lost"
    video = next(out.glob("webcam0.*"))
    assert _count(video)[0] == 12
    out = tmp_path / "t"
    rc = main(["track", "--model", "flat", "--source", "0", "--save-dir", str(out), "--save-mot", str(out / "m.txt"),
               "-q"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "12 frames, 1 tracks" in captured.out and "webcam0" in captured.err
    rows = [line.split(",") for line in (out / "m.txt").read_text().splitlines()]
    assert [int(r[0]) for r in rows] == list(range(1, 13)) and {r[1] for r in rows} == {"1"}
    assert _count(next(out.glob("webcam0.*")))[0] == 12


# -- a real stream on 127.0.0.1 ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(clip: Path, port: int, frames: int) -> subprocess.Popen:
    """ffmpeg serving ``frames`` frames of ``clip`` as an MJPEG HTTP stream to one client, in real time."""
    return subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip), "-frames:v",
                             str(frames), "-c:v", "mjpeg", "-q:v", "4", "-f", "mpjpeg", "-listen", "1",
                             f"http://127.0.0.1:{port}/feed.mjpg"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@needs_ffmpeg
def test_http_stream_from_a_local_ffmpeg_server_with_a_restart(tmp_path, caplog):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for i in range(40):
        frame = np.full((120, 160, 3), 60, np.uint8)
        cv2.rectangle(frame, (4 * i, 30), (4 * i + 30, 90), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/feed.mjpg"
    servers = [_serve(clip, port, 15)]

    def restart() -> None:  # the server goes away after 15 frames and comes back with 15 more
        servers[0].wait(timeout=30)
        servers.append(_serve(clip, port, 15))

    threading.Thread(target=restart, daemon=True).start()
    time.sleep(0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="leyolo"):
            source = LiveSource([url], buffer=64, reconnect=20, retry_delay=0.2)
            frames = list(source)
    finally:
        for server in servers:
            server.kill()
            server.wait()
    good = [f for f in frames if f.image is not None]
    assert len(good) >= 24, f"frames from both server runs ({len(good)})"
    assert good[0].image.shape == (120, 160, 3) and good[0].path == url
    assert [f.frame for f in good] == sorted(f.frame for f in good)
    assert source.stats()[0]["reconnects"] >= 1 and "stream dropped after" in caplog.text
    assert frames[-1].image is None and "giving up" in frames[-1].error
