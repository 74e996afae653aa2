"""A tiny set-prediction model used only by the tests: proof that a DETR-like family plugs into
predict, val, export and training through the model contract alone, with no special case elsewhere.

Five stride-2 convs, then ``queries`` learned query vectors attend once to the stride-32 tokens
and each predicts one normalised box and class logits. Its criterion is a Hungarian-free toy:
ground truth ``j`` of an image goes to query ``j`` (L1 on normalised cxcywh boxes, BCE on classes).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from leyolo.losses import CRITERIA, register_criterion
from leyolo.models.base import DetectionModel, ModelEntry, ModelMeta, pixel_scale
from leyolo.models.layers import ConvBNAct
from leyolo.models.registry import register_model, unregister_model

NAME = "toy-set"


class ToySetModel(DetectionModel):
    output_kind = "set"

    def __init__(self, nc: int = 3, names: list[str] | None = None, queries: int = 8, width: int = 32) -> None:
        names = list(names) if names is not None else [f"class{i}" for i in range(nc)]
        super().__init__(ModelMeta(NAME, names, imgsz=128, stride=32))
        chans = [3, 8, 16, width, width, width]
        self.backbone = nn.Sequential(*(ConvBNAct(a, b, 3, 2) for a, b in zip(chans, chans[1:])))
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.5)
        self.box = nn.Linear(width, 4)
        self.cls = nn.Linear(width, nc)
        nn.init.constant_(self.cls.bias, 1.0)  # scores start near 0.73: an untrained model already "detects"

    @property
    def nc(self) -> int:
        return self.cls.out_features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(images)
        tokens = self.backbone(images).flatten(2).transpose(1, 2)  # [B, T, C]
        weights = (self.queries @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1])).softmax(-1)  # [B, Q, T]
        q = weights @ tokens + self.queries  # [B, Q, C]
        return {"boxes": self.box(q).sigmoid(), "logits": self.cls(q), "scale": pixel_scale(images)}

    def decode(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        cx, cy, w, h = raw["boxes"].unbind(-1)
        xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * raw["scale"]  # [B, Q, 4] pixels
        return torch.cat((xyxy, raw["logits"].sigmoid()), -1).transpose(1, 2)  # [B, 4 + nc, Q]

    def reset_classes(self, nc: int) -> None:
        self.cls = nn.Linear(self.cls.in_features, nc).to(self.cls.weight.device)
        nn.init.constant_(self.cls.bias, 1.0)


class ToySetCriterion:
    """Ground truth ``j`` -> query ``j``; L1 on normalised cxcywh + BCE on one-hot classes."""

    def __init__(self, model: DetectionModel, options: Mapping[str, Any]) -> None:
        self.nc = model.nc

    def __call__(self, raw: dict[str, torch.Tensor], targets: torch.Tensor, **_: Any):
        boxes, logits, scale = raw["boxes"], raw["logits"], raw["scale"]
        b, q = boxes.shape[:2]
        cls_target = torch.zeros_like(logits)
        l1 = boxes.sum() * 0.0
        for i in range(b):
            rows = targets[targets[:, 0] == i][:q]
            if not len(rows):
                continue
            xyxy = rows[:, 2:6] / scale
            cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            l1 = l1 + (boxes[i, : len(rows)] - cxcywh).abs().sum()
            cls_target[i, torch.arange(len(rows)), rows[:, 1].long()] = 1.0
        cls = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / max(b * q, 1)
        l1 = l1 / max(len(targets), 1)
        return (cls + 5 * l1) * b, {"cls": cls.detach(), "l1": l1.detach()}


def _builder(*, nc: int = 3, names: list[str] | None = None) -> ToySetModel:
    return ToySetModel(nc=nc, names=names)


@contextlib.contextmanager
def registered() -> Iterator[str]:
    """The toy model and its criterion in the registries for the block (removed afterwards)."""
    register_model(ModelEntry(NAME, _builder, 128, "toy", "test-only set predictor", criterion=NAME))
    register_criterion(NAME, ToySetCriterion)
    try:
        yield NAME
    finally:
        unregister_model(NAME)
        CRITERIA.pop(NAME, None)
