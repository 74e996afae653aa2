"""``DetectionModel``: a feature graph plus a dense head, the model contract every family meets.

The graph is a list of layers, each reading the previous output or a list of earlier
outputs (by layer index), the layout the published checkpoints use. Builders append
layers in plain Python; nothing here parses configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .heads import DenseHead

Source = int | tuple[int, ...]  # -1 = previous layer, else absolute layer index (or a tuple of them)


@dataclass
class ModelMeta:
    """What travels with the weights: identity, classes and preprocessing."""

    arch: str
    names: list[str]
    imgsz: int = 640
    stride: int = 32
    pad_value: int = 114
    extra: dict = field(default_factory=dict)

    def to_dict(self, nc: int, imgsz: int | None = None, *, extra: bool = True) -> dict[str, Any]:
        """The JSON form stored in checkpoints and exports (``extra``: e.g. a pruning record, needed to load widths)."""
        out: dict[str, Any] = {"arch": self.arch, "names": list(self.names), "imgsz": int(imgsz or self.imgsz),
                               "stride": int(self.stride), "pad_value": int(self.pad_value), "nc": int(nc)}
        if extra and self.extra:
            out["extra"] = dict(self.extra)
        return out


class LayerGraphBuilder:
    """Collects ``(source, module)`` pairs; ``add`` returns the new layer's index."""

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.sources: list[Source] = []

    def add(self, module: nn.Module, source: Source = -1) -> int:
        self.layers.append(module)
        self.sources.append(source)
        return len(self.layers) - 1


class DetectionModel(nn.Module):
    """Feature graph -> head. ``forward(images)`` returns the head's raw per-level maps.

    Args:
        builder: the layers, in published order.
        head_sources: indices of the layers the head reads (P3, P4, P5).
        head: the dense head.
        meta: names, architecture and preprocessing facts.
    """

    def __init__(self, builder: LayerGraphBuilder, head_sources: Sequence[int], head: DenseHead, meta: ModelMeta):
        super().__init__()
        self.layers = nn.ModuleList(builder.layers)
        self.sources: list[Source] = list(builder.sources)
        self.head_sources = tuple(head_sources)
        self.head = head
        self.meta = meta
        self._plan = self._execution_plan()

    def _execution_plan(self) -> tuple[list[int], set[int]]:
        """Layers that reach the head (published medium has dead layers) and outputs to keep."""
        def refs(i: int) -> list[int]:
            src = self.sources[i]
            items = src if isinstance(src, tuple) else (src,)
            return [r for r in (i - 1 if s == -1 else s for s in items) if r >= 0]

        needed, stack = set(), list(self.head_sources)
        while stack:
            i = stack.pop()
            if i not in needed:
                needed.add(i)
                stack.extend(refs(i))
        saved = set(self.head_sources)
        for i in needed:
            src = self.sources[i]
            if isinstance(src, tuple) or src != -1:
                saved.update(r for r in refs(i))
        return sorted(needed), saved

    @property
    def names(self) -> list[str]:
        return self.meta.names

    @property
    def nc(self) -> int:
        return self.head.nc

    @property
    def strides(self) -> tuple[int, ...]:
        return self.head.strides

    def features(self, x: torch.Tensor, *, every_layer: bool = False) -> list[torch.Tensor]:
        """Run the graph; return the head's input maps.

        ``every_layer=True`` also runs layers that feed nothing (FLOP counting as published).
        """
        self._check_input(x)
        order, saved = self._plan
        if every_layer:
            order, saved = range(len(self.layers)), set(range(len(self.layers)))
        outputs: dict[int, torch.Tensor] = {}
        prev = x
        for i in order:
            src = self.sources[i]
            if isinstance(src, tuple):
                inp = [prev if s == -1 else outputs[s] for s in src]
            else:
                inp = prev if src == -1 else outputs[src]
            prev = self.layers[i](inp)
            if i in saved:
                outputs[i] = prev
        return [outputs[i] for i in self.head_sources]

    def _check_input(self, x: torch.Tensor) -> None:
        """A clear error for sizes the neck cannot concatenate, instead of a shape error deep inside."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        if x.ndim != 4:
            raise ValueError(f"{self.meta.arch} expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        multiple = max(self.strides)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % multiple or w % multiple:
            raise ValueError(
                f"{self.meta.arch} needs input height and width that are multiples of {multiple}, got {h}x{w} "
                f"(letterbox or pad to {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple})"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` RGB in [0, 1] -> raw maps ``[B, 4*bins + nc, H/s, W/s]`` per stride."""
        return self.head(self.features(x))

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> ``[B, 4 + nc, A]`` (xyxy input pixels, sigmoid scores)."""
        return self.head.decode(maps)

    def fuse(self) -> "DetectionModel":
        """Fold every BatchNorm into the conv before it (inference only; idempotent)."""
        from .fuse import fuse_conv_bn_modules

        fuse_conv_bn_modules(self)
        return self


class DecodedModel(nn.Module):
    """Wraps a ``DetectionModel`` so ``forward`` returns decoded ``[B, 4 + nc, A]``: what gets exported."""

    def __init__(self, model: DetectionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model(x))
