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


class DNiNHead(nn.Module):
    """LeYOLO's decoupled anchor-free head (pointwise -> 2 depthwise -> pointwise per branch).

    ``forward`` returns the raw per-level maps ``[B, 4*bins + nc, H, W]`` (box DFL logits
    first, class logits after); ``decode`` turns them into boxes and scores.
    """

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32), bins: int = 16):
        super().__init__()
        self.nc = nc
        self.bins = bins
        self.strides = tuple(int(s) for s in strides)
        c_box = max(16, channels[0] // 4, 4 * bins)
        c_cls = max(channels[0], min(nc, 100))
        self.box = nn.ModuleList(self._branch(c, c_box, 4 * bins) for c in channels)
        self.cls = nn.ModuleList(self._branch(c, c_cls, nc) for c in channels)
        self.dfl = DFL(bins)

    @staticmethod
    def _branch(c_in: int, width: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            ConvBNAct(c_in, width, 1),
            ConvBNAct(width, width, 3, groups=width),
            ConvBNAct(width, width, 3, groups=width),
            nn.Conv2d(width, c_out, 1),
        )

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
