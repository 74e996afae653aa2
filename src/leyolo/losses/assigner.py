"""Task-aligned label assignment (TOOD, Feng et al., 2021).

Anchors are matched to ground truths by how well the *current* prediction already does
both tasks at once: ``t = s^alpha * IoU^beta``. Assigning by that joint metric (rather than
by geometry alone) is what lets classification and localisation agree at NMS time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import bbox_iou


class TaskAlignedAssigner(nn.Module):
    """Pick, for each ground truth, the ``topk`` anchors with the highest alignment metric.

    Args:
        topk: positives per ground truth (among anchors whose centre lies inside it).
        num_classes: number of classes ``C``; background anchors get label ``num_classes``.
        alpha: exponent on the classification score.
        beta: exponent on the IoU (a high value makes localisation dominate).
        eps: guards the normalisation divisions.
    """

    def __init__(self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9) -> None:
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def forward(
        self,
        pred_scores: torch.Tensor,  # [B, A, C] sigmoid probabilities
        pred_boxes: torch.Tensor,  # [B, A, 4] xyxy, input pixels
        anchor_points: torch.Tensor,  # [A, 2] input pixels
        gt_labels: torch.Tensor,  # [B, M, 1]
        gt_boxes: torch.Tensor,  # [B, M, 4] xyxy, input pixels
        gt_mask: torch.Tensor,  # [B, M, 1] 1 = real, 0 = padding
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``target_labels [B, A]``, ``target_boxes [B, A, 4]``, ``target_scores [B, A, C]``,
        ``fg_mask [B, A]`` (bool) and ``target_gt_idx [B, A]`` (index into M; 0 on background)."""
        b, a, c = pred_scores.shape
        m = gt_boxes.shape[1]
        device = pred_scores.device
        if m == 0:
            return (
                torch.full((b, a), self.num_classes, dtype=torch.long, device=device),
                torch.zeros((b, a, 4), dtype=pred_boxes.dtype, device=device),
                torch.zeros((b, a, c), dtype=pred_scores.dtype, device=device),
                torch.zeros((b, a), dtype=torch.bool, device=device),
                torch.zeros((b, a), dtype=torch.long, device=device),
            )

        labels = gt_labels.view(b, m).long().clamp(0, c - 1)  # [B, M]
        valid = gt_mask.view(b, m, 1).bool()  # [B, M, 1]

        # Candidates: anchor centre strictly inside the gt box (and the gt is real).
        lt = anchor_points.view(1, 1, a, 2) - gt_boxes[:, :, None, :2]  # [B, M, A, 2]
        rb = gt_boxes[:, :, None, 2:] - anchor_points.view(1, 1, a, 2)
        inside = torch.cat((lt, rb), -1).amin(-1) > self.eps  # [B, M, A]
        candidate = inside & valid

        # Alignment metric on candidates only.
        iou = bbox_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0)  # [B, M, A]
        iou = iou * candidate
        score = pred_scores.transpose(1, 2).gather(1, labels.unsqueeze(-1).expand(b, m, a))  # [B, M, A]
        align = score.pow(self.alpha) * iou.pow(self.beta) * candidate  # [B, M, A]

        # Top-k per gt among candidates: non-candidates ranked below every candidate.
        k = min(self.topk, a)
        ranked = align.masked_fill(~candidate, -1.0)
        top_idx = ranked.topk(k, dim=-1).indices  # [B, M, k]
        pos = torch.zeros_like(candidate).scatter_(-1, top_idx, True) & candidate  # [B, M, A]

        # An anchor claimed by several gts keeps the one it overlaps most.
        multi = pos.sum(1) > 1  # [B, A]
        if multi.any():
            best = iou.masked_fill(~pos, -1.0).argmax(1)  # [B, A]
            best_onehot = F.one_hot(best, m).transpose(1, 2).bool()  # [B, M, A]
            pos = torch.where(multi.unsqueeze(1), best_onehot, pos)

        fg_mask = pos.any(1)  # [B, A]
        target_gt_idx = pos.to(torch.uint8).argmax(1)  # [B, A]
        target_labels = labels.gather(1, target_gt_idx)  # [B, A]
        target_boxes = gt_boxes.gather(1, target_gt_idx.unsqueeze(-1).expand(b, a, 4))  # [B, A, 4]
        target_labels = target_labels.masked_fill(~fg_mask, self.num_classes)
        target_boxes = target_boxes * fg_mask.unsqueeze(-1)

        # Soft targets: alignment normalised per gt so its best anchor scores that gt's best IoU.
        align = align * pos
        align_max = align.amax(-1, keepdim=True)  # [B, M, 1]
        iou_max = (iou * pos).amax(-1, keepdim=True)  # [B, M, 1]
        norm = (align * iou_max / (align_max + self.eps)).amax(1)  # [B, A]
        onehot = F.one_hot(target_labels.clamp(max=c - 1), c).to(pred_scores.dtype)  # [B, A, C]
        target_scores = onehot * (norm * fg_mask).unsqueeze(-1)
        return target_labels, target_boxes, target_scores, fg_mask, target_gt_idx
