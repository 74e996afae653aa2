"""EfficientNAT, Le-DETR's backbone (Huang et al., 2026, §3.4): EfficientViT-L with neighbourhood attention.

Layout (LEDETR.md §2): a stem (3x3 s2 conv, then residual depthwise-separable convs), stages 1-2 of
Fused-MBConv, stage 3 of MBConv, stage 4 an MBConv downsampling block followed by
``EfficientNATBlock``s (``x + NA(LN(x))``, then ``x + MBConv(x)``). Each stage starts with a
stride-2 block that doubles the channels [P]; a stage of depth ``d`` is that block plus ``d``
residual blocks, the EfficientViT-L convention [R, D]. Expand ratios, GELU, BatchNorm and the
"fewer norm" MBConv (bias, no norm on its first two convs) follow EfficientViT-L's code [R].
Outputs are the stride-8/16/32 maps (stages 2-4), as RT-DETR's backbones give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConvBNAct
from .neighborhood import NeighborhoodAttention2d


class ConvNormAct(ConvBNAct):
    """``ConvBNAct`` with a chosen activation (GELU here) and norm; BatchNorm folds like every ConvBNAct."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, *,
                 act: type[nn.Module] | None = nn.GELU, norm: bool = True, bias: bool = False) -> None:
        super().__init__(c_in, c_out, kernel, stride, groups=groups, bias=bias or not norm, act=False,
                         padding=kernel // 2)
        self.bn = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.act = act() if act is not None else nn.Identity()


class DSConv(nn.Module):
    """Depthwise 3x3 + BN + act, then pointwise 1x1 + BN; residual when shapes allow (the stem's blocks)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(c_in, c_in, 3, stride, groups=c_in, act=act)
        self.pointwise = ConvNormAct(c_in, c_out, 1, act=None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class FusedMBConv(nn.Module):
    """3x3 conv to ``c_in * expand`` + BN + act, then 1x1 + BN (stages 1-2: dense convs are fast on small maps)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: float = 4, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        mid = round(c_in * expand)
        self.spatial = ConvNormAct(c_in, mid, 3, stride, act=act)
        self.project = ConvNormAct(mid, c_out, 1, act=None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.spatial(x))
        return x + y if self.residual else y


class MBConv(nn.Module):
    """1x1 expand + act, depthwise 3x3 + act (both with bias and no norm: EfficientViT's "fewer norm"),
    then 1x1 project + BN."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: float = 4, act: type[nn.Module] = nn.GELU,
                 residual: bool = True) -> None:
        super().__init__()
        mid = round(c_in * expand)
        self.expand = ConvNormAct(c_in, mid, 1, act=act, norm=False)
        self.depthwise = ConvNormAct(mid, mid, 3, stride, groups=mid, act=act, norm=False)
        self.project = ConvNormAct(mid, c_out, 1, act=None)
        self.residual = residual and stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNATBlock(nn.Module):
    """``x + NA(LN(x))`` then ``x + MBConv(x)`` (the paper's Fig. 4: an MBConv replaces the MLP).

    Neighbourhood attention: 2-D, kernel 7, dilation 1, head dim 32, qkv bias and a relative
    position bias (RPB is [P], Eq. 1; kernel/heads [R, D]). On maps smaller than the kernel it
    attends globally (``leyolo.models.neighborhood``).
    """

    def __init__(self, dim: int, kernel: int = 7, head_dim: int = 32, expand: float = 4, dilation: int = 1,
                 backend: str = "auto", act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(dim, max(dim // head_dim, 1), kernel=kernel, dilation=dilation,
                                            backend=backend)
        self.ffn = MBConv(dim, dim, expand=expand, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 1)  # [B, H, W, C] tokens
        t = t + self.attn(self.norm(t))
        x = t.permute(0, 3, 1, 2)
        return self.ffn(x)  # MBConv adds its input (residual)


@dataclass(frozen=True)
class EfficientNATArch:
    """Widths and depths of an EfficientNAT (LEDETR.md Table 6 for the paper's M/L/X)."""

    widths: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)  # stem, stages 1-4
    depths: tuple[int, int, int, int, int] = (1, 1, 1, 4, 4)  # stem DSConvs, residual blocks per stage 1-4
    down_expand: tuple[float, float, float, float] = (16, 16, 16, 24)  # the stride-2 block of each stage
    expand: float = 4  # residual blocks (Fused-MBConv, MBConv, the NAT block's MBConv)
    na_kernel: int = 7
    na_dilation: int = 1
    head_dim: int = 32


class EfficientNAT(nn.Module):
    """The backbone: ``[B, 3, H, W]`` -> stride-8, 16 and 32 maps (``channels`` gives their widths)."""

    def __init__(self, arch: EfficientNATArch, backend: str = "auto") -> None:
        super().__init__()
        w, d = arch.widths, arch.depths
        self.stem = nn.Sequential(ConvNormAct(3, w[0], 3, 2), *(DSConv(w[0], w[0]) for _ in range(d[0])))
        stages = []
        for s in range(4):
            c_in, c_out, e = w[s], w[s + 1], arch.down_expand[s]
            if s < 2:
                blocks = [FusedMBConv(c_in, c_out, 2, e)] + [FusedMBConv(c_out, c_out, 1, arch.expand) for _ in range(d[s + 1])]
            elif s == 2:
                blocks = [MBConv(c_in, c_out, 2, e)] + [MBConv(c_out, c_out, 1, arch.expand) for _ in range(d[s + 1])]
            else:
                blocks = [MBConv(c_in, c_out, 2, e)] + [
                    EfficientNATBlock(c_out, arch.na_kernel, arch.head_dim, arch.expand, arch.na_dilation, backend)
                    for _ in range(d[s + 1])]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.channels = (w[2], w[3], w[4])
        self.strides = (8, 16, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs
