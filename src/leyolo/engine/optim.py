"""Optimizers and learning-rate schedules of the YOLOv8-style recipe."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import LeyoloError


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(weights with decay, normalisation weights, biases): decay applies to conv/linear weights only."""
    decay, norm, bias = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                bias.append(param)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.SyncBatchNorm)):
                norm.append(param)
            elif param.ndim <= 1:  # layer scales and other vectors
                norm.append(param)
            else:
                decay.append(param)
    return decay, norm, bias


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    backbone_lr: float | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW with parameter groups by kind (decay, norm, bias: warm-up treats biases apart).

    ``backbone_lr`` < 1 gives the model's ``backbone`` its own groups at that fraction of the lr
    (``lr_scale``, which the trainer's schedule multiplies in): DETR practice for a backbone that
    learns features while the decoder learns to match.
    """
    core = getattr(model, "module", model)  # DDP
    backbone = getattr(core, "backbone", None)
    parts: list[tuple[nn.Module, float, set[int]]] = []
    skip: set[int] = set()
    if backbone_lr not in (None, 1.0) and not isinstance(backbone, nn.Module):
        raise LeyoloError(f"{type(core).__name__} has no separate backbone: --backbone-lr applies to Le-DETR models")
    if backbone_lr not in (None, 1.0) and isinstance(backbone, nn.Module):
        parts.append((backbone, float(backbone_lr), set()))
        skip = {id(p) for p in backbone.parameters()}
    parts.append((model, 1.0, skip))
    groups = []
    for module, scale, excluded in parts:
        decay, norm, bias = (list(p for p in ps if id(p) not in excluded) for ps in parameter_groups(module))
        groups += [
            {"params": decay, "weight_decay": weight_decay, "kind": "decay", "lr_scale": scale},
            {"params": norm, "weight_decay": 0.0, "kind": "norm", "lr_scale": scale},
            {"params": bias, "weight_decay": 0.0, "kind": "bias", "lr_scale": scale},
        ]
    groups = [g for g in groups if g["params"]] or groups[:1]
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise LeyoloError(f"unknown optimizer {name!r} (choose SGD or AdamW)")


def lr_lambda(epochs: int, final_factor: float, cosine: bool) -> Callable[[float], float]:
    """Multiplier of lr0 at (fractional) epoch ``x``: linear or cosine from 1 to ``final_factor``."""
    epochs = max(epochs, 1)
    if cosine:
        return lambda x: ((1 - math.cos(min(x, epochs) * math.pi / epochs)) / 2) * (final_factor - 1) + 1
    return lambda x: max(1 - min(x, epochs) / epochs, 0.0) * (1.0 - final_factor) + final_factor


def warmup_value(step: float, warmup_steps: float, start: float, end: float) -> float:
    return float(np.interp(step, [0, warmup_steps], [start, end]))
