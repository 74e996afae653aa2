"""Per-frame cost of the trackers (ByteTrack, BoT-SORT) at 10, 50 and 200 objects.

Detections are synthetic (``leyolo.inference.tracking.synthetic.random_scene``: boxes moving at
random speeds in a 1280x720 view, jittered, 10% dropped, 10% low scores, a few false positives),
so only the tracker is timed: Kalman prediction and update, the IoU costs, the two or three
assignments, and for BoT-SORT with compensation the camera-motion estimate on the rendered frame
(whose cost depends on the frame size, not the object count). The first frames are excluded.
Run from the repository root:

    python benchmarks/bench_tracking.py [--objects 10,50,200] [--frames 100] [--cmc]

``--cmc`` also times BoT-SORT with sparse optical flow and ECC (renders every frame; slower to run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from leyolo.inference.tracking import make_tracker
from leyolo.inference.tracking.metrics import mot_metrics
from leyolo.inference.tracking.synthetic import random_scene
from leyolo.tools.bench import machine_summary

WARMUP = 5


def run(n: int, frames: int, tracker: str, gmc: str) -> dict:
    scene = random_scene(n, frames=frames, seed=n)
    dets = scene.detections(seed=1)
    engine = make_tracker(tracker, gmc_method=gmc)
    times, hyp = [], {}
    for f in range(1, frames + 1):
        image = scene.render(f)[0] if gmc != "none" else None
        boxes, scores = dets[f]
        start = time.perf_counter()
        out = engine.update(boxes, scores, image=image)
        if f > WARMUP:
            times.append(time.perf_counter() - start)
        hyp[f] = (out.ids, out.xyxy.astype(np.float64))
    m = mot_metrics(scene.gt, hyp)
    times.sort()
    return {"objects": n, "tracker": tracker, "cmc": gmc, "median_ms": 1e3 * statistics.median(times),
            "p90_ms": 1e3 * times[int(0.9 * (len(times) - 1))], "idf1": m["idf1"], "mota": m["mota"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", default="10,50,200")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--cmc", action="store_true", help="also BoT-SORT with sparseOptFlow and ECC (1280x720)")
    args = parser.parse_args()
    combos = [("bytetrack", "none"), ("botsort", "none")] + ([("botsort", "sparseOptFlow"), ("botsort", "ecc")]
                                                               if args.cmc else [])
    print(machine_summary(), f"numpy {np.__version__}")
    print("| objects | tracker | CMC | median ms/frame | p90 ms | IDF1 | MOTA |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for n in (int(x) for x in args.objects.split(",")):
        for tracker, gmc in combos:
            r = run(n, args.frames, tracker, gmc)
            print(f"| {r['objects']} | {r['tracker']} | {r['cmc']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                  f"{r['idf1']:.3f} | {r['mota']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
