"""Training configuration: one flat, typed record with the YOLOv8-style recipe as defaults.

Fields left ``None`` are filled from a recipe: ``scratch`` for registered names (the
published recipe) and ``finetune`` when training starts from weights (gentler: lower lr, no
bias warm-up, mosaic off, which is how the authors fine-tuned). The model's registry entry
names its recipe family (``ModelEntry.recipe``): YOLOs take the YOLOv8-style SGD recipe, DETRs
(``detr``) an AdamW one; a value given on the command line always wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..data.transforms import AugmentConfig
from ..errors import LeyoloError
from ..ops import check_imgsz

_YOLO = {"optimizer": "SGD", "momentum": 0.937, "weight_decay": 5e-4, "lrf": 0.01, "cos_lr": False, "nbs": 64,
         "grad_clip": 10.0, "backbone_lr": 1.0}
# DETRs (RT-DETR/D-FINE practice, LEDETR.md §5): AdamW, a slower backbone, tight gradient clipping,
# no accumulation (the criterion averages over boxes), a short warm-up, cosine decay; mosaic helps
# by giving each image more targets to match (DEIM's "dense one-to-one").
_DETR = {"optimizer": "AdamW", "momentum": 0.9, "weight_decay": 1e-4, "lrf": 0.05, "cos_lr": True, "nbs": 0,
         "grad_clip": 0.1, "backbone_lr": 0.5}
RECIPES: dict[str, dict[str, Any]] = {
    "scratch": {**_YOLO, "lr0": 0.01, "warmup_epochs": 3.0, "warmup_bias_lr": 0.1, "mosaic": 1.0, "close_mosaic": 10},
    "finetune": {**_YOLO, "lr0": 0.001, "warmup_epochs": 0.0, "warmup_bias_lr": 0.0, "mosaic": 0.0, "close_mosaic": 0},
    "detr-scratch": {**_DETR, "lr0": 4e-4, "warmup_epochs": 1.0, "warmup_bias_lr": 0.0, "mosaic": 1.0,
                     "close_mosaic": 5},
    "detr-finetune": {**_DETR, "lr0": 1e-4, "warmup_epochs": 0.0, "warmup_bias_lr": 0.0, "mosaic": 0.0,
                      "close_mosaic": 0},
}
RECIPE_CHOICES = ("auto", "scratch", "finetune")  # "scratch"/"finetune" mean the model family's own


@dataclass
class TrainConfig(AugmentConfig):
    """Everything a training run depends on (saved in checkpoints, restored by ``--resume``).

    The augmentation strengths (degrees, scale, hsv_*, ...) are inherited from ``AugmentConfig``,
    so their defaults live in one place; ``mosaic`` is redeclared because its default comes from
    the recipe.
    """

    model: str = "leyolo-n"
    data: str = ""
    epochs: int = 100
    time: float | None = None  # minutes, a target: overrides epochs, planned from measured speed
    min_epochs: int = 1  # with time: run at least this many epochs, even past the budget
    imgsz: int = 640
    batch: int = 16
    nbs: int | None = None  # recipe
    workers: int = 2
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads while training (None: torch's default)
    recipe: str = "auto"  # auto | scratch | finetune
    optimizer: str | None = None  # recipe
    lr0: float | None = None
    lrf: float | None = None  # recipe
    momentum: float | None = None  # recipe
    weight_decay: float | None = None  # recipe
    warmup_epochs: float | None = None
    warmup_momentum: float = 0.8
    warmup_bias_lr: float | None = None
    min_warmup_iters: int = 100
    cos_lr: bool | None = None  # recipe
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    focal_gamma: float = 0.0
    focal_alpha: float = 0.25
    backbone_lr: float | None = None  # recipe: the backbone's lr as a fraction of lr0 (DETRs 0.5)
    class_weights: str | None = None  # None | "median"
    # set predictors (Le-DETR, leyolo.losses.detr); None = the D-FINE/DEIM defaults (cls 1, l1 5, giou 2, fgl 0.15, ddf 1.5)
    detr_cls_loss: str = "mal"  # mal (DEIM's matchability-aware loss) | vfl (varifocal)
    detr_cls: float | None = None
    detr_l1: float | None = None
    detr_giou: float | None = None
    detr_fgl: float | None = None
    detr_ddf: float | None = None
    weighted_sampler: bool = False
    mosaic: float | None = None  # type: ignore[assignment]
    close_mosaic: int | None = None
    multi_scale: float = 0.0  # 0 = off; 0.5 = random size in [0.5, 1.5] x imgsz per batch
    grad_clip: float | None = None  # recipe
    ema_decay: float = 0.9999
    amp: bool = True
    seed: int = 0
    deterministic: bool = True
    sync_bn: bool = False
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    teacher: str | None = None
    backbone_weights: str | None = None  # from scratch: start the backbone from these weights (model.init_backbone)
    distill_ratio: float = 1.0
    distill_temperature: float = 2.0
    feature_distill: float = 0.0  # weight of channel-wise feature distillation (losses/feature_distill.py); 0 = off
    feature_temperature: float = 1.0
    val: bool = True
    plots: bool = True
    progress: bool = True  # a progress bar per epoch (stderr)

    def resolved(self, pretrained: bool, family: str = "yolo") -> "TrainConfig":
        """A copy with the recipe's defaults filled in (``family``: the model entry's recipe family) and checked."""
        recipe = self.recipe if self.recipe != "auto" else ("finetune" if pretrained else "scratch")
        if recipe in ("scratch", "finetune") and family != "yolo":
            recipe = f"{family}-{recipe}"
        if recipe not in RECIPES:
            raise LeyoloError(f"unknown recipe {self.recipe!r} ({', '.join(RECIPE_CHOICES)})")
        filled = {k: v for k, v in RECIPES[recipe].items() if getattr(self, k) is None}
        cfg = replace(self, recipe=recipe, **filled)
        if not cfg.nbs:
            cfg.nbs = cfg.batch  # no gradient accumulation
        cfg.check()
        return cfg

    def check(self) -> None:
        check_imgsz(self.imgsz)
        for name in ("epochs", "batch", "nbs", "min_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LeyoloError(f"--{name} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise LeyoloError("--threads must be at least 1")
        if self.workers < 0:
            raise LeyoloError("--workers must be >= 0")
        if self.time is not None and self.time <= 0:
            raise LeyoloError("--time must be a positive number of minutes")
        if self.class_weights not in (None, "median"):
            raise LeyoloError("--class-weights must be 'median'")
        if self.distill_ratio < 0 or self.feature_distill < 0:
            raise LeyoloError("--distill-ratio and --feature-distill must be >= 0")
        if self.feature_temperature <= 0:
            raise LeyoloError("--feature-temperature must be positive")
        if self.feature_distill > 0 and not self.teacher:
            raise LeyoloError("--feature-distill needs --teacher (the model whose features the student matches)")
        if not 0 <= self.multi_scale < 1:
            raise LeyoloError("--multi-scale must be in [0, 1)")

    def augment(self) -> AugmentConfig:
        """The augmentation part alone, as the dataset takes it (call on a resolved config)."""
        if self.mosaic is None:
            raise LeyoloError("TrainConfig.augment() needs a resolved config (mosaic comes from the recipe)")
        return AugmentConfig(**{f.name: getattr(self, f.name) for f in fields(AugmentConfig)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
