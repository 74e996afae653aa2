"""The lightweighting study, end to end: one table of what each compression step buys and costs.

Rows (each changes one thing from the baseline, then everything together):

- ``baseline``: the trained model, fp32;
- ``+ distillation``: the same model trained under the same budget with ``--teacher``;
- ``+ INT8``: the baseline as static INT8 (``leyolo quantize --method static``, QDQ, calibrated on
  the train split; a fixed square input);
- ``+ multi-scale training``: trained with ``--multi-scale 0.5``;
- ``+ TTA``: the baseline with test-time augmentation (``--augment``: 3 views on a 1.3x input);
  its GFLOPs and latency are the sum over the three views;
- ``+ pruning``: the baseline channel-pruned (``leyolo prune --target-gflops``, fine-tuned with
  distillation from the unpruned model), or one-shot (``--oneshot-ratio``: compensation +
  BatchNorm recalibration, no training);
- ``all combined``: distilled student -> pruned + fine-tuned -> INT8 (and the fp32 combined model
  with TTA, when TTA helped the baseline: static INT8 has one fixed input size, so TTA cannot run on it).

Columns: mAP50 / mAP50-95 on the val split (pycocotools), params, GFLOPs at ``--imgsz``, file size
of the deployed ONNX file, and onnxruntime network latency at ``--imgsz`` (1 image, ``--threads``
threads), measured for all rows side by side at the end: ``--passes`` interleaved passes of
``--runs`` calls each, fastest median kept.

Checkpoints that exist are passed in (``--baseline``, ``--distilled``, ``--multiscale``, ``--pruned``,
``--combined``); a missing training row is trained when ``--train-minutes`` is given (``--model``
architecture, ``--teacher`` for distillation), a missing pruned row is made with ``--target-gflops``
(+ ``--finetune-epochs``) or ``--oneshot-ratio``; rows that cannot be made say why. Accuracy results
are cached in ``--out``/rows.json per (row, checkpoint), so re-running only re-times. Examples:

    python benchmarks/bench_lightweighting.py --data ../shared/datasets/shapes/data.yaml --imgsz 320 \\
        --baseline base.safetensors --distilled student.safetensors --multiscale ms.safetensors \\
        --pruned pruned.safetensors --combined student-pruned.safetensors --threads 1 --out /tmp/light
    python benchmarks/bench_lightweighting.py --data ../shared/datasets/coco-mini/data.yaml --imgsz 640 \\
        --baseline ../shared/weights/LeYOLONano.pt --oneshot-ratio 0.1 \\
        --skip-training "80 train images are too few to train or fine-tune COCO's 80 classes" --out /tmp/light-coco
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared"
COLUMNS = [("row", "row", ""), ("mAP50", "mAP50", ".4f"), ("mAP50-95", "mAP50-95", ".4f"), ("params", "params", ","),
           ("gflops", "GFLOPs", ".3f"), ("ort_ms", "onnxruntime ms", ".2f"), ("size_mb", "ONNX MB", ".2f"),
           ("note", "note", "")]


def _key(path: Path | None) -> str:
    return f"{path}:{path.stat().st_mtime_ns}" if path is not None and path.exists() else ""


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache_path = self.out / "rows.json"
        self.cache: dict[str, Any] = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    # ------------------------------------------------------------------------------ making models
    def trained(self, label: str, given: str | None, **overrides: Any) -> Path | None:
        """``given``, else (with ``--train-minutes``) a fresh training run, else None."""
        if given:
            return Path(given)
        a = self.args
        if not a.train_minutes or a.skip_training:
            return None
        import leyolo

        log(f"training {label}: {a.model}, {a.train_minutes} min")
        result = leyolo.train(a.model, a.data, imgsz=a.imgsz, time=a.train_minutes, threads=a.threads,
                              workers=a.workers, seed=a.seed, project=str(self.out / "runs"), name=label,
                              exist_ok=True, **overrides)
        return Path(result["best"])

    def pruned(self, label: str, given: str | None, source: Path | None) -> tuple[Path | None, str]:
        """``given``, else ``source`` pruned (``--target-gflops`` + fine-tune, or one-shot ``--oneshot-ratio``)."""
        if given:
            return Path(given), ""
        a = self.args
        if source is None:
            return None, ""
        from leyolo.tools.prune import prune

        dest = self.out / f"{label}.safetensors"
        if a.target_gflops and (a.finetune_epochs and not a.skip_training):
            log(f"pruning {label} to {a.target_gflops} GFLOPs, fine-tune {a.finetune_epochs} epochs")
            result = prune(str(source), "channel", data=a.data, target_gflops=a.target_gflops,
                           finetune_epochs=a.finetune_epochs, imgsz=a.imgsz, out=dest, runs=5, evaluate=False,
                           threads=a.threads, workers=a.workers)
            return Path(result["out"]), f"--target-gflops {a.target_gflops}, fine-tuned {a.finetune_epochs} ep"
        if a.oneshot_ratio or a.target_gflops:
            what = f"--ratio {a.oneshot_ratio}" if a.oneshot_ratio else f"--target-gflops {a.target_gflops}"
            log(f"one-shot pruning {label} ({what})")
            result = prune(str(source), "channel", a.oneshot_ratio, data=a.data, target_gflops=a.target_gflops,
                           imgsz=a.imgsz, out=dest, runs=5, evaluate=False, threads=a.threads)
            return Path(result["out"]), f"one-shot {what}, compensated + recalibrated, no fine-tune"
        return None, ""

    # ------------------------------------------------------------------------------ measuring
    def row(self, label: str, weights: Path | None, *, int8: bool = False, tta: bool = False, note: str = "",
            missing: str = "") -> dict[str, Any]:
        """Accuracy, counts and the ONNX artefact(s) of one row (cached per label and checkpoint)."""
        if weights is None:
            return {"row": label, "note": missing or "not run", "artefacts": []}
        key = f"{label}|{_key(weights)}|int8={int8}|tta={tta}|{self.args.imgsz}"
        cached = self.cache.get(label)
        if cached and cached.get("key") == key and all(Path(p).exists() for p, _ in cached["artefacts"]):
            log(f"{label}: cached")
            return cached
        import leyolo
        from leyolo.deploy.onnx_export import export_onnx
        from leyolo.inference.tta import SCALES, augment_imgsz
        from leyolo.models.flops import count_gflops, count_params

        a = self.args
        detector = leyolo.load(weights)
        model = detector.model.float().eval()
        stem = label.replace(" ", "_").replace("+", "").replace("/", "_").strip("_")
        log(f"{label}: measuring {weights}")
        row: dict[str, Any] = {"row": label, "key": key, "weights": str(weights), "params": count_params(model),
                               "note": note}
        if int8:
            from leyolo.tools.quantize import quantize

            dest = self.out / f"{stem}-{a.imgsz}-int8.onnx"
            quantize(detector, a.data, method="static", calib_images=a.calib_images, imgsz=a.imgsz, out=dest,
                     runs=1, evaluate=False)
            metrics = leyolo.load(dest).val(a.data, imgsz=a.imgsz, threads=a.threads)
            square = export_onnx(model, self.out / f"{stem}-{a.imgsz}-square.onnx", a.imgsz, dynamic=False)
            fp32_sq = leyolo.load(square).val(a.data, imgsz=a.imgsz, threads=a.threads)
            row["note"] = (note + "; " if note else "") + (f"static INT8, square input (fp32 square: "
                                                           f"{fp32_sq['mAP50-95']:.4f} / {fp32_sq['mAP50']:.4f})")
            row["gflops"] = count_gflops(model, a.imgsz)
            row["artefacts"] = [(str(dest), a.imgsz)]
        elif tta:
            size = augment_imgsz(a.imgsz, detector.meta.stride)
            metrics = detector.val(a.data, imgsz=size, augment=True, threads=a.threads, backend="onnxruntime")
            sizes = [max(detector.meta.stride, int(round(size * s / detector.meta.stride)) * detector.meta.stride)
                     for s in SCALES]
            row["gflops"] = sum(count_gflops(model, s) for s in sizes)
            row["artefacts"] = [(str(export_onnx(model, self.out / f"{stem}-{s}.onnx", s, dynamic=False)), s)
                                for s in sizes]
            row["note"] = (note + "; " if note else "") + f"3 views at {'+'.join(map(str, sizes))} (sums)"
        else:
            metrics = detector.val(a.data, imgsz=a.imgsz, threads=a.threads, backend="onnxruntime")
            row["gflops"] = count_gflops(model, a.imgsz)
            row["artefacts"] = [(str(export_onnx(model, self.out / f"{stem}-{a.imgsz}.onnx", a.imgsz,
                                                 dynamic=False)), a.imgsz)]
        row.update({"mAP50-95": metrics["mAP50-95"], "mAP50": metrics["mAP50"],
                    "size_mb": sum(Path(p).stat().st_size for p, _ in row["artefacts"][:1]) / 1e6})
        self.cache[label] = row
        self.cache_path.write_text(json.dumps(self.cache, indent=1))
        return row

    def time_rows(self, rows: list[dict[str, Any]]) -> None:
        """onnxruntime latency of every row, interleaved passes, fastest median kept (sum over TTA views)."""
        from leyolo.inference.backends import onnxruntime_session
        from leyolo.tools.measure import median_latency_ms, random_batch

        a = self.args
        sessions = {}
        for r in rows:
            for path, size in r.get("artefacts", []):
                if path not in sessions:
                    s = onnxruntime_session(path, threads=a.threads)
                    sessions[path] = (s, {s.get_inputs()[0].name: random_batch(size)})
        best: dict[str, float] = {}
        for p in range(a.passes):
            for path, (session, feed) in sessions.items():
                ms = median_latency_ms(lambda: session.run(None, feed), a.runs, warmup=5)
                best[path] = min(best.get(path, ms), ms)
            log(f"timing pass {p + 1}/{a.passes} done")
        for r in rows:
            if r.get("artefacts"):
                r["ort_ms"] = sum(best[p] for p, _ in r["artefacts"])


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "datasets" / "shapes" / "data.yaml"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--model", default="leyolo-n", help="architecture of rows trained here (--train-minutes)")
    parser.add_argument("--baseline", help="trained baseline weights")
    parser.add_argument("--distilled", help="the same model trained with --teacher under the same budget")
    parser.add_argument("--multiscale", help="the same model trained with --multi-scale 0.5")
    parser.add_argument("--pruned", help="the baseline pruned (and fine-tuned)")
    parser.add_argument("--combined", help="the distilled model pruned and fine-tuned (INT8 is applied here)")
    parser.add_argument("--teacher", help="teacher weights, to train the distilled row")
    parser.add_argument("--train-minutes", type=float, help="train missing rows for this many minutes each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-gflops", type=float, help="prune missing pruned rows to this many GFLOPs")
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--oneshot-ratio", type=float, help="prune missing pruned rows one-shot at this ratio")
    parser.add_argument("--skip-training", help="reason the training rows are not run (they become notes)")
    parser.add_argument("--combined-label", default="all combined (distilled, pruned, INT8)",
                        help="name of the combined row (e.g. when --combined is the baseline's pruned model, whose "
                             "fine-tune is itself distilled)")
    parser.add_argument("--combined-tta", choices=["auto", "yes", "no"], default="auto",
                        help="add the fp32 combined model with TTA (auto: when TTA helped the baseline)")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=WEIGHTS",
                        help="more fp32 rows, e.g. a baseline retrained beside the other training rows (repeatable)")
    parser.add_argument("--calib-images", type=int, default=64, help="INT8 calibration images (train split)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", default="runs/lightweighting")
    args = parser.parse_args()

    import torch

    import leyolo  # noqa: F401
    from leyolo.tools.bench import machine_summary
    from leyolo.tools.tables import markdown_table, write_table

    torch.set_num_threads(args.threads)
    logging.getLogger("leyolo").setLevel(logging.WARNING)
    study = Study(args)
    skip = f"not run: {args.skip_training}" if args.skip_training else "not run: no checkpoint (--train-minutes trains it)"
    baseline = study.trained("baseline", args.baseline)
    if baseline is None:
        print("error: no --baseline and nothing to train it with (--train-minutes)", file=sys.stderr)
        return 1
    distilled = study.trained("distilled", args.distilled, **({"teacher": args.teacher} if args.teacher else {})) \
        if (args.distilled or args.teacher) else None
    multiscale = study.trained("multiscale", args.multiscale, multi_scale=0.5)
    pruned, pruned_note = study.pruned("pruned", args.pruned, baseline)
    combined, combined_note = study.pruned("combined", args.combined, distilled) if not args.skip_training \
        else (None, "")

    rows = [study.row("baseline", baseline),
            study.row("+ distillation", distilled, missing=skip if not args.teacher else ""),
            study.row("+ INT8", baseline, int8=True),
            study.row("+ multi-scale training", multiscale, missing=skip),
            study.row("+ TTA", baseline, tta=True),
            study.row("+ pruning", pruned, note=pruned_note or ("given checkpoint" if args.pruned else "")),
            study.row(args.combined_label, combined, int8=True, note=combined_note,
                      missing=skip if args.skip_training else "not run: needs --combined or a distilled row to prune")]
    for item in args.extra:
        label, _, path = item.partition("=")
        rows.insert(1, study.row(label, Path(path), note="reference"))
    tta = next(r for r in rows if r["row"] == "+ TTA")
    tta_helped = (tta.get("mAP50-95") or 0) > (rows[0].get("mAP50-95") or 0)
    if combined is not None and (args.combined_tta == "yes" or (args.combined_tta == "auto" and tta_helped)):
        rows.append(study.row(args.combined_label.replace("INT8", "fp32 + TTA"), combined, tta=True,
                              note=combined_note))
    study.time_rows(rows)
    header = (f"# lightweighting study\n\ndata: {args.data}; imgsz {args.imgsz}; onnxruntime {args.threads} thread(s), "
              f"1 image, fastest of {args.passes} interleaved medians of {args.runs}; machine: "
              f"{machine_summary(args.threads)}")
    write_table(rows, [c for c, _, _ in COLUMNS], study.out, "lightweighting", header,
                {"mAP50": 4, "mAP50-95": 4, "gflops": 3, "ort_ms": 2, "size_mb": 2})
    print(header + "\n")
    print(markdown_table(rows, [(c, f"{h}@{args.imgsz}" if c in ("gflops", "ort_ms") else h, f)
                                for c, h, f in COLUMNS]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
