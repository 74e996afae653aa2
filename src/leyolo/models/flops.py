"""FLOP counting by the convention the published tables use (thop: GFLOPs = 2 x MACs).

MACs counted as thop 0.1.1 (the version behind the LeYOLO tables) does: Conv2d = output
elements x C_in/groups x kh x kw (bias not counted); affine BatchNorm2d = 4 x elements;
nearest upsampling = 1 x output elements; Linear = output elements x in_features.
Activations, pooling, concat, reshapes and functional ops count zero. Layers that feed
nothing in the published medium network are run and counted, as the authors' code did.
This reproduces the published LeYOLO figures to 0.05%.

Rule A is that count (conv + BatchNorm, BN unfused). Two options add the other conventions
published tables use:

* ``fused=True`` (rule F): BatchNorm terms left out, i.e. the count after Conv+BN fusion (the
  YOLOv12 paper and README figures).
* ``attention=True`` (rule T): adds the attention matrix products that thop, hooking only
  modules, misses: ``2 * N^2 * C / area`` MACs per ``AreaAttention`` (q k^T and attn v over each
  strip), as ultralytics 8.4's ``get_flops`` (thop 2.x intercepting matmul) reports.

Nearest upsampling counts ``model.flops_upsample_macs`` MACs per output element (default 1, the
thop 0.1.1 rule behind the LeYOLO tables; YOLOv12 models set 0, the ultralytics-thop 2.x rule
behind theirs: at 640 the difference is 0.002 (n) to 0.012 (x) GFLOPs).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AreaAttention
from .base import DetectionModel
from .layers import Upsample


@torch.no_grad()
def count_macs(model: nn.Module, imgsz: int | tuple[int, int], channels: int = 3, *, fused: bool = False,
               attention: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a ``1 x C x H x W`` zero image (options: module docstring)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    total = 0
    upsample_macs = getattr(model, "flops_upsample_macs", 1)

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def bn_hook(_m, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += 4 * out.numel()

    def upsample_hook(_m, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += upsample_macs * out.numel()

    def attention_hook(m: AreaAttention, inp: tuple[torch.Tensor], _out) -> None:
        nonlocal total
        x = inp[0]
        total += m.attention_macs(x.shape[2], x.shape[3], x.shape[0])

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm2d) and not fused:
            hooks.append(module.register_forward_hook(bn_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, Upsample):
            hooks.append(module.register_forward_hook(upsample_hook))
        elif isinstance(module, AreaAttention) and attention:
            hooks.append(module.register_forward_hook(attention_hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        image = torch.zeros(1, channels, h, w, device=device)
        if isinstance(model, DetectionModel):
            model.forward_all(image)  # every layer, decoding included (the DFL runs there)
        else:
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def count_gflops(model: nn.Module, imgsz: int | tuple[int, int], fused: bool = False, attention: bool = False) -> float:
    """GFLOPs as published: 2 x MACs / 1e9. Rule A by default; ``fused`` = rule F, ``attention`` = rule T."""
    return 2 * count_macs(model, imgsz, fused=fused, attention=attention) / 1e9


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` holds attention whose matrix products rule A leaves out."""
    return any(isinstance(m, AreaAttention) for m in model.modules())


def count_params(model: nn.Module, inference: bool = True) -> int:
    """Parameters; with ``inference``, without those of modules only training runs (``unused_at_inference``)."""
    skip: set[int] = set()
    if inference and isinstance(model, DetectionModel):
        skip = {id(p) for m in model.unused_at_inference() for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
