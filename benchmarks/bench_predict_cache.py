"""``Detector.predict`` called many times on one image: the backend is built once, then reused.

For each backend it times the first ``predict`` call (which builds the backend: BatchNorm folding,
or an ONNX export plus an onnxruntime/OpenVINO session), the median of the next ``--calls`` calls,
and, separately on the same image, the parts a call cannot avoid: letterbox + blob, the backend
call on that blob, and the postprocess (NMS). A cached call should cost about the sum of the parts.
Run from the repository root:

    python benchmarks/bench_predict_cache.py [--model M] [--imgsz 640] [--calls 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

import leyolo
from leyolo.ops import postprocess
from leyolo.tools.bench import machine_summary
from leyolo.tools.measure import time_calls

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "LeYOLONano.pt"
IMAGE = SHARED / "datasets" / "coco-mini" / "images" / "val2017" / "000000000139.jpg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(WEIGHTS) if WEIGHTS.exists() else "leyolo-n")
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino")
    args = parser.parse_args()
    image = cv2.imread(str(args.image)) if args.image.is_file() else np.full((480, 640, 3), 114, np.uint8)
    print(f"machine: {machine_summary()}\nmodel: {args.model}, image {image.shape[1]}x{image.shape[0]}, "
          f"imgsz {args.imgsz}\n")
    print("| backend | first call (ms) | later calls, median (ms) | letterbox + blob | backend call | NMS | "
          "sum of parts | later / parts |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.backends.split(","):
        detector = leyolo.load(args.model)  # a fresh detector: nothing cached yet
        start = time.perf_counter()
        detector.predict(image, backend=name, imgsz=args.imgsz)
        first = time.perf_counter() - start
        later = time_calls(lambda img: detector.predict(img, backend=name, imgsz=args.imgsz), image, args.calls, 3)
        predictor = detector.predictor(name, imgsz=args.imgsz)
        blob, _ = predictor.prepare(image)
        raw = predictor.backend(blob)
        cfg = predictor.config
        parts = [statistics.median(time_calls(fn, None, args.calls, 3)) for fn in (
            lambda _: predictor.prepare(image),
            lambda _: predictor.backend(blob),
            lambda _: postprocess(raw[0], cfg.conf, cfg.iou, cfg.max_det),
        )]
        median = statistics.median(later)
        print(f"| {name} | {first * 1e3:.0f} | {median * 1e3:.2f} | {parts[0] * 1e3:.2f} | {parts[1] * 1e3:.2f} | "
              f"{parts[2] * 1e3:.2f} | {sum(parts) * 1e3:.2f} | {median / sum(parts):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
