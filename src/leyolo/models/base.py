"""The model contract: what every detector family gives the rest of the library.

Everything outside ``models`` (predictor, exporter, evaluator, trainer) talks to a model through
``DetectionModel`` only, so a family plugs in by meeting it, without a special case elsewhere:

* ``forward(images)``: ``[B, 3, H, W]`` RGB in [0, 1] -> the family's *raw* output (a tensor or a
  list/tuple/dict of tensors). Only the family's criterion reads it. A family that builds queries
  from the ground truth while training (DETR denoising) sets ``train_targets`` and is called as
  ``forward(images, targets)`` by the trainer, targets as the criterion takes them.
* ``decode(raw)`` -> ``[B, 4 + nc, N]``: xyxy boxes in input pixels, then sigmoid class scores.
  It is also the exported ONNX output, so one numpy postprocess serves every backend.
* ``output_kind`` says what ``N`` is and what turns it into detections:
  ``"dense"``: one candidate per anchor point, many per object, class-aware NMS needed (YOLOs);
  ``"set"``: a fixed set of queries, one object each, top-k over queries x classes only (DETRs).
* ``fuse()`` folds BatchNorm for inference, ``reset_classes(nc)`` re-heads for other labels,
  ``fp32_modules()`` names what must stay fp32 in a half-precision export,
  ``unused_at_inference()`` what only training runs (decoder layers dropped at inference: parameter
  counts leave them out, as the papers' tables do).

The criterion and the postprocess live outside the model (``leyolo.losses``, ``leyolo.ops``).
``ModelEntry`` is how a family describes its scales to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

OutputKind = Literal["dense", "set"]
OUTPUT_KINDS: tuple[str, ...] = ("dense", "set")


@dataclass
class ModelMeta:
    """What travels with the weights: identity, classes, preprocessing and output kind."""

    arch: str
    names: list[str]
    imgsz: int = 640
    stride: int = 32  # inputs must be multiples of it (letterbox pads to it)
    pad_value: int = 114
    extra: dict = field(default_factory=dict)
    kind: str = "dense"  # set by the model from its ``output_kind``; read back from exports
    strides: tuple[int, ...] | None = None  # a dense head's level strides, in decode order (test-time augmentation)

    def to_dict(self, nc: int, imgsz: int | None = None, *, extra: bool = True) -> dict[str, Any]:
        """The JSON form stored in checkpoints and exports (``extra``: e.g. a pruning record, needed to load widths)."""
        out: dict[str, Any] = {"arch": self.arch, "names": list(self.names), "imgsz": int(imgsz or self.imgsz),
                               "stride": int(self.stride), "pad_value": int(self.pad_value), "nc": int(nc),
                               "kind": self.kind}
        if self.strides:
            out["strides"] = [int(s) for s in self.strides]
        if extra and self.extra:
            out["extra"] = dict(self.extra)
        return out


class DetectionModel(nn.Module):
    """Base of every detector: the contract in the module docstring, apart from how a family is built."""

    output_kind: ClassVar[OutputKind] = "dense"
    train_targets: ClassVar[bool] = False  # forward(images, targets) while training (module docstring)

    def __init__(self, meta: ModelMeta) -> None:
        super().__init__()
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"{type(self).__name__}.output_kind must be one of {OUTPUT_KINDS}")
        meta.kind = self.output_kind
        self.meta = meta

    @property
    def names(self) -> list[str]:
        return self.meta.names

    @property
    def nc(self) -> int:
        raise NotImplementedError

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this."""
        return int(self.meta.stride)

    def forward(self, images: torch.Tensor) -> Any:  # noqa: D102 (see the module docstring)
        raise NotImplementedError

    def decode(self, raw: Any) -> torch.Tensor:
        """Raw output -> ``[B, 4 + nc, N]`` (xyxy input pixels, sigmoid scores)."""
        raise NotImplementedError

    def reset_classes(self, nc: int) -> None:
        """Replace the class outputs for ``nc`` classes (fine-tuning on other labels)."""
        raise NotImplementedError

    def fuse(self) -> "DetectionModel":
        """Fold every BatchNorm into the conv before it (inference only; idempotent)."""
        from .fuse import fuse_conv_bn_modules

        fuse_conv_bn_modules(self)
        return self

    def fp32_modules(self) -> list[nn.Module]:
        """Modules a half-precision export keeps in fp32 (decoding arithmetic); none by default."""
        return []

    def init_backbone(self, source: "DetectionModel") -> int:
        """Copy a trained model's backbone weights into this one (returns tensors copied); families that can say so."""
        raise ValueError(f"{self.meta.arch} cannot start its backbone from another model's weights")

    def unused_at_inference(self) -> list[nn.Module]:
        """Modules only training runs (none by default)."""
        return []

    def forward_all(self, images: torch.Tensor) -> torch.Tensor:
        """Run every layer once, decoding included: what FLOP counting measures."""
        return self.decode(self(images))

    def check_input(self, x: torch.Tensor) -> None:
        """A clear error for shapes the network cannot take, instead of a shape error deep inside."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        if x.ndim != 4:
            raise ValueError(f"{self.meta.arch} expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        multiple = self.stride
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % multiple or w % multiple:
            raise ValueError(
                f"{self.meta.arch} needs input height and width that are multiples of {multiple}, got {h}x{w} "
                f"(letterbox or pad to {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple})"
            )


def pixel_scale(images: torch.Tensor) -> torch.Tensor:
    """``[W, H, W, H]`` of an input batch as a tensor, traced as shape arithmetic (exports stay dynamic).

    Set predictors regress boxes normalised to the input; ``decode`` multiplies by this.
    """
    ref = images[0, 0, 0, 0]
    w, h = torch.full_like(ref, images.shape[-1]), torch.full_like(ref, images.shape[-2])
    return torch.stack((w, h, w, h))


class DecodedModel(nn.Module):
    """Wraps a ``DetectionModel`` so ``forward`` returns decoded ``[B, 4 + nc, N]``: what runs and gets exported."""

    def __init__(self, model: DetectionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model(x))


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the facts that travel with it.

    ``criterion`` names the loss in ``leyolo.losses.CRITERIA`` that trains it (the model layer
    cannot import the losses, which sit above it); ``recipe`` the family of training defaults
    (``leyolo.engine.config.RECIPES``: ``yolo`` or ``detr``).
    """

    name: str
    builder: Callable[..., DetectionModel]  # (*, nc, names) -> model
    imgsz: int
    family: str
    description: str = ""
    criterion: str = "yolo"
    recipe: str = "yolo"
