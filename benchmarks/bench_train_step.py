"""One training step of leyolo-n (forward, loss with task-aligned assignment, backward) in channels-last
vs NCHW memory format: why the trainer converts the model and its batches to channels-last.

Batches of ``--batch`` random ``--imgsz`` images with 3 random boxes each; the two formats are
timed in alternation, ``--reps`` times each, and the fastest of each is reported.

    python benchmarks/bench_train_step.py [--imgsz 640] [--batch 8] [--reps 8]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=8)
    args = parser.parse_args()
    import leyolo
    from leyolo.losses import build_criterion

    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.imgsz, args.imgsz)
    rows = []
    for i in range(args.batch):
        for j in range(3):
            x, y = float(torch.rand(1)) * args.imgsz * 0.6, float(torch.rand(1)) * args.imgsz * 0.6
            rows.append([i, j, x, y, x + args.imgsz * 0.3, y + args.imgsz * 0.3])
    targets = torch.tensor(rows)
    models = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        model = leyolo.create_model("leyolo-n", nc=3).train().to(memory_format=fmt)
        models[fmt] = (model, build_criterion(model), images.contiguous(memory_format=fmt))
    best = {fmt: float("inf") for fmt in models}
    for _ in range(args.reps):
        for fmt, (model, criterion, batch) in models.items():
            start = time.perf_counter()
            loss, _ = criterion(model(batch), targets)
            loss.backward()
            model.zero_grad(set_to_none=True)
            best[fmt] = min(best[fmt], time.perf_counter() - start)
    for fmt, name in ((torch.channels_last, "channels-last"), (torch.contiguous_format, "NCHW")):
        print(f"{name}: {best[fmt]:.2f} s per batch of {args.batch} ({args.batch / best[fmt]:.1f} images/s), "
              f"{torch.get_num_threads()} threads, {args.imgsz} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
