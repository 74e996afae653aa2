"""``leyolo serve``: answers equal ``leyolo predict``'s, micro-batching, limits, metrics, a real process, Triton.

The model is a ``leyolo-n`` with random BatchNorm statistics and a scaled-up head (``noisy_weights``):
untrained, it still puts tens of boxes of varied sizes and scores on any image at 128 px, so
equality with ``leyolo predict`` compares real detections without training anything. Unit
tests use FastAPI's TestClient; the ``server`` fixture starts ``python -m leyolo serve`` on a
free loopback port and talks to it with httpx.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_data import NANO, VAL_IMAGES, needs_shared, randomise_batchnorm, synthetic_image

pytest.importorskip("fastapi", reason="leyolo serve needs its extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from fastapi.testclient import TestClient  # noqa: E402

import leyolo  # noqa: E402
from leyolo.cli import main  # noqa: E402
from leyolo.coco import category_ids  # noqa: E402
from leyolo.tools.serve.app import create_app  # noqa: E402
from leyolo.tools.serve.batching import MicroBatcher, QueueFull  # noqa: E402
from leyolo.tools.serve.config import ServeConfig  # noqa: E402
from leyolo.tools.serve.uploads import image_size  # noqa: E402

IMGSZ = 128
SHAPES = ((360, 480), (480, 360), (300, 500))  # (h, w): three letterbox shapes at 128 px


# -- helpers shared with test_serve_browser.py ------------------------------------------------------

def make_noisy_weights(path: Path) -> Path:
    """An untrained ``leyolo-n`` that detects something everywhere (see the module docstring)."""
    import torch

    torch.manual_seed(0)
    detector = leyolo.load("leyolo-n")
    randomise_batchnorm(detector.model, 0)
    with torch.no_grad():
        for name, p in detector.model.named_parameters():
            if name.startswith("head.") and name.endswith(".3.weight"):
                p.mul_(5)
            if name.startswith("head.cls.") and name.endswith(".3.bias"):
                p.fill_(-2)
    return detector.save(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m leyolo serve`` on a free 127.0.0.1 port, ready (``/readyz``) when constructed."""

    def __init__(self, weights: Path, log: Path, *extra: str, timeout: float = 180) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "leyolo", "serve", "--model", str(weights), "--imgsz", str(IMGSZ),
               "--port", str(self.port), "--threads", "1", *extra]
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"leyolo serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"leyolo serve not ready in {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width x height`` zeros: a few kB that decode to ``width * height * 3`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pack = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_noisy_weights(tmp_path_factory.mktemp("serve-model") / "noisy.safetensors")


@pytest.fixture(scope="module")
def detector(weights):
    return leyolo.load(weights)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Three JPEGs of different shapes, named like COCO files (numeric stems -> image ids 1, 2, 3)."""
    folder = tmp_path_factory.mktemp("serve-images")
    paths = []
    for i, (h, w) in enumerate(SHAPES):
        path = folder / f"{i + 1:012d}.jpg"
        assert cv2.imwrite(str(path), synthetic_image(i, h, w))
        paths.append(path)
    return paths


def wait_ready(client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(detector):
    config = ServeConfig(model="noisy", imgsz=IMGSZ, threads=1, max_body_mb=4, max_pixels=4_000_000, max_images=4)
    with TestClient(create_app(config, detector)) as c:
        wait_ready(c)
        yield c


def detect(client, data: bytes, content_type: str = "image/jpeg", **params):
    return client.post("/v1/detect", content=data, headers={"content-type": content_type}, params=params)


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def as_coco(answer: dict, image_id: int, names: list[str]) -> list[tuple]:
    ids = category_ids(names)
    return [(image_id, ids[d["class_id"]], d["box"][0], d["box"][1], d["box"][2] - d["box"][0],
             d["box"][3] - d["box"][1], d["score"]) for d in answer["detections"]]


def assert_same(ours: list[tuple], theirs: list[tuple], box_tol: float = 2e-3) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a[:2] == b[:2]
        assert np.allclose(a[2:6], b[2:6], atol=box_tol), (a, b)
        assert abs(a[6] - b[6]) <= 2e-5, (a, b)


# -- answers equal leyolo predict's ---------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, {"conf": "0.3", "iou": "0.5", "max_det": "12"}, {"classes": "38,40"},
                                    {"imgsz": "160"}], ids=["defaults", "thresholds", "classes", "imgsz"])
def test_detect_equals_leyolo_predict(client, weights, image_files, detector, tmp_path, params, capsys):
    compare_with_predict(client, weights, image_files, detector.names, params, tmp_path)


@needs_shared
def test_published_nano_on_coco_photos_equals_leyolo_predict(tmp_path, capsys):
    """The same check with real detections: the published nano on coco-mini photos (kept small: 160 px)."""
    files = sorted(VAL_IMAGES.glob("*.jpg"))[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, src in enumerate(files, start=1):
        (folder / f"{i:012d}.jpg").write_bytes(src.read_bytes())
    nano = leyolo.load(NANO)
    with TestClient(create_app(ServeConfig(model=str(NANO), imgsz=160, threads=1), nano)) as c:
        wait_ready(c)
        compare_with_predict(c, NANO, sorted(folder.glob("*.jpg")), nano.names, {"imgsz": "160"}, tmp_path)


def compare_with_predict(client, weights, image_files, names, params, tmp_path) -> None:
    """Every image through ``/v1/detect`` (raw body and form) == ``leyolo predict --save-json`` on the folder."""
    settings = {"conf": 0.25, **{k: v for k, v in params.items() if k != "classes"}}
    argv = ["predict", "--model", str(weights), "--source", str(image_files[0].parent), "--save-json", "--no-save",
            "--save-dir", str(tmp_path / "predict"), "--imgsz", params.get("imgsz", str(IMGSZ)), "-q"]
    for key in ("conf", "iou", "max_det"):
        if key in settings:
            argv += [f"--{key.replace('_', '-')}", str(settings[key])]
    assert main(argv) == 0
    reference = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    keep = {int(c) for c in params["classes"].split(",")} if "classes" in params else None
    ids = category_ids(names)
    total = 0
    for i, path in enumerate(image_files, start=1):
        data = path.read_bytes()
        raw = detect(client, data, **params)
        form = client.post("/v1/detect", files={"image": (path.name, data, "image/jpeg")}, data=params)
        assert raw.status_code == form.status_code == 200, (raw.text, form.text)
        assert raw.json()["detections"] == form.json()["detections"]
        answer = raw.json()
        h, w = cv2.imread(str(path)).shape[:2]
        assert answer["image"] == {"width": w, "height": h}
        assert set(answer["time_ms"]) >= {"decode", "infer", "post"}
        theirs = [(r["image_id"], r["category_id"], *r["bbox"], r["score"]) for r in reference if r["image_id"] == i]
        if keep is not None:
            theirs = [r for r in theirs if ids.index(r[1]) in keep]
        assert_same(as_coco(answer, i, names), theirs)
        total += len(theirs)
    assert total > 0, "the comparison compared nothing"


def test_batch_endpoint_batches_by_shape_and_matches_single(client, image_files):
    files = [image_files[0], image_files[0], image_files[1], image_files[0]]
    singles = {p: detect(client, p.read_bytes()).json() for p in set(files)}
    r = client.post("/v1/detect/batch", files=[("image", (p.name, p.read_bytes(), "image/jpeg")) for p in files])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["batch_size"] for x in results] == [3, 3, 1, 3]  # same letterbox shape -> one backend call
    for p, answer in zip(files, results):
        ours = as_coco(answer, 0, client.app.state.service.detector.names)
        assert_same(ours, as_coco(singles[p], 0, client.app.state.service.detector.names), box_tol=2e-3)


def test_batcher_policy_oldest_first_same_shape_bounded_queue():
    calls: list[tuple] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        time.sleep(0.02)
        return batch

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=2, max_wait_s=0.05, queue_size=5)
        a, b = np.zeros((1, 3, 32, 64), np.float32), np.zeros((1, 3, 64, 32), np.float32)
        jobs = batcher.submit_many([a, b, a, a, b], timeout_s=5)  # queued before the worker starts
        with pytest.raises(QueueFull):
            batcher.submit_many([a], timeout_s=5)
        batcher.start()
        results = await batcher.wait(jobs)
        # oldest first (a), with the next queued a; then the oldest left (b) with its b; then the last a
        assert [r.size for r in results] == [2, 2, 2, 1, 2]
        assert [r.index for r in results] == [0, 0, 1, 0, 1]
        assert results[0].raw is results[2].raw and results[1].raw is results[4].raw
        batcher.close()

    asyncio.run(scenario())
    assert calls == [(2, 3, 32, 64), (2, 3, 64, 32), (1, 3, 32, 64)]

    async def alone() -> float:  # nothing else on its way: no waiting for company
        batcher = MicroBatcher(run, max_batch=8, max_wait_s=2.0, incoming=lambda: 0)
        batcher.start()
        start = time.perf_counter()
        await batcher.infer([np.zeros((1, 3, 32, 32), np.float32)], timeout_s=5)
        batcher.close()
        return time.perf_counter() - start

    assert asyncio.run(alone()) < 1.0


def test_queue_full_is_503_and_slow_is_504(detector, image_files):
    data = image_files[0].read_bytes()
    config = ServeConfig(model="noisy", imgsz=IMGSZ, threads=1, max_batch=1, queue_size=1, max_images=1, timeout_s=0.4)
    with TestClient(create_app(config, detector)) as c:
        wait_ready(c)
        service = c.app.state.service
        fast = service.batcher.run
        service.batcher.run = lambda blob: (time.sleep(0.3), fast(blob))[1]
        statuses, headers = [], []

        def go() -> None:
            r = detect(c, data)
            statuses.append(r.status_code)
            headers.append(r.headers)

        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 503 in statuses and set(statuses) <= {200, 503, 504}, statuses
        assert all(h.get("retry-after") for s, h in zip(statuses, headers) if s == 503)
        time.sleep(1.0)
        service.batcher.run = lambda blob: (time.sleep(0.8), fast(blob))[1]
        r = detect(c, data)
        assert r.status_code == 504 and "within" in r.json()["error"]
        text = c.get("/metrics").text
        assert metric(text, "leyolo_rejected_total", reason="queue_full") >= 1
        assert metric(text, "leyolo_rejected_total", reason="timeout") >= 1
        service.batcher.run = fast
        time.sleep(1.0)
        assert detect(c, data).status_code == 200  # and it recovers


# -- bad input -----------------------------------------------------------------------------------

def bad_uploads(good: bytes) -> dict[str, tuple[bytes, str, int]]:
    """name -> (body, content type, expected status) for a server with 4 MiB / 4 Mpx limits."""
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    png = encode(noise, ".png")
    fake_header = png[:16] + struct.pack(">II", 100_000, 100_000) + png[24:]
    return {
        "empty": (b"", "image/jpeg", 422),
        "text": (b"definitely not an image\n" * 10, "image/png", 422),
        "html": (b"<html><body>hi</body></html>", "image/jpeg", 422),
        "truncated-jpeg": (good[: len(good) // 2], "image/jpeg", 422),
        "truncated-png": (png[: len(png) // 2], "image/png", 422),
        "corrupt-png": (png[:40] + bytes(4000) + png[-12:], "image/png", 422),
        "header-only": (png[:33], "image/png", 422),
        "bomb-header": (fake_header, "image/png", 413),
        "bomb-real": (png_bomb(6000, 6000), "image/png", 413),
        "gif": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 422),
        "wrong-type": (good, "text/plain", 415),
        "no-type": (good, "", 415),
        "oversized": (bytes(5 * 2**20), "image/jpeg", 413),
    }


def test_bad_uploads_are_one_line_4xx_and_the_server_keeps_answering(client, image_files):
    good = image_files[0].read_bytes()
    for name, (body, ctype, status) in bad_uploads(good).items():
        start = time.perf_counter()
        r = detect(client, body, ctype)
        assert r.status_code == status, (name, r.status_code, r.text)
        error = r.json()["error"]
        assert error and "\n" not in error and "Traceback" not in r.text, (name, r.text)
        assert r.headers["x-request-id"] == r.json()["request_id"]
        if name.startswith("bomb"):  # refused from the header: no 36 Mpx decode happened
            assert time.perf_counter() - start < 1.0, name
    assert detect(client, good).status_code == 200


def test_oversized_chunked_body_is_413(client, image_files):
    def chunks():
        for _ in range(6):
            yield bytes(2**20)

    r = client.post("/v1/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


@pytest.mark.parametrize("query,form,status", [
    ({"conf": "2"}, {}, 422), ({"conf": "nan"}, {}, 422), ({"iou": "x"}, {}, 422), ({"imgsz": "100"}, {}, 422),
    ({"imgsz": "4096"}, {}, 422), ({"max_det": "0"}, {}, 422), ({"classes": "0,80"}, {}, 422),
    ({"classes": "a"}, {}, 422), ({"confidence": "0.5"}, {}, 422), ({}, {"conf": "-1"}, 422),
    ({}, {"junk": "1"}, 422)])
def test_invalid_parameters_are_422(client, image_files, query, form, status):
    data = image_files[0].read_bytes()
    r = client.post("/v1/detect", params=query, files={"image": ("a.jpg", data, "image/jpeg")}, data=form)
    assert r.status_code == status, r.text
    assert "\n" not in r.json()["error"]


def test_malformed_forms(client, image_files):
    data = image_files[0].read_bytes()
    cases = [
        (b"--x\r\nnot a form", "multipart/form-data; boundary=x"),
        (b"whatever", "multipart/form-data"),  # no boundary
    ]
    for body, ctype in cases:
        r = client.post("/v1/detect", content=body, headers={"content-type": ctype})
        assert r.status_code == 422, r.text
    r = client.post("/v1/detect", files={"picture": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 422 and "image" in r.json()["error"]
    r = client.post("/v1/detect", files=[("image", ("a.jpg", data, "image/jpeg"))] * 2)
    assert r.status_code == 422 and "batch" in r.json()["error"]
    r = client.post("/v1/detect/batch", files=[("image", ("a.jpg", data, "image/jpeg"))] * 5)
    assert r.status_code == 422 and "at most 4" in r.json()["error"]
    r = client.post("/v1/detect/batch", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 415


def test_multipart_upload_never_touches_the_file_system(client, monkeypatch):
    """A 3 MB upload: Starlette's own form parser would spool it to a temporary file."""
    image = np.random.default_rng(1).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    data = encode(image, ".png")
    assert len(data) > 2**21

    def refuse(*args, **kwargs):
        raise AssertionError("a request reached the file system")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    r = client.post("/v1/detect", files={"image": ("big.png", data, "image/png")})
    assert r.status_code == 200, r.text


def test_header_sizes_of_every_supported_format():
    image = synthetic_image(3, 97, 133)
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff", ".ppm", ".pgm", ".jp2"):
        data = encode(image if ext != ".pgm" else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), ext)
        assert image_size(data)[1:] == (133, 97), ext
    lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert lossless[12:16] == b"VP8L" and image_size(lossless)[1:] == (133, 97)


# -- the rest of the API ---------------------------------------------------------------------------

def test_info_health_page_and_request_ids(client):
    info = client.get("/v1/info").json()
    assert info["model"] == "leyolo-n" and len(info["classes"]) == 80 and info["imgsz"] == IMGSZ
    assert info["backend"] == "onnxruntime" and info["version"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert text and "http://" not in text and "https://" not in text
    assert "http" not in page.text.replace("http-equiv", "")
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"x-request-id": "no spaces allowed"}).headers["x-request-id"]
    assert generated != "no spaces allowed" and len(generated) == 16
    assert client.get("/nope").json()["error"] == "Not Found"


def test_not_ready_until_loaded_and_says_why(tmp_path):
    config = ServeConfig(model=str(tmp_path / "missing.pt"))
    with TestClient(create_app(config)) as c:
        assert c.get("/healthz").status_code == 200
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed" and "missing.pt" in ready.json()["error"]
        r = detect(c, encode(synthetic_image(0)))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_metrics_count_what_happened(client, image_files):
    before = client.get("/metrics").text
    good = image_files[1].read_bytes()
    for _ in range(3):
        assert detect(client, good).status_code == 200
    assert detect(client, b"").status_code == 422
    assert client.post("/v1/detect/batch", files=[("image", ("a.jpg", good, "image/jpeg"))] * 2).status_code == 200
    after = client.get("/metrics").text
    names = {f.name for f in parser.text_string_to_metric_families(after)}
    assert names >= {"leyolo_requests", "leyolo_request_duration_seconds", "leyolo_inference_duration_seconds",
                     "leyolo_queue_wait_seconds", "leyolo_batch_size", "leyolo_requests_in_flight"}

    def delta(name: str, **labels) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("leyolo_requests_total", endpoint="/v1/detect", status="200") == 3
    assert delta("leyolo_requests_total", endpoint="/v1/detect", status="422") == 1
    assert delta("leyolo_requests_total", endpoint="/v1/detect/batch", status="200") == 1
    assert delta("leyolo_request_duration_seconds_count", endpoint="/v1/detect") == 4
    assert delta("leyolo_images_total") == 5
    assert delta("leyolo_batch_size_sum") == 5 and delta("leyolo_batch_size_count") == 4  # 1 + 1 + 1 + 2
    assert delta("leyolo_queue_wait_seconds_count") == 5
    assert metric(after, "leyolo_requests_in_flight") == 1  # this scrape itself


def test_missing_extra_is_one_line(monkeypatch):
    from leyolo.errors import LeyoloError
    from leyolo.optional import require

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(LeyoloError, match=r"pip install 'leyolo\[serve\]'"):
        require("uvicorn", "leyolo serve")


# -- a real server process -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    proc = ServerProcess(weights, tmp_path_factory.mktemp("serve-log") / "server.log", "--max-pixels", "4000000")
    yield proc
    proc.stop()


def test_real_server_burst_bad_uploads_and_metrics(server, image_files):
    datas = [p.read_bytes() for p in image_files]

    async def burst(n: int = 64, concurrency: int = 8) -> list[int]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            async def one(i: int) -> int:
                async with gate:
                    r = await http.post("/v1/detect", content=datas[i % len(datas)],
                                        headers={"content-type": "image/jpeg"})
                    return r.status_code

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)

    before = httpx.get(server.url + "/metrics").text
    assert asyncio.run(burst()) == [200] * 64
    mid = httpx.get(server.url + "/metrics").text
    done = metric(mid, "leyolo_requests_total", endpoint="/v1/detect", status="200") - metric(
        before, "leyolo_requests_total", endpoint="/v1/detect", status="200")
    assert done == 64
    batches = metric(mid, "leyolo_batch_size_count") - metric(before, "leyolo_batch_size_count")
    assert batches < 64, "8 concurrent clients never shared a backend call"

    with httpx.Client(base_url=server.url, timeout=60) as http:
        big = bytes(60 * 2**20)  # 60 MB: over the 16 MiB default limit
        r = http.post("/v1/detect", content=big, headers={"content-type": "image/jpeg"})
        assert r.status_code == 413 and r.headers["x-request-id"]
        r = http.post("/v1/detect", files={"image": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413
        for name, (body, ctype, status) in bad_uploads(datas[0]).items():
            if name == "oversized":
                continue  # this server's limit is 16 MiB
            r = http.post("/v1/detect", content=body, headers={"content-type": ctype})
            assert r.status_code == status, (name, r.text)
            assert http.get("/healthz").status_code == 200
        r = http.post("/v1/detect", content=datas[2], headers={"content-type": "image/jpeg", "x-request-id": "r-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "r-1"
        after = http.get("/metrics").text
    assert metric(after, "leyolo_requests_total", endpoint="/v1/detect", status="413") >= 4
    assert metric(after, "leyolo_requests_total", status="500") == 0
    log = server.log_text()
    assert "[r-1] POST /v1/detect 200" in log and "Traceback" not in log


def test_graceful_shutdown_finishes_in_flight_requests(weights, image_files, tmp_path):
    """SIGTERM while three uploads are still arriving (over 1.5 s): all three get their 200."""
    server = ServerProcess(weights, tmp_path / "server.log")
    data = image_files[0].read_bytes()
    statuses: list[int] = []

    def slowly():
        step = len(data) // 6 + 1
        for i in range(0, len(data), step):
            yield data[i:i + step]
            time.sleep(0.25)

    def go() -> None:
        statuses.append(httpx.post(server.url + "/v1/detect", content=slowly(), headers={"content-type": "image/jpeg"},
                                   timeout=30).status_code)

    threads = [threading.Thread(target=go) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert statuses == [200, 200, 200]
        # uvicorn re-raises the signal it caught once it has shut down cleanly
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    log = server.log_text()
    assert "Application shutdown complete" in log and log.count("POST /v1/detect 200") == 3


def test_workers_processes_each_load_the_model(weights, image_files, tmp_path):
    server = ServerProcess(weights, tmp_path / "server.log", "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while server.log_text().count("ready: leyolo-n") < 2:  # each child loads before it accepts
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log_text()[-3000:]
            time.sleep(0.2)
        data = image_files[1].read_bytes()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert all(http.post("/v1/detect", content=data, headers={"content-type": "image/jpeg"}).status_code
                       == 200 for _ in range(8))
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    assert "died" not in server.log_text()


# -- Triton ------------------------------------------------------------------------------------------

def model_config_pb2():
    """Triton's ``ModelConfig`` message, from the ``tritonclient`` wheel (its gRPC package is not needed)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (a test extra): cannot check config.pbtxt against Triton's proto")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags", [[], ["--nms"], ["--static"]], ids=["dynamic", "nms", "static"])
def test_triton_repository(weights, detector, tmp_path, flags, capsys):
    import onnxruntime as ort
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    repo = tmp_path / "models"
    assert main(["export", "--model", str(weights), "--format", "triton", "--imgsz", str(IMGSZ), "--out", str(repo),
                 *flags]) == 0
    folder = repo / "leyolo-n"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert config.name == "leyolo-n" and config.backend == "onnxruntime"
    assert (folder / "labels.txt").read_text().splitlines() == detector.names
    assert json.loads(config.parameters["leyolo"].string_value)["imgsz"] == IMGSZ
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = 2 if config.max_batch_size else 1
    if config.max_batch_size:
        assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds > 0
        assert list(config.input[0].dims) == [3, -1, -1]
        feed_shape = (batch, 3, IMGSZ, 96)
    else:
        assert not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [1, 3, IMGSZ, IMGSZ]
        feed_shape = (1, 3, IMGSZ, IMGSZ)
    assert config.input[0].name == session.get_inputs()[0].name and config.input[0].data_type == pb2.TYPE_FP32
    outputs = session.run(None, {config.input[0].name: np.random.rand(*feed_shape).astype(np.float32)})
    declared = {o.name: o for o in config.output}
    assert list(declared) == [o.name for o in session.get_outputs()]
    dtypes = {np.float32: pb2.TYPE_FP32, np.int32: pb2.TYPE_INT32, np.int64: pb2.TYPE_INT64}
    for meta, value in zip(session.get_outputs(), outputs):
        spec = declared[meta.name]
        shape = value.shape[1:] if config.max_batch_size else value.shape
        assert len(shape) == len(spec.dims) and all(d in (-1, s) for d, s in zip(spec.dims, shape)), (spec, shape)
        assert dtypes[value.dtype.type] == spec.data_type
    labelled = [o.name for o in config.output if o.label_filename]
    assert labelled == (["det_classes"] if "--nms" in flags else ["output"])
    if not flags:
        assert list(declared["output"].dims) == [4 + len(detector.names), -1]
