"""The set-prediction loss of Le-DETR (D-FINE's criterion with DEIM's Matchability-Aware Loss).

A DETR predicts a fixed set of ``Q`` boxes; training first decides which query answers which
ground-truth box (a one-to-one Hungarian matching on a class + L1 + GIoU cost), then scores:

* classification on every query (unmatched ones are "no object"): DEIM's MAL (default) or
  VFL, both IoU-aware so the score ranks boxes by localisation quality, which set predictors
  rely on instead of NMS;
* L1 and GIoU on matched normalised boxes;
* with D-FINE's Fine-grained Distribution Refinement (per-layer ``corners``): FGL, a soft
  two-bin cross-entropy pulling each edge distribution towards the gt edge (measured from the
  layer's reference box in the non-uniform bins of ``weighting_function``), and DDF, a KL from
  the last layer's (detached) distributions to every earlier layer's (GO-LSD self-distillation).

Every decoder layer is supervised (the trained depth can be cut at inference), plus the
"pre" prediction before the first refinement, the encoder's query-selection head ("enc") and the
denoising queries, whose assignment is fixed by construction (``models.denoising``).

As in D-FINE, each pass is matched on its own for the class loss, while the box, FGL and DDF
losses use the *union* of all passes' matches (GO-LSD's "global optimal" set: each query keeps
the gt it was matched to most often), normalised by that union's size. The class losses of all
passes and the box losses are normalised by the number of gt boxes (averaged over DDP ranks),
times the number of groups for denoising.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LeyoloError
from ..models.detr_boxes import box_to_distance, cxcywh_to_xyxy, split_targets, weighting_function

Matches = list[tuple[Tensor, Tensor]]  # per image: (query indices, gt indices)
Pairs = tuple[Tensor, Tensor, Tensor, Tensor]  # matched (batch idx, query idx, gt class, gt cxcywh), flattened
ITEM_KEYS: tuple[str, ...] = ("cls", "l1", "giou", "fgl", "ddf", "dn")
DEFAULT_WEIGHTS: dict[str, float] = {"cls": 1.0, "l1": 5.0, "giou": 2.0, "fgl": 0.15, "ddf": 1.5}  # D-FINE / DEIM
# TrainConfig keys (prefixed: ``cls``/``box``/``dfl`` there are the YOLO gains and always present).
OPTION_KEYS: dict[str, str] = {"cls": "detr_cls", "l1": "detr_l1", "giou": "detr_giou", "fgl": "detr_fgl",
                               "ddf": "detr_ddf"}


def box_iou_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU and Generalised IoU of xyxy boxes, broadcasting ``[..., 4]`` (``a[:, None]`` vs ``b[None]`` -> pairwise).

    GIoU = IoU - (enclosing - union) / enclosing: still informative (and with a gradient) when the
    boxes do not overlap, which is why DETRs use it next to L1.
    """
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    enclose = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou, iou - (enclose - union) / (enclose + eps)


class HungarianMatcher:
    """One-to-one assignment of queries to gt boxes minimising D-FINE's matching cost.

    ``cost = cost_class * focal + cost_bbox * L1(cxcywh) - cost_giou * GIoU``, where the focal
    class cost ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` (``p`` the sigmoid
    score of the gt's class) is the focal loss's gain from calling the query positive, so
    confident queries are preferred without over-rewarding easy ones.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25,
                 gamma: float = 2.0) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, labels: Sequence[Tensor], gt_boxes: Sequence[Tensor]) -> Matches:
        """``logits [B, Q, nc]``, ``boxes [B, Q, 4]`` cxcywh; per image ``labels [n]``, ``gt_boxes [n, 4]`` cxcywh.

        Returns per image ``(query_idx, gt_idx)`` LongTensors on ``logits.device`` (empty for no targets).
        """
        from scipy.optimize import linear_sum_assignment

        device = logits.device
        sizes = [int(len(t)) for t in labels]
        empty = (torch.zeros(0, dtype=torch.long, device=device),) * 2
        if sum(sizes) == 0:
            return [empty for _ in sizes]
        bsz, q = logits.shape[:2]
        prob = logits.detach().float().flatten(0, 1).sigmoid()  # [B*Q, nc]
        out_box = boxes.detach().float().flatten(0, 1)
        tgt_ids = torch.cat([t.long() for t in labels]).to(device)
        tgt_box = torch.cat(list(gt_boxes)).float().to(device)
        p = prob[:, tgt_ids]
        pos = self.alpha * (1 - p) ** self.gamma * -(p + 1e-8).log()
        neg = (1 - self.alpha) * p**self.gamma * -(1 - p + 1e-8).log()
        l1 = torch.cdist(out_box, tgt_box, p=1)
        giou = box_iou_giou(cxcywh_to_xyxy(out_box)[:, None], cxcywh_to_xyxy(tgt_box)[None])[1]
        cost = self.cost_class * (pos - neg) + self.cost_bbox * l1 - self.cost_giou * giou
        cost = torch.nan_to_num(cost.view(bsz, q, -1), nan=1.0).cpu()
        out: Matches = []
        for i, c in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                out.append(empty)
                continue
            rows, cols = linear_sum_assignment(c[i].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long, device=device),
                        torch.as_tensor(cols, dtype=torch.long, device=device)))
        return out


def union_matches(passes: Sequence[Matches]) -> Matches:
    """D-FINE's "GO" set: per image, the union of every pass's (query, gt) pairs, one gt per query.

    A query matched to several gts across passes keeps the one it was matched to most often
    (ties: the smaller gt index), so the box losses see the queries that any layer relied on.
    """
    out: Matches = []
    for per_image in zip(*passes):
        q = torch.cat([m[0] for m in per_image])
        g = torch.cat([m[1] for m in per_image])
        if q.numel() == 0:
            out.append((q, g))
            continue
        n = int(g.max()) + 1
        keys, counts = torch.unique(q * n + g, return_counts=True)  # sorted by (query, gt)
        order = torch.sort(-counts, stable=True).indices  # most frequent first, ties by key
        keys = keys[order]
        qs = keys // n
        by_query = torch.sort(qs, stable=True)  # each query's pairs, most frequent first
        first = torch.ones_like(by_query.values, dtype=torch.bool)
        first[1:] = by_query.values[1:] != by_query.values[:-1]
        keep = keys[by_query.indices[first]]
        out.append((keep // n, keep % n))
    return out


def soft_bins(distance: Tensor, project: Tensor, reg_max: int) -> tuple[Tensor, Tensor, Tensor]:
    """Edge distances ``[N]`` -> (left bin ``[N]`` long, left weight, right weight): D-FINE's ``translate_gt``.

    The target distribution puts mass on the two bins of ``project`` around the distance, linearly
    interpolated, so its expectation is the distance itself; outside the bin range all mass goes
    to the end bin (the box cannot be reached in one layer, pull as far as possible).
    """
    left = torch.searchsorted(project.contiguous(), distance.contiguous(), right=True) - 1
    below, above = left < 0, left >= reg_max
    left = left.clamp(0, reg_max - 1)
    lo, hi = project[left], project[left + 1]
    w_right = ((distance - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
    w_right = torch.where(below, torch.zeros_like(w_right), torch.where(above, torch.ones_like(w_right), w_right))
    return left, 1 - w_right, w_right


def box_to_bins(refs: Tensor, gt_xyxy: Tensor, reg_max: int, up: Tensor,
                reg_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """D-FINE's ``bbox2distance``: reference boxes ``[N, 4]`` (cxcywh), gts ``[N, 4]`` (xyxy) -> ``soft_bins`` of the
    ``N * 4`` edges (in the order ``[N, 4]`` flattens)."""
    project = weighting_function(reg_max, up, reg_scale).detach().float()
    distance = box_to_distance(refs.float(), gt_xyxy.float(), reg_scale.detach().float()).reshape(-1)
    return soft_bins(distance, project, reg_max)


def mal_loss(logits: Tensor, target: Tensor, score: Tensor, gamma: float = 1.5) -> Tensor:
    """DEIM's Matchability-Aware Loss, elementwise: BCE towards ``score^gamma`` (``score`` = IoU at positives).

    Positives (``target == 1``) weigh 1: a low-IoU match still gets a soft target instead of
    being down-weighted as in VFL, which matters with few, poorly localised early matches;
    negatives weigh ``p^gamma`` (focal-style: confident false positives dominate).
    """
    p = logits.detach().sigmoid()
    weight = p.pow(gamma) * (1 - target) + target
    return F.binary_cross_entropy_with_logits(logits, score.pow(gamma) * target, weight=weight, reduction="none")


def vfl_loss(logits: Tensor, target: Tensor, score: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Varifocal loss (VarifocalNet; RT-DETR/D-FINE form), elementwise: BCE towards IoU, positives weighted by IoU."""
    p = logits.detach().sigmoid()
    score = score * target
    weight = alpha * p.pow(gamma) * (1 - target) + score
    return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="none")


def _mean_over_ranks(count: float, device: torch.device) -> float:
    """The per-rank mean of ``count`` under DDP (every rank then normalises alike), clamped to >= 1."""
    value = torch.tensor([float(count)], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        value = value / torch.distributed.get_world_size()
    return max(float(value.item()), 1.0)


class DetrCriterion:
    """``criterion(raw, targets) -> (loss, items)`` for the Le-DETR raw output (module docstring).

    ``items`` holds detached weighted sums over passes: ``cls``/``l1``/``giou``/``fgl``/``ddf``
    over the matching queries (layers, pre, enc) and ``dn`` for all denoising terms together, so
    ``loss == sum(items.values())``.

    The loss is a mean over target boxes (counted across DDP ranks), not a sum over the batch:
    ``batch_sum = False`` tells the trainer not to scale it by the world size.
    """

    batch_sum = False

    def __init__(self, nc: int, *, cls_loss: str = "mal", weights: Mapping[str, float] | None = None,
                 mal_gamma: float = 1.5, vfl_alpha: float = 0.75, vfl_gamma: float = 2.0,
                 ddf_temperature: float = 5.0, matcher: HungarianMatcher | None = None, union_set: bool = True) -> None:
        if cls_loss not in ("mal", "vfl"):
            raise LeyoloError(f"unknown DETR classification loss {cls_loss!r} (choose mal or vfl)")
        self.nc, self.cls_loss = nc, cls_loss
        self.weights = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        self.mal_gamma, self.vfl_alpha, self.vfl_gamma = mal_gamma, vfl_alpha, vfl_gamma
        self.temperature = ddf_temperature
        self.matcher = matcher or HungarianMatcher()
        self.union_set = union_set

    # -- pieces ---------------------------------------------------------------------------------

    @staticmethod
    def _gather(matches: Matches, labels: list[Tensor], boxes: list[Tensor]) -> Pairs:
        """(batch idx, query idx, gt labels, gt cxcywh) of all matched pairs, flattened over images."""
        b = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
        q = torch.cat([q for q, _ in matches])
        cls = torch.cat([labels[i][g] for i, (_, g) in enumerate(matches)])
        box = torch.cat([boxes[i][g] for i, (_, g) in enumerate(matches)])
        return b, q, cls, box

    def _cls(self, out: Mapping[str, Tensor], pairs: Pairs, norm: float) -> Tensor:
        """IoU-aware classification over all queries and classes, summed, / ``norm``."""
        logits = out["logits"].float()
        b, q, cls, gt = pairs
        iou = box_iou_giou(cxcywh_to_xyxy(out["boxes"][b, q].detach().float()), cxcywh_to_xyxy(gt))[0]
        target = torch.zeros_like(logits)
        score = torch.zeros_like(logits)
        target[b, q, cls] = 1.0
        score[b, q, cls] = iou
        if self.cls_loss == "mal":
            loss = mal_loss(logits, target, score, self.mal_gamma)
        else:
            loss = vfl_loss(logits, target, score, self.vfl_alpha, self.vfl_gamma)
        return loss.sum() / norm

    @staticmethod
    def _boxes(out: Mapping[str, Tensor], pairs: Pairs, norm: float) -> tuple[Tensor, Tensor]:
        """L1 (normalised cxcywh) and 1 - GIoU over matched pairs, / ``norm``."""
        b, q, _, gt = pairs
        pred = out["boxes"][b, q].float()
        l1 = (pred - gt).abs().sum() / norm
        giou = (1 - box_iou_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt))[1]).sum() / norm
        return l1, giou

    @staticmethod
    def _fgl(out: Mapping[str, Tensor], pairs: Pairs, raw: Mapping[str, Any],
             norm: float) -> Tensor:
        """Fine-grained localisation: soft two-bin CE per edge, weighted by the match's IoU, / ``norm``."""
        b, q, _, gt = pairs
        reg_max = int(raw["reg_max"])
        corners = out["corners"][b, q].float().reshape(-1, reg_max + 1)  # [N*4, R+1]
        gt_xyxy = cxcywh_to_xyxy(gt)
        with torch.no_grad():
            refs = out["refs"][b, q].detach()
            left, w_left, w_right = box_to_bins(refs, gt_xyxy, reg_max, raw["up"], raw["reg_scale"])
            iou = box_iou_giou(cxcywh_to_xyxy(out["boxes"][b, q].detach().float()), gt_xyxy)[0]
        loss = (F.cross_entropy(corners, left, reduction="none") * w_left
                + F.cross_entropy(corners, left + 1, reduction="none") * w_right)
        return (loss * iou.repeat_interleave(4)).sum() / norm

    def _ddf(self, out: Mapping[str, Tensor], teacher: Mapping[str, Tensor], pairs: Pairs, raw: Mapping[str, Any],
             balance: tuple[float, float]) -> Tensor:
        """Decoupled distillation: ``T^2 KL(teacher || student)`` per edge distribution, weighted per query by the
        match's IoU (matched) or the teacher's top score (unmatched); matched and unmatched means are then
        mixed with weights ``balance`` (D-FINE's ``sqrt`` counts), so the few matched queries are not drowned."""
        b, q, _, gt = pairs
        reg_max, t = int(raw["reg_max"]), self.temperature
        student = out["corners"].float().reshape(-1, reg_max + 1)
        target = teacher["corners"].detach().float().reshape(-1, reg_max + 1)
        kl = F.kl_div(F.log_softmax(student / t, -1), F.softmax(target / t, -1), reduction="none").sum(-1) * t * t
        with torch.no_grad():
            weight = teacher["logits"].detach().float().sigmoid().max(-1).values  # [B, Q]
            weight[b, q] = box_iou_giou(cxcywh_to_xyxy(out["boxes"][b, q].detach().float()), cxcywh_to_xyxy(gt))[0]
            mask = torch.zeros_like(weight, dtype=torch.bool)
            mask[b, q] = True
        kl = kl * weight.repeat_interleave(4, -1).reshape(-1)
        mask = mask.repeat_interleave(4, -1).reshape(-1)
        zero = kl.sum() * 0.0
        pos = kl[mask].mean() if bool(mask.any()) else zero
        neg = kl[~mask].mean() if bool((~mask).any()) else zero
        num_pos, num_neg = balance
        return (pos * num_pos + neg * num_neg) / max(num_pos + num_neg, 1e-12)

    def _pass(self, out: Mapping[str, Any], cls_pairs: Pairs, box_pairs: Pairs, cls_norm: float, box_norm: float,
              raw: Mapping[str, Any], teacher: Mapping[str, Tensor] | None,
              balance: tuple[float, float]) -> dict[str, Tensor]:
        """Weighted losses of one output (a layer, pre, enc): cls on ``cls_pairs``, the rest on ``box_pairs``."""
        w = self.weights
        l1, giou = self._boxes(out, box_pairs, box_norm)
        terms = {"cls": w["cls"] * self._cls(out, cls_pairs, cls_norm), "l1": w["l1"] * l1, "giou": w["giou"] * giou}
        if out.get("corners") is not None and out.get("refs") is not None:
            terms["fgl"] = w["fgl"] * self._fgl(out, box_pairs, raw, box_norm)
            if teacher is not None and teacher.get("corners") is not None:
                terms["ddf"] = w["ddf"] * self._ddf(out, teacher, box_pairs, raw, balance)
        return terms

    # -- the call -------------------------------------------------------------------------------

    def __call__(self, raw: Mapping[str, Any], targets: Tensor, teacher_raw: Any = None,
                 **_: Any) -> tuple[Tensor, dict[str, Tensor]]:
        if teacher_raw is not None:
            raise LeyoloError("distillation from a teacher is not supported for set predictors (Le-DETR) yet")
        logits = raw["logits"]
        bsz, nq = logits.shape[:2]
        device = logits.device
        labels, gt_boxes = split_targets(targets.to(device), bsz, raw["scale"].to(device))
        num_boxes = _mean_over_ranks(sum(len(t) for t in labels), device)
        layers = list(raw.get("layers") or [{"logits": raw["logits"], "boxes": raw["boxes"]}])
        passes = [("layer", i, out) for i, out in enumerate(layers)]
        passes += [(name, 0, raw[name]) for name in ("pre", "enc") if raw.get(name) is not None]

        # Each pass matched on its own; enc with a one-class head (D-FINE "agnostic" query selection) ignores classes.
        enc_agnostic = raw.get("enc") is not None and raw["enc"]["logits"].shape[-1] == 1 and self.nc != 1
        enc_labels = [torch.zeros_like(t) for t in labels] if enc_agnostic else labels
        own = [self.matcher(out["logits"], out["boxes"], enc_labels if name == "enc" else labels, gt_boxes)
               for name, _, out in passes]
        if self.union_set:
            go = union_matches(own)
            go_norm = _mean_over_ranks(sum(len(q) for q, _ in go), device)
        else:
            go, go_norm = None, num_boxes
        n_go = sum(len(q) for q, _ in (go if go is not None else own[len(layers) - 1]))
        scale = 8.0 / bsz  # D-FINE: counts as for a per-GPU batch of 8
        balance = (math.sqrt(4 * n_go * scale), math.sqrt(4 * (bsz * nq - n_go) * scale))

        items = {k: logits.new_zeros(()).float() for k in ITEM_KEYS}
        total = logits.sum() * 0.0
        last = layers[-1]
        for (name, i, out), matches in zip(passes, own):
            lab = enc_labels if name == "enc" else labels
            cls_pairs = self._gather(matches, lab, gt_boxes)
            box_pairs = self._gather(go, lab, gt_boxes) if go is not None else cls_pairs
            teacher = last if name == "layer" and i < len(layers) - 1 else None
            for k, v in self._pass(out, cls_pairs, box_pairs, num_boxes, go_norm, raw, teacher, balance).items():
                items[k] = items[k] + v.detach()
                total = total + v

        dn = raw.get("dn")
        if dn is not None:
            fixed = [(p.to(device).long(), g.to(device).long()) for p, g in zip(dn["positive"], dn["gt_index"])]
            pairs = self._gather(fixed, labels, gt_boxes)
            dn_norm = num_boxes * int(dn["groups"])
            dn_layers = list(dn["layers"])
            outs = [(o, dn_layers[-1] if j < len(dn_layers) - 1 else None) for j, o in enumerate(dn_layers)]
            if dn.get("pre") is not None:
                outs.append((dn["pre"], None))
            for out, teacher in outs:
                for v in self._pass(out, pairs, pairs, dn_norm, dn_norm, raw, teacher, balance).values():
                    items["dn"] = items["dn"] + v.detach()
                    total = total + v
        return total, items


def detr_criterion(model: Any, options: Mapping[str, Any]) -> DetrCriterion:
    """The Le-DETR criterion for ``model`` (``model.nc``); ``options`` keys (all optional):
    ``detr_cls``/``detr_l1``/``detr_giou``/``detr_fgl``/``detr_ddf`` weights, ``detr_cls_loss``
    (``"mal"``/``"vfl"``), ``detr_mal_gamma``, ``detr_ddf_temperature``, ``detr_union_set``."""
    weights = {k: float(options[key]) for k, key in OPTION_KEYS.items() if options.get(key) is not None}
    return DetrCriterion(int(model.nc), cls_loss=str(options.get("detr_cls_loss") or "mal"), weights=weights,
                         mal_gamma=float(options.get("detr_mal_gamma") or 1.5),
                         ddf_temperature=float(options.get("detr_ddf_temperature") or 5.0),
                         union_set=bool(options.get("detr_union_set", True)))


__all__ = ["DEFAULT_WEIGHTS", "DetrCriterion", "HungarianMatcher", "box_iou_giou", "box_to_bins", "detr_criterion",
           "mal_loss", "soft_bins", "union_matches", "vfl_loss"]
