"""Building blocks shared by the detector families.

Every block takes plain channel numbers; width scaling happens in the family
builders, never inside a block.
"""

from __future__ import annotations

import torch
from torch import nn


def same_padding(kernel: int, stride: int) -> int:
    """LeYOLO's padding rule: ``k // 2``, except 0 when the kernel equals the stride."""
    return 0 if kernel == stride else kernel // 2


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU (or identity), the unit most layers are made of."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: bool = True,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        pad = same_padding(kernel, stride) if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedBottleneck(nn.Module):
    """MobileNetV3-style block without squeeze-excite: [1x1 expand] -> kxk depthwise -> 1x1 linear.

    The residual add is used when the block keeps shape (c_in == c_out, stride 1).
    ``c_mid=None`` drops the expand conv (the depthwise conv then runs on ``c_in``).
    All convs carry a bias, as in the published LeYOLO weights.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, c_mid: int | None = None) -> None:
        super().__init__()
        self.expand = ConvBNAct(c_in, c_mid, 1, 1, bias=True) if c_mid is not None else None
        c_mid = c_in if c_mid is None else c_mid
        self.depthwise = ConvBNAct(c_mid, c_mid, kernel, stride, groups=c_mid, bias=True)
        self.project = nn.Conv2d(c_mid, c_out, 1, 1, 0, bias=True)
        self.project_bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.residual = c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project_bn(self.project(self.depthwise(y)))
        return x + y if self.residual else y


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concatenated with their input."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBNAct(c_in, hidden, 1, 1)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)
        self.fuse = ConvBNAct(hidden * 4, c_out, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.reduce(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        return self.fuse(torch.cat((y0, y1, y2, self.pool(y2)), 1))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


class Concat(nn.Module):
    """Channel concatenation of a layer's inputs, in the listed order."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class DFL(nn.Module):
    """Distribution focal loss decoder: expectation of a softmax over ``bins`` distance bins.

    Kept as a fixed 1x1 conv (weights 0..bins-1, not trained) so parameter counts and
    checkpoints match the published models.
    """

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape  # [B, 4*bins, A]
        probs = x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)  # [B, bins, 4, A]
        return self.conv(probs).view(b, 4, a)  # [B, 4, A] distances in stride units


class Bottleneck(nn.Module):
    """Two kxk ConvBNAct with hidden width ``int(c_out * e)``; adds the input when ``shortcut`` and shapes allow.

    Ultralytics names: ``cv1`` = ``conv1``, ``cv2`` = ``conv2``.
    """

    ULTRALYTICS_NAMES = {"cv1": "conv1", "cv2": "conv2"}

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, kernel: int = 3, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.conv1 = ConvBNAct(c_in, hidden, kernel)
        self.conv2 = ConvBNAct(hidden, c_out, kernel)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    """CSP block with three convs: ``fuse(cat[blocks(main(x)), skip(x)])``, ``n`` full-width 3x3 bottlenecks.

    Ultralytics names (``C3k``): ``cv1`` = ``main``, ``cv2`` = ``skip``, ``cv3`` = ``fuse``, ``m`` = ``blocks``.
    """

    ULTRALYTICS_NAMES = {"cv1": "main", "cv2": "skip", "cv3": "fuse", "m": "blocks"}

    def __init__(self, c_in: int, c_out: int, n: int = 2, shortcut: bool = True, e: float = 0.5, kernel: int = 3) -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.main = ConvBNAct(c_in, hidden, 1)
        self.skip = ConvBNAct(c_in, hidden, 1)
        self.fuse = ConvBNAct(2 * hidden, c_out, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, kernel, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((self.blocks(self.main(x)), self.skip(x)), 1))


class C3k2(nn.Module):
    """C2f-style split block (YOLO11/12): split a 1x1 conv into two halves, chain ``n`` blocks on the
    second half, concatenate every intermediate and fuse with a 1x1 conv.

    Blocks are ``C3k(c, c, 2)`` with ``c3k=True``, else ``Bottleneck(c, c, e=0.5)``, where
    ``c = int(c_out * e)``. Ultralytics names: ``cv1`` = ``split``, ``cv2`` = ``fuse``, ``m`` = ``blocks``.
    """

    ULTRALYTICS_NAMES = {"cv1": "split", "cv2": "fuse", "m": "blocks"}

    def __init__(self, c_in: int, c_out: int, n: int = 1, c3k: bool = False, e: float = 0.5,
                 shortcut: bool = True) -> None:
        super().__init__()
        c = int(c_out * e)
        self.split = ConvBNAct(c_in, 2 * c, 1)
        self.fuse = ConvBNAct((2 + n) * c, c_out, 1)
        self.blocks = nn.ModuleList(
            C3k(c, c, 2, shortcut) if c3k else Bottleneck(c, c, shortcut, e=0.5) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.split(x).chunk(2, 1))
        for block in self.blocks:
            y.append(block(y[-1]))
        return self.fuse(torch.cat(y, 1))
