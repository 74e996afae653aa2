"""Feature-level distillation: channel-wise distillation (CWD, Shu et al., ICCV 2021) on the maps a
dense head reads.

Logit-level distillation (``YoloCriterion._distill``) matches the head's outputs on foreground
anchors only; this matches the neck's P3-P5 maps everywhere, so the student also learns where the
teacher's features put their mass on background. Each student map goes through a learnt 1x1 conv to
the teacher's width; then, per channel, the spatial softmax of the teacher map is the target
distribution of the student's (``T^2 KL``, averaged over channels). CWD was chosen over plain MSE
mimicking (FitNets) because it is invariant to the teacher's activation scale, which differs per
level and per model, and over generative variants (MGD) because it needs no second network.

The adapters are trained with the student and are not part of it: the trainer keeps them beside
the model (optimizer group ``distill``, resume state ``train.distill.*``) and saves models without them.
No library ships CWD for plain PyTorch modules (mmrazor's needs the mmengine stack), hence this file.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import LeyoloError


class HeadInputs:
    """Records the list of maps a model's ``head`` is called with (a forward pre-hook), per forward pass."""

    def __init__(self, model: nn.Module, role: str) -> None:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise LeyoloError(f"feature distillation needs a model with a dense head; the {role} "
                              f"({type(model).__name__}) has none")
        self.role = role
        self.maps: list[torch.Tensor] | None = None
        self._handle = head.register_forward_pre_hook(self._record)

    def _record(self, _module: nn.Module, args: tuple) -> None:
        maps = args[0] if args else None
        if not isinstance(maps, (list, tuple)) or not all(torch.is_tensor(m) and m.ndim == 4 for m in maps):
            raise LeyoloError(f"feature distillation: the {self.role}'s head does not take a list of [B, C, H, W] maps")
        self.maps = list(maps)

    def take(self) -> list[torch.Tensor]:
        """The maps of the last forward pass (then forgotten, so a stale pass is never reused)."""
        if self.maps is None:
            raise LeyoloError(f"feature distillation: the {self.role}'s head was not called")
        maps, self.maps = self.maps, None
        return maps

    def remove(self) -> None:
        self._handle.remove()


def head_input_channels(model: nn.Module, imgsz: int, role: str) -> list[int]:
    """Channel count of each map the head reads, from one small forward pass (``imgsz``, a stride multiple)."""
    probe = HeadInputs(model, role)
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype))
        return [int(m.shape[1]) for m in probe.take()]
    finally:
        model.train(was_training)
        probe.remove()


class ChannelWiseDistillation(nn.Module):
    """``T^2 KL(softmax_HW(t / T) || softmax_HW(align(s) / T))`` per channel, mean over channels.

    Returned as a batch sum (the per-image value times the batch size), as ``YoloCriterion`` returns
    its loss, so one ``--feature-distill`` weight means the same whatever the batch.

    Args:
        student_channels: widths of the student's maps, per level.
        teacher_channels: widths of the teacher's maps, same levels.
        temperature: softening ``T`` (1 in the CWD paper's detection setting).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 temperature: float = 1.0) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise LeyoloError(f"feature distillation: the student's head reads {len(student_channels)} maps, "
                              f"the teacher's {len(teacher_channels)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.align = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))
        for conv in self.align:  # start near the identity where widths match: an untrained adapter is no noise
            nn.init.zeros_(conv.bias)
            if conv.in_channels == conv.out_channels:
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(conv.in_channels).view_as(conv.weight))

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student) != len(self.align) or len(teacher) != len(self.align):
            raise LeyoloError(f"feature distillation: expected {len(self.align)} maps, got {len(student)} "
                              f"(student) and {len(teacher)} (teacher)")
        t = self.temperature
        total = student[0].new_zeros(())
        for conv, s, te in zip(self.align, student, teacher):
            s = conv(s)
            if s.shape != te.shape:
                raise LeyoloError(f"feature distillation: map shapes differ, student {tuple(s.shape)} "
                                  f"vs teacher {tuple(te.shape)} (same input size and strides needed)")
            batch, channels = s.shape[:2]
            log_s = (s.float().flatten(2) / t).log_softmax(-1)
            log_t = (te.detach().float().flatten(2) / t).log_softmax(-1)
            kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, C]
            total = total + kl.sum() / channels * t * t  # mean over channels, summed over the batch
        return total
