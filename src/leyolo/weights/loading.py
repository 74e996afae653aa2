"""``load_model``: PyTorch weights from a name or a file, for everything that needs the network itself.

The user facade (``leyolo.load``) also opens exports; the engine and the tools that train, prune
or measure a network call this instead, so they never depend on the facade.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LeyoloError
from ..models.base import DetectionModel
from ..models.registry import create_model, get_entry, list_models, suggest
from .native import load_native, read_native_metadata
from .published import PublishedCheckpoint, load_published, published_state_dict
from .widths import fit_to_state_dict

PUBLISHED_CANDIDATES = ("leyolo-n", "leyolo-s", "leyolo-m")  # what the authors published, tried in order
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
EXPORT_SUFFIXES = (".onnx", ".torchscript", ".xml", ".param", ".engine")  # OpenVINO, NCNN exports are folders too


def load_model(source: str | Path, *, arch: str | None = None) -> DetectionModel:
    """A ``DetectionModel`` in eval mode from a registered name (untrained) or a weights file.

    Args:
        source: ``"leyolo-n"``, an authors' ``.pt`` checkpoint or a ``.safetensors`` written here.
        arch: the architecture of a published ``.pt`` (default: detected by trying each scale).
    """
    text = str(source)
    if text in list_models():
        return create_model(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if not path.exists():
        hint = suggest(text) if not suffix else ""
        raise LeyoloError(f"{path}: no such file{hint}")
    if suffix in (".pt", ".pth"):
        return _published_model(load_published(path), arch)
    if suffix == ".safetensors":
        return _native_model(path)
    if path.is_dir() or suffix in EXPORT_SUFFIXES:
        raise LeyoloError(f"{path}: an exported model has no PyTorch weights; use the .pt or .safetensors it came from")
    raise LeyoloError(f"{path}: unknown weights format {suffix!r} (expected .pt or .safetensors)")


def _published_model(ck: PublishedCheckpoint, arch: str | None) -> DetectionModel:
    nc = len(ck.names) or 80
    errors = []
    for name in (arch,) if arch is not None else PUBLISHED_CANDIDATES:
        model = create_model(name, nc=nc, names=ck.names or None)
        try:
            model.load_state_dict(published_state_dict(ck, model))
            break
        except LeyoloError as exc:
            errors.append(str(exc))
    else:
        raise LeyoloError(f"checkpoint matches no LeYOLO architecture ({errors[0]})")
    imgsz = ck.train_args.get("imgsz")
    if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0:
        model.meta.imgsz = imgsz
    return model.float().eval()


def _native_model(path: Path) -> DetectionModel:
    meta = read_native_metadata(path)
    arch = str(meta["arch"])
    get_entry(arch)  # clear error for an unknown architecture
    names = meta.get("names")
    if not isinstance(names, list) or not names:
        raise LeyoloError(f"{path}: metadata has no class names")
    model = create_model(arch, nc=len(names), names=[str(n) for n in names])
    tensors, _ = load_native(path)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("train.")}  # resume state of a checkpoint
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise LeyoloError(f"{path}: weights do not fit {arch} with {len(names)} classes (e.g. {first})")
    extra = meta.get("extra") or {}
    mismatched = [key for key, tensor in tensors.items() if tensor.shape != own[key].shape]
    if mismatched:
        if not extra.get("pruned"):
            key = mismatched[0]
            raise LeyoloError(f"{path}: weights do not fit {arch}: {key} has shape {tuple(tensors[key].shape)}, "
                              f"expected {tuple(own[key].shape)}")
        own = fit_to_state_dict(model, tensors, str(path))  # channel-pruned: layers rebuilt at the stored widths
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    model.meta.imgsz = int(meta.get("imgsz", model.meta.imgsz))
    model.meta.extra = dict(extra)
    if "eval_layers" in extra and hasattr(model, "set_eval_layers"):  # a saved Le-DETR inference depth
        model.set_eval_layers(int(extra["eval_layers"]))
    return model.eval()
