"""Attention blocks of YOLOv12 (Tian et al., 2025): area attention, its block and R-ELAN.

Written from the specification in ``shared/reference/YOLOV12.md``; ultralytics' names for
the same modules are ``AAttn`` (``AreaAttention``), ``ABlock`` (``AttentionBlock``) and
``A2C2f`` (``RELAN``). Each class lists its ultralytics sub-module names in
``ULTRALYTICS_NAMES`` (theirs -> ours) so their checkpoints map by renaming only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import C3k, ConvBNAct

HEAD_DIM = 32


class AreaAttention(nn.Module):
    """Multi-head self-attention inside ``area`` horizontal strips of the feature map.

    Tokens are the map's pixels in row-major order; the ``N = H*W`` tokens are cut into ``area``
    contiguous runs of ``N / area`` tokens (full-width strips of ``H / area`` rows when ``area``
    divides ``H``) and each run attends only to itself, with ``scaled_dot_product_attention`` on
    ``(B*area, heads, N/area, head_dim)``. A depthwise "position perceiver" conv on ``v``, laid
    out on the full map (it crosses strip borders), is added before the 1x1 output projection.

    Two layouts exist:

    * v1.0 (the paper, ``turbo=False``): one ``qkv`` 1x1 conv, channels interleaved per head
      (``head*3*d + j*d + i`` with ``j`` = 0/1/2 for q/k/v), 7x7 position perceiver.
    * turbo (the official repo's default since 2025-03): ``qk`` (channels ``[all q | all k]``) and
      ``v`` convs, 5x5 position perceiver. Same computation, different parameter layout.

    When ``area`` does not divide ``N`` (maps of inputs that are not multiples of 32), the token
    sequence is zero-padded at its end to the next multiple of ``area`` and the padded keys are
    masked out of the softmax: the strips are then the ``area`` runs of ``ceil(N / area)`` tokens,
    the last one shorter. Sizes where it divides (every stride-32-aligned input) take the plain,
    mask-free path.
    """

    ULTRALYTICS_NAMES: dict[str, str] = {}  # qkv / qk / v / pe / proj are the same names

    def __init__(self, dim: int, heads: int, area: int = 1, turbo: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.area, self.turbo = dim, heads, max(int(area), 1), turbo
        self.head_dim = dim // heads
        if turbo:
            self.qk = ConvBNAct(dim, 2 * dim, 1, act=False)
            self.v = ConvBNAct(dim, dim, 1, act=False)
        else:
            self.qkv = ConvBNAct(dim, 3 * dim, 1, act=False)
        k = 5 if turbo else 7
        self.pe = ConvBNAct(dim, dim, k, groups=dim, act=False)
        self.proj = ConvBNAct(dim, dim, 1, act=False)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, C, H, W]`` -> ``q, k, v [B, N, C]`` (channel ``head*head_dim + i``) and ``v`` as a map."""
        b, c, h, w = x.shape
        n = h * w
        if self.turbo:
            q, k = self.qk(x).flatten(2).transpose(1, 2).chunk(2, -1)
            v_map = self.v(x)
            v = v_map.flatten(2).transpose(1, 2)
        else:
            qkv = self.qkv(x).flatten(2).transpose(1, 2).reshape(b, n, self.heads, 3, self.head_dim)
            q, k, v = (t.reshape(b, n, c) for t in qkv.unbind(3))
            v_map = v.transpose(1, 2).reshape(b, c, h, w)
        return q, k, v, v_map

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Strip-wise attention on ``[B, N, C]`` tokens -> ``[B, N, C]``."""
        b, n, c = q.shape
        area, heads, d = self.area, self.heads, self.head_dim
        pad = (-n) % area
        mask = None
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            run = (n + pad) // area
            valid = (torch.arange(n + pad, device=q.device) < n).view(area, 1, run)
            # a padded query attends to itself only (keeps its row finite; its output is dropped)
            mask = valid | torch.eye(run, dtype=torch.bool, device=q.device)
            mask = mask.unsqueeze(0).expand(b, area, run, run).reshape(b * area, 1, run, run)
        run = (n + pad) // area

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b * area, run, heads, d).transpose(1, 2)  # [B*area, heads, run, d]

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, n + pad, c)
        return out[:, :n] if pad else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v, v_map = self.tokens(x)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return self.proj(out + self.pe(v_map))

    def attention_macs(self, h: int, w: int, batch: int = 1) -> int:
        """Multiply-accumulates of the two attention matrix products (q k^T and attn v) at an ``h x w`` map."""
        run = -(-h * w // self.area)
        return batch * 2 * self.area * run * run * self.dim


class AttentionBlock(nn.Module):
    """``x + attn(x)``, then ``x + mlp(x)``; the MLP is ``ConvBNAct(C, int(C*ratio), 1)`` -> linear ``ConvBNAct``.

    No pre-norm, no drop-path. Every conv weight in the block is drawn from a truncated
    normal with std 0.02 (conv biases, where any, are zeroed). Ultralytics name: ``ABlock``.
    """

    ULTRALYTICS_NAMES: dict[str, str] = {}  # attn / mlp

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, area: int = 1, turbo: bool = False) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn = AreaAttention(dim, heads, area, turbo)
        self.mlp = nn.Sequential(ConvBNAct(dim, hidden, 1), ConvBNAct(hidden, dim, 1, act=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class RELAN(nn.Module):
    """Residual efficient layer aggregation (R-ELAN), ultralytics ``A2C2f``.

    ``transition`` (1x1, ``c_in -> h``, ``h = int(c_out * e)``) feeds a chain of ``n`` blocks, each
    two ``AttentionBlock`` (``attention=True``, ``h / 32`` heads) or one ``C3k(h, h, 2)``; the
    transition output and every block output are concatenated and fused by a 1x1 conv to
    ``c_out``. With ``attention`` and ``residual`` the result is ``x + gamma * out`` with a learnable
    per-channel layer scale ``gamma`` (``[c_out]``, init 0.01); otherwise ``out`` (``residual``
    alone has no effect, as in the reference). Ultralytics names: ``cv1`` = ``transition``,
    ``m`` = ``blocks``, ``cv2`` = ``fuse``.
    """

    ULTRALYTICS_NAMES = {"cv1": "transition", "m": "blocks", "cv2": "fuse"}

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n: int = 1,
        attention: bool = True,
        area: int = 1,
        residual: bool = False,
        mlp_ratio: float = 2.0,
        e: float = 0.5,
        shortcut: bool = True,
        turbo: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(c_out * e)
        if attention and hidden % HEAD_DIM:
            raise ValueError(f"R-ELAN hidden width {hidden} must be a multiple of {HEAD_DIM} (the head size)")
        self.transition = ConvBNAct(c_in, hidden, 1)
        self.fuse = ConvBNAct((1 + n) * hidden, c_out, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(*(AttentionBlock(hidden, hidden // HEAD_DIM, mlp_ratio, area, turbo) for _ in range(2)))
            if attention
            else C3k(hidden, hidden, 2, shortcut)
            for _ in range(n)
        )
        gamma = None
        if attention and residual:
            if c_in != c_out:
                raise ValueError(f"the R-ELAN residual needs c_in == c_out, got {c_in} and {c_out}")
            gamma = nn.Parameter(torch.full((c_out,), 0.01))
        self.register_parameter("gamma", gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.transition(x)]
        for block in self.blocks:
            y.append(block(y[-1]))
        out = self.fuse(torch.cat(y, 1))
        if self.gamma is not None:
            return x + self.gamma.view(1, -1, 1, 1) * out
        return out
