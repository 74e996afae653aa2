"""Load test of ``leyolo serve`` on loopback: throughput and latency at 1, 4 and 16 concurrent clients,
with and without micro-batching, against offline ``predict`` throughput of the same model and backend.

Offline: ``Predictor.stream`` over the image files (decode, letterbox, backend, NMS; batch 1, as
``leyolo predict``), best of ``--passes``, once as ``leyolo predict`` runs it (onnxruntime threads
spinning) and once with spinning off, as the server runs it; "x offline" divides by the faster.
Served: ``python -m leyolo serve`` in a subprocess with the same model, backend and thread count,
one server per mode; each client level first warms up, then
sends ``--requests`` raw JPEG bodies (the images in turn) through an httpx.AsyncClient with that
many requests in flight, stopping early at ``--time-limit`` seconds. The mean batch size comes from
the server's own ``leyolo_batch_size`` histogram. Client and server share this machine's cores.

    python benchmarks/bench_serve.py [--model ../shared/weights/LeYOLONano.pt] [--imgsz 640]
        [--concurrency 1,4,16] [--requests 240] [--time-limit 60] [--threads N]

Images: ``../shared/datasets/coco-mini/images/val2017`` when present, else synthetic JPEGs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "LeYOLONano.pt"
IMAGES = SHARED / "datasets" / "coco-mini" / "images" / "val2017"
MODES = {"micro-batching (8, 5 ms)": ("8", "5"), "no batching": ("1", "0")}


def image_files(folder: Path, tmp: Path) -> list[Path]:
    if folder.is_dir() and any(folder.glob("*.jpg")):
        return sorted(folder.glob("*.jpg"))
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(480, 640), (640, 480), (427, 640), (640, 427)] * 8):
        img = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        for _ in range(6):
            cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, 80)),
                       tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        files.append(tmp / f"synthetic{i:03d}.jpg")
        cv2.imwrite(str(files[-1]), img)
    return files


def offline_throughput(model: str, files: list[Path], imgsz: int, backend: str, threads: int | None,
                       passes: int) -> dict[str, float]:
    """Images per second of ``leyolo predict``'s pipeline over ``files`` (best pass), spinning on and off."""
    import leyolo
    from leyolo.inference.backends import OnnxRuntimeBackend
    from leyolo.inference.predictor import Predictor
    from leyolo.inference.sources import iter_frames

    detector = leyolo.load(model)
    predictors = {"predict": detector.predictor(backend, threads=threads, imgsz=imgsz)}
    if predictors["predict"].backend.name == "onnxruntime":
        quiet = OnnxRuntimeBackend(detector.onnx_file(imgsz), threads, spinning=False)
        predictors["predict, no spinning"] = Predictor.for_meta(quiet, detector.meta, imgsz=imgsz)
    best = dict.fromkeys(predictors, 0.0)
    for predictor in predictors.values():
        list(predictor.stream(iter_frames(files[:4])))  # warm
    for _ in range(passes):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            n = sum(1 for _ in predictor.stream(iter_frames(files)))
            best[name] = max(best[name], n / (time.perf_counter() - start))
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: str, max_wait: str, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "leyolo", "serve", "--model", args.model, "--imgsz", str(args.imgsz),
           "--backend", args.backend, "--port", str(port), "--max-batch", max_batch, "--max-wait-ms", max_wait,
           "--queue-size", "256", "--timeout", "60", "-q"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server not ready in 180 s")


def batch_stats(text: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name in ("leyolo_batch_size_sum", "leyolo_batch_size_count")}
    return values.get("leyolo_batch_size_sum", 0.0), values.get("leyolo_batch_size_count", 0.0)


async def load(url: str, bodies: list[bytes], concurrency: int, requests: int, time_limit: float,
               warm_only: bool = False) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight (bounded by ``time_limit``): throughput and latencies."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def post(i: int) -> float:
            start = time.perf_counter()
            r = await http.post("/v1/detect", content=bodies[i % len(bodies)], headers={"content-type": "image/jpeg"})
            if r.status_code != 200:
                raise RuntimeError(r.status_code)
            return time.perf_counter() - start

        if warm_only:  # connections opened, every image shape seen once
            await asyncio.gather(*(post(i) for i in range(max(2 * concurrency, len(bodies)))))
            return {}
        deadline = time.perf_counter() + time_limit

        async def client() -> None:
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                try:
                    latencies.append(await post(i))
                except Exception:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0] if latencies else 0] * 99
    return {"ok": len(latencies), "errors": errors, "ips": len(latencies) / elapsed, "p50": q[49] * 1e3,
            "p95": q[94] * 1e3, "p99": q[98] * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(WEIGHTS) if WEIGHTS.exists() else "leyolo-n")
    parser.add_argument("--imgsz", type=int, default=640 if WEIGHTS.exists() else 320)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, help="runtime threads, offline and served (default: the runtime's)")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=240, help="timed requests per client level")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per client level at most")
    parser.add_argument("--passes", type=int, default=2, help="offline passes over the images (best kept)")
    args = parser.parse_args()
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    files = image_files(args.images, tmp)
    bodies = [f.read_bytes() for f in files]
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"model {args.model} at {args.imgsz}, backend {args.backend}, {len(files)} images "
          f"({'coco-mini val2017' if files[0].parent == args.images else 'synthetic'}), {os.cpu_count()} CPUs",
          flush=True)
    rates = offline_throughput(args.model, files, args.imgsz, args.backend, args.threads, args.passes)
    print("offline: " + ", ".join(f"{k} {v:.1f} images/s" for k, v in rates.items()) + "\n", flush=True)
    offline = max(rates.values())
    print("| mode | clients | requests ok | errors | images/s | x offline | p50 ms | p95 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, (max_batch, max_wait) in MODES.items():
        proc, url = start_server(args, max_batch, max_wait, tmp / f"server-{max_batch}.log")
        try:
            for c in levels:
                asyncio.run(load(url, bodies, c, args.requests, args.time_limit, warm_only=True))
                before = batch_stats(httpx.get(url + "/metrics").text)
                row = asyncio.run(load(url, bodies, c, args.requests, args.time_limit))
                after = batch_stats(httpx.get(url + "/metrics").text)
                mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                print(f"| {mode} | {c} | {row['ok']} | {row['errors']} | {row['ips']:.1f} | "
                      f"{row['ips'] / offline:.2f} | {row['p50']:.1f} | {row['p95']:.1f} | {row['p99']:.1f} | "
                      f"{mean_batch:.2f} |", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
