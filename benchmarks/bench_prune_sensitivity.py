"""How much accuracy one-shot channel pruning costs, and what compensation and recalibration give back.

For each ratio (the same fraction of every prunable group, widths rounded to multiples of 8) and each
channel ranking (``l2`` weight norm, today's default before issue 13; ``variance``, what bias
compensation cannot restore), a copy of the model is pruned and scored on the val split:

- ``one-shot``: nothing else;
- ``recal``: BatchNorm statistics re-measured on ``--bn-images`` train images (``recalibrate_batchnorm``);
- ``comp``: each removed channel's calibration mean folded into the next layer (``channels.compensate``);
- ``comp+recal``: both (what ``leyolo prune --data`` does by default, with the ``variance`` ranking).

Calibration images are the train split's, picked as INT8 calibration picks them.

    python benchmarks/bench_prune_sensitivity.py [--ratios 0.05,0.1,0.2,0.3] [--imgsz 640] [--threads 1]
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
    parser.add_argument("--importances", default="l2,variance")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--bn-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not Path(args.model).exists() or not Path(args.data).exists():
        print(f"error: {args.model} or {args.data} not found (needs ../shared)", file=sys.stderr)
        return 1

    import torch

    import leyolo
    from leyolo.models.flops import count_gflops, count_params
    from leyolo.tools.channels import channel_prune, conv_input_stats
    from leyolo.tools.prune import calibration_batches, recalibrate_batchnorm

    torch.set_num_threads(args.threads)
    logging.getLogger("leyolo").setLevel(logging.ERROR)
    base = leyolo.load(args.model).model.float().eval()
    calib = list(calibration_batches(args.data, args.imgsz, args.bn_images))
    stats = conv_input_stats(base, calib)

    def score(model) -> float:
        return leyolo.Detector(copy.deepcopy(model).eval()).val(args.data, imgsz=args.imgsz, threads=args.threads)[
            "mAP50-95"]

    print(f"mAP50-95 on {Path(args.data).parent.name} val at {args.imgsz}; calibration: {len(calib) * 8} train images\n")
    print(f"| channels removed | ranking | params | GFLOPs@{args.imgsz} | one-shot | recal | comp | comp+recal |")
    print("|---|---|---|---|---|---|---|---|")
    unpruned = score(base)
    recal = copy.deepcopy(base)
    recalibrate_batchnorm(recal, iter(calib))
    print(f"| 0% | - | {count_params(base):,} | {count_gflops(base, args.imgsz):.3f} | {unpruned:.4f} | "
          f"{score(recal):.4f} | {unpruned:.4f} | {score(recal):.4f} |", flush=True)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for importance in args.importances.split(","):
            cells = {}
            for compensate in (False, True):
                model, own = copy.deepcopy((base, stats))
                channel_prune(model, ratio, importance, stats=own, compensate_bias=compensate)
                name = "comp" if compensate else "one-shot"
                cells[name] = score(model)
                recalibrate_batchnorm(model, iter(calib))
                cells[name + "+recal" if compensate else "recal"] = score(model)
            print(f"| {ratio:.0%} | {importance} | {count_params(model):,} | {count_gflops(model, args.imgsz):.3f} | "
                  f"{cells['one-shot']:.4f} | {cells['recal']:.4f} | {cells['comp']:.4f} | {cells['comp+recal']:.4f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
