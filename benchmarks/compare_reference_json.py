"""Image-by-image agreement of our detections with the authors' implementation's, on coco-mini val at 640.

Runs ``leyolo val`` on the published nano (single-label by default, the protocol of
``../shared/reference/leyolo-nano_coco-mini-val_640_reference.json``; ``--multi-label`` uses the
multi-label file), then, image by image, matches every reference detection to one of ours with
the same category and a box within ``--tol`` pixels on every coordinate (greedy, highest score
first), and reports counts, the matched fraction and the largest box and score differences.

    python benchmarks/compare_reference_json.py [--multi-label] [--tol 0.001] [--backend auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"


def by_image(records: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        out[int(r["image_id"])].append(r)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "weights" / "LeYOLONano.pt"))
    parser.add_argument("--data", default=str(SHARED / "datasets" / "coco-mini" / "data.yaml"))
    parser.add_argument("--multi-label", action="store_true")
    parser.add_argument("--tol", type=float, default=1e-3, help="pixels, per box coordinate (the json has 3 decimals)")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    name = "leyolo-nano_coco-mini-val_640_reference" + ("_multilabel" if args.multi_label else "") + ".json"
    if not (REFERENCE / name).is_file() or not Path(args.model).is_file():
        print(f"error: needs ../shared ({REFERENCE / name}, {args.model})", file=sys.stderr)
        return 1
    import leyolo

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ours.json"
        metrics = leyolo.load(args.model).val(args.data, imgsz=640, single_label=not args.multi_label,
                                              backend=args.backend, json_path=out)
        ours = by_image(json.loads(out.read_text()))
    ref = by_image(json.loads((REFERENCE / name).read_text()))
    matched = total = 0
    box_diff = score_diff = 0.0
    for image_id, refs in ref.items():
        mine = sorted(ours.get(image_id, []), key=lambda r: -r["score"])
        used = np.zeros(len(mine), bool)
        boxes = np.array([r["bbox"] for r in mine]).reshape(-1, 4)
        cats = np.array([r["category_id"] for r in mine])
        for r in sorted(refs, key=lambda r: -r["score"]):
            total += 1
            if not len(mine):
                continue
            err = np.abs(boxes - np.array(r["bbox"])).max(1)
            ok = np.flatnonzero(~used & (cats == r["category_id"]) & (err <= args.tol + 1e-9))
            if ok.size:
                j = ok[np.argmin(np.abs([mine[k]["score"] - r["score"] for k in ok]))]
                used[j] = True
                matched += 1
                box_diff = max(box_diff, float(err[j]))
                score_diff = max(score_diff, abs(mine[j]["score"] - r["score"]))
    n_ours = sum(len(v) for v in ours.values())
    print(f"{'multi' if args.multi_label else 'single'}-label, 640, backend {args.backend}: mAP50-95 "
          f"{metrics['mAP50-95']:.4f}, ours {n_ours} boxes, reference {total}; matched {matched} "
          f"({matched / max(total, 1):.2%}) within {args.tol} px, max box diff {box_diff:.4f} px, "
          f"max score diff {score_diff:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
