"""The training/validation dataset: labels checked once and cached, YOLOv8 augmentations on top.

Labels come from the split's COCO json when data.yaml names one, else from YOLO txt files. They are
scanned once (header-only image sizes, every label line checked) and the result is cached as JSON
in the user cache folder (``cache_root()``, never inside the dataset), keyed by the paths, sizes
and mtimes of every file involved, so an edited dataset is rescanned and an untouched one starts
instantly. Bad lines and unreadable images are reported and skipped: one broken file must never
end a long training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import LeyoloError
from ..fileio import atomic_write
from ..ops import xywh_to_xyxy
from .datasets import DatasetSpec, image_size, label_path, read_yolo_labels, split_images
from .images import read_image
from .transforms import (AugmentConfig, horizontal_flip, hsv_jitter, letterbox_train, mixup, mosaic4, random_affine,
                         resize_long_side)

LOGGER = logging.getLogger("leyolo")
_CACHE_VERSION = 1
_MAX_LOGGED = 10
_MAX_SUBSTITUTIONS = 50


@dataclass
class LabelRecord:
    """One image's checked labels: ``boxes`` are normalised xyxy so they survive any resize."""

    path: Path
    shape: tuple[int, int]  # (h, w) as decoded
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@dataclass
class _Scan:
    records: list[LabelRecord]
    problems: list[str]  # bad label lines / annotations
    dropped: list[str]  # images left out, with the reason


def _log_capped(messages: list[str], prefix: str, what: str) -> None:
    """First few messages verbatim, then a count: a thousand identical warnings help nobody."""
    for message in messages[:_MAX_LOGGED]:
        LOGGER.warning("%s: %s", prefix, message)
    if len(messages) > _MAX_LOGGED:
        LOGGER.warning("... and %d more %s", len(messages) - _MAX_LOGGED, what)


def _stat(path: Path) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), -1, -1]
    return [str(path), st.st_size, st.st_mtime_ns]


def _fingerprint(files: list[Path], extra: list[Any]) -> str:
    """Hash of every file's path, size and mtime (plus settings that change the scan's result)."""
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, extra], sort_keys=True).encode())
    for path in files:
        digest.update(json.dumps(_stat(path)).encode())
    return digest.hexdigest()


def _progress(items: list[Path], split: str) -> tqdm:
    return tqdm(items, desc=f"scanning '{split}' labels", unit="img", disable=None, leave=False)


def _scan_txt(images: list[Path], nc: int, split: str) -> _Scan:
    """YOLO txt labels beside/under ``labels`` for each image; unreadable image headers drop the image."""
    records, problems, dropped = [], [], []
    for path in _progress(images, split):
        try:
            shape = image_size(path)
        except LeyoloError as exc:
            dropped.append(str(exc))
            continue
        classes, boxes, bad = read_yolo_labels(label_path(path), nc)
        problems.extend(bad)
        records.append(LabelRecord(path, shape, classes, np.clip(xywh_to_xyxy(boxes), 0.0, 1.0)))
    return _Scan(records, problems, dropped)


def _scan_json(images: list[Path], json_path: Path, nc: int, split: str) -> _Scan:
    """COCO boxes (crowds skipped, clipped to the image); class ``i`` is the ``i``-th sorted category id."""
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        categories = sorted(int(c["id"]) for c in doc.get("categories", []))
        by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in doc.get("images", [])}
        annotations = doc.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LeyoloError(f"{json_path}: not a usable COCO annotation file ({exc})") from None
    if len(categories) != nc:
        raise LeyoloError(f"{json_path}: {len(categories)} categories but the data.yaml names {nc} classes")
    class_of = {cat: i for i, cat in enumerate(categories)}
    per_image: dict[int, list[dict]] = {}
    for ann in annotations:
        if isinstance(ann, dict) and "image_id" in ann:
            per_image.setdefault(ann["image_id"], []).append(ann)
    records, problems, dropped = [], [], []
    for path in _progress(images, split):
        if path.name not in by_name:
            dropped.append(f"{path}: not in {json_path.name}")
            continue
        try:
            h, w = image_size(path)
        except LeyoloError as exc:
            dropped.append(str(exc))
            continue
        classes, boxes = [], []
        for ann in per_image.get(by_name[path.name], []):
            where = f"{json_path}: annotation {ann.get('id', '?')}"
            if ann.get("iscrowd", 0):
                continue
            try:
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                cls = class_of[int(ann["category_id"])]
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where}: missing/invalid bbox or unknown category_id")
                continue
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
            if not (x2 > x1 and y2 > y1):
                problems.append(f"{where}: empty box inside the image")
                continue
            classes.append(cls)
            boxes.append([x1 / w, y1 / h, x2 / w, y2 / h])
        records.append(
            LabelRecord(path, (h, w), np.asarray(classes, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4))
        )
    return _Scan(records, problems, dropped)


def _encode(scan: _Scan, key: str) -> str:
    return json.dumps({
        "version": _CACHE_VERSION,
        "hash": key,
        "problems": scan.problems,
        "dropped": scan.dropped,
        "records": [
            {"path": str(r.path), "shape": list(r.shape), "classes": r.classes.tolist(), "boxes": r.boxes.tolist()}
            for r in scan.records
        ],
    })


def _decode(text: str, key: str) -> _Scan | None:
    """The cached scan, or None when the cache is stale, from another version, or damaged."""
    try:
        doc = json.loads(text)
        if doc.get("version") != _CACHE_VERSION or doc.get("hash") != key:
            return None
        records = [
            LabelRecord(
                Path(r["path"]),
                (int(r["shape"][0]), int(r["shape"][1])),
                np.asarray(r["classes"], np.int64).reshape(-1),
                np.asarray(r["boxes"], np.float32).reshape(-1, 4),
            )
            for r in doc["records"]
        ]
        return _Scan(records, list(doc["problems"]), list(doc["dropped"]))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _write_cache(cache: Path, payload: str) -> Path | None:
    """Write the cache atomically; None (with a warning) when the cache folder is not writable."""
    try:
        def write(tmp: str) -> None:
            Path(tmp).write_text(payload, encoding="utf-8")

        atomic_write(cache, write)
        return cache
    except OSError as exc:
        LOGGER.warning("cannot write label cache %s (%s); labels kept in memory only", cache, exc.strerror or exc)
        return None


def cache_root() -> Path:
    """Where label caches live: ``$LEYOLO_CACHE_DIR``, else ``$XDG_CACHE_HOME/leyolo``, else ``~/.cache/leyolo``.

    Caches never go into the dataset itself: datasets are often shared or read-only, and a
    library should not leave files in a user's data.
    """
    explicit = os.environ.get("LEYOLO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "leyolo"


def _cache_file(spec: DatasetSpec, split: str) -> Path:
    """One cache file per (data.yaml, split), named by a hash of the yaml's absolute path."""
    digest = hashlib.sha1(f"{spec.yaml_path.resolve()}::{split}".encode()).hexdigest()[:16]
    return cache_root() / "labels" / f"{spec.yaml_path.stem}-{split}-{digest}.json"


class DetectionDataset(Dataset):
    """Images + boxes of one split; YOLOv8 train augmentation when ``augment``, plain letterbox otherwise.

    Items are ``dict(image=uint8 [3, S, S] RGB, targets=float32 [N, 5] (class, x1, y1, x2, y2) in
    that image's pixels, path=str, orig_shape=(h, w))`` with ``S = imgsz``. Randomness comes from
    ``self.rng``. Indexed with ``(epoch, i)`` (what ``loader.EpochSampler`` yields), an item draws
    from a stream of its own, seeded by ``(seed, epoch, i)``: its augmentation no longer depends on
    which worker made it or what that worker made before, so runs repeat exactly, resumed or not.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        split: str,
        *,
        imgsz: int,
        augment: bool,
        hyp: AugmentConfig | None = None,
        cache_labels: bool = True,
        stride: int = 32,
        seed: int = 0,
    ) -> None:
        if imgsz <= 0 or imgsz % stride or (augment and imgsz % 2):
            raise LeyoloError(f"imgsz must be a positive (even) multiple of the stride {stride}, got {imgsz}")
        self.spec = spec
        self.split = split
        self.names = list(spec.names)
        self.nc = spec.nc
        self.imgsz = imgsz
        self.stride = stride
        self.augment = augment
        self.hyp = hyp or AugmentConfig()
        # Its own attribute (the hyp stays as given) so close_mosaic() is a one-line switch.
        self.mosaic_enabled = augment and (self.hyp.mosaic > 0 or self.hyp.mixup > 0)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._reported_bad: set[str] = set()
        self.labels: list[LabelRecord] = self._load_labels(cache_labels)
        if not self.labels:
            raise LeyoloError(f"{spec.yaml_path}: no usable images in the '{split}' split")

    # -- labels -----------------------------------------------------------------------------------

    def _load_labels(self, use_cache: bool) -> list[LabelRecord]:
        images = split_images(self.spec, self.split)
        json_path = self.spec.jsons.get(self.split)
        if json_path is not None:
            sources = [*images, json_path]
            scan_fn = lambda: _scan_json(images, json_path, self.nc, self.split)  # noqa: E731
        else:
            sources = [*images, *(label_path(p) for p in images)]
            scan_fn = lambda: _scan_txt(images, self.nc, self.split)  # noqa: E731
        scan = None
        cache = _cache_file(self.spec, self.split)
        self.cache_path: Path | None = None
        if use_cache:
            key = _fingerprint(sources, [self.nc, str(json_path)])
            try:
                scan = _decode(cache.read_text(encoding="utf-8"), key)
            except (OSError, UnicodeDecodeError):
                scan = None
            if scan is None:
                scan = scan_fn()
                self.cache_path = _write_cache(cache, _encode(scan, key))
            else:
                self.cache_path = cache
        else:
            scan = scan_fn()
        _log_capped(scan.dropped, "skipped image", "images skipped")
        _log_capped(scan.problems, "skipped label", "bad labels skipped")
        self.problems = scan.problems
        return scan.records

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        """Objects per class over the split, ``[nc]`` int64."""
        counts = np.zeros(self.nc, dtype=np.int64)
        for record in self.labels:
            counts += np.bincount(record.classes, minlength=self.nc)[: self.nc]
        return counts

    def image_weights(self, class_weights: np.ndarray) -> np.ndarray:
        """Per-image sampling weight: the summed class weights of its objects.

        Images without objects get the mean weight, so background images stay in the mix at an
        ordinary rate instead of never (weight 0) or always.
        """
        class_weights = np.asarray(class_weights, dtype=np.float64).reshape(-1)
        weights = np.array([class_weights[r.classes].sum() for r in self.labels], dtype=np.float64)
        has_objects = np.array([len(r.classes) > 0 for r in self.labels])
        fill = weights[has_objects].mean() if has_objects.any() else 1.0
        weights[~has_objects] = fill
        return weights

    # -- augmentation control ---------------------------------------------------------------------

    def close_mosaic(self) -> None:
        """Stop mosaic and mixup (last epochs: finish on images that look like inference inputs)."""
        self.mosaic_enabled = False

    # -- loading ----------------------------------------------------------------------------------

    def _read(self, index: int) -> tuple[np.ndarray, LabelRecord]:
        """Decoded image of ``index``, or of a random substitute when that file cannot be read."""
        for _ in range(_MAX_SUBSTITUTIONS):
            record = self.labels[index]
            try:
                return read_image(record.path), record
            except LeyoloError as exc:
                if str(record.path) not in self._reported_bad:
                    self._reported_bad.add(str(record.path))
                    LOGGER.warning("unreadable image replaced by another one: %s", exc)
                index = int(self.rng.integers(len(self.labels)))
        raise LeyoloError(f"{self.spec.yaml_path}: {_MAX_SUBSTITUTIONS} unreadable images in a row in '{self.split}'")

    @staticmethod
    def _pixel_boxes(record: LabelRecord, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        return record.boxes * np.array([w, h, w, h], dtype=np.float32)

    def _load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabelRecord]:
        """Image with its long side at ``imgsz`` and its boxes in those pixels."""
        image, record = self._read(index)
        image, boxes = resize_long_side(image, self._pixel_boxes(record, image.shape[:2]), self.imgsz)
        return image, boxes, record.classes.copy(), record

    def _mosaic_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabelRecord]:
        hyp, size = self.hyp, self.imgsz
        indices = [index, *self.rng.integers(len(self.labels), size=3).tolist()]
        loaded = [self._load_resized(i) for i in indices]
        image, boxes, classes = mosaic4([item[:3] for item in loaded], size, self.rng)
        image, boxes, classes = random_affine(
            image, boxes, classes, self.rng, size=size, degrees=hyp.degrees, translate=hyp.translate,
            scale=hyp.scale, shear=hyp.shear, border=(-size // 2, -size // 2),
        )
        return image, boxes, classes, loaded[0][3]

    def _train_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabelRecord]:
        hyp, size, rng = self.hyp, self.imgsz, self.rng
        if self.mosaic_enabled and rng.random() < hyp.mosaic:
            image, boxes, classes, record = self._mosaic_sample(index)
            if hyp.mixup > 0 and rng.random() < hyp.mixup:
                other = self._mosaic_sample(int(rng.integers(len(self.labels))))
                image, boxes, classes = mixup((image, boxes, classes), other[:3], rng)
        else:
            image, boxes, classes, record = self._load_resized(index)
            image, boxes, classes = letterbox_train(image, boxes, classes, size, self.stride)
            image, boxes, classes = random_affine(
                image, boxes, classes, rng, size=size, degrees=hyp.degrees, translate=hyp.translate,
                scale=hyp.scale, shear=hyp.shear, border=(0, 0),
            )
        image = hsv_jitter(image, rng, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v)
        if rng.random() < hyp.fliplr:
            image, boxes, classes = horizontal_flip(image, boxes, classes)
        return image, boxes, classes, record

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):  # (epoch, i) from EpochSampler
            epoch, index = index
            self.rng = np.random.default_rng([self.seed, epoch, index])
        if self.augment:
            image, boxes, classes, record = self._train_sample(int(index))
        else:
            original, record = self._read(int(index))
            boxes = self._pixel_boxes(record, original.shape[:2])
            image, boxes, classes = letterbox_train(
                original, boxes, record.classes, self.imgsz, self.stride, drop_small=False
            )
        targets = np.concatenate([classes.astype(np.float32)[:, None], boxes.astype(np.float32)], axis=1)
        chw = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return {
            "image": torch.from_numpy(chw),
            "targets": torch.from_numpy(targets.reshape(-1, 5)),
            "path": str(record.path),
            "orig_shape": tuple(record.shape),
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; concatenate targets with their batch index first: ``[M, 6]`` (b, cls, x1, y1, x2, y2)."""
    images = torch.stack([item["image"] for item in batch])
    targets = [
        torch.cat([torch.full((len(item["targets"]), 1), float(i)), item["targets"]], dim=1)
        for i, item in enumerate(batch)
    ]
    return {
        "images": images,
        "targets": torch.cat(targets) if targets else torch.zeros((0, 6)),
        "paths": [item["path"] for item in batch],
        "orig_shapes": [item["orig_shape"] for item in batch],
    }
