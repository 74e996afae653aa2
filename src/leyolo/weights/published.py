"""Read the LeYOLO authors' published ``.pt`` checkpoints without their code.

They are zip archives: ``data.pkl`` pickles whole-model objects of an Ultralytics fork, ``data/<key>``
members hold the tensor bytes. A plain unpickler would run whatever the pickle names; this one

* hands out only its own stand-ins for torch's rebuild functions and a few containers, some dtypes,
  and for classes of known model packages fresh ``InertRecord`` subclasses; anything else
  (``os.system``, ``builtins.eval``, ...) is refused before it is called;
* applies BUILD only to records and ``OrderedDict``s made for this file, as new instance attributes.
  Stock BUILD calls ``__setstate__``, updates ``__dict__`` or ``setattr``s: on a handed-out function or
  class that plants ``__defaults__`` or attributes for every later load. The C ``pickle.Unpickler``
  cannot override BUILD, hence the pure-Python ``pickle._Unpickler`` with a patched opcode table:
  ~3x slower, but ``data.pkl`` holds only structure (215 KiB for the nano: ~0.06 s instead of ~0.02 s);
* adds items only to lists, dicts and sets, with scalars or flat tuples as keys (hashing a deeply
  nested tuple recurses in C without a limit and crashes the interpreter), and refuses the EXT
  opcodes (``copyreg``'s extension cache would carry one file's objects into later loads);
* checks declared sizes before reading or inflating anything (see the limits below), and lets a
  tensor address only elements its storage holds.

Every malformed file ends in one ``LeyoloError`` line naming it. The result is a plain
``{name: tensor}`` state dict plus the metadata the records carried (class names, BatchNorm eps).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LeyoloError, UnsafeCheckpointError

if TYPE_CHECKING:
    from ..models.base import DetectionModel

# The largest published model (medium/large, 2.4 M parameters) holds ~5 MB of fp16 weights, ~40 MB
# with fp32 EMA, raw weights and optimizer buffers; 1 GiB is far above that yet bounds what a crafted
# file can make us allocate (counted twice: storages read, and tensors rebuilt from them).
MAX_TENSOR_BYTES = 1 << 30
# data.pkl holds structure only (215 KiB for the nano); the pure-Python unpickler parses a few MB/s.
MAX_PICKLE_BYTES = 8 << 20
# torch stores members uncompressed and weights barely deflate, while zeros deflate ~1000:1 (a zip
# bomb): a member over 1 MiB that would inflate more than this is refused unread.
MAX_COMPRESSION_RATIO = 100
_MAX_DIMS, _MAX_EXTENT = 16, 1 << 48  # per tensor; keeps torch's int64 size arithmetic exact
# Module records as walked: the nano nests 6 deep, and its records, tensors and child slots add up to
# 1,477, its names are at most 19 characters. These bound the work a crafted tree can cause.
_MAX_DEPTH, _MAX_ENTRIES, _MAX_NAME = 32, 20_000, 128

# Storage classes in the pickle name the element type of the raw bytes (GLOBAL resolves them to it).
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_DTYPES = {"float16", "float32", "int64", "bfloat16"}
# What GLOBAL may name -> the unpickler method that stands in for it (bound, so per file).
_CALLABLES: dict[tuple[str, str], str] = {
    ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor", ("torch._utils", "_rebuild_tensor"): "_rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "_rebuild_parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "_rebuild_parameter",
    ("collections", "OrderedDict"): "_ordered_dict", ("builtins", "set"): "_set", ("__builtin__", "set"): "_set",
    ("builtins", "frozenset"): "_frozenset", ("torch", "Size"): "_size", ("torch", "device"): "_device",
}
# Module prefixes whose classes are recorded, never imported.
_RECORDED_PREFIXES = ("ultralytics.", "torch.nn.modules.", "torch.optim.", "models.")
_SCALARS = (str, int, float, bytes, type(None))


@dataclass(eq=False)
class _Storage:
    """The bytes of one ``data/<key>`` member as a flat tensor; only ``persistent_load`` makes these."""

    flat: torch.Tensor


class InertRecord:
    """Stand-in for a class named by the pickle: holds the attributes it is given, runs nothing."""

    _qualname = "InertRecord"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_kwargs"] = kwargs

    def __repr__(self) -> str:
        return f"<record {self._qualname}>"


def _clip(value: Any) -> str:
    """A crafted name for an error message: quoted, one line, short (other values: their type)."""
    return repr(value[:80]) if isinstance(value, str) else type(value).__name__


def _key(value: Any) -> Any:
    if isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value)):
        return value
    raise UnsafeCheckpointError(f"refusing checkpoint: a dict key or set member of type {_clip(value)} "
                                "is neither a scalar nor a flat tuple")


def _dims(value: Any) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)) and len(value) <= _MAX_DIMS and all(
            type(v) is int and 0 <= v < _MAX_EXTENT for v in value):
        return tuple(value)
    raise LeyoloError("corrupt checkpoint: a tensor size or stride is not a short list of non-negative integers")


class _RestrictedUnpickler(pickle._Unpickler):
    """One per file; see the module docstring for what it allows and why."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, _Storage] = {}
        self._record_classes: set[type] = set()
        self._made: dict[int, Any] = {}  # id -> OrderedDict made here, kept alive so ids stay unique
        self._tensor_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        method = _CALLABLES.get((module, name))
        if method is not None:
            return getattr(self, method)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)
        if module.startswith(_RECORDED_PREFIXES):
            cls = type(name, (InertRecord,), {"_qualname": f"{module}.{name}"})
            self._record_classes.add(cls)
            return cls
        raise UnsafeCheckpointError(f"refusing checkpoint: its pickle asks for {_clip(f'{module}.{name}')}, "
                                    "which is not a tensor or model record")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and isinstance(pid[0], str) and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"refusing checkpoint: unknown persistent id (of type {_clip(pid)})")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype) or type(key) is not str or type(numel) is not int or numel < 0:
            raise LeyoloError("corrupt checkpoint: malformed storage record")
        nbytes = numel * dtype.itemsize
        try:
            info = self._archive.getinfo(f"{self._prefix}data/{key}")
        except KeyError:
            raise LeyoloError(f"corrupt checkpoint: storage {_clip(key)} is missing") from None
        if nbytes > MAX_TENSOR_BYTES:
            raise UnsafeCheckpointError(f"refusing checkpoint: storage {_clip(key)} declares over {MAX_TENSOR_BYTES} B")
        if info.file_size != nbytes:
            raise LeyoloError(f"corrupt checkpoint: storage {_clip(key)} holds {info.file_size} bytes, "
                              f"its record declares {nbytes}")
        storage = self._storages.get(key)
        if storage is None:  # read once; _data_pickle capped the members' total size
            raw = bytearray(_read_member(self._archive, info))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            storage = self._storages[key] = _Storage(flat)
        elif storage.flat.dtype != dtype:
            raise LeyoloError(f"corrupt checkpoint: storage {_clip(key)} is read as two element types")
        return storage

    # -- stand-ins for the callables GLOBAL may name -------------------------------------------

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
        if not isinstance(storage, _Storage) or type(offset) is not int or not 0 <= offset < _MAX_EXTENT:
            raise LeyoloError("corrupt checkpoint: malformed tensor record")
        size, stride, available = _dims(size), _dims(stride), storage.flat.numel()
        if len(size) != len(stride):
            raise LeyoloError("corrupt checkpoint: a tensor's size and stride differ in length")
        numel = math.prod(size)
        if numel and (numel > available or offset + sum((n - 1) * s for n, s in zip(size, stride)) >= available):
            raise LeyoloError(f"corrupt checkpoint: a tensor of shape {size} needs more than the "
                              f"{available} elements its storage holds")
        self._tensor_bytes += numel * storage.flat.element_size()
        if self._tensor_bytes > MAX_TENSOR_BYTES:  # one storage viewed many times
            raise UnsafeCheckpointError(f"refusing checkpoint: its tensors add up to over {MAX_TENSOR_BYTES} bytes")
        return torch.as_strided(storage.flat, size, stride, offset).clone() if numel else storage.flat.new_empty(size)

    def _rebuild_parameter(self, data: Any, *_: Any) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise LeyoloError("corrupt checkpoint: a parameter holds no tensor")
        return data

    def _ordered_dict(self, items: Any = ()) -> collections.OrderedDict:
        made = collections.OrderedDict((_key(k), v) for k, v in items)
        self._made[id(made)] = made
        return made

    def _set(self, items: Any = ()) -> set:
        return {_key(v) for v in items}

    def _frozenset(self, items: Any = ()) -> frozenset:
        return frozenset(_key(v) for v in items)

    def _size(self, dims: Any = ()) -> torch.Size:
        return torch.Size(_dims(dims))

    def _device(self, *args: Any) -> str:
        if not all(type(a) in (str, int) for a in args):
            raise LeyoloError("corrupt checkpoint: malformed device")
        return ":".join(str(a) for a in args)

    # -- opcodes that change an object already on the stack ------------------------------------

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        is_record = type(inst) in self._record_classes
        if not is_record and self._made.get(id(inst)) is not inst:
            raise UnsafeCheckpointError(f"refusing checkpoint: its pickle sets the state of an object it did not "
                                        f"create (of type {type(inst).__name__})")
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__ part, slots part): both plain attributes
        if not isinstance(state, dict):
            if not is_record:
                raise UnsafeCheckpointError(f"refusing checkpoint: its pickle sets state of type "
                                            f"{type(state).__name__}")
            state = {"_state": state}
        for key, value in state.items():
            if type(key) is not str or hasattr(type(inst), key):  # e.g. 'items', '__class__', '_qualname'
                raise UnsafeCheckpointError(f"refusing checkpoint: its pickle sets attribute {_clip(key)}, "
                                            f"which type {type(inst).__name__} already defines")
            inst.__dict__[key] = value

    def _add_items(self, kind: type, items: list[Any], new: Any = None) -> None:
        """APPEND(S), SETITEM(S), ADDITEMS, DICT: ``items`` into the ``kind`` on the stack (or ``new``)."""
        if new is not None:
            self.append(new)
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise UnsafeCheckpointError(f"refusing checkpoint: its pickle adds items to an object of type "
                                        f"{type(target).__name__}")
        if kind is list:
            target.extend(items)
        elif kind is set:
            target.update(_key(v) for v in items)
        else:
            for i in range(0, len(items), 2):
                target[_key(items[i])] = items[i + 1]

    def _load_ext(self) -> None:
        raise UnsafeCheckpointError("refusing checkpoint: its pickle uses the extension registry (EXT opcodes), "
                                    "whose cache is process-wide")

    dispatch.update({
        pickle.BUILD[0]: _load_build, pickle.EXT1[0]: _load_ext, pickle.EXT2[0]: _load_ext, pickle.EXT4[0]: _load_ext,
        pickle.APPEND[0]: lambda self: self._add_items(list, [self.stack.pop()]),
        pickle.APPENDS[0]: lambda self: self._add_items(list, self.pop_mark()),
        pickle.SETITEM[0]: lambda self: self._add_items(dict, [self.stack.pop(-2), self.stack.pop()]),  # key, value
        pickle.SETITEMS[0]: lambda self: self._add_items(dict, self.pop_mark()),
        pickle.DICT[0]: lambda self: self._add_items(dict, self.pop_mark(), new={}),
        pickle.ADDITEMS[0]: lambda self: self._add_items(set, self.pop_mark()),
        pickle.FROZENSET[0]: lambda self: self.append(self._frozenset(self.pop_mark())),
    })


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Exactly ``info.file_size`` bytes: the read is bounded whatever the stream would inflate to."""
    with archive.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise LeyoloError(f"corrupt checkpoint: member {_clip(info.filename)} is truncated")
    return data


def _data_pickle(archive: zipfile.ZipFile) -> tuple[bytes, str]:
    """``data.pkl``'s bytes and the members' prefix, once every member's declared size passed."""
    pkl = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
    if len(pkl) != 1:
        raise LeyoloError(f"not a torch checkpoint (expected one data.pkl, found {len(pkl)})")
    prefix = pkl[0].filename[: -len("data.pkl")]
    tensor_bytes = 0
    for info in archive.infolist():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsafeCheckpointError(f"refusing checkpoint: member {_clip(info.filename)} uses another compression")
        if info.file_size > max(1 << 20, MAX_COMPRESSION_RATIO * info.compress_size):
            raise UnsafeCheckpointError(f"refusing checkpoint: member {_clip(info.filename)} would inflate "
                                        f"{info.file_size // max(info.compress_size, 1)} times (a zip bomb)")
        tensor_bytes += info.file_size if info.filename.startswith(f"{prefix}data/") else 0
    if tensor_bytes > MAX_TENSOR_BYTES:
        raise UnsafeCheckpointError(f"refusing checkpoint: its storages declare {tensor_bytes} B, "
                                    f"over {MAX_TENSOR_BYTES}")
    if pkl[0].file_size > MAX_PICKLE_BYTES:
        raise UnsafeCheckpointError(f"refusing checkpoint: its data.pkl declares {pkl[0].file_size} B, "
                                    f"over {MAX_PICKLE_BYTES}")
    return _read_member(archive, pkl[0]), prefix


def read_pickle_archive(path: str | Path) -> Any:
    """Unpickle a torch zip checkpoint with the restricted unpickler; any fault is one ``LeyoloError``."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:  # e.g. "zip version 13"
        raise LeyoloError(f"{path}: not a torch zip checkpoint (legacy or corrupt file)") from exc
    try:
        with archive:
            data, prefix = _data_pickle(archive)
            return _RestrictedUnpickler(data, archive, prefix).load()
    except LeyoloError as exc:  # refusals and corrupt storages: say which file
        raise type(exc)(f"{path}: {exc}") from None
    except MemoryError:  # not expected after the size checks; never dressed up as a corrupt file
        raise
    except Exception as exc:  # malformed pickle stream or zip member (UnpicklingError, BadZipFile, TypeError, ...)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise LeyoloError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {first})") from exc


@dataclass
class PublishedCheckpoint:
    """What a published ``.pt`` holds, in plain types."""

    state_dict: dict[str, torch.Tensor]
    names: list[str]
    module_types: dict[str, str] = field(default_factory=dict)  # "model.3" -> class qualname
    bn_eps: float = 1e-3
    yaml: dict[str, Any] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _named(attrs: dict[str, Any], group: str, prefix: str) -> dict[str, Any]:
    items = attrs.get(group)
    if items is not None and (not isinstance(items, dict) or not all(type(k) is str and len(k) <= _MAX_NAME
                                                                     for k in items)):
        raise LeyoloError(f"corrupt checkpoint: {group} of module {_clip(prefix)} is not a dict of named entries")
    return items or {}


def _walk_module(root: InertRecord, out: PublishedCheckpoint) -> None:
    """Collect every record's tensors under its dotted name, depth first in pickle order.

    Iterative and bounded (depth, entries, name length), refusing a record inside itself: a crafted
    file may nest without end, loop, or share a record exponentially often (sharing as such is
    legitimate: the nano's convolutions share one activation record).
    """
    todo: list[tuple[Any, str, tuple[int, ...]]] = [(root, "", ())]
    budget = _MAX_ENTRIES
    while todo:
        record, prefix, ancestors = todo.pop()
        if not isinstance(record, InertRecord):
            raise LeyoloError(f"corrupt checkpoint: module {_clip(prefix)} is of type {type(record).__name__}, "
                              "not a module")
        if id(record) in ancestors:
            raise LeyoloError(f"corrupt checkpoint: module {_clip(prefix)} contains itself")
        attrs = record.__dict__
        params, buffers, children = (_named(attrs, group, prefix) for group in ("_parameters", "_buffers", "_modules"))
        budget -= 1 + len(params) + len(buffers) + len(children)
        if len(ancestors) > _MAX_DEPTH:
            raise LeyoloError(f"corrupt checkpoint: module records nest over {_MAX_DEPTH} levels deep")
        if budget < 0:  # e.g. a record shared by both children of its parent, level after level
            raise LeyoloError(f"corrupt checkpoint: module records hold over {_MAX_ENTRIES} entries")
        if prefix:
            out.module_types[prefix] = type(record)._qualname
        for name, tensor in [*params.items(), *buffers.items()]:
            if isinstance(tensor, torch.Tensor):
                out.state_dict[_join(prefix, name)] = tensor
            elif tensor is not None:
                raise LeyoloError(f"corrupt checkpoint: {_clip(_join(prefix, name))} is of type "
                                  f"{type(tensor).__name__}, not a tensor")
        if "running_mean" in buffers and "eps" in attrs:
            if type(attrs["eps"]) not in (int, float) or not 0 < attrs["eps"] < 1:
                raise LeyoloError(f"corrupt checkpoint: eps of module {_clip(prefix)} is not a small positive number")
            out.bn_eps = float(attrs["eps"])
        inner = (*ancestors, id(record))
        todo.extend((child, _join(prefix, name), inner)
                    for name, child in reversed(children.items()) if child is not None)


def _names(names: Any) -> list[str]:
    if isinstance(names, dict) and set(names) == set(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise LeyoloError("corrupt checkpoint: class names are neither a list of strings nor {0: name, 1: ...}")
    return list(names)


def _train_args(args: Any) -> dict[str, Any]:
    args = args.__dict__ if isinstance(args, InertRecord) else args  # an argument namespace object
    if not isinstance(args, dict):
        raise LeyoloError(f"corrupt checkpoint: train_args is of type {type(args).__name__}, not a dict")
    imgsz = args.get("imgsz")
    sizes = imgsz if isinstance(imgsz, (list, tuple)) else [imgsz]
    if imgsz is not None and not (sizes and all(type(s) is int and s > 0 for s in sizes)):
        raise LeyoloError("corrupt checkpoint: train_args imgsz is not a positive integer")
    return dict(args)


def load_published(path: str | Path) -> PublishedCheckpoint:
    """Read an authors' ``.pt`` checkpoint into a flat state dict (fp16 weights as stored)."""
    path = Path(path)
    obj = read_pickle_archive(path)
    model, train_args = obj, None
    if isinstance(obj, dict):
        model = next((obj[k] for k in ("ema", "model") if isinstance(obj.get(k), InertRecord)), None)
        train_args = obj.get("train_args")
    try:
        if not isinstance(model, InertRecord):
            raise LeyoloError("checkpoint holds no model object")
        out = PublishedCheckpoint(state_dict={}, names=[])
        _walk_module(model, out)
        if not out.state_dict:
            raise LeyoloError("checkpoint holds no tensors")
        names, yaml = model.__dict__.get("names"), model.__dict__.get("yaml")  # no `or`: bool() of a tensor raises
        out.names = [] if names is None else _names(names)
        if yaml is not None and not isinstance(yaml, dict):
            raise LeyoloError(f"corrupt checkpoint: the model's yaml is of type {type(yaml).__name__}, not a dict")
        out.yaml, out.train_args = dict(yaml or {}), {} if train_args is None else _train_args(train_args)
    except LeyoloError as exc:
        raise type(exc)(f"{path}: {exc}") from None
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
