"""YOLO detection loss for the anchor-free DFL head: task-aligned targets, BCE (or focal)
classification, CIoU + distribution focal loss (GFL, Li et al., 2020) box regression, and
optional knowledge distillation from a teacher with the same head layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.heads import make_anchors
from .assigner import TaskAlignedAssigner
from .boxes import bbox_iou, bbox_to_dist, dist_to_bbox


class YoloCriterion:
    """Loss for raw ``DNiNHead`` maps ``[B, 4*bins + nc, H, W]`` per stride.

    Anchors are rebuilt from the map shapes on every call, so multi-scale training works.
    Box regression is computed in grid (stride) units; targets come in input pixels.

    Args:
        nc: number of classes.
        strides: head strides, in map order.
        bins: DFL bins per box side (distances 0 .. bins-1 stride units).
        box_gain, cls_gain, dfl_gain: weights of the three loss terms.
        topk, alpha, beta: task-aligned assigner settings.
        focal_gamma: > 0 turns the classification BCE into a focal loss with ``focal_alpha``.
        class_weights: optional ``[nc]`` multipliers on the per-element classification loss.
    """

    def __init__(
        self,
        nc: int,
        strides: tuple[int, ...] = (8, 16, 32),
        bins: int = 16,
        *,
        box_gain: float = 7.5,
        cls_gain: float = 0.5,
        dfl_gain: float = 1.5,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        focal_gamma: float = 0.0,
        focal_alpha: float = 0.25,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.nc = nc
        self.strides = tuple(int(s) for s in strides)
        self.bins = bins
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if class_weights.numel() != nc:
                raise ValueError(f"class_weights has {class_weights.numel()} entries, expected nc={nc}")
        self.class_weights = class_weights
        self.assigner = TaskAlignedAssigner(topk=topk, num_classes=nc, alpha=alpha, beta=beta)

    # ------------------------------------------------------------------ helpers
    def _check_maps(self, maps: list[torch.Tensor], what: str) -> None:
        want = 4 * self.bins + self.nc
        if len(maps) != len(self.strides):
            raise ValueError(f"{what}: expected {len(self.strides)} maps (strides {self.strides}), got {len(maps)}")
        for m in maps:
            if m.dim() != 4 or m.shape[1] != want:
                raise ValueError(f"{what}: expected maps [B, {want}, H, W] (4*{self.bins} + {self.nc}), got "
                                 f"{tuple(m.shape)}")

    def _flatten(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps -> box logits ``[B, A, 4, bins]`` and class logits ``[B, A, nc]`` (float32)."""
        b = maps[0].shape[0]
        x = torch.cat([m.reshape(b, 4 * self.bins + self.nc, -1) for m in maps], 2).float()  # [B, no, A]
        box, cls = x.split((4 * self.bins, self.nc), 1)
        box = box.permute(0, 2, 1).reshape(b, -1, 4, self.bins)  # side-major, as the DFL decoder reads it
        return box, cls.permute(0, 2, 1)

    def _targets(self, targets: torch.Tensor, batch: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[M, 6]`` rows -> padded ``labels [B, Mmax, 1]``, ``boxes [B, Mmax, 4]``, ``mask [B, Mmax, 1]``."""
        targets = targets.to(device=device, dtype=torch.float32).reshape(-1, 6)
        bi = targets[:, 0].long()
        if targets.shape[0] and (bi.min() < 0 or bi.max() >= batch):
            raise ValueError(f"target batch indices must lie in [0, {batch}), got {bi.min()}..{bi.max()}")
        counts = torch.bincount(bi, minlength=batch)  # [B]
        mmax = int(counts.max()) if targets.shape[0] else 0
        out = torch.zeros((batch, mmax, 5), device=device)
        mask = torch.zeros((batch, mmax, 1), device=device)
        if mmax:
            order = torch.argsort(bi, stable=True)
            bs = bi[order]
            slot = torch.arange(bs.numel(), device=device) - (counts.cumsum(0) - counts)[bs]
            out[bs, slot] = targets[order, 1:]
            mask[bs, slot] = 1.0
        return out[..., :1], out[..., 1:], mask

    def _cls_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element BCE ``[B, A, nc]``, optionally focal-modulated and class-weighted."""
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.focal_gamma > 0:
            p = logits.sigmoid()
            p_t = target * p + (1 - target) * (1 - p)  # probability given to the (soft) truth
            a_t = target * self.focal_alpha + (1 - target) * (1 - self.focal_alpha)
            loss = loss * a_t * (1 - p_t).pow(self.focal_gamma)
        if self.class_weights is not None:
            loss = loss * self.class_weights.to(loss.device)
        return loss

    def _dfl_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits [N, 4, bins]``, ``target [N, 4]`` (stride units) -> ``[N]``, mean over sides.

        The target distance is split between its two neighbouring bins in proportion to
        closeness, so the expectation of the learned distribution can hit it exactly.
        """
        left = target.floor().long()  # [N, 4]
        right = left + 1
        w_left = right.float() - target
        w_right = target - left.float()
        logp = logits.log_softmax(-1)  # [N, 4, bins]
        ce_left = -logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
        ce_right = -logp.gather(-1, right.unsqueeze(-1)).squeeze(-1)
        return (ce_left * w_left + ce_right * w_right).mean(-1)

    @staticmethod
    def _distill(s_box: torch.Tensor, s_cls: torch.Tensor, t_box: torch.Tensor, t_cls: torch.Tensor,
                 temperature: float) -> torch.Tensor:
        """KL(teacher || student) on ``N`` fg anchors: binary per class plus softmax per box side.

        Each is the KL of the factorised joint (summed over classes / sides), times T^2 so the
        gradient scale does not shrink with the temperature; averaged over anchors.
        """
        n = s_cls.shape[0]
        if n == 0:
            return s_cls.sum() * 0.0
        t = temperature
        s, te = s_cls / t, t_cls / t
        pt = te.sigmoid()
        cls_kd = (pt * (F.logsigmoid(te) - F.logsigmoid(s))
                  + (1 - pt) * (F.logsigmoid(-te) - F.logsigmoid(-s))).sum(-1)  # [N]
        logq_t = (t_box / t).log_softmax(-1)  # [N, 4, bins]
        logq_s = (s_box / t).log_softmax(-1)
        dfl_kd = (logq_t.exp() * (logq_t - logq_s)).sum((-1, -2))  # [N]
        return (cls_kd + dfl_kd).sum() / n * t * t

    # ------------------------------------------------------------------ main
    def __call__(
        self,
        maps: list[torch.Tensor],
        targets: torch.Tensor,
        *,
        teacher_raw: list[torch.Tensor] | None = None,
        distill_ratio: float = 0.0,
        distill_temperature: float = 2.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one batch.

        Args:
            maps: raw head maps, one ``[B, 4*bins + nc, H, W]`` per stride.
            targets: ``[M, 6]`` rows ``(batch_idx, class, x1, y1, x2, y2)`` in input pixels.
            teacher_raw: a teacher's raw maps of identical shapes, for distillation.
            distill_ratio: weight of the distillation term (0 disables it).
            distill_temperature: softening temperature ``T``.

        Returns:
            ``loss`` (scalar, already multiplied by the batch size) and detached unscaled
            ``items`` (``box``, ``cls``, ``dfl`` and, when distilling, ``distill``).
        """
        self._check_maps(maps, "maps")
        if teacher_raw is not None:
            self._check_maps(teacher_raw, "teacher_raw")
            if [tuple(m.shape) for m in teacher_raw] != [tuple(m.shape) for m in maps]:
                raise ValueError(f"teacher_raw shapes {[tuple(m.shape) for m in teacher_raw]} differ from "
                                 f"student maps {[tuple(m.shape) for m in maps]}")
        batch, device = maps[0].shape[0], maps[0].device
        box_logits, cls_logits = self._flatten(maps)  # [B, A, 4, bins], [B, A, nc]
        points, stride = make_anchors(maps, self.strides)  # [A, 2] grid units, [A, 1]
        points, stride = points.float(), stride.float()

        proj = torch.arange(self.bins, device=device, dtype=torch.float32)
        pred_dist = box_logits.softmax(-1) @ proj  # [B, A, 4] stride units
        pred_boxes = dist_to_bbox(pred_dist, points)  # [B, A, 4] grid units

        gt_labels, gt_boxes, gt_mask = self._targets(targets, batch, device)
        _, target_boxes, target_scores, fg, _ = self.assigner(
            cls_logits.detach().sigmoid(), pred_boxes.detach() * stride, points * stride,
            gt_labels, gt_boxes, gt_mask,
        )
        score_sum = target_scores.sum().clamp(min=1.0)

        cls = self._cls_loss(cls_logits, target_scores).sum() / score_sum

        # Box terms on foreground anchors, weighted by their soft target score.
        weight = target_scores.sum(-1)[fg]  # [N]
        target_grid = (target_boxes / stride)[fg]  # [N, 4] grid units
        iou = bbox_iou(pred_boxes[fg], target_grid, ciou=True)  # [N]
        box = ((1.0 - iou) * weight).sum() / score_sum
        fg_points = points.unsqueeze(0).expand(batch, -1, -1)[fg]  # [N, 2]
        target_dist = bbox_to_dist(fg_points, target_grid, self.bins - 1)  # [N, 4]
        dfl = (self._dfl_loss(box_logits[fg], target_dist) * weight).sum() / score_sum

        total = self.box_gain * box + self.cls_gain * cls + self.dfl_gain * dfl
        items = {"box": box.detach(), "cls": cls.detach(), "dfl": dfl.detach()}
        if teacher_raw is not None and distill_ratio > 0:
            t_box, t_cls = self._flatten([m.detach() for m in teacher_raw])
            kd = self._distill(box_logits[fg], cls_logits[fg], t_box[fg], t_cls[fg], distill_temperature)
            total = total + distill_ratio * kd
            items["distill"] = kd.detach()
        return total * batch, items
