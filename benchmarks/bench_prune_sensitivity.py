"""How much accuracy one-shot channel pruning costs, with and without BatchNorm recalibration.

For each ratio: prune a copy of the model with ``leyolo.deploy.prune.channel_prune`` (torch-pruning,
same ratio in every layer), score it on the val split, re-measure its BatchNorm statistics on
``--bn-images`` train images (``recalibrate_batchnorm``) and score it again. The unpruned model goes
through the same recalibration, so its cost is visible on its own.

    python benchmarks/bench_prune_sensitivity.py [--ratios 0.05,0.1,0.2,0.3] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "weights" / "LeYOLONano.pt"))
    parser.add_argument("--data", default=str(SHARED / "datasets" / "coco-mini" / "data.yaml"))
    parser.add_argument("--ratios", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--bn-images", type=int, default=64)
    parser.add_argument("--importance", default="l2")
    args = parser.parse_args()
    if not Path(args.model).exists() or not Path(args.data).exists():
        print(f"error: {args.model} or {args.data} not found (needs ../shared)", file=sys.stderr)
        return 1

    import leyolo
    from leyolo.tools.prune import calibration_batches, channel_prune, recalibrate_batchnorm
    from leyolo.models.flops import count_gflops, count_params

    logging.getLogger("leyolo").setLevel(logging.ERROR)
    base = leyolo.load(args.model).model.float().eval()

    def score(model) -> float:
        return leyolo.Detector(model.eval()).val(args.data, imgsz=args.imgsz)["mAP50-95"]

    print(f"| channels removed | params | GFLOPs@{args.imgsz} | mAP50-95, one-shot | "
          f"after BN recalibration ({args.bn_images} images) |")
    print("|---|---|---|---|---|")
    for ratio in [0.0] + [float(r) for r in args.ratios.split(",")]:
        model = copy.deepcopy(base)
        if ratio:
            channel_prune(model, ratio, args.importance)
        params, gflops, before = count_params(model), count_gflops(model, args.imgsz), score(model)
        recalibrate_batchnorm(model, calibration_batches(args.data, args.imgsz, args.bn_images))
        after = score(model)
        print(f"| {ratio:.0%} | {params:,} | {gflops:.3f} | {before:.4f} | {after:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
