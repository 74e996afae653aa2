"""LeYOLO (Hollard et al., 2024): inverted-bottleneck backbone, FPAN neck, DNiN head.

The builder reproduces the published topology layer by layer (layer ``i`` here is
``model.i`` in the authors' checkpoints), including the published medium network's quirks:
its head reads layers 27/32/37 and layers 38-41 feed nothing (they are built, for exact
parameter counts and weight loading, but never run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..coco import COCO_NAMES
from .base import ModelEntry, ModelMeta
from .graph import LayerGraphBuilder, LayerGraphModel
from .heads import DNiNHead
from .layers import SPPF, Concat, ConvBNAct, InvertedBottleneck, Upsample

@dataclass(frozen=True)
class LeYOLOArch:
    """Everything that distinguishes one LeYOLO scale from another.

    Channel numbers in the builder are the nano ones; ``width`` scales them as
    ``ceil(min(c, 576) * width / 8) * 8``.
    """

    width: float
    backbone_repeats: tuple[int, int, int]  # residual blocks after the stride-2 block of P3, P4, P5
    neck_repeats: tuple[int, int, int, int]  # top-down P4, top-down P3, bottom-up P4, bottom-up P5
    p3_widen_block: bool = False  # medium: an extra 32->64 (nano units) block closes the top-down P3 stage
    p5_narrow_block: bool = False  # medium: an extra (dead) 96->64 block closes the bottom-up P5 stage
    head_sources: tuple[int, int, int] | None = None  # None: the three stage outputs

    def channels(self, c: int) -> int:
        return int(math.ceil(min(c, 576) * self.width / 8) * 8)


SCALES: dict[str, LeYOLOArch] = {
    "n": LeYOLOArch(width=1.0, backbone_repeats=(1, 4, 3), neck_repeats=(2, 2, 2, 2)),
    "s": LeYOLOArch(width=1.33, backbone_repeats=(1, 4, 3), neck_repeats=(2, 2, 2, 2)),
    "m": LeYOLOArch(
        width=1.33,
        backbone_repeats=(2, 5, 4),
        neck_repeats=(3, 2, 3, 2),
        p3_widen_block=True,
        p5_narrow_block=True,
        head_sources=(27, 32, 37),
    ),
}
SCALES["l"] = SCALES["m"]  # large is the medium network run at 768 px

DEFAULT_IMGSZ = {"n": 640, "s": 640, "m": 640, "l": 768}


def build_leyolo(arch: LeYOLOArch, *, nc: int = 80, names: list[str] | None = None, name: str = "leyolo") -> LayerGraphModel:
    """Build a LeYOLO network in the published layer order."""
    ch = arch.channels
    g = LayerGraphBuilder()
    width: dict[int, int] = {}  # layer index -> output channels

    def block(c_out: int, kernel: int, c_mid: int | None, stride: int = 1, c_in: int | None = None) -> int:
        c_in = width[len(g.layers) - 1] if c_in is None else c_in
        mid = None if c_mid is None else ch(c_mid)
        i = g.add(InvertedBottleneck(c_in, ch(c_out), kernel, stride, mid))
        width[i] = ch(c_out)
        return i

    def stage(c_out: int, kernel: int, first_mid: int | None, mid: int, repeats: int, stride: int = 1) -> int:
        i = block(c_out, kernel, first_mid, stride)
        for _ in range(repeats):
            i = block(c_out, kernel, mid)
        return i

    def conv(c_out: int, kernel: int, stride: int, c_in: int | None = None) -> int:
        c_in = width[len(g.layers) - 1] if c_in is None else c_in
        i = g.add(ConvBNAct(c_in, ch(c_out), kernel, stride, bias=True))
        width[i] = ch(c_out)
        return i

    def upsample() -> int:
        i = g.add(Upsample())
        width[i] = width[i - 1]
        return i

    def concat(other: int) -> int:
        i = g.add(Concat(), (-1, other))
        width[i] = width[i - 1] + width[other]
        return i

    r3, r4, r5 = arch.backbone_repeats
    td4, td3, bu4, bu5 = arch.neck_repeats
    # backbone: stem /4, then stages /8, /16, /32
    conv(16, 3, 2, c_in=3)
    conv(16, 1, 1)
    block(16, 3, None, stride=2)
    p3 = stage(32, 3, 96, 96, r3, stride=2)
    p4 = stage(64, 5, 96, 192, r4, stride=2)
    stage(96, 5, 576, 576, r5, stride=2)
    p5 = g.add(SPPF(width[len(g.layers) - 1], ch(96)))
    width[p5] = ch(96)
    # FPAN neck, top-down
    upsample()
    concat(p4)
    n4 = stage(64, 5, 128, 128, td4)
    upsample()
    concat(p3)
    out3 = stage(32, 3, None, 64, td3)
    if arch.p3_widen_block:
        block(64, 5, 128)
    # bottom-up
    conv(64, 3, 2)
    concat(n4)
    out4 = stage(64, 5, 128, 128, bu4)
    conv(96, 3, 2)
    out5 = concat(p5)
    last5 = stage(96, 5, 192, 192, bu5)
    if arch.p5_narrow_block:
        block(64, 5, 128)
    sources = arch.head_sources or (out3, out4, last5)
    head = DNiNHead(nc, tuple(width[i] for i in sources))
    head.initialize_biases()
    del out5
    names = list(names) if names is not None else (COCO_NAMES[:] if nc == 80 else [f"class{i}" for i in range(nc)])
    meta = ModelMeta(arch=name, names=names, imgsz=DEFAULT_IMGSZ.get(name.rsplit("-", 1)[-1], 640))
    return LayerGraphModel(g, sources, head, meta)


DESCRIPTIONS = {
    "n": "LeYOLO nano: 1.12 M params, 2.67 GFLOPs at 640",
    "s": "LeYOLO small: 1.92 M params, 4.54 GFLOPs at 640",
    "m": "LeYOLO medium: 2.40 M params, 5.85 GFLOPs at 640",
    "l": "LeYOLO large: the medium network at 768 px, 8.42 GFLOPs",
}


def _entry(scale: str) -> ModelEntry:
    name = f"leyolo-{scale}"

    def builder(*, nc: int = 80, names: list[str] | None = None) -> LayerGraphModel:
        return build_leyolo(SCALES[scale], nc=nc, names=names, name=name)

    return ModelEntry(name, builder, DEFAULT_IMGSZ[scale], "leyolo", DESCRIPTIONS[scale], criterion="yolo")


ENTRIES: tuple[ModelEntry, ...] = tuple(_entry(scale) for scale in SCALES)
