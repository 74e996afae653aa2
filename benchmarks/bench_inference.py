"""Inference speed of leyolo-n on this machine: network-only latency and end-to-end predict time.

For each image size and backend it reports
  * network-only latency on a 1x3xSxS input (median, p95 over --runs runs after warm-up),
  * network-only latency on the letterboxed coco-mini val images (the shapes predict really feeds),
  * end-to-end time per image of ``Predictor.stream`` over coco-mini val (decode, letterbox,
    network, NMS; nothing saved),
both as the best of --passes interleaved passes (this machine's speed drifts by +-30%),
and the end-to-end / network-only ratio. ``--cli`` also runs the user's command,
``leyolo predict --model M --source IMAGES --no-save --imgsz S`` with no ``--backend`` (so the
default, ``auto``), and reports the ms/image it prints against onnxruntime's network-only mean.
Run from the repository root:

    python benchmarks/bench_inference.py [--sizes 320,480,640] [--backends torch,onnxruntime,openvino]
        [--runs 50] [--cli] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import leyolo
from leyolo.inference.sources import iter_frames
from leyolo.tools.bench import machine_summary
from leyolo.tools.measure import time_calls

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "LeYOLONano.pt"
IMAGES = SHARED / "datasets" / "coco-mini" / "images" / "val2017"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cli_ms_per_image(model: str, images: Path, size: int) -> float:
    """ms/image printed by ``leyolo predict`` with the default backend (a fresh process, as a user runs it)."""
    proc = subprocess.run([sys.executable, "-m", "leyolo", "predict", "--model", model, "--source", str(images),
                           "--no-save", "--imgsz", str(size), "-q"], capture_output=True, text=True, check=True)
    match = re.search(r"([0-9.]+) ms/image", proc.stdout)
    if not match:
        raise RuntimeError(f"no ms/image in: {proc.stdout[-300:]}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(WEIGHTS) if WEIGHTS.exists() else "leyolo-n")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--sizes", default="320,480,640")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    parser.add_argument("--cli", action="store_true", help="also time `leyolo predict` with its default backend")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    if not args.images.is_dir():
        print(f"error: {args.images}: image folder not found (needs ../shared/datasets/coco-mini)", file=sys.stderr)
        return 1
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    frames = list(iter_frames(files))  # decoded once for the network-only measurement
    detector = leyolo.load(args.model)
    print(f"machine: {machine_summary()}")
    print(f"model: {args.model}, {len(files)} images\n")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for backend_name in args.backends.split(","):
            predictor = detector.predictor(backend_name, imgsz=size)
            backend = predictor.backend
            square = time_calls(backend, np.random.rand(1, 3, size, size).astype(np.float32), args.runs, args.warmup)
            blobs = [predictor.prepare(f.image)[0] for f in frames]
            for blob in blobs[:5]:
                backend(blob)
            for blob in {b.shape: b for b in blobs}.values():  # every shape seen once before timing
                backend(blob)
            rect_passes, e2e = [], []
            for _ in range(args.passes):  # interleaved, so both see the same machine state
                rect = []
                for blob in blobs:
                    start = time.perf_counter()
                    backend(blob)
                    rect.append(time.perf_counter() - start)
                rect_passes.append(rect)
                start = time.perf_counter()
                n = sum(1 for _ in predictor.stream(iter_frames(files)))
                e2e.append((time.perf_counter() - start) / n)
            rect = min(rect_passes, key=statistics.fmean)
            row = {
                "imgsz": size, "backend": backend_name,
                "square_median_ms": statistics.median(square) * 1e3, "square_p95_ms": percentile(square, 95) * 1e3,
                "val_net_mean_ms": statistics.fmean(rect) * 1e3, "val_net_p95_ms": percentile(rect, 95) * 1e3,
                "e2e_ms": min(e2e) * 1e3,
            }
            row["e2e_over_net"] = row["e2e_ms"] / row["val_net_mean_ms"]
            rows.append(row)
            print(f"{size} {backend_name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})}",
                  flush=True)

    if args.cli:
        for size in sorted({r["imgsz"] for r in rows}):
            net = next((r["val_net_mean_ms"] for r in rows if r["imgsz"] == size and r["backend"] == "onnxruntime"), None)
            ms = min(cli_ms_per_image(args.model, args.images, size) for _ in range(args.passes))
            rows.append({"imgsz": size, "backend": "leyolo predict (default)", "e2e_ms": ms,
                         "e2e_over_net": ms / net if net else float("nan")})
            print(f"{size} leyolo predict (default backend): {ms:.1f} ms/image, "
                  f"{ms / net if net else float('nan'):.2f} x onnxruntime network-only", flush=True)

    print("\n| size | backend | net SxS median (ms) | net SxS p95 (ms) | net val-shapes mean (ms) | "
          "end-to-end (ms/img) | e2e / net |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.1f}" if k in r else "-" for k in ("square_median_ms", "square_p95_ms", "val_net_mean_ms")]
        print(f"| {r['imgsz']} | {r['backend']} | {' | '.join(cells)} | {r['e2e_ms']:.1f} | {r['e2e_over_net']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine_summary(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
