"""BatchNorm folding for inference and export."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers import ConvBNAct, InvertedBottleneck


def fuse_conv_bn_modules(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm into its preceding conv, in place. The model must be in eval mode."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
        elif isinstance(module, InvertedBottleneck) and isinstance(module.project_bn, nn.BatchNorm2d):
            module.project = fuse_conv_bn_eval(module.project, module.project_bn)
            module.project_bn = nn.Identity()
    return model
