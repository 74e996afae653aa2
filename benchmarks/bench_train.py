"""Training throughput on coco-mini: images/s of a fine-tuning epoch (no validation).

Comparable to the reference measurement of the authors' implementation (fine-tuning leyolo-n,
640 px, batch 8, mosaic off, 2 workers: an 80-image epoch in about 43 s, ~2 images/s).

    python benchmarks/bench_train.py [--imgsz 640] [--batch 8] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "weights" / "LeYOLONano.pt"))
    parser.add_argument("--data", default=str(SHARED / "datasets" / "coco-mini" / "data.yaml"))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed; the first includes start-up")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mosaic", type=float, default=0.0)
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"error: {args.data} not found (needs ../shared)", file=sys.stderr)
        return 1

    from leyolo.engine.trainer import train

    stamps: list[float] = []
    sizes: list[int] = []

    def mark(trainer) -> None:
        stamps.append(time.perf_counter())
        sizes.append(len(trainer.train_set))

    with tempfile.TemporaryDirectory() as tmp:
        train(args.model, args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
              mosaic=args.mosaic, val=False, plots=False, project=tmp, name="bench",
              callbacks={"before_epoch": [mark], "after_epoch": [mark]})
    for i in range(0, len(stamps) - 1, 2):
        seconds = stamps[i + 1] - stamps[i]
        print(f"epoch {i // 2 + 1}: {sizes[i]} images in {seconds:.1f} s = {sizes[i] / seconds:.2f} images/s "
              f"(imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, mosaic {args.mosaic})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
