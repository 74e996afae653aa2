"""Rebuild a model's convs and BatchNorms to the widths stored in a checkpoint (channel-pruned weights).

A channel-pruned model has other widths than its registry architecture. Its checkpoint stays an
ordinary leyolo ``.safetensors``: the tensors carry the new widths and ``meta.extra["pruned"]``
marks the file as pruned, so loading builds the registry architecture and then fits it here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LeyoloError, first_line

def fit_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                      where: str = "weights") -> dict[str, torch.Tensor]:
    """Rebuild ``model``'s convs and BatchNorms (in place) to the shapes in ``state``; return its new state dict.

    Only channel counts may differ: kernel sizes, strides and everything that is not a conv or
    BatchNorm must match, depthwise convs stay depthwise, and the head must still produce
    ``4 * bins + nc`` channels. Anything else raises ``LeyoloError``.
    """
    own = model.state_dict()
    arch = getattr(getattr(model, "meta", None), "arch", type(model).__name__)
    resized = {name: mod for name, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d))}
    for key, tensor in state.items():
        owner = key.rsplit(".", 1)[0]
        if tensor.shape != own[key].shape and owner not in resized:
            raise LeyoloError(f"{where}: weights do not fit {arch}: {key} has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(own[key].shape)}")
    for name, mod in resized.items():
        weight = state[f"{name}.weight"] if f"{name}.weight" in state else state.get(f"{name}.running_mean")
        if weight is None:
            continue
        new = _resized(mod, tuple(weight.shape), f"{where}: {name}")
        if new is not mod:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "box"):
        for seq in list(head.box) + list(head.cls):
            expected = head.nc if any(seq is c for c in head.cls) else 4 * head.bins
            if seq[-1].out_channels != expected:
                raise LeyoloError(f"{where}: weights do not fit {arch}: a head output has {seq[-1].out_channels} "
                                  f"channels, expected {expected}")
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64, dtype=next(model.parameters()).dtype))
    except RuntimeError as exc:
        raise LeyoloError(f"{where}: weights do not fit {arch}: layer widths are inconsistent "
                          f"({first_line(exc, 120)})") from None
    return model.state_dict()


def _resized(mod: nn.Module, shape: tuple[int, ...], where: str) -> nn.Module:
    """A fresh conv/BN with the stored shape, or ``mod`` itself when nothing changed."""
    if isinstance(mod, nn.BatchNorm2d):
        if shape[0] == mod.num_features:
            return mod
        return nn.BatchNorm2d(shape[0], mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
    out_c, in_per_group, kh, kw = shape
    if (kh, kw) != tuple(mod.kernel_size):
        raise LeyoloError(f"{where} has a {kh}x{kw} kernel, expected {mod.kernel_size[0]}x{mod.kernel_size[1]}")
    if (out_c, in_per_group) == (mod.out_channels, mod.in_channels // mod.groups):
        return mod
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    if depthwise:
        if in_per_group != 1:
            raise LeyoloError(f"{where} was depthwise, but the stored weight has {in_per_group} inputs per group")
        groups, c_in = out_c, out_c
    else:
        groups, c_in = mod.groups, in_per_group * mod.groups
    conv = nn.Conv2d(c_in, out_c, mod.kernel_size, mod.stride, mod.padding, mod.dilation, groups,
                     mod.bias is not None, mod.padding_mode)
    conv.requires_grad_(mod.weight.requires_grad)
    return conv
