"""YOLOv12 (Tian et al., 2025): attention-centric YOLO with area attention and R-ELAN.

Two architectures carry the name (``shared/reference/YOLOV12.md``):

* ``yolov12-{n,s,m,l,x}``: v1.0, the paper's model (ultralytics ``yolo12``);
* ``yolov12-{n,s,m,l,x}-turbo``: the official repo's revision since 2025-03: grouped convs at
  layers 1 (g=2) and 3 (g=4), split ``qk``/``v`` projections, a 5x5 position perceiver and an
  MLP ratio of 1.5 (not 1.2) at l/x.

Layer ``i`` of the graph is layer ``i`` of the reference yaml (``model.i`` in ultralytics
checkpoints), so ``ultralytics_key`` maps their keys onto ours by renaming only. The head is
the YOLOv8/11 ``Detect`` head (``DecoupledHead``). Inputs must be multiples of 32 (the FPN's
upsample + concat needs even maps at every level); other sizes raise a ``ValueError`` up front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..coco import COCO_NAMES
from .attention import RELAN
from .base import ModelEntry, ModelMeta
from .graph import LayerGraphBuilder, LayerGraphModel
from .heads import DecoupledHead
from .layers import C3k2, Concat, ConvBNAct, Upsample


@dataclass(frozen=True)
class YOLOv12Arch:
    """Everything that distinguishes one YOLOv12 scale from another.

    The builder uses the reference's unscaled channel numbers (64 ... 1024) and repeats;
    ``channels`` and ``repeats`` apply ``width``/``max_channels`` and ``depth`` to them.
    """

    depth: float
    width: float
    max_channels: int
    turbo: bool = False  # the official repo's 2025-03 revision
    c3k: bool = False  # m/l/x: every C3k2 uses C3k blocks
    residual: bool = False  # l/x: the attention R-ELANs (layers 6, 8) get the gamma layer scale
    mlp_ratio: float = 2.0  # attention-block MLP ratio: l/x 1.2 (turbo 1.5)

    def channels(self, c: int) -> int:
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1) if n > 1 else n


_V1 = {
    "n": YOLOv12Arch(0.50, 0.25, 1024),
    "s": YOLOv12Arch(0.50, 0.50, 1024),
    "m": YOLOv12Arch(0.50, 1.00, 512, c3k=True),
    "l": YOLOv12Arch(1.00, 1.00, 512, c3k=True, residual=True, mlp_ratio=1.2),
    "x": YOLOv12Arch(1.00, 1.50, 512, c3k=True, residual=True, mlp_ratio=1.2),
}
SCALES: dict[str, YOLOv12Arch] = dict(_V1)
SCALES.update({
    f"{k}-turbo": replace(a, turbo=True, mlp_ratio=1.5 if a.residual else a.mlp_ratio) for k, a in _V1.items()
})

DESCRIPTIONS = {
    "n": "YOLOv12 nano (v1.0): 2.60 M params, 6.5 GFLOPs at 640 (fused, attention matmuls excluded)",
    "s": "YOLOv12 small (v1.0): 9.28 M params, 21.4 GFLOPs at 640",
    "m": "YOLOv12 medium (v1.0): 20.2 M params, 67.5 GFLOPs at 640",
    "l": "YOLOv12 large (v1.0): 26.5 M params, 88.9 GFLOPs at 640",
    "x": "YOLOv12 extra-large (v1.0): 59.2 M params, 199.0 GFLOPs at 640",
    "n-turbo": "YOLOv12 nano (turbo): 2.55 M params, 6.0 GFLOPs at 640 (fused, attention matmuls excluded)",
    "s-turbo": "YOLOv12 small (turbo): 9.13 M params, 19.4 GFLOPs at 640",
    "m-turbo": "YOLOv12 medium (turbo): 19.7 M params, 59.8 GFLOPs at 640",
    "l-turbo": "YOLOv12 large (turbo): 26.5 M params, 82.4 GFLOPs at 640",
    "x-turbo": "YOLOv12 extra-large (turbo): 59.4 M params, 184.6 GFLOPs at 640",
}


class YOLOv12Model(LayerGraphModel):
    """``LayerGraphModel`` with YOLOv12's FLOP convention.

    * ``flops_upsample_macs = 0``: the YOLOv12 tables were counted with ultralytics-thop 2.x,
      which counts nearest upsampling as zero (LeYOLO's thop 0.1.1 counted 1 per output element).
    """

    flops_upsample_macs = 0


def build_yolov12(arch: YOLOv12Arch, *, nc: int = 80, names: list[str] | None = None,
                  name: str = "yolov12") -> YOLOv12Model:
    """Build a YOLOv12 network, layer ``i`` = the reference's layer ``i``."""
    ch, rep = arch.channels, arch.repeats
    g = LayerGraphBuilder()
    width: dict[int, int] = {}

    def add(module, c_out: int, source=-1) -> int:
        i = g.add(module, source)
        width[i] = c_out
        return i

    def prev() -> int:
        return width[len(g.layers) - 1]

    def conv(c: int, groups: int = 1) -> int:  # 3x3 stride-2 downsampling conv
        return add(ConvBNAct(prev(), ch(c), 3, 2, groups=groups), ch(c))

    def c3k2(c: int, n: int, c3k: bool, e: float = 0.5) -> int:
        return add(C3k2(prev(), ch(c), rep(n), c3k or arch.c3k, e), ch(c))

    def relan(c: int, n: int, attention: bool, area: int = 1) -> int:
        block = RELAN(prev(), ch(c), rep(n), attention, area, arch.residual, arch.mlp_ratio, turbo=arch.turbo)
        return add(block, ch(c))

    def upsample() -> int:
        return add(Upsample(), prev())

    def concat(other: int) -> int:
        return add(Concat(), prev() + width[other], (-1, other))

    width[-1] = 3
    # backbone
    conv(64)  # 0  P1/2
    conv(128, 2 if arch.turbo else 1)  # 1  P2/4
    c3k2(256, 2, False, 0.25)  # 2
    conv(256, 4 if arch.turbo else 1)  # 3  P3/8
    p3 = c3k2(512, 2, False, 0.25)  # 4
    conv(512)  # 5  P4/16
    p4 = relan(512, 4, True, area=4)  # 6
    conv(1024)  # 7  P5/32
    p5 = relan(1024, 4, True, area=1)  # 8
    # head: top-down
    upsample()  # 9
    concat(p4)  # 10
    n4 = relan(512, 2, False)  # 11
    upsample()  # 12
    concat(p3)  # 13
    out3 = relan(256, 2, False)  # 14 (P3/8 out)
    # bottom-up
    conv(256)  # 15
    concat(n4)  # 16
    out4 = relan(512, 2, False)  # 17 (P4/16 out)
    conv(512)  # 18
    concat(p5)  # 19
    out5 = c3k2(1024, 2, True)  # 20 (P5/32 out)
    del width[-1]

    sources = (out3, out4, out5)
    head = DecoupledHead(nc, tuple(width[i] for i in sources))  # layer 21 (Detect)
    head.initialize_biases()
    names = list(names) if names is not None else (COCO_NAMES[:] if nc == 80 else [f"class{i}" for i in range(nc)])
    return YOLOv12Model(g, sources, head, ModelMeta(arch=name, names=names, imgsz=640))


def ultralytics_key(key: str, model: LayerGraphModel) -> str | None:
    """An ultralytics YOLOv12 key (``model.6.m.0.1.attn.qkv.conv.weight``) -> ours (``layers.6.blocks.0.1...``).

    Renames follow each module's ``ULTRALYTICS_NAMES``; ``None`` for keys outside the model. The
    turbo and v1.0 layouts differ (``qkv`` vs ``qk``/``v``), so a checkpoint fits only its own variant.
    """
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        return None
    index, rest = int(parts[1]), parts[2:]
    if index == len(model.layers):  # Detect comes right after the graph
        branch = {"cv2": "box", "cv3": "cls", "dfl": "dfl"}.get(rest[0])
        return None if branch is None else ".".join(["head", branch, *rest[1:]])
    if index > len(model.layers):
        return None
    out, module = ["layers", str(index)], model.layers[index]
    for part in rest:
        part = getattr(type(module), "ULTRALYTICS_NAMES", {}).get(part, part) if module is not None else part
        out.append(part)
        module = module._modules.get(part) if module is not None else None
    return ".".join(out)


def _entry(key: str) -> ModelEntry:
    name = f"yolov12-{key}"

    def builder(*, nc: int = 80, names: list[str] | None = None) -> YOLOv12Model:
        return build_yolov12(SCALES[key], nc=nc, names=names, name=name)

    return ModelEntry(name, builder, 640, "yolov12", DESCRIPTIONS[key], criterion="yolo")


ENTRIES: tuple[ModelEntry, ...] = tuple(_entry(key) for key in SCALES)
