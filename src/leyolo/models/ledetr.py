"""Le-DETR (Huang et al., arXiv 2602.21010): EfficientNAT backbone, NAIFI hybrid encoder, D-FINE-style decoder.

No official code or weights exist. Facts come from the paper (``shared/reference/LEDETR.md``);
every choice it leaves open is a field of ``LeDetrArch`` with the tag of its source:
[P] the paper, [I] inferred from its numbers, [R] RT-DETR/D-FINE/DEIM conventions, [D] the
first author's 2024 prototype. The paper's scales are M, L and X (trained with 6 decoder layers,
run with 5, 6, 6: Table 4).

Ours, not the paper's: ``le-detr-n``, a CPU-sized variant (thin EfficientNAT, hidden 128, 3
decoder layers, fewer sampling points, 100 queries and 50 denoising queries: a third of the
decoder's cost, still 20x the objects of a typical image) and ``le-detr-n-ly`` with LeYOLO-nano's backbone
(convolutions only: the variant that learns fastest from scratch on small data, BENCHMARKS.md).
The criterion (``leyolo.losses.detr``) and the top-k postprocess live outside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..coco import COCO_NAMES
from .base import DetectionModel, ModelEntry, ModelMeta, pixel_scale
from .detr_boxes import cxcywh_to_xyxy, split_targets
from .detr_decoder import DeformableAttention, DetrDecoder
from .detr_encoder import HybridEncoder, RepVGGBlock
from .efficientnat import EfficientNAT, EfficientNATArch


@dataclass(frozen=True)
class LeDetrArch:
    """Everything that distinguishes one Le-DETR from another (tags: module docstring)."""

    backbone: str = "efficientnat"  # efficientnat [P] | leyolo (ours: LeYOLO-nano's conv backbone, 32/64/96 ch)
    efficientnat: EfficientNATArch = field(default_factory=EfficientNATArch)  # widths [P], depths [P, I]
    hidden: int = 256  # encoder and decoder width [P]
    encoder_heads: int = 8  # [R]
    encoder_ffn: int = 1024  # [P]
    naifi_kernel: int = 63  # [P] Table 6
    naifi_attention: str = "na1d"  # na1d [I, D] | na2d | global (= AIFI)
    naifi_kernel_2d: int = 7  # the window of the na2d form ([D] tried 7, 11, 15)
    fusion: str = "csp"  # csp: RT-DETR's CSPRepLayer [P "RepVGG-C3", D] | elan: D-FINE's RepNCSPELAN4 [R]
    fusion_expansion: float = 1.0  # CSP width [R]
    fusion_depth: float = 1.0  # RepVGG blocks per CSP = round(3 * this) [R]
    decoder_layers: int = 6  # trained with [P]
    eval_layers: int = 6  # run at inference [P] Table 4 (M 5, L 6, X 6)
    decoder_heads: int = 8  # [R]
    decoder_ffn: int = 1024  # [R]
    queries: int = 300  # [P]
    points: tuple[int, ...] = (3, 6, 3)  # sampling points per level, strides 8/16/32 [P]
    denoising: int = 100  # denoising queries [P]
    label_noise: float = 0.5  # [R]
    box_noise: float = 1.0  # [R]
    reg_max: int = 32  # FDR bins - 1 [R]
    reg_scale: float = 4.0  # [R]
    sampling: str = "grid_sample"  # grid_sample (ONNX opset >= 16) | gather (no GridSample in the graph)
    attention_backend: str = "auto"  # neighbourhood attention: auto | masked | gather | natten


def leyolo_backbone() -> tuple[nn.Module, tuple[int, int, int]]:
    """LeYOLO-nano's backbone (stem to SPPF, the published layers 0-14) and its P3/P4/P5 widths."""
    from .leyolo import SCALES, build_leyolo

    nano = build_leyolo(SCALES["n"], nc=1)
    return _Taps(nano.layers[:15], (4, 9, 14)), (32, 64, 96)


class _Taps(nn.Module):
    """A chain of layers whose outputs at ``taps`` are returned (LeYOLO's backbone is a plain chain)."""

    def __init__(self, layers: nn.ModuleList, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs


class LeDETR(DetectionModel):
    """Backbone -> hybrid encoder -> decoder. ``forward(images, targets)``: targets feed the denoising queries."""

    output_kind = "set"
    train_targets = True

    def __init__(self, arch: LeDetrArch, nc: int = 80, names: list[str] | None = None, name: str = "le-detr") -> None:
        names = list(names) if names is not None else (COCO_NAMES[:] if nc == 80 else [f"class{i}" for i in range(nc)])
        super().__init__(ModelMeta(arch=name, names=names, imgsz=640, stride=32))
        self.arch = arch
        if arch.backbone == "efficientnat":
            self.backbone: nn.Module = EfficientNAT(arch.efficientnat, backend=arch.attention_backend)
            channels = self.backbone.channels
        elif arch.backbone == "leyolo":
            self.backbone, channels = leyolo_backbone()
        else:
            raise ValueError(f"unknown Le-DETR backbone {arch.backbone!r} (efficientnat or leyolo)")
        kernel = arch.naifi_kernel_2d if arch.naifi_attention == "na2d" else arch.naifi_kernel
        self.encoder = HybridEncoder(channels, arch.hidden, arch.encoder_heads, arch.encoder_ffn, kernel,
                                     arch.naifi_attention, arch.fusion_expansion, arch.fusion_depth,
                                     arch.attention_backend, arch.fusion)
        self.decoder = DetrDecoder(nc, arch.hidden, arch.decoder_heads, arch.decoder_ffn, arch.decoder_layers,
                                   arch.eval_layers, arch.queries, arch.points, 3, arch.reg_max, arch.reg_scale,
                                   arch.denoising, arch.label_noise, arch.box_noise, arch.sampling)

    @property
    def nc(self) -> int:
        return self.decoder.nc

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, Any]:
        """``[B, 3, H, W]`` in [0, 1] (and, in training, ``[M, 6]`` pixel targets) -> raw decoder output."""
        self.check_input(images)
        scale = pixel_scale(images)
        per_image = None
        if self.training and targets is not None:
            per_image = split_targets(targets, images.shape[0], scale)
        raw = self.decoder(self.encoder(self.backbone(images)), per_image)
        raw["scale"] = scale
        return raw

    def decode(self, raw: dict[str, Any]) -> torch.Tensor:
        """Normalised cxcywh boxes and logits -> ``[B, 4 + nc, Q]`` (xyxy pixels, sigmoid scores)."""
        boxes = cxcywh_to_xyxy(raw["boxes"]) * raw["scale"]
        return torch.cat((boxes, raw["logits"].sigmoid()), -1).transpose(1, 2)

    def reset_classes(self, nc: int) -> None:
        self.decoder.reset_classes(nc)

    def fuse(self) -> "LeDETR":
        super().fuse()
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.fuse()
        return self

    def unused_at_inference(self) -> list[nn.Module]:
        return self.decoder.unused_at_inference()

    def init_backbone(self, source: DetectionModel) -> int:
        """The LeYOLO backbone from a trained LeYOLO nano (e.g. the published COCO weights): its layers 0-14."""
        if self.arch.backbone != "leyolo" or not source.meta.arch.startswith("leyolo"):
            raise ValueError(f"{self.meta.arch}: a backbone can start from LeYOLO-nano weights only in the LeYOLO-"
                             f"backbone variant (le-detr-n-ly), got {source.meta.arch}")
        ours = self.backbone.state_dict()
        theirs = {k: v for k, v in source.state_dict().items() if k in ours and v.shape == ours[k].shape}
        if len(theirs) != len(ours):
            raise ValueError(f"{source.meta.arch}: {len(ours) - len(theirs)} backbone tensors missing or of another shape")
        self.backbone.load_state_dict(theirs)
        return len(theirs)

    def set_sampling(self, sampling: str) -> None:
        """``grid_sample`` or ``gather`` in every deformable attention (same numbers; exports differ)."""
        if sampling not in ("grid_sample", "gather"):
            raise ValueError(f"sampling must be grid_sample or gather, got {sampling!r}")
        for module in self.modules():
            if isinstance(module, DeformableAttention):
                module.sampling = sampling

    def set_eval_layers(self, layers: int) -> None:
        """Run the first ``layers`` decoder layers at inference (all are kept for training)."""
        if not 1 <= layers <= len(self.decoder.layers):
            raise ValueError(f"{self.meta.arch}: decoder layers at inference must be in [1, {len(self.decoder.layers)}]")
        self.decoder.eval_layers = int(layers)
        self.meta.extra["eval_layers"] = int(layers)


_PAPER = LeDetrArch()
SCALES: dict[str, LeDetrArch] = {
    # depths: stem DSConvs, then residual blocks of stages 1-4 (Table 6; the leading 1 read as the stem [I])
    "m": replace(_PAPER, efficientnat=EfficientNATArch(depths=(1, 1, 1, 2, 2)), eval_layers=5),
    "l": replace(_PAPER, efficientnat=EfficientNATArch(depths=(1, 1, 1, 4, 4))),
    "x": replace(_PAPER, efficientnat=EfficientNATArch(depths=(1, 2, 7, 15, 2))),
    # ours: CPU-sized (LEDETR.md does not have these)
    "n": replace(_PAPER, efficientnat=EfficientNATArch(widths=(16, 32, 64, 128, 256), depths=(1, 1, 1, 2, 2),
                                                         down_expand=(8, 8, 8, 8)),
                 hidden=128, encoder_heads=4, encoder_ffn=512, fusion_expansion=0.5, fusion_depth=0.34,
                 decoder_layers=3, eval_layers=3, decoder_heads=4, decoder_ffn=512, points=(2, 4, 2), queries=100,
                 denoising=50),
}
SCALES["n-ly"] = replace(SCALES["n"], backbone="leyolo")

DESCRIPTIONS = {
    "m": "Le-DETR M (paper): EfficientNAT-M, NAIFI, 6 decoder layers trained / 5 run",
    "l": "Le-DETR L (paper): EfficientNAT-L, NAIFI, 6 decoder layers",
    "x": "Le-DETR X (paper): EfficientNAT-X, NAIFI, 6 decoder layers",
    "n": "Le-DETR nano (ours, not in the paper): thin EfficientNAT, hidden 128, 3 decoder layers",
    "n-ly": "Le-DETR nano with LeYOLO-nano's backbone (ours): the CPU variant that learns fastest from scratch",
}


def build_ledetr(arch: LeDetrArch, *, nc: int = 80, names: list[str] | None = None, name: str = "le-detr") -> LeDETR:
    return LeDETR(arch, nc=nc, names=names, name=name)


def _entry(scale: str) -> ModelEntry:
    name = f"le-detr-{scale}"
    imgsz = 320 if scale.startswith("n") else 640

    def builder(*, nc: int = 80, names: list[str] | None = None) -> LeDETR:
        model = build_ledetr(SCALES[scale], nc=nc, names=names, name=name)
        model.meta.imgsz = imgsz
        return model

    return ModelEntry(name, builder, imgsz, "le-detr", DESCRIPTIONS[scale], criterion="detr", recipe="detr")


ENTRIES: tuple[ModelEntry, ...] = tuple(_entry(scale) for scale in SCALES)
