"""Readable per-layer summaries for ``leyolo info``."""

from __future__ import annotations

import torch
from torch import nn

from .base import DetectionModel
from .flops import count_gflops, has_attention
from .graph import LayerGraphModel


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def layer_table(model: DetectionModel, imgsz: int) -> str:
    """One row per layer: index, inputs, block type, parameters and output shape at ``imgsz``.

    Layer-graph models list their graph; other families list their top-level modules.
    """
    if not isinstance(model, LayerGraphModel):
        rows = [f"{'module':<24} {'block':<24} {'params':>10}"]
        rows += [f"{name:<24} {type(child).__name__:<24} {_params(child):>10,}" for name, child in model.named_children()]
        return "\n".join(rows)
    shapes: dict[int, tuple] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, i=i: shapes.__setitem__(i, tuple(out.shape[1:])))
             for i, layer in enumerate(model.layers)]
    was_training = model.training
    try:
        model.eval()
        model.features(torch.zeros(1, 3, imgsz, imgsz), every_layer=True)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    rows = [f"{'#':>3}  {'from':<10} {'block':<20} {'params':>10}  output (C, H, W)"]
    for i, (layer, src) in enumerate(zip(model.layers, model.sources)):
        dead = "" if i in model._plan[0] else "  (feeds nothing, as published)"
        rows.append(f"{i:>3}  {str(src):<10} {type(layer).__name__:<20} {_params(layer):>10,}  {shapes.get(i)}{dead}")
    rows.append(f"{len(model.layers):>3}  {str(list(model.head_sources)):<10} {type(model.head).__name__:<20} "
                f"{_params(model.head):>10,}  {model.nc} classes, strides {list(model.strides)}")
    return "\n".join(rows)


def extra_gflops(model: nn.Module, imgsz: int) -> dict[str, float]:
    """The other published GFLOP conventions, for models with attention (``{}`` otherwise).

    ``gflops`` (``leyolo info``) is rule A: conv + BatchNorm, BN unfused, as thop counts modules.
    Attention models add ``gflops_fused`` (rule F: after Conv+BN fusion, the YOLOv12 paper's
    figures) and ``gflops_with_attention`` (rule T: A plus the attention matrix products).
    """
    if not has_attention(model):
        return {}
    return {"gflops_fused": round(count_gflops(model, imgsz, fused=True), 4),
            "gflops_with_attention": round(count_gflops(model, imgsz, attention=True), 4)}
