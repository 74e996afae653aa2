"""Pruning: unstructured L1 (sparsity, same shapes) and structured channel pruning (smaller layers).

- ``l1-unstructured`` zeroes the smallest-magnitude ``ratio`` of every conv's weights with
  ``torch.nn.utils.prune`` and makes it permanent (``prune.remove``). Shapes do not change, so
  dense kernels run exactly as fast as before: it only helps with sparse runtimes or compression.
  Fine-tuning refills the zeros, so they are pruned again (same ratio) after it.
- ``channel`` removes whole channels with torch-pruning's dependency graph, which keeps
  depthwise groups, residual adds and neck concats consistent; ``ratio`` is the fraction of
  channels removed from every prunable layer (FLOPs fall roughly as ``1 - (1 - ratio)^2``), widths
  rounded to the nearest multiple of 8 for onnxruntime's blocked kernels. The head's output convs
  (box DFL bins, class logits) and the DFL are never pruned.
- With data, BatchNorm statistics are re-measured after pruning (``recalibrate_batchnorm``): a
  removed channel's mean no longer reaches the next layer, and stale statistics mis-centre it.

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
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import LeyoloError, first_line
from ..models.graph import LayerGraphModel
from ..ops import check_imgsz
from ..optional import require
from .measure import onnx_latency_ms, torch_latency_ms
from .tables import markdown_table

log = logging.getLogger("leyolo")

METHODS = ("l1-unstructured", "channel")
IMPORTANCE = {"l1": 1, "l2": 2}
# Families whose graphs torch-pruning was checked on (forward, widths, export). Not yolov12: with
# its attention blocks traced, torch-pruning 1.6's dependency analysis exhausted memory; with them
# excluded, it mis-maps channel indices through the C3k2/R-ELAN split+concat (IndexError).
CHANNEL_FAMILIES = ("leyolo",)


# ---------------------------------------------------------------------------------- pruning
def head_outputs(model: nn.Module) -> list[nn.Module]:
    """The convs that must keep their widths: every branch's output conv and the DFL."""
    head = getattr(model, "head", None)
    if not isinstance(model, LayerGraphModel) or not hasattr(head, "box"):
        raise LeyoloError(f"{type(model).__name__}: pruning needs a layer-graph model with a dense head")
    return [seq[-1] for seq in list(head.box) + list(head.cls)] + [head.dfl.conv]


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


def _every_layer_forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Head maps plus the outputs of layers that feed nothing (published medium), so those get pruned too."""
    outputs: dict[int, torch.Tensor] = {}
    prev = x
    for i, layer in enumerate(model.layers):
        src = model.sources[i]
        if isinstance(src, tuple):
            inp = [prev if s == -1 else outputs[s] for s in src]
        else:
            inp = prev if src == -1 else outputs[src]
        prev = outputs[i] = layer(inp)
    used = {s for src in model.sources for s in (src if isinstance(src, tuple) else (src,)) if s >= 0}
    used |= {i - 1 for i, src in enumerate(model.sources) if src == -1 or (isinstance(src, tuple) and -1 in src)}
    dead = [outputs[i] for i in range(len(model.layers)) if i not in used and i not in model.head_sources]
    return list(model.head([outputs[i] for i in model.head_sources])) + dead


def _nearest_rounding(pruner_class: type) -> type:
    """``pruner_class`` with torch-pruning's width rounding changed from "down" to "nearest, at least one block"."""

    class NearestRounding(pruner_class):  # type: ignore[misc, valid-type]
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            keep = max(round_to, round((current_channels - n_pruned) / round_to) * round_to)
            return max(current_channels - keep, 0)

    return NearestRounding


def channel_prune(model: nn.Module, ratio: float, importance: str = "l2", round_to: int | None = 8) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable layer (in place) with torch-pruning.

    ``round_to`` keeps each pruned width a multiple of N, rounded to the *nearest* multiple (never
    below N). onnxruntime's x86 kernels work on blocks of 8 channels: without rounding, the 30%-pruned
    nano ran 35% *slower* than the original in onnxruntime, with it about 20% faster (BENCHMARKS.md).
    torch-pruning's own rounding goes down (24 channels at a 5% ratio -> 16), which on thin layers
    prunes far more than ``ratio``; ``None`` keeps the exact ratio.
    """
    arch = str(getattr(getattr(model, "meta", None), "arch", ""))
    if not arch.startswith(CHANNEL_FAMILIES):
        raise LeyoloError(f"channel pruning is verified for {', '.join(CHANNEL_FAMILIES)} models only, not {arch} "
                          "(use --method l1-unstructured)")
    tp = require("torch_pruning", "channel pruning")
    model.eval()
    example = torch.zeros(1, 3, 64, 64, dtype=next(model.parameters()).dtype)
    pruner = _nearest_rounding(tp.pruner.MetaPruner)(
        model, example, importance=tp.importance.MagnitudeImportance(p=IMPORTANCE[importance]),
        pruning_ratio=ratio, ignored_layers=head_outputs(model), round_to=round_to,
        forward_fn=_every_layer_forward,
    )
    pruner.step()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:  # a dependency torch-pruning missed: refuse rather than save a broken model
        raise LeyoloError(f"channel pruning produced inconsistent widths ({first_line(exc, 120)})") from None
    return model


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
def measure(detector: Any, label: str, imgsz: int, data: Any, work: Path, runs: int) -> dict[str, Any]:
    """Params, GFLOPs, file size, torch and onnxruntime latency and (with ``data``) val mAP."""
    from ..data.datasets import load_data_yaml
    from ..deploy.onnx_export import export_onnx
    from ..models.flops import count_gflops, count_params

    model = detector.model
    saved = detector.save(work / f"{label}.safetensors")
    onnx_path = export_onnx(model, work / f"{label}.onnx", imgsz, dynamic=False)
    row = {"model": label, "params": count_params(model), "gflops": count_gflops(model, imgsz),
           "size_mb": saved.stat().st_size / 1e6, "sparsity": weight_sparsity(model),
           "torch_ms": torch_latency_ms(model, imgsz, runs), "ort_ms": onnx_latency_ms(onnx_path, imgsz, runs)}
    if data is not None and len(load_data_yaml(data).names) == len(detector.names):  # else fine-tuning re-heads it
        metrics = detector.val(data, imgsz=imgsz)
        row.update({"mAP50-95": metrics["mAP50-95"], "mAP50": metrics["mAP50"]})
    return row


def _check(method: str, ratio: float, finetune_epochs: int, data: Any, imgsz: int, importance: str,
           round_to: int | None = None, bn_images: int = 0) -> None:
    if method not in METHODS:
        raise LeyoloError(f"unknown pruning method {method!r} (choose from {', '.join(METHODS)})")
    if not 0.0 < ratio < 1.0:
        raise LeyoloError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}")
    if importance not in IMPORTANCE:
        raise LeyoloError(f"unknown importance {importance!r} (l1 or l2)")
    if round_to is not None and round_to < 1:
        raise LeyoloError(f"--round-to must be a positive number of channels, got {round_to}")
    if bn_images < 0:
        raise LeyoloError(f"--bn-images must be >= 0, got {bn_images}")
    if finetune_epochs < 0:
        raise LeyoloError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    if finetune_epochs and data is None:
        raise LeyoloError("--finetune-epochs needs --data (a data.yaml)")
    if data is not None and not Path(data).is_file():
        raise LeyoloError(f"{data}: no such dataset description")
    check_imgsz(imgsz)


def prune(model: Any, method: str = "channel", ratio: float = 0.3, *, data: str | Path | None = None,
          finetune_epochs: int = 0, imgsz: int | None = None, out: str | Path | None = None, importance: str = "l2",
          round_to: int | None = 8, bn_images: int = 64, runs: int = 20, evaluate: bool = True,
          **train_overrides: Any) -> dict[str, Any]:
    """Prune ``model`` (name, weights file or ``Detector``), optionally fine-tune, save, and compare.

    With ``data``, the pruned model's BatchNorm statistics are re-measured on ``bn_images`` train
    images (``recalibrate_batchnorm``; 0 = off) before it is measured, saved or fine-tuned.

    ``train_overrides`` go to ``leyolo.train`` (``batch``, ``workers``, ``lr0``...).
    Returns ``out`` (the saved model), ``rows`` (original, pruned, fine-tuned: params, GFLOPs,
    size, latency, sparsity, mAP) and ``table`` (Markdown).
    """
    from ..api import Detector, load

    detector = model if isinstance(model, Detector) else load(model)
    base = detector._require_model("pruning")
    imgsz = int(imgsz or detector.meta.imgsz)
    _check(method, ratio, finetune_epochs, data, imgsz, importance, round_to, bn_images)
    out = Path(out) if out is not None else Path(f"{base.meta.arch}-{method}-{ratio:g}.safetensors")
    if out.suffix.lower() != ".safetensors":
        raise LeyoloError(f"{out}: the pruned model is saved as .safetensors")
    pruned = copy.deepcopy(base).float().cpu().eval()
    if method == "l1-unstructured":
        l1_unstructured(pruned, ratio)
    else:
        channel_prune(pruned, ratio, importance, round_to)
    recalibrated = 0
    if data is not None and bn_images:
        recalibrated = recalibrate_batchnorm(pruned, calibration_batches(data, imgsz, bn_images))
    record = {"method": method, "ratio": ratio, "importance": importance if method == "channel" else "l1",
              "round_to": round_to if method == "channel" else None, "bn_images": recalibrated,
              "finetune_epochs": finetune_epochs}
    pruned.meta.extra = dict(base.meta.extra) | {"pruned": record}
    pruned.meta.imgsz = imgsz
    rows = []
    with tempfile.TemporaryDirectory(prefix="leyolo-prune-") as tmp:
        work = Path(tmp)
        evaluated = data if evaluate else None
        rows.append(measure(Detector(copy.deepcopy(base).float().cpu().eval()), "original", imgsz, evaluated, work,
                            runs))
        result = Detector(pruned).save(out if not finetune_epochs else work / "pruned-input.safetensors")
        rows.append(measure(load(result), f"{method} {ratio:g}", imgsz, evaluated, work, runs))
        if finetune_epochs:
            from ..api import train

            overrides = {"project": str(out.parent / "runs"), "name": f"{out.stem}-finetune", "imgsz": imgsz,
                         **train_overrides}
            trained = train(str(result), str(data), epochs=finetune_epochs, **overrides)
            tuned = load(trained["best"])
            if method == "l1-unstructured":  # training refills the zeros: prune the tuned weights again
                l1_unstructured(tuned.model, ratio)
                if bn_images:
                    recalibrate_batchnorm(tuned.model, calibration_batches(data, imgsz, bn_images))
                tuned.model.eval()
            tuned.model.meta.extra = dict(pruned.meta.extra)
            tuned.model.meta.imgsz = imgsz
            result = tuned.save(out)
            epochs = int(trained.get("epochs", finetune_epochs))  # a --time budget may stop it earlier
            rows.append(measure(load(result), f"+ fine-tune {epochs} ep", imgsz, evaluated, work, runs))
    columns = [("model", "model", ""), ("params", "params", ","), ("gflops", f"GFLOPs@{imgsz}", ".3f"),
               ("size_mb", "size MB", ".2f"), ("sparsity", "zero weights", ".1%"), ("torch_ms", "torch ms", ".1f"),
               ("ort_ms", "onnxruntime ms", ".1f"), ("mAP50-95", "mAP50-95", ".4f"), ("mAP50", "mAP50", ".4f")]
    return {"out": str(result), "method": method, "ratio": ratio, "imgsz": imgsz, "rows": rows,
            "table": markdown_table(rows, columns), "record": record}


# ----------------------------------------------------------------------------------------- CLI
def add_cli(subparsers: Any) -> None:
    """``leyolo prune``."""
    p = subparsers.add_parser("prune", help="prune a model (L1 unstructured or channels), optionally fine-tune",
                              description="Prune, optionally fine-tune, save as .safetensors, and compare with the "
                                          "original (params, GFLOPs, size, latency, mAP).")
    p.add_argument("--model", "-m", required=True, help="model name, .pt or .safetensors weights")
    p.add_argument("--method", default="channel", help="channel (default) | l1-unstructured")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of channels (or weights) removed (default 0.3)")
    p.add_argument("--importance", default="l2", help="channel importance: l2 (default) or l1 weight norm")
    p.add_argument("--round-to", type=int, default=8,
                   help="pruned widths rounded to the nearest multiple of N: onnxruntime's CPU kernels work on "
                        "8-channel blocks (default 8; 0 = exact --ratio)")
    p.add_argument("--bn-images", type=int, default=64,
                   help="with --data: re-measure BatchNorm statistics on this many train images after pruning "
                        "(default 64; 0 = off)")
    p.add_argument("--data", type=Path, help="data.yaml for fine-tuning and the mAP comparison")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model this many epochs")
    p.add_argument("--batch", type=int, help="fine-tuning batch size (default 16)")
    p.add_argument("--workers", type=int, help="fine-tuning data-loading processes (default 2)")
    p.add_argument("--teacher", help="distil from this model while fine-tuning (e.g. the unpruned weights)")
    p.add_argument("--imgsz", type=int, help="image size for fine-tuning, GFLOPs, latency and mAP (default: model's)")
    p.add_argument("--out", type=Path, help="output .safetensors (default <arch>-<method>-<ratio>.safetensors)")
    p.add_argument("--runs", type=int, default=20, help="timed runs for the median latencies (default 20)")
    p.add_argument("--no-val", action="store_true", help="skip the mAP comparison")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("batch", "workers", "teacher") if getattr(args, k) is not None}
    if args.finetune_epochs:
        logging.getLogger("leyolo").setLevel(logging.WARNING if args.quiet else logging.INFO)
    result = prune(args.model, args.method, args.ratio, data=args.data, finetune_epochs=args.finetune_epochs,
                   imgsz=args.imgsz, out=args.out, importance=args.importance, round_to=args.round_to or None,
                   bn_images=args.bn_images, runs=args.runs,
                   evaluate=not args.no_val, **overrides)
    print(result["table"])
    if args.method == "l1-unstructured":
        print("note: unstructured zeros keep every shape; dense CPU/GPU kernels run no faster")
    print(f"wrote {result['out']}")
    return 0
