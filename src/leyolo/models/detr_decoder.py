"""Le-DETR's decoder: query selection, deformable cross-attention and fine-grained box refinement.

The paper states a DINO-style decoder with hidden size 256, 300 queries, 100 denoising queries,
sampling points (3, 6, 3) for strides 8/16/32, a head on every layer (trained with 6 layers,
fewer kept at inference) and D-FINE's Fine-grained Distribution Refinement [P]. The rest follows
D-FINE's decoder [R]: the encoder scores every token and its top-k give the initial boxes and
(detached) content; each layer is self-attention, multi-scale deformable cross-attention merged
by a gate, and an FFN; boxes are refined as 4 edge distributions of ``reg_max + 1`` bins over a
non-uniform weighting function, measured from the first layer's boxes; a localisation-quality
term (LQE) adds the distributions' sharpness to the class logits.

Cross-attention samples with ``F.grid_sample`` (ONNX opset >= 16) or, with
``sampling="gather"``, with an exact bilinear interpolation written as gathers, for runtimes
without GridSample (and TensorRT versions whose GridSample is wrong, NVIDIA/TensorRT #4646).
Dropping decoder layers at inference (``eval_layers``) stops the loop early: their cost is gone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .denoising import DenoisingBatch, denoising_queries
from .detr_boxes import distance_to_box, distribution_to_distance, inverse_sigmoid, runtime_grid, weighting_function


def prior_bias(prob: float) -> float:
    """The logit bias that makes an untrained sigmoid output ``prob`` (focal-loss initialisation)."""
    return float(-math.log((1 - prob) / prob))


class MLP(nn.Module):
    """``layers`` Linear layers with ReLU between them."""

    def __init__(self, c_in: int, hidden: int, c_out: int, layers: int) -> None:
        super().__init__()
        dims = [c_in] + [hidden] * (layers - 1) + [c_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def zero_last(self) -> None:
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)


def bilinear_gather(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(value, grid, bilinear, zeros padding, align_corners=False)`` with gathers only.

    value ``[N, C, H, W]``, grid ``[N, Q, P, 2]`` in [-1, 1] -> ``[N, C, Q, P]``. Out-of-map
    corners contribute zero, as grid_sample's zero padding.
    """
    n, c, h, w = value.shape
    grid = grid.float()  # positions and indices in fp32: fp16 counts exactly only to 2048 (an 80x80 map has 6400)
    x = (grid[..., 0] + 1) * w / 2 - 0.5
    y = (grid[..., 1] + 1) * h / 2 - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    flat = value.flatten(2)  # [N, C, H*W]
    out = value.new_zeros(n, c, grid.shape[1] * grid.shape[2])
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            index = (yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()).flatten(1)  # [N, Q*P]
            sampled = flat.gather(2, index[:, None].expand(n, c, index.shape[1]))
            out = out + sampled * (weight * inside).flatten(1)[:, None].to(value.dtype)
    return out.view(n, c, grid.shape[1], grid.shape[2])


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention with per-level point counts (D-FINE's v2 form, no value projection)."""

    def __init__(self, dim: int, heads: int, points: tuple[int, ...], sampling: str = "grid_sample",
                 offset_scale: float = 0.5) -> None:
        super().__init__()
        if sampling not in ("grid_sample", "gather"):
            raise ValueError(f"sampling must be grid_sample or gather, got {sampling!r}")
        self.heads, self.points, self.sampling, self.offset_scale = heads, tuple(points), sampling, offset_scale
        total = sum(points)
        self.sampling_offsets = nn.Linear(dim, heads * total * 2)
        self.attention_weights = nn.Linear(dim, heads * total)
        self.register_buffer("point_scale", torch.tensor([1 / n for n in points for _ in range(n)]), persistent=False)
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        grid = torch.stack((thetas.cos(), thetas.sin()), -1)
        grid = (grid / grid.abs().max(-1, keepdim=True).values)[:, None].repeat(1, total, 1)
        grid = grid * torch.cat([torch.arange(1, n + 1) for n in points]).view(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query: torch.Tensor, refs: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        """query ``[B, Q, C]``, refs ``[B, Q, 4]`` (cxcywh in [0, 1]), values per level ``[B*heads, C/heads, h, w]``."""
        b, q, c = query.shape
        total = sum(self.points)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, total, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, total).softmax(-1)
        scale = self.point_scale.to(query.dtype)[:, None]
        locations = refs[:, :, None, None, :2] + offsets * scale * refs[:, :, None, None, 2:] * self.offset_scale
        grids = (2 * locations - 1).permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*heads, Q, total, 2]
        sampled = []
        for value, grid in zip(values, grids.split(list(self.points), dim=2)):
            if self.sampling == "gather":
                sampled.append(bilinear_gather(value, grid))
            else:
                sampled.append(F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        weights = weights.permute(0, 2, 1, 3).reshape(b * self.heads, 1, q, total)
        out = (torch.cat(sampled, -1) * weights).sum(-1)  # [B*heads, C/heads, Q]
        return out.view(b, c, q).permute(0, 2, 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (flash attention on GPUs [P])."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k = self.qk(x + pos).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Gate(nn.Module):
    """D-FINE's gated merge of the query and the cross-attention output (replaces residual + norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, 2 * dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, prior_bias(0.5))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g1, g2 = torch.sigmoid(self.gate(torch.cat((x, y), -1))).chunk(2, -1)
        return self.norm(g1 * x + g2 * y)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, points: tuple[int, ...], sampling: str) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, heads, points, sampling)
        self.gateway = Gate(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, refs: torch.Tensor, values: list[torch.Tensor], pos: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, pos, mask))
        x = self.gateway(x, self.cross_attn(x + pos, refs, values))
        return self.norm3((x + self.linear2(F.relu(self.linear1(x)))).clamp(-65504, 65504))


class LQE(nn.Module):
    """Localisation-quality estimate: the top-k bin probabilities of each edge, and their mean, to a logit offset."""

    def __init__(self, reg_max: int, k: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.k, self.reg_max = k, reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden, 1, 2)
        self.reg_conf.zero_last()

    def forward(self, logits: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        b, q, _ = corners.shape
        prob = corners.view(b, q, 4, self.reg_max + 1).softmax(-1)
        top = prob.topk(self.k, dim=-1).values
        stat = torch.cat((top, top.mean(-1, keepdim=True)), -1).view(b, q, -1)
        return logits + self.reg_conf(stat)


class DetrDecoder(nn.Module):
    """Query selection + ``layers`` decoder layers; trained with all, run with the first ``eval_layers``."""

    def __init__(self, nc: int, dim: int = 256, heads: int = 8, ffn: int = 1024, layers: int = 6,
                 eval_layers: int | None = None, queries: int = 300, points: tuple[int, ...] = (3, 6, 3),
                 levels: int = 3, reg_max: int = 32, reg_scale: float = 4.0, denoising: int = 100,
                 label_noise: float = 0.5, box_noise: float = 1.0, sampling: str = "grid_sample",
                 anchor_size: float = 0.05) -> None:
        super().__init__()
        if len(points) != levels:
            raise ValueError(f"one sampling-point count per level: {levels} levels, got {points}")
        self.nc, self.dim, self.heads, self.queries, self.levels = nc, dim, heads, queries, levels
        self.reg_max, self.num_denoising, self.label_noise, self.box_noise = reg_max, denoising, label_noise, box_noise
        self.anchor_size = anchor_size
        self.eval_layers = layers if eval_layers is None else int(eval_layers)
        if not 1 <= self.eval_layers <= layers:
            raise ValueError(f"eval_layers must be in [1, {layers}], got {eval_layers}")
        # query selection from the encoder's tokens
        self.enc_output = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.enc_score_head = nn.Linear(dim, nc)
        self.enc_bbox_head = MLP(dim, dim, 4, 3)
        self.denoising_class_embed = nn.Embedding(nc + 1, dim, padding_idx=nc) if denoising > 0 else None
        self.query_pos_head = MLP(4, 2 * dim, dim, 2)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, points, sampling) for _ in range(layers))
        self.pre_bbox_head = MLP(dim, dim, 4, 3)
        self.score_heads = nn.ModuleList(nn.Linear(dim, nc) for _ in range(layers))
        self.bbox_heads = nn.ModuleList(MLP(dim, dim, 4 * (reg_max + 1), 3) for _ in range(layers))
        self.lqe = nn.ModuleList(LQE(reg_max) for _ in range(layers))
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([reg_scale]), requires_grad=False)
        self._init_heads()

    def _init_heads(self) -> None:
        bias = prior_bias(0.01)
        for head in (self.enc_score_head, *self.score_heads):
            nn.init.constant_(head.bias, bias)
        for mlp in (self.enc_bbox_head, self.pre_bbox_head, *self.bbox_heads):
            mlp.zero_last()
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for layer in self.query_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)

    def reset_classes(self, nc: int) -> None:
        device = self.enc_score_head.weight.device
        self.nc = nc
        self.enc_score_head = nn.Linear(self.dim, nc).to(device)
        self.score_heads = nn.ModuleList(nn.Linear(self.dim, nc) for _ in self.score_heads).to(device)
        if self.denoising_class_embed is not None:
            self.denoising_class_embed = nn.Embedding(nc + 1, self.dim, padding_idx=nc).to(device)
        for head in (self.enc_score_head, *self.score_heads):
            nn.init.constant_(head.bias, prior_bias(0.01))

    def unused_at_inference(self) -> list[nn.Module]:
        """Layers and heads past ``eval_layers`` (never run in eval mode), and the training-only embedding."""
        e = self.eval_layers
        unused: list[nn.Module] = [*self.layers[e:], *self.bbox_heads[e:]]
        unused += [m for i, m in enumerate(self.score_heads) if i != e - 1]  # eval scores only the last layer run
        unused += [m for i, m in enumerate(self.lqe) if i != e - 1]
        if self.denoising_class_embed is not None:
            unused.append(self.denoising_class_embed)
        return unused

    def anchors(self, shapes: list[tuple[Any, Any]], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid anchors in logit space ``[1, N, 4]`` (size 0.05 * 2^level) and the valid mask ``[1, N, 1]``."""
        out = []
        for level, (h, w) in enumerate(shapes):
            gy, gx = runtime_grid(h, w, like, offset=0.5)  # cell centres
            gy, gx = gy / h, gx / w
            wh = torch.full_like(gx, self.anchor_size * 2.0 ** level)
            out.append(torch.stack((gx, gy, wh, wh), -1).reshape(-1, 4))
        anchors = torch.cat(out, 0)[None]
        eps = 0.01
        valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
        logits = torch.log(anchors / (1 - anchors))
        return torch.where(valid, logits, torch.full_like(logits, 1e4)), valid

    def forward(self, feats: list[torch.Tensor], targets: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> dict:
        """Encoder maps (``dim`` channels each) -> the raw output of ``leyolo.losses.detr`` (training) or
        ``{"logits", "boxes"}`` of the last inference layer (eval)."""
        b = feats[0].shape[0]
        shapes = [(f.shape[2], f.shape[3]) for f in feats]  # not int(): traced sizes keep the export dynamic
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)  # [B, N, C]
        values = [f.reshape(b * self.heads, self.dim // self.heads, f.shape[2], f.shape[3]) for f in feats]
        anchors, valid = self.anchors(shapes, memory)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if exporting:  # `queries` placeholder tokens: an export keeps k fixed and still takes inputs with fewer tokens
            memory = torch.cat((memory, memory.new_zeros(b, self.queries, self.dim)), 1)
            anchors = torch.cat((anchors, anchors.new_zeros(1, self.queries, 4)), 1)
            valid = torch.cat((valid, valid.new_zeros(1, self.queries, 1)), 1)
        selected = self.enc_output(memory * valid.to(memory.dtype))
        enc_logits = self.enc_score_head(selected)
        if exporting:  # placeholders are chosen only when the map has fewer tokens than queries
            enc_logits = enc_logits[:, :-self.queries]
            enc_logits = torch.cat((enc_logits, enc_logits.new_full((b, self.queries, self.nc), -1e4)), 1)
        k = self.queries if exporting else min(self.queries, int(memory.shape[1]))
        index = enc_logits.max(-1).values.topk(k, dim=1).indices  # [B, k]
        top_memory = selected.gather(1, index[..., None].expand(b, k, self.dim))
        top_anchors = anchors.expand(b, -1, -1).gather(1, index[..., None].expand(b, k, 4))
        ref_unact = self.enc_bbox_head(top_memory) + top_anchors
        raw: dict = {}
        if self.training:
            raw["enc"] = {"logits": enc_logits.gather(1, index[..., None].expand(b, k, self.nc)),
                          "boxes": ref_unact.sigmoid()}
        content, ref_unact = top_memory.detach(), ref_unact.detach()
        dn: DenoisingBatch | None = None
        if self.training and targets is not None and self.denoising_class_embed is not None:
            dn = denoising_queries(targets[0], targets[1], self.nc, k, self.denoising_class_embed,
                                   self.num_denoising, self.label_noise, self.box_noise)
        mask = None
        if self.training and dn is None and self.denoising_class_embed is not None:
            content = content + 0.0 * self.denoising_class_embed.weight.sum()  # DDP: every parameter gets a gradient
        if dn is not None:
            content = torch.cat((dn.embed, content), 1)
            ref_unact = torch.cat((dn.boxes, ref_unact), 1)
            mask = ~dn.attn_mask  # scaled_dot_product_attention: True = may attend
        real = None
        if exporting and not self.training:  # placeholders are invisible to the real queries and score zero
            real = valid.expand(b, -1, -1).gather(1, index[..., None])  # [B, k, 1]
            mask = real.transpose(1, 2)[:, None]  # [B, 1, 1, k]: keys that may be attended to
        outs = self._layers(content, ref_unact, values, mask)
        if not self.training:
            logits = outs["logits"][-1]
            if real is not None:
                logits = torch.where(real, logits, torch.full_like(logits, -1e4))
            return {"logits": logits, "boxes": outs["boxes"][-1]}
        split = dn.num_dn if dn is not None else 0

        def part(i: int, sl: slice) -> dict:
            return {"logits": outs["logits"][i][:, sl], "boxes": outs["boxes"][i][:, sl],
                    "corners": outs["corners"][i][:, sl], "refs": outs["refs"][i][:, sl]}

        match = slice(split, None)
        raw["layers"] = [part(i, match) for i in range(len(outs["logits"]))]
        raw["pre"] = {"logits": outs["pre_logits"][:, match], "boxes": outs["pre_boxes"][:, match]}
        raw["logits"], raw["boxes"] = raw["layers"][-1]["logits"], raw["layers"][-1]["boxes"]
        raw["dn"] = None
        if dn is not None:
            first = slice(0, split)
            raw["dn"] = {"layers": [part(i, first) for i in range(len(outs["logits"]))],
                         "pre": {"logits": outs["pre_logits"][:, first], "boxes": outs["pre_boxes"][:, first]},
                         "positive": dn.positive, "gt_index": dn.gt_index, "groups": dn.groups}
        raw["reg_max"], raw["up"], raw["reg_scale"] = self.reg_max, self.up, self.reg_scale
        return raw

    def _layers(self, x: torch.Tensor, ref_unact: torch.Tensor, values: list[torch.Tensor],
                mask: torch.Tensor | None) -> dict:
        """The layer loop of D-FINE: each layer's corners refine the first layer's boxes; eval stops at ``eval_layers``."""
        project = weighting_function(self.reg_max, self.up, self.reg_scale)
        refs = ref_unact.sigmoid()
        out: dict = {"logits": [], "boxes": [], "corners": [], "refs": []}
        x_detach = corners_acc = 0
        initial = refs
        last = len(self.layers) if self.training else self.eval_layers
        for i in range(last):
            pos = self.query_pos_head(refs).clamp(-10, 10)
            x = self.layers[i](x, refs, values, pos, mask)
            if i == 0:
                pre_boxes = (self.pre_bbox_head(x) + inverse_sigmoid(refs)).sigmoid()
                out["pre_boxes"], out["pre_logits"] = pre_boxes, self.score_heads[0](x) if self.training else None
                initial = pre_boxes.detach()
            corners = self.bbox_heads[i](x + x_detach) + corners_acc
            boxes = distance_to_box(initial, distribution_to_distance(corners, project), self.reg_scale)
            if self.training or i == last - 1:
                out["logits"].append(self.lqe[i](self.score_heads[i](x), corners))
                out["boxes"].append(boxes)
                out["corners"].append(corners)
                out["refs"].append(initial)
            corners_acc, refs, x_detach = corners, boxes.detach(), x.detach()
        return out
