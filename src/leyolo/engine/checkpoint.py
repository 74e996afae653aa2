"""Training checkpoints in the library's own format: one safetensors file per checkpoint.

The EMA weights are stored under the plain model keys (so ``leyolo.load("last.safetensors")``
just works); a resumable checkpoint adds the raw weights, the optimizer buffers and RNG
states under ``train.*`` keys, and the epoch, scheduler and configuration in the JSON
metadata. Nothing is pickled, and every write is atomic: a kill at any moment leaves the
previous file whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import LeyoloError
from ..weights.native import load_native, save_native

TRAIN_PREFIX = "train."


def model_metadata(model, imgsz: int) -> dict[str, Any]:
    return model.meta.to_dict(model.nc, imgsz)


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{TRAIN_PREFIX}optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{TRAIN_PREFIX}optim."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(path: Path, ema_model, imgsz: int, *, model=None, optimizer=None,
                    train_state: dict | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``path``: EMA weights + metadata, and, when ``model``/``optimizer`` are given, the resume state.

    ``extra``: modules trained beside the model but not part of it (distillation adapters), stored
    as ``train.<name>.*`` with the resume state; ``module_state`` reads them back.

    No data-side random state is stored: the trainer derives it from (seed, epoch) at every epoch.
    """
    tensors = {k: v.detach().float() if v.dtype.is_floating_point else v.detach()
               for k, v in ema_model.state_dict().items()}
    meta = model_metadata(ema_model, imgsz)
    if train_state is not None:
        meta["train"] = dict(train_state)
    if model is not None and optimizer is not None:
        tensors.update({f"{TRAIN_PREFIX}model.{k}": v.detach() for k, v in model.state_dict().items()})
        optim_tensors, optim_info = _optimizer_to_tensors(optimizer)
        tensors.update(optim_tensors)
        tensors[f"{TRAIN_PREFIX}rng.torch"] = torch.get_rng_state()
        for name, module in (extra or {}).items():
            tensors.update({f"{TRAIN_PREFIX}{name}.{k}": v.detach() for k, v in module.state_dict().items()})
        meta["train"]["optimizer"] = optim_info
    return save_native(tensors, meta, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint; ``LeyoloError`` if it cannot resume."""
    tensors, meta = load_native(path)
    if "train" not in meta:
        raise LeyoloError(f"{path}: not a training checkpoint (no training state); use it with --model instead")
    return tensors, meta


def split_resume_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]):
    """(ema weights, raw weights, optimizer state dict or None, torch RNG state or None)."""
    ema = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}
    prefix = f"{TRAIN_PREFIX}model."
    raw = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    info = meta["train"].get("optimizer")
    optim = _optimizer_from_tensors(tensors, info) if info else None
    return ema, raw or None, optim, tensors.get(f"{TRAIN_PREFIX}rng.torch")


def module_state(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict ``save_checkpoint(extra={name: module})`` stored (empty when there is none)."""
    prefix = f"{TRAIN_PREFIX}{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
