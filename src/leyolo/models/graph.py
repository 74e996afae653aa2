"""``LayerGraphModel``: a feature graph plus a dense head, the network shape of every YOLO family.

The graph is a list of layers, each reading the previous output or a list of earlier
outputs (by layer index), the layout the published checkpoints use. Builders append
layers in plain Python; nothing here parses configuration. Its raw output is the head's
per-level maps; its ``output_kind`` is ``"dense"`` (decoded anchors need NMS).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import DetectionModel, ModelMeta
from .heads import DenseHead

Source = int | tuple[int, ...]  # -1 = previous layer, else absolute layer index (or a tuple of them)


class LayerGraphBuilder:
    """Collects ``(source, module)`` pairs; ``add`` returns the new layer's index."""

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.sources: list[Source] = []

    def add(self, module: nn.Module, source: Source = -1) -> int:
        self.layers.append(module)
        self.sources.append(source)
        return len(self.layers) - 1


class LayerGraphModel(DetectionModel):
    """Feature graph -> dense head. ``forward(images)`` returns the head's raw per-level maps.

    Args:
        builder: the layers, in published order.
        head_sources: indices of the layers the head reads (P3, P4, P5).
        head: the dense head.
        meta: names, architecture and preprocessing facts.
    """

    def __init__(self, builder: LayerGraphBuilder, head_sources: Sequence[int], head: DenseHead, meta: ModelMeta):
        meta.stride = max(head.strides)
        meta.strides = tuple(head.strides)
        super().__init__(meta)
        self.layers = nn.ModuleList(builder.layers)
        self.sources: list[Source] = list(builder.sources)
        self.head_sources = tuple(head_sources)
        self.head = head
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
    def nc(self) -> int:
        return self.head.nc

    @property
    def strides(self) -> tuple[int, ...]:
        return self.head.strides

    def features(self, x: torch.Tensor, *, every_layer: bool = False) -> list[torch.Tensor]:
        """Run the graph; return the head's input maps.

        ``every_layer=True`` also runs layers that feed nothing (FLOP counting as published).
        """
        self.check_input(x)
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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` RGB in [0, 1] -> raw maps ``[B, 4*bins + nc, H/s, W/s]`` per stride."""
        return self.head(self.features(x))

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> ``[B, 4 + nc, A]`` (xyxy input pixels, sigmoid scores)."""
        return self.head.decode(maps)

    def reset_classes(self, nc: int) -> None:
        self.head.reset_class_outputs(nc)

    def fp32_modules(self) -> list[nn.Module]:
        return [self.head.dfl]  # the DFL expectation: fp16 has a 0.5 px step at 640 px

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.head(self.features(x, every_layer=True)))  # dead layers too, as published
