"""Read the LeYOLO authors' published ``.pt`` checkpoints without their code.

Those files are pickled whole-model objects of an Ultralytics fork. A plain
unpickler would import and run whatever the file names, so this module uses a
restricted unpickler:

* torch tensor/storage rebuild functions and a few inert containers resolve to
  real (harmless) callables;
* classes of known model packages (``ultralytics.*``, ``torch.nn.modules.*``) become
  ``InertRecord`` instances that only store the state the pickle hands them;
* anything else (``os.system``, ``builtins.eval``, ...) raises
  ``UnsafeCheckpointError`` before it is called.

The result is a plain ``{name: tensor}`` state dict plus the metadata the
records carried (class names, strides, BatchNorm eps).
"""

from __future__ import annotations

import collections
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LeyoloError, UnsafeCheckpointError

if TYPE_CHECKING:
    from ..models.detector import DetectionModel

# Storage classes in the pickle name the element type of the raw bytes.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# Module prefixes whose classes are recorded, never imported.
_RECORDED_PREFIXES = ("ultralytics.", "torch.nn.modules.", "torch.optim.", "models.")


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class InertRecord:
    """Stand-in for a class named by the pickle: stores what it is given, runs nothing."""

    _qualname = "InertRecord"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<record {self._qualname}>"


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    if storage.numel():
        return torch.as_strided(storage, size, stride, offset).clone()  # bounds-checked by torch
    if math.prod(size):  # an empty storage can only back an empty tensor (else: garbage memory)
        raise LeyoloError(f"corrupt checkpoint: a tensor of shape {tuple(size)} has no stored data")
    return storage.new_empty(size)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _safe_set(items: Any = ()) -> set:
    return set(items)


_SAFE_CALLABLES: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _safe_set,
    ("__builtin__", "set"): _safe_set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): lambda *args: ":".join(str(a) for a in args),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in {"float16", "float32", "int64", "bfloat16"}:
            return getattr(torch, name)
        if module.startswith(_RECORDED_PREFIXES):
            return type(name, (InertRecord,), {"_qualname": f"{module}.{name}"})
        raise UnsafeCheckpointError(
            f"refusing checkpoint: its pickle asks for '{module}.{name}', which is not a tensor or model record"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"refusing checkpoint: unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError("refusing checkpoint: storage of an unknown type")
        key = str(key)
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError as exc:
                raise LeyoloError(f"corrupt checkpoint: storage {key} is missing") from exc
            dtype = storage_type.dtype
            self._storages[key] = (
                torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            )
        return self._storages[key]


@dataclass
class PublishedCheckpoint:
    """What a published ``.pt`` holds, in plain types."""

    state_dict: dict[str, torch.Tensor]
    names: list[str]
    module_types: dict[str, str] = field(default_factory=dict)  # "model.3" -> class qualname
    bn_eps: float = 1e-3
    yaml: dict[str, Any] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)


def read_pickle_archive(path: Path) -> Any:
    """Unpickle a torch zip checkpoint with the restricted unpickler."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise LeyoloError(f"{path}: not a torch zip checkpoint (legacy or corrupt file)") from exc
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise LeyoloError(f"{path}: not a torch checkpoint (expected one data.pkl, found {len(pkl)})")
        prefix = pkl[0][: -len("data.pkl")]
        with archive.open(pkl[0]) as fh:
            try:
                return _RestrictedUnpickler(fh, archive, prefix).load()
            except LeyoloError as exc:  # refusals and corrupt storages: say which file
                raise type(exc)(f"{path}: {exc}") from None
            except MemoryError:
                raise
            except Exception as exc:  # malformed pickle stream
                raise LeyoloError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc


def _walk_module(record: Any, prefix: str, out: PublishedCheckpoint) -> None:
    attrs = record.__dict__ if isinstance(record, InertRecord) else {}
    if prefix:
        out.module_types[prefix] = type(record)._qualname if isinstance(record, InertRecord) else "?"
    for group in ("_parameters", "_buffers"):
        for name, tensor in (attrs.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out.state_dict[f"{prefix}.{name}" if prefix else name] = tensor
    if "eps" in attrs and "running_mean" in (attrs.get("_buffers") or {}):
        out.bn_eps = float(attrs["eps"])
    for name, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            _walk_module(child, f"{prefix}.{name}" if prefix else name, out)


def load_published(path: str | Path) -> PublishedCheckpoint:
    """Read an authors' ``.pt`` checkpoint into a flat state dict (fp16 weights as stored)."""
    path = Path(path)
    obj = read_pickle_archive(path)
    if isinstance(obj, dict):
        model = obj.get("ema") or obj.get("model")
        train_args = obj.get("train_args") or {}
    else:
        model, train_args = obj, {}
    if not isinstance(model, InertRecord):
        raise LeyoloError(f"{path}: checkpoint holds no model object")
    out = PublishedCheckpoint(state_dict={}, names=[])
    _walk_module(model, "", out)
    if not out.state_dict:
        raise LeyoloError(f"{path}: checkpoint holds no tensors")
    names = model.__dict__.get("names")
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names)]
    out.names = list(names or [])
    out.yaml = dict(model.__dict__.get("yaml") or {})
    out.train_args = dict(train_args) if isinstance(train_args, dict) else dict(getattr(train_args, "__dict__", {}))
    return out


def _translate_key(key: str, model: "DetectionModel") -> str | None:
    """Published name (``model.3.layers.1.c.weight``) -> this library's (``layers.3.depthwise.conv.weight``)."""
    from ..models.layers import SPPF, ConvBNAct, InvertedBottleneck

    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        return None
    index, rest = int(parts[1]), parts[2:]
    if index == len(model.layers):  # the head comes right after the last graph layer
        branch = {"cv2": "box", "cv3": "cls", "dfl": "dfl"}.get(rest[0])
        return None if branch is None else ".".join(["head", branch, *rest[1:]])
    if index > len(model.layers):
        return None
    layer = model.layers[index]
    if isinstance(layer, ConvBNAct):
        rest = ["conv" if rest[0] == "c" else rest[0], *rest[1:]]
    elif isinstance(layer, InvertedBottleneck):
        order = (["expand"] if layer.expand is not None else []) + ["depthwise", "project", "project_bn"]
        if rest[0] != "layers" or not rest[1].isdigit() or int(rest[1]) >= len(order):
            return None
        sub = rest[2:]
        if sub and sub[0] == "c":
            sub = ["conv", *sub[1:]]
        rest = [order[int(rest[1])], *sub]
    elif isinstance(layer, SPPF):
        rest = [{"cv1": "reduce", "cv2": "fuse"}.get(rest[0], rest[0]), *rest[1:]]
    return ".".join(["layers", str(index), *rest])


def published_state_dict(ck: PublishedCheckpoint, model: "DetectionModel") -> dict[str, torch.Tensor]:
    """Map a published checkpoint onto ``model``'s names, checking every key and shape.

    Raises ``LeyoloError`` naming the first mismatch (another architecture or class count).
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in ck.state_dict.items():
        name = _translate_key(key, model)
        if name is None or name not in own:
            raise LeyoloError(f"checkpoint does not fit {model.meta.arch}: unexpected tensor {key}")
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise LeyoloError(
                f"checkpoint does not fit {model.meta.arch}: {key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(own[name].shape)}"
            )
        mapped[name] = tensor.to(own[name].dtype)
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise LeyoloError(f"checkpoint does not fit {model.meta.arch}: {len(missing)} tensors missing, e.g. {missing[0]}")
    return mapped
