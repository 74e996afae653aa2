"""Detection heads and the anchor-free decoding shared by every dense detector."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import DFL, ConvBNAct


def make_anchors(maps: list[torch.Tensor], strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre anchor points (grid units) and their strides for every level.

    Returns ``points [A, 2]`` (x, y) and ``stride [A, 1]`` in P3, P4, P5 order. Computed from
    the map shapes with ``arange`` so exported graphs stay valid for any input size.
    """
    points, stride_list = [], []
    for feat, stride in zip(maps, strides):
        h, w = feat.shape[2], feat.shape[3]
        sx = torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5
        sy = torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(stride), device=feat.device, dtype=feat.dtype))
    return torch.cat(points), torch.cat(stride_list)


class DenseHead(nn.Module):
    """Anchor-free DFL head shared by every dense family: one box and one class branch per level.

    ``forward`` returns the raw per-level maps ``[B, 4*bins + nc, H, W]`` (box DFL logits
    first, class logits after); ``decode`` turns them into boxes and scores. Subclasses only
    choose the branch layers (``box_branch`` / ``cls_branch``); each branch is a
    ``nn.Sequential`` whose last module is the plain output ``nn.Conv2d`` (with bias), which
    ``reset_class_outputs`` and ``initialize_biases`` rely on.

    Branch widths follow the YOLOv8 rule: box ``max(16, C3/4, 4*bins)``, class ``max(C3, min(nc, 100))``.
    """

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32), bins: int = 16):
        super().__init__()
        self.nc = nc
        self.bins = bins
        self.strides = tuple(int(s) for s in strides)
        c_box = max(16, channels[0] // 4, 4 * bins)
        c_cls = max(channels[0], min(nc, 100))
        self.box = nn.ModuleList(self.box_branch(c, c_box, 4 * bins) for c in channels)
        self.cls = nn.ModuleList(self.cls_branch(c, c_cls, nc) for c in channels)
        self.dfl = DFL(bins)

    def box_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        raise NotImplementedError

    def cls_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        raise NotImplementedError

    @property
    def outputs_per_anchor(self) -> int:
        return 4 * self.bins + self.nc

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(feats, self.box, self.cls)]

    def flatten(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Split raw maps into box logits ``[B, 4*bins, A]`` and class logits ``[B, nc, A]``."""
        b = maps[0].shape[0]
        x = torch.cat([m.reshape(b, self.outputs_per_anchor, -1) for m in maps], 2)
        return x.split((4 * self.bins, self.nc), 1)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> ``[B, 4 + nc, A]``: xyxy boxes in input pixels, then sigmoid class scores."""
        box_logits, cls_logits = self.flatten(maps)
        points, stride = make_anchors(maps, self.strides)
        dist = self.dfl(box_logits)  # [B, 4, A]
        lt, rb = dist.chunk(2, 1)
        anchor = points.transpose(0, 1).unsqueeze(0)  # [1, 2, A]
        scale = stride.transpose(0, 1).unsqueeze(0)  # [1, 1, A]
        boxes = torch.cat((anchor - lt, anchor + rb), 1) * scale
        return torch.cat((boxes, cls_logits.sigmoid()), 1)

    def reset_class_outputs(self, nc: int) -> None:
        """Replace the final class convs for a new class count (fine-tuning on other labels)."""
        self.nc = nc
        for seq in self.cls:
            old = seq[-1]
            seq[-1] = nn.Conv2d(old.in_channels, nc, 1).to(old.weight.device)
        self.initialize_biases()

    def initialize_biases(self, image_size: int = 640) -> None:
        """Prior-aware bias init: box logits start at 1.0, class logits at ~5 objects per image."""
        with torch.no_grad():
            for box, cls, stride in zip(self.box, self.cls, self.strides):
                box[-1].bias.fill_(1.0)
                cls[-1].bias.fill_(math.log(5 / self.nc / (image_size / stride) ** 2))


class DNiNHead(DenseHead):
    """LeYOLO's head: both branches pointwise -> 2 depthwise -> pointwise (keys ``box``/``cls``/``dfl``)."""

    @staticmethod
    def _branch(c_in: int, width: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            ConvBNAct(c_in, width, 1),
            ConvBNAct(width, width, 3, groups=width),
            ConvBNAct(width, width, 3, groups=width),
            nn.Conv2d(width, c_out, 1),
        )

    def box_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        return self._branch(c_in, width, c_out)

    def cls_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        return self._branch(c_in, width, c_out)


class DecoupledHead(DenseHead):
    """The YOLOv8/11/12 ``Detect`` head (the v11+ depthwise class branch).

    Box: ``Conv3x3(C, w) -> Conv3x3(w, w) -> Conv2d(w, 4*bins, 1)``. Class:
    ``[DW3x3(C), Conv1x1(C, w)] -> [DW3x3(w), Conv1x1(w, w)] -> Conv2d(w, nc, 1)``. The nesting
    mirrors ultralytics' ``cv2``/``cv3`` one to one (``cv2.i.j`` = ``box.i.j``, ``cv3.i.j.k`` =
    ``cls.i.j.k``), so their checkpoints map by renaming only.
    """

    def box_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(ConvBNAct(c_in, width, 3), ConvBNAct(width, width, 3), nn.Conv2d(width, c_out, 1))

    def cls_branch(self, c_in: int, width: int, c_out: int) -> nn.Sequential:
        def dw_pw(c: int, c2: int) -> nn.Sequential:
            return nn.Sequential(ConvBNAct(c, c, 3, groups=c), ConvBNAct(c, c2, 1))

        return nn.Sequential(dw_pw(c_in, width), dw_pw(width, width), nn.Conv2d(width, c_out, 1))
