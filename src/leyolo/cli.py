"""The ``leyolo`` command. Each sub-command is a thin wrapper over one API call.

``main(argv)`` returns an exit code: 0 success, 1 a problem with the inputs (reported in
one line), 2 bad usage, 130 interrupted. Tracebacks are shown only with ``LEYOLO_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .deploy.base import FORMATS
from .errors import LeyoloError
from .inference.backends import CHOICES

log = logging.getLogger("leyolo")

EPILOG = """examples:
  leyolo demo                                    # synthetic data -> train -> val -> predict, ~4 min on a CPU
  leyolo train --model leyolo-n --data data.yaml --imgsz 320 --time 10
  leyolo train --model LeYOLONano.pt --data data.yaml --epochs 5    # fine-tune published weights
  leyolo info --model leyolo-s --imgsz 640
  leyolo predict --model LeYOLONano.pt --source images/ --save-txt
  leyolo val --model LeYOLONano.pt --data coco-mini/data.yaml --imgsz 640 --json dets.json
  leyolo export --model LeYOLONano.pt --format onnx              # dynamic shapes: same detections as torch
  leyolo export --model LeYOLONano.pt --format openvino --imgsz 320 --nms   # then: leyolo predict --model <folder>
  leyolo convert LeYOLONano.pt leyolo-n.safetensors
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


EXPORT_FORMATS = list(FORMATS)
BACKEND_CHOICES = list(CHOICES)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where there is a default worth saying and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, False, argparse.SUPPRESS) or "default" in text
                or not action.option_strings or action.nargs == 0):
            return text
        return f"{text} (default: {action.default})" if text else f"(default: {action.default})"


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="registered name (leyolo-n, yolov12-s, le-detr-n, ...), published .pt, .safetensors, or an "
                        "export (.onnx, .torchscript, OpenVINO or NCNN folder, .engine)")
    p.add_argument("--decoder-layers", type=_positive_int,
                   help="Le-DETR: decoder layers run at inference; fewer is faster (default: the model's, "
                        "5 for le-detr-m, 6 for l/x: the paper's Table 4)")


def _load(args: argparse.Namespace):
    """``load(args.model)``, with ``--decoder-layers`` applied."""
    from .api import load

    detector = load(args.model)
    if getattr(args, "decoder_layers", None):
        detector.set_decoder_layers(args.decoder_layers)
    return detector


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leyolo", description="Efficient real-time object detection: LeYOLO models on CPUs and small devices.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"leyolo {_version()}")
    parser.add_argument("--quiet", "-q", action="store_true", help="only errors and final results")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                       help="only errors and final results")
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[quiet], **k)  # every sub-command takes -q too

    p = sub.add_parser("info", help="parameters, GFLOPs and layer table of a model")
    _add_model(p)
    p.add_argument("--imgsz", type=_positive_int, help="input size for GFLOPs (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")

    p = sub.add_parser("predict", help="detect objects in images, folders, globs or videos")
    _add_model(p)
    p.add_argument("--source", "-s", required=True,
                   help="image, folder, glob ('imgs/*.jpg'), video file, webcam index (0), stream URL "
                        "(rtsp/rtmp/http) or a .streams list of them")
    _add_inference_args(p, conf=0.25)
    p.add_argument("--vid-stride", type=_positive_int, default=1, help="keep every n-th video/stream frame (default 1)")
    p.add_argument("--save-dir", type=Path, help="where outputs go (default: runs/predict, numbered if it exists)")
    p.add_argument("--no-save", action="store_true", help="do not write annotated images/videos")
    p.add_argument("--save-txt", action="store_true", help="write YOLO txt labels (class cx cy w h conf)")
    p.add_argument("--save-json", action="store_true", help="write COCO-format predictions.json")

    p = sub.add_parser("val", help="COCO metrics on a dataset's val split (pycocotools)")
    _add_model(p)
    p.add_argument("--data", required=True, type=Path, help="data.yaml (YOLO txt labels and/or COCO json)")
    p.add_argument("--split", default="val", help="which split of data.yaml to score (default: val)")
    _add_inference_args(p, conf=None)
    p.add_argument("--single-label", action="store_true",
                   help="keep only each box's best class (as predict does); default keeps every class above conf")
    p.add_argument("--json", type=Path, dest="json_out", help="write COCO-format detections to this file")
    p.add_argument("--verbose", "-v", action="store_true", help="also print per-class AP")
    p.add_argument("--save-dir", type=Path,
                   help="where pr_curve.png and confusion_matrix.png go (default: runs/val, numbered if it exists)")
    p.add_argument("--no-plots", action="store_true", help="no PR curve or confusion matrix")

    p = sub.add_parser("export", help="export a model (ONNX, TorchScript, OpenVINO, NCNN, TensorRT, Triton)",
                       description="Export for deployment. The exported model takes the letterboxed RGB image "
                                   "[B, 3, H, W] in [0, 1]; leyolo load/predict/val read its metadata back.")
    _add_model(p)
    p.add_argument("--format", choices=EXPORT_FORMATS,
                   help="export format (default: what --out implies: .onnx, .torchscript, *_openvino_model, "
                        "*_ncnn_model, .engine, *_triton; else onnx)")
    p.add_argument("--imgsz", type=_positive_int, help="input size (default: the model's)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", action="store_true", default=True,
                       help="symbolic batch, height and width, so every image keeps its own letterbox and the "
                            "export gives exactly torch's detections (the default; TorchScript always is)")
    shape.add_argument("--static", dest="dynamic", action="store_false",
                       help="fixed 1x3xSxS input (for runtimes that need it: images are padded to a square, "
                            "so detections differ slightly from torch's)")
    p.add_argument("--half", action="store_true",
                   help="FP16 weights/compute, FP32 inputs and outputs (onnx, openvino, engine; ncnn: fp16 weights "
                        "and storage); mainly for GPU runtimes and ARM CPUs")
    p.add_argument("--int8", action="store_true",
                   help="with --format engine: TensorRT INT8, entropy-calibrated on --data's train images "
                        "(cache written beside the engine)")
    p.add_argument("--data", type=Path, help="with --int8: the data.yaml whose train images calibrate INT8")
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim (onnx, openvino)")
    p.add_argument("--sampling", choices=["grid_sample", "gather"],
                   help="Le-DETR: how deformable attention samples (default grid_sample: ONNX GridSample, opset 16+; "
                        "gather: the same bilinear sampling without GridSample, for runtimes that lack it or get it "
                        "wrong)")
    p.add_argument("--nms", action="store_true",
                   help="postprocess inside the graph (NMS, or top-k for set predictors); outputs num_dets, det_boxes, "
                        "det_scores, det_classes (onnx, openvino, triton)")
    p.add_argument("--conf", type=_unit_float, default=0.25, help="with --nms: score threshold baked in (default 0.25)")
    p.add_argument("--iou", type=_unit_float, default=0.7, help="with --nms: NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=_positive_int, default=300, help="with --nms: detections per image (default 300)")
    p.add_argument("--multi-label", action="store_true",
                   help="with --nms: keep a box once per class above conf (validation protocol)")
    p.add_argument("--out", type=Path,
                   help="output path (default: <arch>-<imgsz> + .onnx, .torchscript, _openvino_model/, _ncnn_model/, "
                        ".engine or _triton/)")

    p = sub.add_parser("train", help="train from scratch or fine-tune (YOLOv8-style recipe)",
                       formatter_class=_DefaultsFormatter,
                       description="Train a detector. Start from a model name (from scratch) or weights (fine-tune). "
                                   "Several GPUs or CPU processes: torchrun --nproc_per_node N -m leyolo train ...")
    p.add_argument("--model", "-m", default="leyolo-n", help="model name (scratch) or .pt/.safetensors (fine-tune)")
    p.add_argument("--data", type=Path, help="data.yaml (YOLO txt labels or COCO json)")
    p.add_argument("--epochs", type=_positive_int, default=100, help="epochs to train")
    p.add_argument("--time", type=float,
                   help="training budget in minutes, a target: overrides --epochs; the epoch count is planned from "
                        "the measured speed and shown")
    p.add_argument("--min-epochs", type=_positive_int, help="with --time: train at least this many epochs (default 1)")
    p.add_argument("--imgsz", type=_positive_int, default=640, help="training image size (multiple of 32)")
    p.add_argument("--batch", type=_positive_int, default=16, help="images per step, all processes together")
    p.add_argument("--nbs", type=_positive_int,
                   help="nominal batch reached by gradient accumulation (recipe default: 64 YOLOs, none for DETRs)")
    # No argparse defaults for these two: --resume must tell "given" from "left out" (then the checkpoint's
    # value holds); a fresh run falls back to TrainConfig's defaults (2 workers, cpu).
    p.add_argument("--workers", type=int, default=argparse.SUPPRESS, help="data-loading processes (default: 2)")
    p.add_argument("--device", default=argparse.SUPPRESS,
                   help="cpu, cuda, cuda:0, or cuda:0,1 for DDP on several GPUs (launched via torchrun) "
                        "(default: cpu)")
    p.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads (default: torch's; 1 is often faster when other jobs share the cores)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue an interrupted run: its last.safetensors or run folder (default: the latest run)")
    p.add_argument("--project", default="runs/train", help="parent folder of runs")
    p.add_argument("--name", default="exp", help="run folder name (numbered if it exists)")
    p.add_argument("--exist-ok", action="store_true", help="reuse the run folder")
    p.add_argument("--recipe", default="auto", choices=["auto", "scratch", "finetune"],
                   help="defaults for the optimizer, lr, warm-up and mosaic: scratch for names, finetune for weights, "
                        "each in the model family's form (YOLOs: SGD lr0 0.01 / 0.001; Le-DETR: AdamW lr0 4e-4 / 1e-4, "
                        "backbone at 0.5x, gradient clip 0.1, cosine)")
    p.add_argument("--optimizer", choices=["SGD", "AdamW"], help="(recipe default: SGD YOLOs, AdamW DETRs)")
    p.add_argument("--lr0", type=float, help="initial learning rate (recipe default: 0.01 scratch, 0.001 finetune)")
    p.add_argument("--lrf", type=float, help="final lr as a fraction of lr0 (recipe default: 0.01 YOLOs, 0.05 DETRs)")
    p.add_argument("--cos-lr", action=argparse.BooleanOptionalAction, default=None,
                   help="cosine instead of linear decay (recipe default: linear YOLOs, cosine DETRs)")
    p.add_argument("--backbone-lr", type=float, help="backbone lr as a fraction of lr0 (recipe default: 1 YOLOs, 0.5 DETRs)")
    p.add_argument("--weight-decay", type=float, help="(recipe default: 5e-4 YOLOs, 1e-4 DETRs)")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip, 0 = off (recipe default: 10 YOLOs, 0.1 DETRs)")
    p.add_argument("--warmup-epochs", type=float, help="warm-up epochs (recipe default: 3 scratch, 0 finetune)")
    p.add_argument("--mosaic", type=float, help="mosaic probability (recipe default: 1.0 scratch, 0 finetune)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup probability")
    p.add_argument("--close-mosaic", type=int, help="turn mosaic off for the last N epochs (scratch default 10)")
    p.add_argument("--multi-scale", type=float, default=0.0,
                   help="random size per batch in [1-x, 1+x] x imgsz (multiple of 32); 0 = off")
    p.add_argument("--focal-gamma", type=float, default=0.0, help="focal loss gamma for classes (0 = plain BCE)")
    p.add_argument("--class-weights", choices=["median"], help="per-class loss weights from label frequencies")
    p.add_argument("--detr-cls-loss", choices=["mal", "vfl"],
                   help="Le-DETR classification loss: DEIM's matchability-aware (default) or varifocal")
    p.add_argument("--weighted-sampler", action="store_true", help="sample images by their rarest classes")
    p.add_argument("--teacher", help="trained model to distil from (same classes)")
    p.add_argument("--backbone-weights",
                   help="le-detr-n-ly: start its LeYOLO backbone from these LeYOLO-nano weights (e.g. the published "
                        "COCO checkpoint); the rest starts from scratch")
    p.add_argument("--distill-ratio", type=float, default=1.0,
                   help="weight of the logit-level distillation loss (0 = off; with --teacher)")
    p.add_argument("--feature-distill", type=float, default=0.0,
                   help="weight of feature-level distillation (channel-wise KL on the neck maps through learnt "
                        "1x1 adapters; with --teacher; 0 = off)")
    p.add_argument("--feature-temperature", type=float, default=1.0, help="softening temperature of --feature-distill")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP on GPUs")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init, data order and augmentation")
    p.add_argument("--no-val", action="store_true", help="skip per-epoch validation")

    p = sub.add_parser("synth", help="generate the synthetic shapes dataset (YOLO format)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n-train", type=_positive_int, default=400)
    p.add_argument("--n-val", type=_positive_int, default=100)
    p.add_argument("--imgsz", type=_positive_int, default=320)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("demo", help="generate shapes, train leyolo-n on them, validate and predict (~4 min on 2 cores)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where data, weights and images go")
    p.add_argument("--time", type=float, default=3.0,
                   help="training time target in minutes (default 3; a slow machine takes longer to reach the "
                        "minimum training the demo needs, and says so)")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("convert", help="rewrite a model in leyolo's safetensors format")
    p.add_argument("input", help="published .pt or .safetensors")
    p.add_argument("output", type=Path, help="destination .safetensors file")
    for name in PLUGIN_MODULES:  # commands that live beside the code they drive
        importlib.import_module(name).add_cli(sub)
    return parser


def _add_inference_args(p: argparse.ArgumentParser, conf: float | None) -> None:
    p.add_argument("--imgsz", type=_positive_int, help="longest image side fed to the network (default: model's)")
    p.add_argument("--conf", type=_unit_float, default=conf,
                   help=f"score threshold (default {conf})" if conf is not None else
                   "score threshold (default 0.001; 0 for set predictors, which keep their top 300)")
    p.add_argument("--iou", type=_unit_float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=_positive_int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--batch", type=_positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference engine; auto (default): the fastest this machine has for the device "
                        "(onnxruntime on CPU, torch on CUDA; an export uses its own runtime)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:0 (default cpu)")
    p.add_argument("--threads", type=_positive_int,
                   help="CPU threads for the runtime (default: the CPUs this process may use)")
    p.add_argument("--augment", action="store_true",
                   help="test-time augmentation: 3 views (1, 0.83 mirrored, 0.67) merged, on a 1.3x larger input "
                        "unless --imgsz is given; ~3-4x the time")
    p.add_argument("--tta-merge", default="nms", choices=["nms", "wbf"],
                   help="how --augment merges its passes: one NMS over all candidates, or weighted box fusion")


def _version() -> str:
    from . import __version__

    return __version__


def cmd_info(args: argparse.Namespace) -> int:
    from .models.summary import extra_gflops, layer_table

    detector = _load(args)
    info = detector.info(args.imgsz)
    if detector.model is None:  # an export: what its metadata and file say
        if args.json:
            print(json.dumps(info))
        else:
            params = f"{info['params']:,} parameters" if info.get("params") is not None else "parameters unknown"
            params = params.replace("parameters", "weights (BatchNorm folded)")
            print(f"{info['model']} ({info['format']} export{', dynamic' if info['dynamic'] else ''}"
                  f"{', postprocess in graph' if info['nms'] else ''}): {info['classes']} classes, {params}, "
                  f"input {info['imgsz']}, {info['kind']} output; GFLOPs need the PyTorch weights")
        return 0
    info.update(extra_gflops(detector.model, info["imgsz"]))  # attention models: fused and with-attention counts
    if not args.json:
        print(layer_table(detector.model, info["imgsz"]))
        print(f"{info['model']}: {info['params']:,} parameters, {info['gflops']:.3f} GFLOPs at {info['imgsz']}"
              + (" (conv + BN, BN unfused)" if "gflops_fused" in info else ""))
        if "gflops_fused" in info:
            print(f"  {info['gflops_fused']:.3f} GFLOPs after Conv+BN fusion (as published), "
                  f"{info['gflops_with_attention']:.3f} GFLOPs with the attention matrix products")
    else:
        print(json.dumps(info))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.live import open_source
    from .inference.writers import PredictionWriter

    detector = _load(args)
    frames = open_source(args.source, vid_stride=args.vid_stride)  # files, videos, webcams, streams
    # imgsz None: the model's, or with --augment the recipe's 1.3x larger input
    stream = detector.predictor(
        args.backend, args.device, args.threads, imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
        batch=args.batch, augment=args.augment, tta_merge=args.tta_merge,
    ).stream(frames)
    writer = PredictionWriter(
        args.save_dir, args.source, save_images=not args.no_save, save_txt=args.save_txt, save_json=args.save_json,
        quiet=args.quiet, vid_stride=args.vid_stride, fps=getattr(frames, "fps", None),
    )
    summary = writer.consume(stream)
    for line in summary.report():
        print(line, file=sys.stderr if "skipped" in line else sys.stdout)
    return 1 if summary.failed else 0


def cmd_val(args: argparse.Namespace) -> int:
    from .engine.evaluator import format_metrics
    from .inference.writers import next_free_dir

    detector = _load(args)
    bar = None

    def progress(total: int):
        nonlocal bar
        from tqdm import tqdm

        bar = tqdm(total=total, desc="val", unit="img", disable=args.quiet or None, file=sys.stderr)
        return bar.update

    try:
        metrics = detector.val(
            args.data, split=args.split, imgsz=args.imgsz, batch=args.batch, conf=args.conf, iou=args.iou,
            max_det=args.max_det, single_label=args.single_label, backend=args.backend, device=args.device,
            threads=args.threads, augment=args.augment, tta_merge=args.tta_merge, json_path=args.json_out,
            verbose=args.verbose, progress=progress,
            plots_dir=None if args.no_plots else (args.save_dir or next_free_dir(Path("runs/val"))),
        )
    finally:
        if bar is not None:
            bar.close()
    print(format_metrics(metrics))
    if metrics.get("plots"):
        print(f"plots: {', '.join(metrics['plots'])}")
    for reason in metrics.get("skipped", []):
        print(f"skipped: {reason}", file=sys.stderr)
    if args.json_out:
        print(f"detections written to {args.json_out}")
    return 1 if metrics.get("skipped") else 0


def cmd_export(args: argparse.Namespace) -> int:

    detector = _load(args)
    path = detector.export(args.out, format=args.format, imgsz=args.imgsz, dynamic=args.dynamic, half=args.half,
                           simplify=args.simplify, nms=args.nms, conf=args.conf, iou=args.iou, max_det=args.max_det,
                           multi_label=args.multi_label, int8=args.int8, data=args.data, sampling=args.sampling)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    print(f"exported {path} ({size / 1e6:.2f} MB)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .api import convert

    if args.output.suffix.lower() != ".safetensors":
        raise LeyoloError(f"{args.output}: output must end in .safetensors")
    path = convert(args.input, args.output)
    print(f"wrote {path}")
    return 0


TRAIN_FIELDS = ("epochs", "time", "min_epochs", "imgsz", "batch", "nbs", "workers", "device", "threads", "project",
                "name", "exist_ok", "recipe", "optimizer", "lr0", "lrf", "cos_lr", "backbone_lr", "weight_decay", "grad_clip", "warmup_epochs", "mosaic", "mixup", "close_mosaic", "multi_scale",
                "focal_gamma", "class_weights", "detr_cls_loss", "weighted_sampler", "teacher", "backbone_weights", "distill_ratio",
                "feature_distill", "feature_temperature", "sync_bn", "seed")


def _launch_distributed(args: argparse.Namespace) -> int:
    """``--device cuda:0,1``: re-run this command under torchrun, one process per listed GPU."""
    import subprocess

    ids = args.device.split(":", 1)[-1]
    count = len([i for i in ids.split(",") if i.strip()])
    argv = list(args.argv)
    for i, token in enumerate(argv):
        if token == "--device" and i + 1 < len(argv):
            argv[i + 1] = "cuda"
        elif token.startswith("--device="):
            argv[i] = "--device=cuda"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ids}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(count), "-m", "leyolo", *argv]
    print(f"launching {count} processes: CUDA_VISIBLE_DEVICES={ids} {' '.join(command[1:])}", file=sys.stderr)
    return subprocess.call(command, env=env)


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    device = getattr(args, "device", None) or ""
    if "," in device and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return _launch_distributed(args)
    rank = int(os.environ.get("RANK", 0))
    logging.getLogger("leyolo").setLevel(logging.WARNING if args.quiet else logging.INFO)
    options = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k, None) is not None}
    options["val"] = not args.no_val
    if args.resume is not None:
        target = args.resume or _latest_run(Path(args.project))
        explicit = {k: v for k, v in options.items() if k in ("device", "workers", "threads")}
        result = train(resume=target, **explicit)
    else:
        if args.data is None:
            raise LeyoloError("--data is required (a data.yaml); try 'leyolo demo' for a self-contained example")
        result = train(args.model, str(args.data), **options)
    metrics = result["metrics"]
    if rank != 0:
        return 0  # rank 0 reports for everyone
    print(f"trained {result['epochs']} epochs in {result['seconds'] / 60:.1f} min; "
          + (f"val mAP50 {metrics['mAP50']:.4f}, mAP50-95 {metrics['mAP50-95']:.4f}; " if "mAP50" in metrics else "")
          + f"best weights {result['best']}")
    return 0


def _latest_run(project: Path) -> Path:
    candidates = sorted(project.glob("*/weights/last.safetensors"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise LeyoloError(f"{project}: no run to resume (looked for */weights/last.safetensors)")
    return candidates[-1]


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_shapes_dataset

    path = generate_shapes_dataset(args.out, n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz, seed=args.seed,
                                   progress=not args.quiet)
    print(f"dataset ready: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .tools.demo import run_demo

    logging.getLogger("leyolo").setLevel(logging.WARNING if args.quiet else logging.INFO)
    for line in run_demo(args.out, minutes=args.time, device=args.device):
        print(line)
    return 0


# Modules exposing ``add_cli(subparsers)``, which adds a parser with ``set_defaults(handler=fn)``
# where ``fn(args) -> int``. Keep their imports light: heavy dependencies load inside ``fn``.
PLUGIN_MODULES: tuple[str, ...] = ("leyolo.tools.bench", "leyolo.tools.ablate", "leyolo.tools.quantize",
                                  "leyolo.tools.prune", "leyolo.tools.serve", "leyolo.tools.track")

COMMANDS = {"train": cmd_train, "synth": cmd_synth, "demo": cmd_demo, "info": cmd_info, "predict": cmd_predict,
            "val": cmd_val, "export": cmd_export, "convert": cmd_convert}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except LeyoloError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line, traceback only on request
        if os.environ.get("LEYOLO_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set LEYOLO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
