"""Box arithmetic shared by the Le-DETR decoder (models layer) and its criterion (losses layer).

Set predictors regress boxes as normalised ``cxcywh`` in [0, 1]; the decoder refines them
either in logit space (``inverse_sigmoid``) or, with D-FINE's Fine-grained Distribution
Refinement (FDR), as four edge *distributions* over ``reg_max + 1`` non-uniformly spaced bins
(``weighting_function``), whose expectation (``distribution_to_distance``) moves each edge of a
reference box (``distance_to_box``). The criterion needs the same functions to build its targets,
so they live here, torch-only, and avoid Python control flow on tensor values (ONNX export).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """``[..., 4]`` centre/size -> corners (any units)."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    """``[..., 4]`` corners -> centre/size (any units)."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), -1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``logit(x)`` with ``x`` clamped to [0, 1] and both terms to ``>= eps``, so boxes at the border stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """D-FINE's non-uniform bin values ``W(n)``, ``n = 0..reg_max`` -> ``[reg_max + 1]``.

    Bins are dense near 0 (small corrections, where precision matters late in refinement) and
    grow geometrically outwards to ``+-up * reg_scale``, with two outermost bins at
    ``+-2 * up * reg_scale`` for large moves. With ``a = |up| * |reg_scale|`` and
    ``step = (a + 1) ** (2 / (reg_max - 2))``::

        W = [-2a, -(step^k - 1) for k = reg_max/2 - 1 .. 1, 0, step^k - 1 for k = 1 .. reg_max/2 - 1, 2a]

    The values are in units of ``w / reg_scale`` (see ``distance_to_box``). ``up`` and
    ``reg_scale`` may be learnable scalars (``[]`` or ``[1]``); gradients flow through them.
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f"reg_max must be an even integer >= 4, got {reg_max}")
    a = (up.reshape(-1)[:1] * reg_scale.reshape(-1)[:1]).abs()  # [1]
    step = (a + 1) ** (2.0 / (reg_max - 2))
    k = torch.arange(1, reg_max // 2, device=a.device, dtype=a.dtype)  # 1 .. reg_max/2 - 1
    right = step**k - 1  # increasing, > 0
    left = -right.flip(0)
    return torch.cat((-2 * a, left, torch.zeros_like(a), right, 2 * a), 0)


def distribution_to_distance(corners: Tensor, project: Tensor) -> Tensor:
    """Edge distributions ``[..., 4 * (R + 1)]`` (logits) -> expected distances ``[..., 4]`` (l, t, r, b).

    D-FINE's "Integral": a softmax over each edge's ``R + 1`` bins, then the expectation under the
    bin values ``project = weighting_function(R, up, reg_scale)``.
    """
    bins = project.shape[0]
    probs = corners.reshape(*corners.shape[:-1], 4, bins).softmax(-1)
    return probs @ project.to(probs.dtype)


def distance_to_box(points: Tensor, distance: Tensor, reg_scale: Tensor) -> Tensor:
    """Move each edge of reference boxes ``points`` (cxcywh, normalised) by ``distance`` (l, t, r, b) -> cxcywh.

    An edge moves outwards by ``distance * size / reg_scale``, measured from the reference edge:
    ``x1 = cx - (reg_scale / 2 + l) * w / reg_scale`` (D-FINE's ``distance2bbox``), so distance 0
    returns the reference box and the bin spacing is relative to the box size.
    """
    s = reg_scale.abs()
    cx, cy, w, h = points.unbind(-1)
    l, t, r, b = distance.unbind(-1)
    x1 = cx - (0.5 * s + l) * (w / s)
    y1 = cy - (0.5 * s + t) * (h / s)
    x2 = cx + (0.5 * s + r) * (w / s)
    y2 = cy + (0.5 * s + b) * (h / s)
    return xyxy_to_cxcywh(torch.stack((x1, y1, x2, y2), -1))


def box_to_distance(points: Tensor, xyxy: Tensor, reg_scale: Tensor) -> Tensor:
    """Inverse of ``distance_to_box``: the (l, t, r, b) distances that move ``points`` (cxcywh) onto ``xyxy``.

    Unclamped and in bin-value units; the criterion turns them into soft bin targets.
    """
    s = reg_scale.abs()
    cx, cy, w, h = points.unbind(-1)
    sw, sh = w / s + 1e-16, h / s + 1e-16
    return torch.stack(((cx - xyxy[..., 0]) / sw - 0.5 * s, (cy - xyxy[..., 1]) / sh - 0.5 * s,
                        (xyxy[..., 2] - cx) / sw - 0.5 * s, (xyxy[..., 3] - cy) / sh - 0.5 * s), -1)


__all__ = ["box_to_distance", "cxcywh_to_xyxy", "distance_to_box", "distribution_to_distance", "inverse_sigmoid",
           "weighting_function", "xyxy_to_cxcywh"]


def split_targets(targets: Tensor, batch: int, scale: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``[M, 6]`` (image, class, x1, y1, x2, y2 pixels) -> per image labels ``[n]`` and normalised cxcywh ``[n, 4]``.

    The trainer's target layout, as both the decoder (denoising queries) and the criterion read it;
    corners are clipped to the image before the conversion.
    """
    targets = targets.detach().float()
    image = targets[:, 0].long()
    labels, boxes = [], []
    for i in range(batch):
        rows = targets[image == i]
        labels.append(rows[:, 1].long())
        boxes.append(xyxy_to_cxcywh((rows[:, 2:6] / scale.float()).clamp(0, 1)))
    return labels, boxes


def runtime_grid(h: Any, w: Any, like: Tensor, offset: float = 0.0) -> tuple[Tensor, Tensor]:
    """Row and column coordinates ``[h, w]`` (``0 + offset .. n - 1 + offset``) built from the runtime sizes.

    A cumulative sum of ones rather than ``torch.arange(h)``: traced, it keeps ``h`` and ``w`` symbolic, so
    positions and anchors follow the input size of a dynamic ONNX export.
    """
    one = like.new_ones(())
    ys = torch.cumsum(one.expand(h), 0) - 1 + offset
    xs = torch.cumsum(one.expand(w), 0) - 1 + offset
    return torch.meshgrid(ys, xs, indexing="ij")
