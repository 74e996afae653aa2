"""The training loop. One trainer for every detector: the model family brings its criterion.

Hook points (``callbacks``): ``before_train``, ``before_epoch``, ``after_iter``,
``after_epoch``, ``after_train``; each receives the trainer.
Distributed training uses PyTorch DDP when started by ``torchrun`` (``WORLD_SIZE`` > 1).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.dataset import DetectionDataset
from ..data.datasets import load_data_yaml
from ..data.loader import build_dataloader, class_weights_from_counts, weighted_sampler
from ..errors import LeyoloError
from ..inference.backends import TorchBackend, torch_device
from ..inference.predictor import Predictor
from ..losses import build_criterion
from ..losses.feature_distill import ChannelWiseDistillation, HeadInputs, head_input_channels
from ..models.base import DetectionModel
from ..models.registry import create_model, get_entry, list_models
from ..weights.loading import load_model
from ..weights.native import read_native_metadata
from .checkpoint import load_checkpoint, module_state, save_checkpoint, split_resume_state
from .config import TrainConfig
from .ema import ModelEMA, unwrap
from .optim import build_optimizer, lr_lambda, warmup_value
from .plots import append_results, plot_results
from .validate import val_settings, validate

log = logging.getLogger("leyolo")

Callback = Callable[["Trainer"], None]


def recipe_family(model: DetectionModel | str | Path) -> str:
    """The training-defaults family of a model's registry entry: of a model, a registered name or a
    ``.safetensors`` file's architecture (``yolo`` for anything else, e.g. the published ``.pt``)."""
    arch = model.meta.arch if isinstance(model, DetectionModel) else str(model)
    if not isinstance(model, DetectionModel) and str(model).endswith(".safetensors") and Path(model).is_file():
        try:
            arch = str(read_native_metadata(model).get("arch", ""))
        except LeyoloError:
            return "yolo"
    try:
        return get_entry(arch).recipe
    except LeyoloError:
        return "yolo"


def fitness(metrics: dict[str, Any]) -> float:
    """Model selection score: 0.1 mAP50 + 0.9 mAP50-95 (NaN counts as 0)."""
    m50 = metrics.get("mAP50", 0.0)
    m = metrics.get("mAP50-95", 0.0)
    m50 = 0.0 if m50 != m50 else m50
    m = 0.0 if m != m else m
    return 0.1 * m50 + 0.9 * m


def next_run_dir(project: Path, name: str, exist_ok: bool) -> Path:
    path = project / name
    if exist_ok or not path.exists():
        return path
    n = 2
    while (project / f"{name}{n}").exists():
        n += 1
    return project / f"{name}{n}"


class Trainer:
    """Train a detector on a data.yaml dataset; see ``TrainConfig`` for the knobs."""

    def __init__(self, config: TrainConfig, callbacks: dict[str, list[Callback]] | None = None,
                 model: DetectionModel | None = None) -> None:
        self.requested = config
        self.initial_model = model  # an in-memory model to fine-tune (Detector.train); else built from config.model
        self.callbacks = callbacks or {}
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world_size > 1
        self.is_main = self.rank == 0
        self.start_epoch = 0
        self.best_fitness = -1.0
        self.elapsed_before = 0.0  # seconds spent in earlier (resumed) sessions
        self.metrics: dict[str, Any] = {}
        self.epoch_times: list[float] = []
        self.stop = False

    # ----------------------------------------------------------------------------- set-up
    def _fire(self, event: str) -> None:
        for callback in self.callbacks.get(event, []):
            callback(self)

    def _setup_device(self) -> torch.device:
        spec = self.requested.device
        if self.distributed:
            if spec.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
                device, backend = torch.device("cuda", self.local_rank), "nccl"
            else:
                device, backend = torch.device("cpu"), "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
            return device
        if "," in spec:
            raise LeyoloError(f"--device {spec} names several devices: start with "
                              f"'torchrun --nproc_per_node {len(spec.split(','))} -m leyolo train ...'")
        return torch_device(spec)

    def _seed(self, seed: int) -> None:
        # the global generators are seeded (model init and third-party code use them) and handed
        # back as they were when training ends, so calling train() leaves the caller's RNGs alone
        self._global_rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
                            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        random.seed(seed)
        np.random.seed(seed)  # third-party code may still use the global generator
        torch.manual_seed(seed)
        if self.config.deterministic:
            # process-wide switches: remembered here and restored when training ends
            self._global_flags = (torch.are_deterministic_algorithms_enabled(),
                                  torch.is_deterministic_algorithms_warn_only_enabled(),
                                  torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def setup(self) -> None:
        cfg = self.requested
        resume_tensors = resume_meta = None
        if cfg.model and Path(str(cfg.model)).suffix == ".safetensors" and getattr(self, "_resume", False):
            resume_tensors, resume_meta = load_checkpoint(Path(cfg.model))
        spec = load_data_yaml(cfg.data)
        scratch = self.initial_model is None and str(cfg.model) in list_models()
        cfg.check()
        self.config = cfg
        self.device = self._setup_device()
        self._seed(cfg.seed + self.rank)  # before the model is built: its initial weights follow --seed
        if self.initial_model is not None:
            model = copy.deepcopy(self.initial_model)
        elif scratch:  # from scratch: build for the dataset's classes directly
            model = create_model(str(cfg.model), nc=spec.nc, names=list(spec.names))
        else:
            model = load_model(cfg.model)
        if cfg.backbone_weights and resume_tensors is None:
            if not scratch:
                raise LeyoloError("--backbone-weights starts a model trained from scratch (a registered name); "
                                  f"{cfg.model} already has weights")
            try:
                copied = model.init_backbone(load_model(cfg.backbone_weights))
            except ValueError as err:
                raise LeyoloError(f"--backbone-weights: {err}") from None
            log.info("backbone: %d tensors from %s", copied, cfg.backbone_weights)
        self.config = cfg = cfg.resolved(pretrained=not scratch, family=recipe_family(model))
        self.spec = spec
        if list(model.names) != list(self.spec.names):
            if model.nc != self.spec.nc:
                log.info("re-initialising class outputs: %d -> %d classes", model.nc, self.spec.nc)
                model.reset_classes(self.spec.nc)
            model.meta.names = list(self.spec.names)
        model.meta.imgsz = cfg.imgsz
        # channels-last: depthwise-heavy nets train ~2x faster on CPU (oneDNN) and use tensor cores on GPU
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self.train_set = DetectionDataset(self.spec, "train", imgsz=cfg.imgsz, augment=True, hyp=cfg.augment(),
                                          seed=cfg.seed + self.rank)
        class_weights = None
        if cfg.class_weights or cfg.weighted_sampler:
            class_weights = class_weights_from_counts(self.train_set.class_counts())
            log.info("class weights: %s", np.round(class_weights, 3).tolist())
        self.class_weights = class_weights
        weights = (torch.as_tensor(class_weights, dtype=torch.float32, device=self.device)
                   if cfg.class_weights else None)
        self.train_targets = bool(getattr(model, "train_targets", False))  # DETR denoising queries
        self.criterion = build_criterion(unwrap(self.model), {**cfg.to_dict(), "class_weights": weights})
        self.teacher = None
        if cfg.teacher:
            teacher = load_model(cfg.teacher)
            if teacher.nc != model.nc:
                raise LeyoloError(f"{cfg.teacher}: the teacher must be PyTorch weights with {model.nc} classes")
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.distiller = self._build_distiller(model)
        if cfg.sync_bn and self.distributed and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.batch_size = max(cfg.batch // self.world_size, 1)
        self.accumulate = max(round(cfg.nbs / (self.batch_size * self.world_size)), 1)
        weight_decay = cfg.weight_decay * self.batch_size * self.world_size * self.accumulate / cfg.nbs
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr0, cfg.momentum, weight_decay,
                                         backbone_lr=cfg.backbone_lr)
        if self.distiller is not None:  # the adapters learn with the student, at its lr, without decay
            self.optimizer.add_param_group({"params": list(self.distiller.parameters()), "weight_decay": 0.0,
                                            "kind": "distill", "lr_scale": 1.0})
        self.ema = ModelEMA(self.model, cfg.ema_decay)
        if resume_tensors is not None:
            self._restore(resume_tensors, resume_meta)
        self.head_inputs: tuple[HeadInputs, HeadInputs] | None = None
        if self.distiller is not None:  # hooks after the EMA copy, so the EMA model carries none
            self.head_inputs = (HeadInputs(self.model, "student"), HeadInputs(self.teacher, "teacher"))
        if self.distributed:
            ids = [self.local_rank] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            if self.distiller is not None:
                self.distiller = nn.parallel.DistributedDataParallel(self.distiller, device_ids=ids)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self.loader = self._build_loader()
        if not getattr(self, "save_dir", None):
            self.save_dir = next_run_dir(Path(cfg.project), cfg.name, cfg.exist_ok)
        self.weights_dir = self.save_dir / "weights"
        if self.is_main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)

    def _build_distiller(self, model: DetectionModel) -> ChannelWiseDistillation | None:
        """With ``--feature-distill``: adapters from the student's head inputs to the teacher's."""
        cfg = self.config
        if cfg.feature_distill <= 0:
            return None
        if model.output_kind != "dense" or self.teacher.output_kind != "dense":  # config.check: a teacher is set
            raise LeyoloError("--feature-distill needs dense-head student and teacher (LeYOLO, YOLOv12)")
        student = head_input_channels(model, cfg.imgsz, "student")
        teacher = head_input_channels(self.teacher, cfg.imgsz, "teacher")
        log.info("feature distillation: student maps %s -> teacher maps %s (1x1 adapters)", student, teacher)
        return ChannelWiseDistillation(student, teacher, cfg.feature_temperature).to(self.device)

    def _build_loader(self):
        sampler = None
        if self.config.weighted_sampler and not self.distributed:
            sampler = weighted_sampler(self.train_set, self.class_weights, seed=self.config.seed)
        return build_dataloader(self.train_set, batch_size=self.batch_size, workers=self.config.workers,
                                shuffle=sampler is None, seed=self.config.seed, sampler=sampler,
                                distributed=self.distributed, drop_last=False)

    def _restore(self, tensors: dict, meta: dict) -> None:
        ema, raw, optim, torch_rng = split_resume_state(tensors, meta)
        state = meta["train"]
        self.model.load_state_dict(raw or ema)
        self.ema.ema.load_state_dict(ema)
        self.ema.updates = int(state.get("ema_updates", 0))
        if self.distiller is not None:
            saved = module_state(tensors, "distill")
            if not saved:
                raise LeyoloError("this checkpoint was trained without --feature-distill: resume it without")
            self.distiller.load_state_dict(saved)
        if optim is not None:
            self.optimizer.load_state_dict(optim)
        if torch_rng is not None:
            torch.set_rng_state(torch_rng)
        self.start_epoch = int(state["epoch"]) + 1
        self.best_fitness = float(state.get("best_fitness", -1.0))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.epochs = int(state.get("epochs", self.config.epochs))
        self.epoch_times = list(state.get("epoch_times", []))
        log.info("resuming from epoch %d of %d", self.start_epoch + 1, self.epochs)

    # ------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        threads = torch.get_num_threads()
        try:
            if self.requested.threads:
                torch.set_num_threads(self.requested.threads)  # process-wide: put back when training ends
            return self._train()
        finally:
            torch.set_num_threads(threads)
            for hook in getattr(self, "head_inputs", None) or ():
                hook.remove()
            saved = getattr(self, "_global_rng", None)
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.random.set_rng_state(saved[2])
                if saved[3] is not None:
                    torch.cuda.set_rng_state_all(saved[3])
            flags = getattr(self, "_global_flags", None)
            if flags is not None:
                torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]

    def _train(self) -> dict[str, Any]:
        self.setup()
        cfg = self.config
        if not hasattr(self, "epochs"):
            self.epochs = cfg.epochs
        self.planned = not cfg.time or self.start_epoch > 0  # a --time run plans its epochs once it has measured
        if not self.planned:
            self.epochs = max(cfg.min_epochs, 1)
        self.nb = len(self.loader)
        self.warmup_iters = max(round(cfg.warmup_epochs * self.nb), cfg.min_warmup_iters) if cfg.warmup_epochs > 0 else 0
        self.t0 = time.perf_counter()
        self._fire("before_train")
        epoch = self.start_epoch
        if self.is_main:
            log.info("training %s on %s for %s, results in %s", unwrap(self.model).meta.arch, cfg.data,
                     f"{cfg.time:g} min (epochs planned from measured speed)" if cfg.time else f"{self.epochs} epochs",
                     self.save_dir)
        while epoch < self.epochs and not self.stop:
            epoch_start = time.perf_counter()
            self.epoch = epoch
            self._fire("before_epoch")
            # ">=" and not "==": a resumed run (or a --time re-plan) may start past the closing epoch
            if (cfg.close_mosaic and cfg.mosaic > 0 and self.train_set.mosaic_enabled
                    and epoch >= max(self.epochs - cfg.close_mosaic, 0)):
                self._close_mosaic()
            losses = self.train_one_epoch(epoch)
            self.metrics = self.validate() if cfg.val and self.is_main else {}
            self.epoch_times.append(time.perf_counter() - epoch_start)
            if self.is_main:
                self._after_epoch(epoch, losses)
            self._fire("after_epoch")
            self._fit_time_budget(epoch)
            if self.distributed:
                flag = torch.tensor([int(self.stop), self.epochs], device=self.device)
                dist.broadcast(flag, 0)
                self.stop, self.epochs = bool(flag[0]), int(flag[1])
            epoch += 1
        self._fire("after_train")
        best = self.weights_dir / "best.safetensors"
        plots: list[str] = []
        if self.is_main and cfg.val and cfg.plots and best.is_file():  # PR curves and confusion matrix of the best
            plots = self.validate(load_model(best).to(self.device), plots_dir=self.save_dir).get("plots", [])
        result = {"save_dir": str(self.save_dir), "best": str(best),
                  "last": str(self.weights_dir / "last.safetensors"), "epochs": epoch, "metrics": self.metrics,
                  "best_fitness": self.best_fitness, "seconds": self.elapsed(), "plots": plots}
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return result

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def _plan_epochs(self, done: float, per_epoch: float) -> None:
        """With ``--time``: the epoch count that makes the run end nearest the budget (a target, not a
        cut-off: the last epoch may end up to half an epoch late), never below ``min_epochs``.

        ``done`` epochs (fractional while the first is measured) took ``per_epoch`` seconds each.
        """
        cfg = self.config
        current = math.ceil(done - 1e-9)  # epochs complete once the one under way ends
        after_current = cfg.time * 60 - self.elapsed() - (current - done) * per_epoch
        planned = max(cfg.min_epochs, current + max(round(after_current / per_epoch), 0))
        if not self.planned or abs(planned - self.epochs) >= max(2, 0.1 * self.epochs):  # not every small drift
            log.info("%s %d epochs (~%.0f s each) for the %g-minute budget", "planned" if not self.planned else
                     "re-planned:", planned, per_epoch, cfg.time)
        self.epochs, self.planned = planned, True

    def _fit_time_budget(self, epoch: int) -> None:
        """With ``--time``: re-plan from the mean of the last three epochs (the machine's speed drifts)."""
        if not self.config.time or not self.is_main:
            return
        self._plan_epochs(epoch + 1, float(np.mean(self.epoch_times[-3:])))
        if epoch + 1 >= self.epochs:
            self.stop = True

    def _close_mosaic(self) -> None:
        log.info("closing mosaic for the last %d epoch(s)", max(self.epochs - self.epoch, 1))
        self.train_set.close_mosaic()
        self.loader = self._build_loader()

    def _seed_epoch(self, epoch: int) -> None:
        """Make ``epoch``'s randomness a function of (seed, rank, epoch): order and per-item
        augmentation through the loader's ``EpochSampler``, multi-scale sizes here. A resumed run
        therefore draws exactly what the uninterrupted run would have."""
        self.loader.sampler.set_epoch(epoch)
        self.rng = np.random.default_rng([self.config.seed, self.rank, epoch])

    def _set_epoch_lr(self, epoch: float) -> None:
        factor = lr_lambda(self.epochs, self.config.lrf, self.config.cos_lr)(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr0 * factor * group.get("lr_scale", 1.0)
            group["initial_lr"] = group["lr"]

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.config
        self.model.train()
        self._seed_epoch(epoch)
        self._set_epoch_lr(epoch)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(self.loader, total=self.nb, desc=self._epoch_label(epoch), unit="batch",
                   disable=not (self.is_main and cfg.progress), mininterval=0.5 if sys.stderr.isatty() else 15.0)
        last_step = -1
        start = time.perf_counter()
        measure_at = min(self.nb, max(2, math.ceil(0.2 * self.nb)))  # batches timed before a --time run plans
        for i, batch in enumerate(bar):
            ni = i + self.nb * epoch
            accumulate = self._warmup(ni, epoch)
            items = self.train_one_iter(batch)
            if ni - last_step >= accumulate or i == self.nb - 1:
                self.optimizer_step()
                last_step = ni
            for key, value in items.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
            self.iteration_items = items
            self._fire("after_iter")
            if self.is_main:
                bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
            if not self.planned and self.is_main and i + 1 == measure_at:
                self._plan_epochs((i + 1) / self.nb, (time.perf_counter() - start) / (i + 1) * self.nb)
                bar.set_description(self._epoch_label(epoch))
            if self._overran(epoch):
                self.stop = True  # hard stop: the machine slowed down far past the plan
                break
        bar.close()
        return {k: v / max(count, 1) for k, v in sums.items()}

    def _epoch_label(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.epochs}" if self.planned else f"epoch {epoch + 1} (timing to plan)"

    def _overran(self, epoch: int) -> bool:
        """Past the budget by more than one epoch's time (30 s at least), with ``min_epochs`` done."""
        cfg = self.config
        if not cfg.time or epoch < cfg.min_epochs:
            return False
        per_epoch = float(np.mean(self.epoch_times[-3:])) if self.epoch_times else 0.0
        return self.elapsed() > cfg.time * 60 + max(30.0, per_epoch)

    def _warmup(self, ni: int, epoch: int) -> int:
        """Warm-up of lr (bias group from ``warmup_bias_lr``), momentum and accumulation; returns accumulation."""
        cfg = self.config
        if ni >= self.warmup_iters:
            return self.accumulate
        target = lr_lambda(self.epochs, cfg.lrf, cfg.cos_lr)(epoch)
        for j, group in enumerate(self.optimizer.param_groups):
            kind = group.get("kind") or ("bias" if j == 2 else "")  # states saved before groups had kinds
            start = cfg.warmup_bias_lr if kind == "bias" else 0.0
            group["lr"] = warmup_value(ni, self.warmup_iters, start, cfg.lr0 * target * group.get("lr_scale", 1.0))
            if "momentum" in group:
                group["momentum"] = warmup_value(ni, self.warmup_iters, cfg.warmup_momentum, cfg.momentum)
        return max(round(warmup_value(ni, self.warmup_iters, 1, cfg.nbs / (self.batch_size * self.world_size))), 1)

    def _scaled_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ms = self.config.multi_scale
        if not ms:
            return images, targets
        size = self.config.imgsz
        stride = unwrap(self.model).stride
        low, high = int(size * (1 - ms)) // stride, int(size * (1 + ms)) // stride
        new = int(self.rng.integers(max(low, 1), max(high, 1) + 1)) * stride
        if new == images.shape[-1]:
            return images, targets
        factor = new / images.shape[-1]
        images = F.interpolate(images, size=(new, new), mode="bilinear", align_corners=False)
        targets = targets.clone()
        targets[:, 2:] *= factor
        return images, targets

    def train_one_iter(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.config
        images = batch["images"].to(self.device, non_blocking=True).float().div_(255)
        images = images.contiguous(memory_format=torch.channels_last)
        targets = batch["targets"].to(self.device)
        images, targets = self._scaled_batch(images, targets)
        with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
            raw = self.model(images, targets) if self.train_targets else self.model(images)
            if self.teacher is None:
                loss, items = self.criterion(raw, targets)
            else:
                with torch.no_grad():
                    teacher_raw = self.teacher(images)
                loss, items = self.criterion(raw, targets, teacher_raw=teacher_raw, distill_ratio=cfg.distill_ratio,
                                             distill_temperature=cfg.distill_temperature)
                if self.head_inputs is not None:
                    student_maps, teacher_maps = (h.take() for h in self.head_inputs)
                    feat = self.distiller(student_maps, teacher_maps)
                    loss = loss + cfg.feature_distill * feat
                    items = {**items, "feat": feat.detach() / images.shape[0]}  # per image, as the others
        if self.distributed and getattr(self.criterion, "batch_sum", True):
            loss = loss * self.world_size  # DDP averages gradients; a batch-sum loss must stay a sum
        if not torch.isfinite(loss):
            raise LeyoloError("training diverged: the loss is not finite (try a lower --lr0)")
        self.scaler.scale(loss).backward()
        return items

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)

    # -------------------------------------------------------------------- validation & saving
    def validate(self, model: DetectionModel | None = None, plots_dir: Path | None = None) -> dict[str, Any]:
        """COCO metrics of ``model`` (default: the EMA weights) on the val split, with the standard
        protocol of its output kind; ``plots_dir`` also gets the PR curves and confusion matrix."""
        model = self.ema.ema if model is None else model
        backend = TorchBackend(model, str(self.device) if self.device.type == "cuda" else "cpu")
        predictor = Predictor.for_meta(backend, model.meta, **val_settings(model.meta.kind, imgsz=self.config.imgsz))
        return validate(predictor, self.config.data, plots_dir=plots_dir)

    def _after_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        cfg = self.config
        score = fitness(self.metrics) if self.metrics else -epoch  # without val, the latest is the best
        improved = score > self.best_fitness if self.metrics else True
        if improved:
            self.best_fitness = score
        row = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in losses.items()}}
        for key in ("mAP50-95", "mAP50", "mAP75"):
            if key in self.metrics:
                row[f"metrics/{key}"] = self.metrics[key]
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["time"] = self.elapsed()
        append_results(self.save_dir / "results.csv", row)
        state = {"epoch": epoch, "epochs": self.epochs, "best_fitness": self.best_fitness,
                 "ema_updates": self.ema.updates, "elapsed": self.elapsed(), "epoch_times": self.epoch_times,
                 "config": cfg.to_dict(), "save_dir": str(self.save_dir), "metrics": _plain(self.metrics)}
        extra = {"distill": unwrap(self.distiller)} if self.distiller is not None else None
        save_checkpoint(self.weights_dir / "last.safetensors", self.ema.ema, cfg.imgsz, model=unwrap(self.model),
                        optimizer=self.optimizer, train_state=state, extra=extra)
        if improved:
            save_checkpoint(self.weights_dir / "best.safetensors", self.ema.ema, cfg.imgsz,
                            train_state={k: v for k, v in state.items() if k != "epoch_times"})
        if cfg.plots:
            plot_results(self.save_dir / "results.csv", self.save_dir)
        summary = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        maps = " ".join(f"{k} {self.metrics[k]:.4f}" for k in ("mAP50", "mAP50-95") if k in self.metrics)
        log.info("epoch %d/%d  %s  %s  (%.0fs)", epoch + 1, self.epochs, summary, maps, self.elapsed())


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "text"}


def train(model: str | Path | DetectionModel = "leyolo-n", data: str | Path = "", resume: str | Path | None = None,
          callbacks: dict[str, list[Callback]] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train (or resume) and return paths and final metrics.

    Args:
        model: a registered name (from scratch), a weights file (fine-tune) or a ``DetectionModel``.
        data: the dataset's data.yaml.
        resume: a run folder or its ``last.safetensors`` to continue.
        callbacks: hook name -> callables taking the trainer.
        **overrides: ``TrainConfig`` fields (``epochs``, ``imgsz``, ``batch``, ``time``, ...).
    """
    if resume is not None:
        path = Path(resume)
        if path.is_dir():
            path = path / "weights" / "last.safetensors"
        if not path.exists():
            raise LeyoloError(f"{path}: no checkpoint to resume from")
        _, meta = load_checkpoint(path)
        config = replace(TrainConfig.from_dict(meta["train"]["config"]), model=str(path), **overrides)
        trainer = Trainer(config, callbacks)
        trainer._resume = True
        trainer.save_dir = Path(meta["train"].get("save_dir") or path.parent.parent)
        return trainer.train()
    if isinstance(model, nn.Module):
        config = TrainConfig(model=model.meta.arch, data=str(data), **overrides)
        return Trainer(config, callbacks, model=model).train()
    config = TrainConfig(model=str(model), data=str(data), **overrides)
    return Trainer(config, callbacks).train()
