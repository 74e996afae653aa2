"""Contrastive denoising (CDN) queries for DETR training (DN-DETR / DINO / RT-DETR / D-FINE).

Hungarian matching is unstable early in training: a query may match a different object from one
step to the next. Denoising adds extra decoder queries built from *noised copies of the ground
truth* whose target is known in advance, so the decoder learns to refine boxes with a fixed,
stable assignment. Each *group* holds one positive copy of every gt (small noise: reconstruct it)
and one negative copy (larger noise, pushed outside the box: predict "no object"), which teaches
the decoder to reject near-duplicates, the job NMS does for dense detectors.

The dn queries run in the same decoder pass as the ``Q`` matching queries, placed first; the
self-attention mask keeps groups from seeing each other (each would leak its gt to the others)
and keeps the matching queries from seeing any dn query (they do not exist at inference).
Training only; this lives in ``models`` because the decoder builds it from the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .detr_boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh


@dataclass
class DenoisingBatch:
    """The dn queries of one batch and how their outputs are scored.

    Layout of the ``Ndn = 2 * max_n * groups`` block: group ``g`` occupies
    ``[2 * max_n * g, 2 * max_n * (g + 1))``, its first ``max_n`` slots positives (gt order,
    padded), the next ``max_n`` negatives.
    """

    embed: Tensor  # [B, Ndn, hidden] content queries = class_embed(noisy labels)
    boxes: Tensor  # [B, Ndn, 4] noisy reference boxes, inverse-sigmoid of normalised cxcywh
    attn_mask: Tensor  # [Ndn + Q, Ndn + Q] bool, True = may NOT attend
    positive: list[Tensor]  # per image: indices (within the Ndn block) of the positive dn queries
    gt_index: list[Tensor]  # per image: the target index each positive reconstructs
    groups: int
    num_dn: int


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device (a CPU generator can seed CUDA training), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def denoising_attn_mask(num_dn: int, group_size: int, num_queries: int, device: torch.device | None = None) -> Tensor:
    """``[Ndn + Q, Ndn + Q]`` bool self-attention mask, True = blocked, dn queries first.

    A dn query sees only its own group (a block of ``group_size`` rows and columns on the
    diagonal) and the matching queries; a matching query sees only matching queries.
    """
    size = num_dn + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True  # matching queries cannot see the reconstruction
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]  # groups cannot see each other
    return mask


def denoising_queries(labels: list[Tensor], boxes: list[Tensor], nc: int, num_queries: int, class_embed: nn.Embedding,
                      num_denoising: int = 100, label_noise: float = 0.5, box_noise: float = 1.0,
                      generator: torch.Generator | None = None) -> DenoisingBatch | None:
    """Noised gt copies as extra decoder queries (module docstring); ``None`` when no image has targets.

    ``labels[i]``: ``[n_i]`` class ids; ``boxes[i]``: ``[n_i, 4]`` normalised cxcywh. About
    ``num_denoising`` queries are made: ``groups = max(1, num_denoising // max_n)`` groups of
    ``2 * max_n``. Labels flip to a uniformly random class with probability ``label_noise / 2``
    (RT-DETR's rate; the new class may equal the old one), so the decoder learns to correct classes too.
    Each xyxy corner moves by ``sign * u * box_noise * (w/2 or h/2)`` with ``u ~ U[0, 1)`` for
    positives and ``U[1, 2)`` for negatives (so a negative always lies outside the positive band),
    then clips to [0, 1]. Padded slots get class ``nc``, the embedding's ``padding_idx``.
    """
    counts = [int(n.shape[0]) for n in labels]
    max_n = max(counts, default=0)
    if num_denoising <= 0 or max_n == 0:
        return None
    device = class_embed.weight.device
    bsz = len(counts)
    groups = max(1, num_denoising // max_n)
    num_dn = 2 * max_n * groups

    cls = torch.full((bsz, max_n), nc, dtype=torch.long, device=device)
    box = torch.zeros(bsz, max_n, 4, device=device)
    real = torch.zeros(bsz, max_n, dtype=torch.bool, device=device)
    for i, n in enumerate(counts):
        if n:
            cls[i, :n] = labels[i].to(device=device, dtype=torch.long)
            box[i, :n] = boxes[i].to(device=device, dtype=box.dtype)
            real[i, :n] = True
    # [B, max_n] -> [B, Ndn]: per group, a positive copy then a negative copy.
    cls, box, real = cls.repeat(1, 2 * groups), box.repeat(1, 2 * groups, 1), real.repeat(1, 2 * groups)
    negative = (torch.arange(num_dn, device=device) // max_n) % 2 == 1  # [Ndn]

    if label_noise > 0:
        flip = (_rand((bsz, num_dn), generator, device) < label_noise * 0.5) & real
        new = (_rand((bsz, num_dn), generator, device) * nc).long().clamp_(max=nc - 1)
        cls = torch.where(flip, new, cls)
    if box_noise > 0:
        xyxy = cxcywh_to_xyxy(box)
        half = box[..., 2:].repeat(1, 1, 2) * 0.5 * box_noise  # [B, Ndn, 4]: w/2, h/2, w/2, h/2
        sign = (_rand((bsz, num_dn, 4), generator, device) < 0.5).to(box.dtype) * 2 - 1
        mag = _rand((bsz, num_dn, 4), generator, device) + negative[None, :, None].to(box.dtype)
        xyxy = (xyxy + sign * mag * half).clamp(0, 1)
        box = xyxy_to_cxcywh(xyxy)
        box = torch.cat((box[..., :2], box[..., 2:].abs()), -1)  # crossed corners -> positive size (as D-FINE)

    positive_slots = torch.arange(num_dn, device=device)[~negative]  # [groups * max_n], group-major
    positive, gt_index = [], []
    for n in counts:
        keep = positive_slots.view(groups, max_n)[:, :n].reshape(-1)
        positive.append(keep)
        gt_index.append(torch.arange(n, device=device).repeat(groups))
    return DenoisingBatch(embed=class_embed(cls), boxes=inverse_sigmoid(box),
                          attn_mask=denoising_attn_mask(num_dn, 2 * max_n, num_queries, device),
                          positive=positive, gt_index=gt_index, groups=groups, num_dn=num_dn)


__all__ = ["DenoisingBatch", "denoising_attn_mask", "denoising_queries"]
