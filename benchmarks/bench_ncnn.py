"""NCNN vs onnxruntime on this CPU: network-only latency and end-to-end ``predict`` time per image.

Both run the same weights from one dynamic-shape export each (``leyolo export --format onnx`` /
``--format ncnn``), with the same thread count (default: the CPUs this process may use).
Network-only: the backend call on a random ``[1, 3, S, S]`` input (NCNN's includes its numpy
anchor decode, since that is part of what the backend returns); end-to-end: ``predict`` over the
images (decode, letterbox, network, NMS) at ``--imgsz S``. Every (backend, size) combination is
measured once per pass, interleaved, and the fastest pass's median is kept (the VM's speed drifts
by +-30% between minutes).

NCNN is built for ARM boards (NEON, fp16 storage and arithmetic on ARMv8.2); this x86 CPU is
not where it is meant to shine, so read the table as a sanity check, not as the ARM result.

    python benchmarks/bench_ncnn.py [--model ../shared/weights/LeYOLONano.pt] [--imgsz 320,640]
        [--source ../shared/datasets/coco-mini/images/val2017] [--images 40] [--passes 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
NANO = SHARED / "weights" / "LeYOLONano.pt"
VAL_IMAGES = SHARED / "datasets" / "coco-mini" / "images" / "val2017"
BACKENDS = ("onnxruntime", "ncnn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(NANO) if NANO.is_file() else "leyolo-n")
    parser.add_argument("--imgsz", default="320,640", help="comma list of sizes")
    parser.add_argument("--source", default=str(VAL_IMAGES), help="images for the end-to-end time ('' to skip)")
    parser.add_argument("--images", type=int, default=40, help="how many of them (default 40)")
    parser.add_argument("--runs", type=int, default=30, help="network calls per pass (default 30)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: usable CPUs)")
    args = parser.parse_args()

    import leyolo
    from leyolo.inference.cpus import usable_cpus
    from leyolo.inference.sources import iter_frames, resolve_source
    from leyolo.tools.measure import random_batch, time_calls

    sizes = [int(s) for s in args.imgsz.split(",")]
    threads = args.threads or usable_cpus()
    files = resolve_source(args.source)[: args.images] if args.source and Path(args.source).exists() else []
    source = leyolo.load(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-ncnn-") as tmp:
        exports = {
            "onnxruntime": leyolo.load(source.export(Path(tmp) / "model.onnx", imgsz=max(sizes))),
            "ncnn": leyolo.load(source.export(Path(tmp) / "model_ncnn_model", format="ncnn", imgsz=max(sizes))),
        }
        combos = [(b, s) for s in sizes for b in BACKENDS]
        net = {c: float("inf") for c in combos}
        e2e = {c: float("inf") for c in combos}
        for p in range(args.passes):
            for backend, size in combos:
                detector = exports[backend]
                engine = detector.backend(backend, size, threads=threads)
                times = time_calls(engine, random_batch(size), args.runs, warmup=3)
                net[backend, size] = min(net[backend, size], statistics.median(times) * 1e3)
                if files:
                    predictor = detector.predictor(backend, threads=threads, imgsz=size)
                    sum(1 for _ in predictor.stream(iter_frames(files[:2])))  # warm-up
                    start = time.perf_counter()
                    n = sum(1 for _ in predictor.stream(iter_frames(files)))
                    e2e[backend, size] = min(e2e[backend, size], (time.perf_counter() - start) / max(n, 1) * 1e3)
            print(f"pass {p + 1}/{args.passes} done", file=sys.stderr, flush=True)
    print(f"model {source.meta.arch} ({args.model}), {threads} threads, {len(files)} images end-to-end, "
          f"best of {args.passes} interleaved passes")
    print("| imgsz | backend | network ms (median) | end-to-end ms/image | network vs onnxruntime |")
    print("|---|---|---|---|---|")
    for backend, size in combos:
        ratio = net[backend, size] / net["onnxruntime", size]
        end = f"{e2e[backend, size]:.1f}" if files else "n/a"
        print(f"| {size} | {backend} | {net[backend, size]:.1f} | {end} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
