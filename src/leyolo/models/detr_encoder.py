"""Le-DETR's hybrid encoder: NAIFI on the stride-32 level, then the FPN-PAN feature fusion.

NAIFI [P] replaces RT-DETR's AIFI (one post-norm transformer layer on S5) by neighbourhood
attention with kernel 63 and an FFN of 1024. The paper leaves its form open; the default here is
1-D NA over the row-major flattened S5 tokens (a 2-D 63x63 window cannot fit a 20x20 map), 8
heads, post-norm, 2-D sin-cos positions added to queries and keys [I, R, D]; ``attention="na2d"``
(kernel 7, relative position bias) and ``"global"`` (AIFI itself) are the alternatives.

The fusion follows D-FINE's HybridEncoder [R]: 1x1 conv+BN projections to ``hidden``, a
top-down FPN and a bottom-up PAN whose blocks are RepNCSPELAN4 (CSP-ELAN of RepVGG blocks) and
whose downsampling is SCDown (1x1 conv, then a depthwise 3x3 stride-2 conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .detr_boxes import runtime_grid
from .efficientnat import ConvNormAct
from .neighborhood import NeighborhoodAttention1d, NeighborhoodAttention2d


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0, *, like: torch.Tensor) -> torch.Tensor:
    """RT-DETR's 2-D sin-cos position embedding ``[1, h*w, dim]``, computed in-graph (dynamic export sizes)."""
    gy, gx = runtime_grid(h, w, like)
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=like.dtype, device=like.device) / quarter)
    out_x = gx.reshape(-1, 1) * omega
    out_y = gy.reshape(-1, 1) * omega
    return torch.cat((out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()), 1)[None]


class NAIFI(nn.Module):
    """One post-norm transformer encoder layer whose self-attention is neighbourhood attention."""

    def __init__(self, dim: int = 256, heads: int = 8, ffn: int = 1024, kernel: int = 63,
                 attention: str = "na1d", backend: str = "auto") -> None:
        super().__init__()
        if attention not in ("na1d", "na2d", "global"):
            raise ValueError(f"NAIFI attention must be na1d, na2d or global, got {attention!r}")
        self.kind = attention
        if attention == "na2d":
            self.attn = NeighborhoodAttention2d(dim, heads, kernel=kernel, backend=backend)
        else:  # global = AIFI: the same projections, no window
            self.attn = NeighborhoodAttention1d(dim, heads, kernel=kernel, backend=backend)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def _global(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        a = self.attn
        b, n, c = x.shape
        heads = a.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, heads, c // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(a.q(x + pos)), split(a.k(x + pos)), split(a.v(x)))
        return a.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C], row-major
        if self.kind == "na2d":  # positions come from the relative position bias
            attended = self.attn(tokens.view(b, h, w, c)).view(b, h * w, c)
        else:
            pos = sincos_2d(h, w, c, like=x)
            attended = self._global(tokens, pos) if self.kind == "global" else self.attn(tokens, pos)
        tokens = self.norm1(tokens + attended)
        tokens = self.norm2(tokens + self.linear2(self.act(self.linear1(tokens))))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class RepVGGBlock(nn.Module):
    """3x3 conv+BN plus 1x1 conv+BN, summed, then SiLU; ``fuse`` merges both into one 3x3 conv."""

    def __init__(self, c: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(c, c, 3, act=None)
        self.conv2 = ConvNormAct(c, c, 1, act=None)
        self.act = act()
        self.merged: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            return self.act(self.merged(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold both branches (their BatchNorms already folded by ``fuse_conv_bn_modules``) into one conv."""
        if self.merged is not None:
            return
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        convs = []
        for branch in (self.conv1, self.conv2):
            conv = branch.conv
            if isinstance(branch.bn, nn.BatchNorm2d):
                conv = fuse_conv_bn_eval(conv.eval(), branch.bn.eval())
            convs.append(conv)
        c3, c1 = convs
        merged = nn.Conv2d(c3.in_channels, c3.out_channels, 3, padding=1, bias=True).to(c3.weight)
        merged.weight.copy_(c3.weight + F.pad(c1.weight, (1, 1, 1, 1)))
        zero = torch.zeros(c3.out_channels, device=c3.weight.device, dtype=c3.weight.dtype)
        merged.bias.copy_((c3.bias if c3.bias is not None else zero) + (c1.bias if c1.bias is not None else zero))
        self.merged = merged
        del self.conv1, self.conv2
        self.conv1 = self.conv2 = None  # type: ignore[assignment]


class CSPRepLayer(nn.Module):
    """Two 1x1 branches; ``n`` RepVGG blocks on one, summed with the other (RT-DETR/D-FINE's CSPLayer)."""

    def __init__(self, c_in: int, c_out: int, n: int = 3, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.conv1 = ConvNormAct(c_in, hidden, 1, act=nn.SiLU)
        self.conv2 = ConvNormAct(c_in, hidden, 1, act=nn.SiLU)
        self.blocks = nn.Sequential(*(RepVGGBlock(hidden) for _ in range(n)))
        self.conv3 = ConvNormAct(hidden, c_out, 1, act=nn.SiLU) if hidden != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.blocks(self.conv1(x)) + self.conv2(x))


class RepNCSPELAN4(nn.Module):
    """D-FINE's fusion block: split a 1x1 conv, chain two CSPRep+3x3 branches on one half, concat all, 1x1."""

    def __init__(self, c_in: int, c_out: int, c3: int, c4: int, n: int = 3) -> None:
        super().__init__()
        self.cv1 = ConvNormAct(c_in, c3, 1, act=nn.SiLU)
        self.cv2 = nn.Sequential(CSPRepLayer(c3 // 2, c4, n), ConvNormAct(c4, c4, 3, act=nn.SiLU))
        self.cv3 = nn.Sequential(CSPRepLayer(c4, c4, n), ConvNormAct(c4, c4, 3, act=nn.SiLU))
        self.cv4 = ConvNormAct(c3 + 2 * c4, c_out, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class SCDown(nn.Module):
    """1x1 conv+BN, then depthwise 3x3 stride-2 conv+BN: D-FINE's cheap downsampling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = ConvNormAct(c_in, c_out, 1, act=nn.SiLU)
        self.cv2 = ConvNormAct(c_out, c_out, 3, 2, groups=c_out, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class HybridEncoder(nn.Module):
    """Projections, NAIFI on the last level, FPN top-down and PAN bottom-up; ``hidden`` channels out at each level.

    ``fusion="csp"``: RT-DETR's blocks (CSPRepLayer, 3x3 stride-2 ConvBN downsampling: the
    "FPN-PAN + RepVGG-C3" the paper says it keeps [P, D]); ``"elan"``: D-FINE's (RepNCSPELAN4, SCDown).
    """

    def __init__(self, in_channels: tuple[int, ...], hidden: int = 256, heads: int = 8, ffn: int = 1024,
                 kernel: int = 63, attention: str = "na1d", expansion: float = 1.0, depth_mult: float = 1.0,
                 backend: str = "auto", fusion: str = "csp") -> None:
        super().__init__()
        if fusion not in ("csp", "elan"):
            raise ValueError(f"fusion must be csp or elan, got {fusion!r}")
        self.proj = nn.ModuleList(ConvNormAct(c, hidden, 1, act=None) for c in in_channels)
        self.naifi = NAIFI(hidden, heads, ffn, kernel, attention, backend)
        levels = len(in_channels)
        n = max(round(3 * depth_mult), 1)

        def block() -> nn.Module:
            if fusion == "csp":
                return CSPRepLayer(2 * hidden, hidden, n, expansion)
            return RepNCSPELAN4(2 * hidden, hidden, 2 * hidden, round(expansion * hidden // 2), n)

        def down() -> nn.Module:
            return ConvNormAct(hidden, hidden, 3, 2, act=nn.SiLU) if fusion == "csp" else SCDown(hidden, hidden)

        self.lateral = nn.ModuleList(ConvNormAct(hidden, hidden, 1, act=nn.SiLU) for _ in range(levels - 1))
        self.fpn = nn.ModuleList(block() for _ in range(levels - 1))
        self.down = nn.ModuleList(down() for _ in range(levels - 1))
        self.pan = nn.ModuleList(block() for _ in range(levels - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        proj = [p(f) for p, f in zip(self.proj, feats)]
        proj[-1] = self.naifi(proj[-1])
        inner = [proj[-1]]
        for k, idx in enumerate(range(len(proj) - 1, 0, -1)):  # top-down
            high = self.lateral[k](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn[k](torch.cat((up, proj[idx - 1]), 1)))
        outs = [inner[0]]
        for k in range(len(proj) - 1):  # bottom-up
            down = self.down[k](outs[-1])
            outs.append(self.pan[k](torch.cat((down, inner[k + 1]), 1)))
        return outs
