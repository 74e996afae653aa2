"""Test-time augmentation on coco-mini: mAP gained and time paid, per input size and merge.

For each size: ``Detector.val`` without augmentation, with ``--augment`` merged by NMS (the
recipe) and by weighted box fusion; mAP50-95 / mAP50 by pycocotools, time per image of the whole
validation pass (decode, views, network, merge). Run from the repository root:

    python benchmarks/bench_tta.py [--sizes 640,832] [--backend onnxruntime]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "weights" / "LeYOLONano.pt"))
    parser.add_argument("--data", default=str(SHARED / "datasets" / "coco-mini" / "data.yaml"))
    parser.add_argument("--sizes", default="640,832")
    parser.add_argument("--backend", default="onnxruntime")
    args = parser.parse_args()
    if not Path(args.model).is_file() or not Path(args.data).is_file():
        print(f"error: {args.model} or {args.data} not found (needs ../shared)", file=sys.stderr)
        return 1
    import leyolo
    from leyolo.tools.bench import machine_summary

    detector = leyolo.load(args.model)
    print(f"machine: {machine_summary()}\n")
    print("| input | TTA | mAP50-95 | mAP50 | ms/img | time vs plain |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        plain_ms = None
        for augment, merge in ((False, "nms"), (True, "nms"), (True, "wbf")):
            m = detector.val(args.data, imgsz=size, augment=augment, tta_merge=merge, backend=args.backend)
            ms = m["seconds"] / m["images"] * 1e3
            plain_ms = plain_ms or ms
            label = f"yes, {merge}" if augment else "no"
            print(f"| {size} | {label} | {m['mAP50-95']:.4f} | {m['mAP50']:.4f} | {ms:.1f} | {ms / plain_ms:.2f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
