"""Differentiable box geometry for training: elementwise IoU/CIoU and ltrb <-> xyxy conversions.

Unlike ``leyolo.ops`` (numpy, pairwise, inference) these work on torch tensors, broadcast
elementwise and keep gradients, because the box loss backpropagates through them.
"""

from __future__ import annotations

import math

import torch


def bbox_iou(a: torch.Tensor, b: torch.Tensor, ciou: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU (or Complete-IoU) of xyxy boxes ``a [..., 4]`` and ``b [..., 4]`` -> ``[...]``.

    Shapes broadcast, so ``a[:, :, None]`` vs ``b[:, None]`` gives a pairwise matrix.
    CIoU (Zheng et al., 2020) = IoU - rho^2 / c^2 - alpha * v, where rho is the centre
    distance, c the enclosing box diagonal, v the aspect-ratio inconsistency and
    alpha = v / (1 - IoU + v) is treated as a constant (no gradient), as in the paper.
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    aw, ah = ax2 - ax1, (ay2 - ay1).clamp(min=eps)
    bw, bh = bx2 - bx1, (by2 - by1).clamp(min=eps)
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    # Smallest enclosing box diagonal (squared) and centre distance (squared).
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(bw / bh) - torch.atan(aw / ah)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def dist_to_bbox(distance: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distances ``[..., 4]`` (left, top, right, bottom) from ``points [..., 2]`` -> xyxy ``[..., 4]``."""
    lt, rb = distance.split(2, -1)
    return torch.cat((points - lt, points + rb), -1)


def bbox_to_dist(points: torch.Tensor, xyxy: torch.Tensor, reg_max: float) -> torch.Tensor:
    """xyxy ``[..., 4]`` -> ltrb distances from ``points [..., 2]``, clamped to ``[0, reg_max - 0.01]``.

    The upper clamp keeps the right DFL bin (``floor(d) + 1``) inside the ``reg_max + 1`` bins;
    pass ``reg_max = bins - 1``.
    """
    lt = points - xyxy[..., :2]
    rb = xyxy[..., 2:] - points
    return torch.cat((lt, rb), -1).clamp(0, reg_max - 0.01)
