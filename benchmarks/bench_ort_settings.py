"""onnxruntime thread settings for leyolo-n: 2 threads spinning (the default), 2 threads without
spinning, 1 thread. Why the default is what it is.

For each size and setting: network-only time on the letterboxed coco-mini val images (mean) and
end-to-end ``Predictor.stream`` time per image (decode, letterbox, network, NMS), the settings
interleaved in each of ``--passes`` passes and the fastest pass kept.

    python benchmarks/bench_ort_settings.py [--sizes 320,640] [--passes 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "LeYOLONano.pt"
IMAGES = SHARED / "datasets" / "coco-mini" / "images" / "val2017"
SETTINGS = {"2 threads, spinning (default)": (2, True), "2 threads, no spinning": (2, False), "1 thread": (1, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(WEIGHTS) if WEIGHTS.exists() else "leyolo-n")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if not args.images.is_dir():
        print(f"error: {args.images}: image folder not found (needs ../shared)", file=sys.stderr)
        return 1
    import leyolo
    from leyolo.inference.backends import OnnxRuntimeBackend
    from leyolo.inference.predictor import Predictor
    from leyolo.inference.sources import iter_frames
    from leyolo.tools.bench import machine_summary

    files = sorted(args.images.glob("*.jpg"))
    frames = list(iter_frames(files))
    detector = leyolo.load(args.model)
    onnx = detector.onnx_file()
    print(f"machine: {machine_summary()}\n")
    print("| size | setting | network, val shapes (ms) | end to end (ms/img) | e2e / net |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        predictors = {name: Predictor.for_meta(OnnxRuntimeBackend(onnx, threads, spinning=spin), detector.meta,
                                               imgsz=size) for name, (threads, spin) in SETTINGS.items()}
        blobs = [next(iter(predictors.values())).prepare(f.image)[0] for f in frames]
        best = {name: (float("inf"), float("inf")) for name in SETTINGS}
        for _ in range(args.passes):
            for name, predictor in predictors.items():
                for blob in blobs[:3]:
                    predictor.backend(blob)
                net = []
                for blob in blobs:
                    start = time.perf_counter()
                    predictor.backend(blob)
                    net.append(time.perf_counter() - start)
                start = time.perf_counter()
                n = sum(1 for _ in predictor.stream(iter_frames(files)))
                e2e = (time.perf_counter() - start) / n
                best[name] = (min(best[name][0], statistics.fmean(net)), min(best[name][1], e2e))
        for name, (net, e2e) in best.items():
            print(f"| {size} | {name} | {net * 1e3:.1f} | {e2e * 1e3:.1f} | {e2e / net:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
