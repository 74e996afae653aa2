"""Dataset descriptions (``data.yaml``) and YOLO txt labels, validated up front.

A bad ``data.yaml`` should fail at load time with one line naming the problem, not an hour into
training; a bad label line should be reported and skipped, never crash a run.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from ..errors import LeyoloError, first_line
from .images import IMAGE_SUFFIXES, read_image

SPLIT_KEYS = ("train", "val", "test")
_COORD_TOL = 1e-6


@dataclass(frozen=True)
class DatasetSpec:
    """What a ``data.yaml`` says, with every path resolved and checked to exist.

    Attributes:
        yaml_path: the description file itself.
        root: folder the split paths are relative to.
        names: class names; class index ``i`` is ``names[i]``.
        splits: split name -> image folders, image files or ``.txt`` lists of image paths.
        jsons: split name -> COCO annotation json, for the splits that have one.
    """

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]]
    jsons: dict[str, Path]

    @property
    def nc(self) -> int:
        return len(self.names)


def _parse_names(raw: Any, where: str) -> list[str]:
    """``names`` as a list or an ``{index: name}`` mapping with indices exactly 0..N-1."""
    if isinstance(raw, dict):
        try:
            indexed = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError):
            raise LeyoloError(f"{where}: 'names' keys must be class indices 0..N-1, got {list(raw)[:5]}") from None
        if sorted(indexed) != list(range(len(indexed))):
            got = sorted(indexed)[:10]
            raise LeyoloError(f"{where}: 'names' keys must be exactly 0..{len(indexed) - 1}, got {got}")
        values = [indexed[i] for i in range(len(indexed))]
    elif isinstance(raw, list):
        values = raw
    else:
        raise LeyoloError(f"{where}: 'names' must be a list or an index->name mapping, got {type(raw).__name__}")
    if not values:
        raise LeyoloError(f"{where}: 'names' is empty")
    if any(v is None or isinstance(v, (dict, list)) for v in values):
        raise LeyoloError(f"{where}: every entry of 'names' must be a plain name")
    return [str(v) for v in values]


def _resolve(root: Path, value: Any, key: str, where: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise LeyoloError(f"{where}: '{key}' must be a path, got {value!r}")
    path = root / Path(str(value).strip()).expanduser()
    if not path.exists():
        raise LeyoloError(f"{where}: '{key}' path {value} not found (looked for {path})")
    return path


def load_data_yaml(path: str | Path) -> DatasetSpec:
    """Read and check a ``data.yaml``; a missing split is only an error when that split is used."""
    yaml_path = Path(path).expanduser()
    if not yaml_path.exists():
        raise LeyoloError(f"{yaml_path}: no such dataset description")
    if yaml_path.is_dir():
        raise LeyoloError(f"{yaml_path}: is a directory; pass the data.yaml file inside it")
    where = str(yaml_path)
    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        line = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        raise LeyoloError(f"{where}: invalid YAML{line}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise LeyoloError(f"{where}: invalid YAML: {first_line(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LeyoloError(f"{where}: cannot read ({exc})") from None
    if not isinstance(doc, dict):
        raise LeyoloError(f"{where}: expected a mapping of keys (path, train, val, names), got {type(doc).__name__}")
    if "names" not in doc:
        raise LeyoloError(f"{where}: missing 'names' (the class names)")
    names = _parse_names(doc["names"], where)
    if "nc" in doc and doc["nc"] != len(names):
        raise LeyoloError(f"{where}: 'nc' is {doc['nc']} but 'names' has {len(names)} entries")

    base = yaml_path.resolve().parent
    root_value = doc.get("path")
    root = base if root_value in (None, "") else base / Path(str(root_value)).expanduser()
    if not root.is_dir():
        raise LeyoloError(f"{where}: dataset root 'path: {root_value}' not found (looked for {root})")
    root = root.resolve()

    splits: dict[str, list[Path]] = {}
    jsons: dict[str, Path] = {}
    for split in SPLIT_KEYS:
        value = doc.get(split)
        if value is not None:
            entries = value if isinstance(value, list) else [value]
            if not entries:
                raise LeyoloError(f"{where}: '{split}' is an empty list")
            splits[split] = [_resolve(root, v, split, where) for v in entries]
        json_value = doc.get(f"{split}_json")
        if json_value is not None:
            json_path = _resolve(root, json_value, f"{split}_json", where)
            if not json_path.is_file():
                raise LeyoloError(f"{where}: '{split}_json' {json_path} is not a file")
            jsons[split] = json_path
    return DatasetSpec(yaml_path=yaml_path.resolve(), root=root, names=names, splits=splits, jsons=jsons)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _list_file_images(list_path: Path) -> list[Path]:
    """Image paths listed one a line; relative ones are relative to the list's folder."""
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LeyoloError(f"{list_path}: cannot read image list ({exc})") from None
    out = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = list_path.parent / Path(entry).expanduser()
        if not image.is_file():
            raise LeyoloError(f"{list_path}:{number}: listed image {entry} not found")
        if _is_image(image):
            out.append(image)
    return out


def split_images(spec: DatasetSpec, split: str) -> list[Path]:
    """Sorted, de-duplicated image files of one split (folders are searched recursively)."""
    if split not in spec.splits:
        have = ", ".join(spec.splits) or "none"
        raise LeyoloError(f"{spec.yaml_path}: no '{split}' split defined (splits present: {have})")
    found: set[Path] = set()
    for entry in spec.splits[split]:
        if entry.is_dir():
            found.update(p for p in entry.rglob("*") if p.is_file() and _is_image(p))
        elif entry.suffix.lower() == ".txt":
            found.update(_list_file_images(entry))
        elif _is_image(entry):
            found.add(entry)
        else:
            raise LeyoloError(f"{spec.yaml_path}: '{split}' entry {entry} is not a folder, image or .txt list")
    if not found:
        where = ", ".join(str(e) for e in spec.splits[split])
        raise LeyoloError(f"{spec.yaml_path}: '{split}' split has no images in {where}")
    return sorted(found)


def label_path(image_path: str | Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` folder only).

    Without an ``images`` folder in the path, the label sits beside the image.
    """
    path = Path(image_path)
    parts = list(path.parts[:-1])
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts, path.stem + ".txt") if parts else Path(path.stem + ".txt")


def _parse_label_line(fields: list[str], nc: int) -> tuple[int, list[float]] | str:
    """One label row, or the reason it is unusable."""
    if len(fields) != 5:
        return f"expected 5 columns (class cx cy w h), got {len(fields)}"
    try:
        cls_value = float(fields[0])
        coords = [float(v) for v in fields[1:]]
    except ValueError:
        return "not a number"
    if not all(math.isfinite(v) for v in [cls_value, *coords]):
        return "not a finite number"
    if cls_value != int(cls_value):
        return f"class {fields[0]} is not an integer"
    cls = int(cls_value)
    if not 0 <= cls < nc:
        return f"class {cls} out of range 0..{nc - 1}"
    if any(v < -_COORD_TOL or v > 1 + _COORD_TOL for v in coords):
        return "coordinates outside [0, 1] (labels must be normalised)"
    if coords[2] <= 0 or coords[3] <= 0:
        return "non-positive width or height"
    return cls, [min(max(v, 0.0), 1.0) for v in coords]


def read_yolo_labels(path: str | Path, nc: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Classes ``[N]`` int64, boxes ``[N, 4]`` normalised cxcywh float32, and ``"file:line: reason"`` problems.

    Never raises: a missing file means no objects; unreadable files and bad lines become problems.
    """
    path = Path(path)
    classes: list[int] = []
    boxes: list[list[float]] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        text = ""
        problems.append(f"{path}: cannot read ({exc})")
    seen: dict[tuple[int, tuple[float, ...]], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        parsed = _parse_label_line(fields, nc)
        if isinstance(parsed, str):
            problems.append(f"{path}:{number}: {parsed}")
            continue
        key = (parsed[0], tuple(parsed[1]))
        if key in seen:
            problems.append(f"{path}:{number}: duplicate of line {seen[key]}")
            continue
        seen[key] = number
        classes.append(parsed[0])
        boxes.append(parsed[1])
    return (
        np.asarray(classes, dtype=np.int64),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        problems,
    )


def _png_size(fh: BinaryIO) -> tuple[int, int] | None:
    """IHDR size, unless an eXIf chunk (which the decoder may apply) comes before the pixels."""
    fh.seek(8)
    size = None
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return size
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", fh.read(8))
            size = (height, width)
            fh.seek(length - 8 + 4, 1)
        elif kind == b"eXIf":
            return None
        elif kind in (b"IDAT", b"IEND"):
            return size
        else:
            fh.seek(length + 4, 1)


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 when absent or unreadable) of an APP1 payload."""
    try:
        tiff = data[6:]
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                return struct.unpack(endian + "H", entry[8:10])[0]
    except (KeyError, struct.error, IndexError):
        pass
    return 1


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Frame size from the SOF segment, turned as the decoder turns it for EXIF orientations 5-8."""
    fh.seek(2)
    orientation = 1
    while True:
        byte = fh.read(1)
        if byte != b"\xff":
            return None
        while byte == b"\xff":
            byte = fh.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue
        if marker in (0xD9, 0xDA):
            return None
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        data = fh.read(struct.unpack(">H", raw)[0] - 2)
        if marker == 0xE1 and data.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(data)
        elif marker in _SOF_MARKERS and len(data) >= 5:
            height, width = struct.unpack(">HH", data[1:5])
            if height == 0 or width == 0:
                return None
            return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(h, w)`` as ``read_image`` would decode it, from the header when cheap (JPEG, PNG).

    Evaluating thousands of images should not decode every one just to learn its size.
    """
    path = Path(path)
    size = None
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
            if magic.startswith(b"\xff\xd8"):
                size = _jpeg_size(fh)
            elif magic == b"\x89PNG\r\n\x1a\n":
                size = _png_size(fh)
    except (OSError, struct.error):
        size = None
    if size is None:
        size = read_image(path).shape[:2]
    return int(size[0]), int(size[1])
