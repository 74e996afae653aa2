"""Pruning: unstructured L1 (sparsity, same shapes) and structured channel pruning (smaller layers).

- ``l1-unstructured`` zeroes the smallest-magnitude ``ratio`` of every conv's weights with
  ``torch.nn.utils.prune`` and makes it permanent (``prune.remove``). Shapes do not change, so
  dense kernels run exactly as fast as before: it only helps with sparse runtimes or compression.
  Fine-tuning refills the zeros, so they are pruned again (same ratio) after it.
- ``channel`` removes whole channels with torch-pruning's dependency graph (``tools.channels``),
  either the same ``ratio`` of every prunable group or, with ``target_gflops``/``speedup``, the
  non-uniform widths that ``tools.sensitivity`` finds cheapest. Widths are rounded to multiples of 8
  for onnxruntime's blocked kernels; head output convs, the DFL and YOLOv12's attention stay whole.
- With data, each removed channel's calibration mean is folded into the next layer (bias
  compensation), channels are ranked by the variance compensation cannot restore, and BatchNorm
  statistics are re-measured (``recalibrate_batchnorm``). On the published nano at 10% these lift
  one-shot mAP50-95 from 0.107 (recalibration alone) to the values in BENCHMARKS.md.
- ``finetune_epochs``/``finetune_time`` fine-tune on the user's data with distillation from the
  unpruned model (EMA, best epoch on val), and the table compares original, pruned and fine-tuned.

A channel-pruned model has other widths than its registry architecture. Its checkpoint stays
an ordinary leyolo ``.safetensors``: the tensors carry the new widths, ``meta.extra["pruned"]``
records what was done (and marks the file as pruned), and ``leyolo.weights.widths``
(called when it loads) rebuilds convs and BatchNorms to the stored widths, so pruned models
load, fine-tune, export and predict like any other.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import LeyoloError
from ..ops import check_imgsz
from .channels import IMPORTANCE, CHANNEL_FAMILIES, channel_prune, conv_input_stats, head_outputs
from .measure import onnx_latency_ms, torch_latency_ms
from .tables import markdown_table

__all__ = ["CHANNEL_FAMILIES", "calibration_batches", "channel_prune", "head_outputs", "l1_unstructured",
           "one_shot", "prunable_convs", "prune", "recalibrate_batchnorm", "weight_sparsity"]

log = logging.getLogger("leyolo")

METHODS = ("l1-unstructured", "channel")


# ---------------------------------------------------------------------------------- pruning
def prunable_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Convs whose weights pruning may touch (all but the head outputs and the DFL)."""
    keep = {id(m) for m in head_outputs(model)}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in keep]


def l1_unstructured(model: nn.Module, ratio: float) -> nn.Module:
    """Zero the ``ratio`` smallest-|w| weights of every prunable conv, permanently (in place)."""
    from torch.nn.utils import prune

    for _, conv in prunable_convs(model):
        prune.l1_unstructured(conv, "weight", amount=ratio)
        prune.remove(conv, "weight")
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros in the prunable conv weights."""
    weights = [m.weight.detach() for _, m in prunable_convs(model)]
    return float(sum(int((w == 0).sum()) for w in weights) / max(sum(w.numel() for w in weights), 1))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Any) -> int:
    """Re-estimate every BatchNorm's running statistics from ``batches`` of float images (in place).

    Removing a channel also removes its mean contribution to the next layer, and that layer's
    frozen BatchNorm statistics then mis-centre it; statistics re-measured on real images absorb
    the shift ("adaptive BN", EagleEye, Li et al. 2020). On the published nano at 640 px, one-shot
    mAP50-95 after pruning 5% of the channels goes from 0.005 to 0.23 (BENCHMARKS.md).
    Returns the number of images seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    seen = 0
    try:
        for images in batches:
            model(images)
            seen += len(images)
        if not seen:
            raise LeyoloError("BatchNorm recalibration got no images")
    except BaseException:
        for m, (_, state) in zip(norms, saved):  # a failure leaves the statistics as they were
            m.load_state_dict(state)
        raise
    finally:
        for m, (momentum, _) in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    return seen


def calibration_batches(data: str | Path, imgsz: int, images: int, batch: int = 8) -> Iterator[torch.Tensor]:
    """Float batches of up to ``images`` images spread over the train split (val tops up, with a
    warning), through the inference letterbox: the same picking and preprocessing as INT8 calibration."""
    from .quantize import calibration_images, letterboxed_blobs

    paths, _ = calibration_images(data, images)
    load = letterboxed_blobs(paths, imgsz)
    for start in range(0, len(paths), batch):
        yield torch.from_numpy(np.concatenate([load(i) for i in range(start, min(start + batch, len(paths)))]))


# ---------------------------------------------------------------------------------- report
def measure(detector: Any, label: str, imgsz: int, data: Any, work: Path, runs: int,
            threads: int | None = None) -> dict[str, Any]:
    """Params, GFLOPs, file size, torch and onnxruntime latency and (with ``data``) val mAP."""
    from ..data.datasets import load_data_yaml
    from ..deploy.onnx_export import export_onnx
    from ..models.flops import count_gflops, count_params

    model = detector.model
    saved = detector.save(work / f"{label}.safetensors")
    onnx_path = export_onnx(model, work / f"{label}.onnx", imgsz, dynamic=False)
    row = {"model": label, "params": count_params(model), "gflops": count_gflops(model, imgsz),
           "size_mb": saved.stat().st_size / 1e6, "sparsity": weight_sparsity(model),
           "torch_ms": torch_latency_ms(model, imgsz, runs), "ort_ms": _ort_ms(onnx_path, imgsz, runs, threads)}
    if data is not None and len(load_data_yaml(data).names) == len(detector.names):  # else fine-tuning re-heads it
        metrics = detector.val(data, imgsz=imgsz, threads=threads)
        row.update({"mAP50-95": metrics["mAP50-95"], "mAP50": metrics["mAP50"]})
    return row


def _ort_ms(path: Path, imgsz: int, runs: int, threads: int | None) -> float:
    """``onnx_latency_ms`` on ``threads`` onnxruntime threads (``--threads`` caps every runtime, not only torch)."""
    if not threads:
        return onnx_latency_ms(path, imgsz, runs)
    from ..inference.backends import onnxruntime_session
    from .measure import median_latency_ms, random_batch

    session = onnxruntime_session(path, threads=threads)
    feed = {session.get_inputs()[0].name: random_batch(imgsz)}
    return median_latency_ms(lambda: session.run(None, feed), runs)


@dataclass
class PruneOptions:
    """How one-shot channel pruning is done (``one_shot``); ``None`` fields follow from the data given."""

    ratio: float | None = 0.3  # uniform fraction, when no target is given
    target_gflops: float | None = None  # global target: sensitivity scan + non-uniform widths
    speedup: float | None = None  # the same target as original GFLOPs / speedup
    importance: str | None = None  # l2 | l1 | variance (default: variance with data, else l2)
    round_to: int | None = 8
    compensate: bool = True  # fold removed channels' means into the next layer (needs data)
    bn_images: int = 64  # BatchNorm recalibration and calibration statistics (0 = no recalibration)
    scan_images: int = 16
    tolerance: float = 0.04  # a missed GFLOPs target is re-planned this fraction/4 lower each round


@dataclass
class OneShot:
    """What ``one_shot`` did: the model, the record for ``meta.extra["pruned"]`` and the scan."""

    model: nn.Module
    record: dict[str, Any]
    scans: list[Any] = field(default_factory=list)


def one_shot(model: nn.Module, imgsz: int, data: str | Path | None, opts: PruneOptions) -> OneShot:
    """Channel-prune a copy of ``model``: compensation, ranking, widths (uniform or planned), recalibration."""
    from ..models.flops import count_gflops
    from . import sensitivity

    base = copy.deepcopy(model).float().cpu().eval()
    importance = opts.importance or ("variance" if data is not None else "l2")
    calib = list(calibration_batches(data, imgsz, max(opts.bn_images, opts.scan_images, 8))) if data else []
    stats = conv_input_stats(base, calib) if calib and (opts.compensate or importance == "variance") else None
    record: dict[str, Any] = {"method": "channel", "importance": importance, "round_to": opts.round_to,
                              "compensated": bool(stats is not None and opts.compensate)}
    scans: list[Any] = []
    original = count_gflops(base, imgsz)
    target = opts.target_gflops or (original / opts.speedup if opts.speedup else None)
    if target is None:
        pruned, own = copy.deepcopy((base, stats))  # one deepcopy: the statistics follow the copied convs
        channel_prune(pruned, float(opts.ratio or 0.3), importance, opts.round_to, stats=own,
                      compensate_bias=opts.compensate)
        record["ratio"] = float(opts.ratio or 0.3)
    else:
        scan_batches = calib[: max(1, -(-opts.scan_images // 8))]
        scans = sensitivity.scan(base, scan_batches, stats, importance, opts.round_to or 8)
        keep = target / original
        for _ in range(4):  # the MAC model ignores rounding of odd widths and non-conv FLOPs: correct and retry
            ratios = sensitivity.plan(scans, base, imgsz, keep, opts.round_to or 8)
            pruned, own = copy.deepcopy((base, stats))
            channel_prune(pruned, 0.0, importance, opts.round_to, ratios=ratios, stats=own,
                          compensate_bias=opts.compensate)
            reached = count_gflops(pruned, imgsz)
            if reached <= target:
                break
            keep *= target / reached * (1 - opts.tolerance / 4)
        record.update({"ratio": None, "target_gflops": round(target, 4), "gflops": round(reached, 4),
                       "protected": [s.name for s in scans if s.protected],
                       "ratios": {k: round(v, 4) for k, v in ratios.items()}})
    recalibrated = 0
    if calib and opts.bn_images:
        recalibrated = recalibrate_batchnorm(pruned, iter(_limit(calib, opts.bn_images)))
    record["bn_images"] = recalibrated
    return OneShot(pruned.eval(), record, scans)


def _limit(batches: list[torch.Tensor], images: int) -> list[torch.Tensor]:
    out, seen = [], 0
    for b in batches:
        if seen >= images:
            break
        out.append(b[: images - seen])
        seen += len(out[-1])
    return out


def _check(method: str, ratio: float | None, finetune: bool, data: Any, imgsz: int, opts: PruneOptions) -> None:
    if method not in METHODS:
        raise LeyoloError(f"unknown pruning method {method!r} (choose from {', '.join(METHODS)})")
    targeted = opts.target_gflops is not None or opts.speedup is not None
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise LeyoloError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    if targeted and method != "channel":
        raise LeyoloError("--target-gflops / --speedup apply to --method channel")
    if opts.target_gflops is not None and opts.speedup is not None:
        raise LeyoloError("give --target-gflops or --speedup, not both")
    if opts.target_gflops is not None and opts.target_gflops <= 0:
        raise LeyoloError(f"--target-gflops must be positive, got {opts.target_gflops}")
    if opts.speedup is not None and opts.speedup <= 1:
        raise LeyoloError(f"--speedup must be above 1, got {opts.speedup}")
    if targeted and data is None:
        raise LeyoloError("--target-gflops / --speedup need --data (the sensitivity scan runs on its images)")
    if opts.importance is not None and opts.importance not in IMPORTANCE:
        raise LeyoloError(f"unknown importance {opts.importance!r} ({', '.join(IMPORTANCE)})")
    if opts.importance == "variance" and data is None:
        raise LeyoloError("importance 'variance' needs --data (calibration images)")
    if opts.round_to is not None and opts.round_to < 1:
        raise LeyoloError(f"--round-to must be a positive number of channels, got {opts.round_to}")
    if opts.bn_images < 0:
        raise LeyoloError(f"--bn-images must be >= 0, got {opts.bn_images}")
    if finetune and data is None:
        raise LeyoloError("--finetune-epochs / --finetune-time need --data (a data.yaml)")
    if data is not None and not Path(data).is_file():
        raise LeyoloError(f"{data}: no such dataset description")
    check_imgsz(imgsz)


def prune(model: Any, method: str = "channel", ratio: float | None = None, *, data: str | Path | None = None,
          target_gflops: float | None = None, speedup: float | None = None, finetune_epochs: int = 0,
          finetune_time: float | None = None, teacher: str | Path | None = None, distill: bool = True,
          imgsz: int | None = None, out: str | Path | None = None, importance: str | None = None,
          round_to: int | None = 8, compensate: bool = True, bn_images: int = 64, runs: int = 20,
          evaluate: bool = True, threads: int | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Prune ``model`` (name, weights file or ``Detector``), optionally fine-tune, save, and compare.

    Channel pruning removes ``ratio`` (default 0.3) of every group, or meets ``target_gflops``
    (or ``original / speedup``) with non-uniform widths from the sensitivity scan. With ``data``,
    removed channels' means are compensated, channels ranked by ``importance`` "variance" and the
    BatchNorm statistics re-measured on ``bn_images`` train images (0 = off). Fine-tuning
    (``finetune_epochs`` or ``finetune_time`` minutes) distils from ``teacher`` (default: the unpruned
    model; ``distill=False`` turns it off). ``threads`` caps torch/onnxruntime threads for all of it
    (restored afterwards; on a busy machine one thread avoids spin-waiting). ``train_overrides`` go to
    ``leyolo.train``.
    Returns ``out`` (the saved model), ``rows`` (original, pruned, fine-tuned: params, GFLOPs,
    size, latency, sparsity, mAP), ``table`` (Markdown), ``record`` and ``scans``.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _prune(model, method, ratio, data, target_gflops, speedup, finetune_epochs, finetune_time, teacher,
                      distill, imgsz, out, importance, round_to, compensate, bn_images, runs, evaluate, threads,
                      train_overrides)
    finally:
        torch.set_num_threads(previous)


def _prune(model: Any, method: str, ratio: float | None, data: Any, target_gflops: float | None,
           speedup: float | None, finetune_epochs: int, finetune_time: float | None, teacher: Any, distill: bool,
           imgsz: int | None, out: Any, importance: str | None, round_to: int | None, compensate: bool,
           bn_images: int, runs: int, evaluate: bool, threads: int | None,
           train_overrides: dict[str, Any]) -> dict[str, Any]:
    from ..api import Detector, load

    detector = model if isinstance(model, Detector) else load(model)
    base = detector._require_model("pruning")
    imgsz = int(imgsz or detector.meta.imgsz)
    opts = PruneOptions(ratio=ratio, target_gflops=target_gflops, speedup=speedup, importance=importance,
                        round_to=round_to, compensate=compensate, bn_images=bn_images)
    finetune = bool(finetune_epochs or finetune_time)
    if finetune_epochs < 0 or (finetune_time is not None and finetune_time <= 0):
        raise LeyoloError("--finetune-epochs must be >= 0 and --finetune-time positive")
    _check(method, ratio, finetune, data, imgsz, opts)
    label = f"{ratio:g}" if ratio is not None else (f"{target_gflops:g}G" if target_gflops else f"x{speedup:g}")
    if target_gflops is None and speedup is None and ratio is None:
        label = "0.3"
    out = Path(out) if out is not None else Path(f"{base.meta.arch}-{method}-{label}.safetensors")
    if out.suffix.lower() != ".safetensors":
        raise LeyoloError(f"{out}: the pruned model is saved as .safetensors")
    scans: list[Any] = []
    if method == "l1-unstructured":
        pruned = l1_unstructured(copy.deepcopy(base).float().cpu().eval(), float(ratio or 0.3))
        recalibrated = 0
        if data is not None and bn_images:
            recalibrated = recalibrate_batchnorm(pruned, calibration_batches(data, imgsz, bn_images))
        record = {"method": method, "ratio": float(ratio or 0.3), "importance": "l1", "round_to": None,
                  "bn_images": recalibrated}
    else:
        done = one_shot(base, imgsz, data, opts)
        pruned, record, scans = done.model, done.record, done.scans
    record["finetune_epochs"] = finetune_epochs
    if finetune_time:
        record["finetune_time"] = finetune_time
    pruned.meta.extra = dict(base.meta.extra) | {"pruned": record}
    pruned.meta.imgsz = imgsz
    rows = []
    with tempfile.TemporaryDirectory(prefix="leyolo-prune-") as tmp:
        work = Path(tmp)
        evaluated = data if evaluate else None
        original = Detector(copy.deepcopy(base).float().cpu().eval())
        rows.append(measure(original, "original", imgsz, evaluated, work, runs, threads))
        result = Detector(pruned).save(out if not finetune else work / "pruned-input.safetensors")
        rows.append(measure(load(result), f"{method} {label}", imgsz, evaluated, work, runs, threads))
        if finetune:
            from ..api import train

            overrides = {"project": str(out.parent / "runs"), "name": f"{out.stem}-finetune", "imgsz": imgsz,
                         **({"threads": threads} if threads else {}), **train_overrides}
            teacher_path = _teacher(teacher, distill, original, data, work)
            if teacher_path is not None:
                overrides["teacher"] = str(teacher_path)
            budget = {"time": finetune_time} if finetune_time else {"epochs": finetune_epochs}
            trained = train(str(result), str(data), **budget, **overrides)
            tuned = load(trained["best"])
            if method == "l1-unstructured":  # training refills the zeros: prune the tuned weights again
                l1_unstructured(tuned.model, float(ratio or 0.3))
                if bn_images:
                    recalibrate_batchnorm(tuned.model, calibration_batches(data, imgsz, bn_images))
                tuned.model.eval()
            epochs = int(trained.get("epochs", finetune_epochs))  # a --time budget may stop it earlier
            record.update({"finetune_epochs": epochs, "distilled": teacher_path is not None})
            tuned.model.meta.extra = dict(pruned.meta.extra) | {"pruned": record}
            tuned.model.meta.imgsz = imgsz
            result = tuned.save(out)
            rows.append(measure(load(result), f"+ fine-tune {epochs} ep" + (" (distilled)" if teacher_path else ""),
                                imgsz, evaluated, work, runs, threads))
    columns = [("model", "model", ""), ("params", "params", ","), ("gflops", f"GFLOPs@{imgsz}", ".3f"),
               ("size_mb", "size MB", ".2f"), ("sparsity", "zero weights", ".1%"), ("torch_ms", "torch ms", ".1f"),
               ("ort_ms", "onnxruntime ms", ".1f"), ("mAP50-95", "mAP50-95", ".4f"), ("mAP50", "mAP50", ".4f")]
    return {"out": str(result), "method": method, "ratio": record.get("ratio"), "imgsz": imgsz, "rows": rows,
            "table": markdown_table(rows, columns), "record": record, "scans": scans}


def _teacher(teacher: Any, distill: bool, original: Any, data: Any, work: Path) -> Path | None:
    """The distillation teacher's weights: ``teacher``, else the unpruned model (when its classes fit the data)."""
    from ..data.datasets import load_data_yaml

    if not distill:
        return None
    if teacher is not None:
        return Path(teacher)
    if len(load_data_yaml(data).names) != len(original.names):
        log.warning("not distilling: the unpruned model has %d classes, the data %d (fine-tuning re-heads it)",
                    len(original.names), len(load_data_yaml(data).names))
        return None
    return original.save(work / "teacher.safetensors")


# ----------------------------------------------------------------------------------------- CLI
def add_cli(subparsers: Any) -> None:
    """``leyolo prune``."""
    p = subparsers.add_parser("prune", help="prune a model (L1 unstructured or channels), optionally fine-tune",
                              description="Prune, optionally fine-tune with distillation, save as .safetensors, and "
                                          "compare with the original (params, GFLOPs, size, latency, mAP).")
    p.add_argument("--model", "-m", required=True, help="model name, .pt or .safetensors weights")
    p.add_argument("--method", default="channel", help="channel (default) | l1-unstructured")
    p.add_argument("--ratio", type=float, help="fraction of channels (or weights) removed from every layer "
                                               "(default 0.3 without a target)")
    p.add_argument("--target-gflops", type=float, help="global target: non-uniform widths from a per-layer "
                                                      "sensitivity scan on --data images (needs --data)")
    p.add_argument("--speedup", type=float, help="the same as --target-gflops original/SPEEDUP")
    p.add_argument("--importance", help="channel ranking: variance (default with --data: what compensation "
                                        "cannot restore), l2 or l1 weight norm")
    p.add_argument("--no-compensate", action="store_true",
                   help="do not fold removed channels' calibration means into the next layer")
    p.add_argument("--round-to", type=int, default=8,
                   help="pruned widths rounded to the nearest multiple of N: onnxruntime's CPU kernels work on "
                        "8-channel blocks (default 8; 0 = exact --ratio)")
    p.add_argument("--bn-images", type=int, default=64,
                   help="with --data: calibration images for compensation and BatchNorm re-measurement "
                        "(default 64; 0 = no recalibration)")
    p.add_argument("--data", type=Path, help="data.yaml: calibration, fine-tuning and the mAP comparison")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model this many epochs")
    p.add_argument("--finetune-time", type=float, help="fine-tune for this many minutes instead")
    p.add_argument("--teacher", help="distil from this model while fine-tuning (default: the unpruned model)")
    p.add_argument("--no-distill", action="store_true", help="fine-tune without distillation")
    p.add_argument("--batch", type=int, help="fine-tuning batch size (default 16)")
    p.add_argument("--workers", type=int, help="fine-tuning data-loading processes (default 2)")
    p.add_argument("--threads", type=int, help="torch/onnxruntime threads for everything (1 on a busy machine)")
    p.add_argument("--imgsz", type=int, help="image size for fine-tuning, GFLOPs, latency and mAP (default: model's)")
    p.add_argument("--out", type=Path, help="output .safetensors (default <arch>-<method>-<ratio>.safetensors)")
    p.add_argument("--runs", type=int, default=20, help="timed runs for the median latencies (default 20)")
    p.add_argument("--no-val", action="store_true", help="skip the mAP comparison")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("batch", "workers") if getattr(args, k) is not None}
    if args.finetune_epochs or args.finetune_time:
        logging.getLogger("leyolo").setLevel(logging.WARNING if args.quiet else logging.INFO)
    result = prune(args.model, args.method, args.ratio, data=args.data, target_gflops=args.target_gflops,
                   speedup=args.speedup, finetune_epochs=args.finetune_epochs, finetune_time=args.finetune_time,
                   teacher=args.teacher, distill=not args.no_distill, imgsz=args.imgsz, out=args.out,
                   importance=args.importance, round_to=args.round_to or None, compensate=not args.no_compensate,
                   bn_images=args.bn_images, runs=args.runs, evaluate=not args.no_val, threads=args.threads,
                   **overrides)
    print(result["table"])
    if result["record"].get("protected"):
        print(f"left whole by the sensitivity scan: {', '.join(result['record']['protected'])}")
    if args.method == "l1-unstructured":
        print("note: unstructured zeros keep every shape; dense CPU/GPU kernels run no faster")
    print(f"wrote {result['out']}")
    return 0
