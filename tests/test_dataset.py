"""Training dataset, label cache, collate, data loader and class balancing."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from shared_data import SHAPES_DATA as SHAPES

import leyolo.data.dataset as dataset_module
from leyolo.data.dataset import AugmentConfig, DetectionDataset, collate
from leyolo.data.datasets import load_data_yaml
from leyolo.data.loader import build_dataloader, class_weights_from_counts, weighted_sampler
from leyolo.errors import LeyoloError

# name -> [(class, x1, y1, x2, y2) in pixels of a 64x64 image]
OBJECTS = {
    "a": [(0, 4, 4, 28, 30)],
    "b": [(1, 30, 10, 60, 40), (0, 2, 40, 20, 62)],
    "c": [(1, 10, 10, 50, 50)],
    "d": [],
    "e": [(0, 16, 16, 48, 48)],
}


def _write_dataset(root: Path, objects: dict[str, list[tuple]] = OBJECTS) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for name, objs in objects.items():
            image = np.zeros((64, 64, 3), np.uint8)
            lines = []
            for cls, x1, y1, x2, y2 in objs:
                image[y1:y2, x1:x2] = (0, 0, 255) if cls == 0 else (0, 255, 0)
                cx, cy, w, h = (x1 + x2) / 128, (y1 + y2) / 128, (x2 - x1) / 64, (y2 - y1) / 64
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            assert cv2.imwrite(str(root / "images" / split / f"{name}.png"), image)
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text("train: images/train\nval: images/val\nnames: [red, green]\n")
    return yaml_path


@pytest.fixture()
def spec(tmp_path: Path):
    return load_data_yaml(_write_dataset(tmp_path / "ds"))


def _check_item(item: dict, size: int, nc: int = 2) -> None:
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, size, size)
    assert item["image"].is_contiguous()
    t = item["targets"]
    assert t.dtype == torch.float32 and t.ndim == 2 and t.shape[1] == 5
    assert ((t[:, 0] >= 0) & (t[:, 0] < nc)).all()
    assert ((t[:, 1:] >= 0) & (t[:, 1:] <= size)).all()
    assert (t[:, 3] > t[:, 1]).all() and (t[:, 4] > t[:, 2]).all()


def test_val_items_are_exact(spec) -> None:
    ds = DetectionDataset(spec, "val", imgsz=64, augment=False)
    assert len(ds) == 5 and [r.path.stem for r in ds.labels] == list("abcde")
    for i, name in enumerate("abcde"):
        item = ds[i]
        _check_item(item, 64)
        want = np.array(OBJECTS[name], np.float32).reshape(-1, 5)
        np.testing.assert_allclose(item["targets"].numpy(), want, atol=1e-3)
        assert item["orig_shape"] == (64, 64) and item["path"].endswith(f"{name}.png")
    rgb = ds[0]["image"][:, 10, 10].tolist()
    assert rgb == [255, 0, 0]  # painted BGR red comes back as RGB red
    up = DetectionDataset(spec, "val", imgsz=128, augment=False, cache_labels=False)[1]["targets"].numpy()
    np.testing.assert_allclose(up[:, 1:], np.array(OBJECTS["b"], np.float32)[:, 1:] * 2, atol=1e-2)


@pytest.mark.parametrize(
    "hyp", [AugmentConfig(), AugmentConfig(mixup=1.0, degrees=10, shear=2), AugmentConfig(mosaic=0.0)]
)
def test_train_items_stay_in_the_image(spec, hyp: AugmentConfig) -> None:
    ds = DetectionDataset(spec, "train", imgsz=64, augment=True, hyp=hyp, seed=3)
    total = 0
    for _ in range(3):
        for i in range(len(ds)):
            item = ds[i]
            _check_item(item, 64)
            total += len(item["targets"])
    assert total > 0
    ds.close_mosaic()
    assert not ds.mosaic_enabled
    _check_item(ds[0], 64)


def test_train_targets_follow_pixels(spec) -> None:
    """No rotation: every target box must match the extent of its colour in the output image."""
    hyp = AugmentConfig(hsv_h=0, hsv_s=0, hsv_v=0, mosaic=0.0, scale=0.3, translate=0.1)
    ds = DetectionDataset(spec, "train", imgsz=64, augment=True, hyp=hyp, seed=0)
    for i in (0, 2, 4):  # single-object images
        for _ in range(3):
            item = ds[i]
            image = item["image"].permute(1, 2, 0).numpy()
            for cls, x1, y1, x2, y2 in item["targets"].tolist():
                channel = 0 if cls == 0 else 1
                ys, xs = np.nonzero((image[:, :, channel] > 150) & (image[:, :, 2 - channel * 2] < 100))
                np.testing.assert_allclose([x1, y1, x2, y2], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2)


def test_bad_label_lines_reported_and_skipped(tmp_path: Path, caplog) -> None:
    yaml_path = _write_dataset(tmp_path)
    bad = tmp_path / "labels" / "train" / "a.txt"
    bad.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\nnot a label\n1 0.25 0.25 0.1 0.1\n")
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        ds = DetectionDataset(load_data_yaml(yaml_path), "train", imgsz=64, augment=False)
    text = caplog.text
    assert f"{bad}:2" in text and f"{bad}:3" in text and f"{bad}:1" not in text
    record = ds.labels[0]
    assert record.classes.tolist() == [0, 1]
    np.testing.assert_allclose(record.boxes, [[0.4, 0.4, 0.6, 0.6], [0.2, 0.2, 0.3, 0.3]], atol=1e-6)


def test_label_cache_is_json_and_reused(spec, monkeypatch) -> None:
    calls = []
    real = dataset_module.read_yolo_labels

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "read_yolo_labels", counting)
    first = DetectionDataset(spec, "train", imgsz=64, augment=False)
    assert len(calls) == 5
    cache = first.cache_path
    assert cache is not None and cache.is_file() and cache.parent.parent == dataset_module.cache_root()
    assert not any(spec.root.rglob("*.json")), "the cache must not be written into the dataset"
    assert len(json.loads(cache.read_text())["records"]) == 5
    second = DetectionDataset(spec, "train", imgsz=64, augment=False)
    assert len(calls) == 5  # served from the cache
    for a, b in zip(first.labels, second.labels):
        assert a.path == b.path and a.shape == b.shape
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    label = spec.root / "labels" / "train" / "c.txt"
    label.write_text("0 0.5 0.5 0.25 0.25\n")  # a changed label (size differs) invalidates the cache
    third = DetectionDataset(spec, "train", imgsz=64, augment=False)
    assert len(calls) == 10 and third.labels[2].classes.tolist() == [0]
    DetectionDataset(spec, "train", imgsz=64, augment=False, cache_labels=False)
    assert len(calls) == 15


def test_unwritable_cache_is_kept_in_memory(spec, monkeypatch, caplog) -> None:
    def refuse(path, write):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dataset_module, "atomic_write", refuse)
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        ds = DetectionDataset(spec, "train", imgsz=64, augment=False)
    assert len(ds) == 5 and ds.cache_path is None
    assert "cannot write label cache" in caplog.text


def test_read_only_cache_folder_keeps_labels_in_memory(spec, tmp_path, monkeypatch, caplog) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LEYOLO_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        ds = DetectionDataset(spec, "train", imgsz=64, augment=False)
    assert len(ds) == 5 and ds.cache_path is None
    assert "labels kept in memory only" in caplog.text


def test_bad_images(spec, caplog) -> None:
    train = spec.root / "images" / "train"
    (train / "garbage.png").write_bytes(b"this is not an image")
    jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    (train / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # header fine, pixels truncated
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        ds = DetectionDataset(spec, "train", imgsz=64, augment=True, hyp=AugmentConfig(mosaic=0.0), seed=1)
    assert "garbage.png" in caplog.text
    names = [r.path.name for r in ds.labels]
    assert "garbage.png" not in names and "cut.jpg" in names
    caplog.clear()
    cut = names.index("cut.jpg")
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        for _ in range(3):
            item = ds[cut]
            _check_item(item, 64)
            assert not item["path"].endswith("cut.jpg")
    assert caplog.text.count("cut.jpg") == 1  # warned once, then silently substituted


def test_collate_batch_indices(spec) -> None:
    ds = DetectionDataset(spec, "val", imgsz=64, augment=False)
    batch = collate([ds[i] for i in range(4)])  # 1, 2, 1, 0 objects
    assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["targets"].shape == (4, 6)
    assert batch["targets"][:, 0].tolist() == [0, 1, 1, 2]
    assert len(batch["paths"]) == 4 and batch["orig_shapes"][0] == (64, 64)


def test_dataloader_is_seeded(spec) -> None:
    ds = DetectionDataset(spec, "train", imgsz=64, augment=True)
    first = [next(iter(build_dataloader(ds, batch_size=2, workers=0, shuffle=True, seed=1)))["paths"] for _ in range(2)]
    assert first[0] == first[1]
    loader = build_dataloader(ds, batch_size=5, workers=1, shuffle=True, seed=0)
    assert loader.persistent_workers
    loader.sampler.set_epoch(0)
    epoch0 = next(iter(loader))
    loader.sampler.set_epoch(1)
    epoch1 = next(iter(loader))
    assert epoch0["images"].shape == (5, 3, 64, 64)
    assert not torch.equal(epoch0["images"], epoch1["images"])  # a new epoch: new order and augmentations
    loader.sampler.set_epoch(0)  # the same persistent worker, back to epoch 0: the same batch again
    again = next(iter(loader))
    assert again["paths"] == epoch0["paths"]
    torch.testing.assert_close(again["images"], epoch0["images"])
    # and the same as in the main process: an item's augmentation depends on (seed, epoch, index) only
    inline = build_dataloader(ds, batch_size=5, workers=0, shuffle=True, seed=0)
    inline.sampler.set_epoch(0)
    torch.testing.assert_close(next(iter(inline))["images"], epoch0["images"])


def test_class_weights_from_counts() -> None:
    np.testing.assert_allclose(class_weights_from_counts([100, 10, 1]), [0.1, 1.0, 10.0])
    np.testing.assert_allclose(class_weights_from_counts([1000, 10, 1, 0]), [0.1, 1.0, 10.0, 1.0])  # 0.01 clipped
    np.testing.assert_allclose(class_weights_from_counts([30, 10, 20]), [2 / 3, 2.0, 1.0])
    np.testing.assert_allclose(class_weights_from_counts([0, 0]), [1.0, 1.0])


def test_weighted_sampler_oversamples_rare_class(tmp_path: Path) -> None:
    objects = {f"img{i}": [(0, 8, 8, 40, 40)] for i in range(9)}
    objects["rare"] = [(1, 8, 8, 40, 40)]
    objects["empty"] = []
    ds = DetectionDataset(load_data_yaml(_write_dataset(tmp_path, objects)), "train", imgsz=64, augment=False)
    counts = ds.class_counts()
    assert counts.tolist() == [9, 1]
    weights = class_weights_from_counts(counts)
    image_weights = ds.image_weights(weights)
    rare = [r.path.stem for r in ds.labels].index("rare")
    empty = [r.path.stem for r in ds.labels].index("empty")
    assert image_weights[empty] == pytest.approx(np.delete(image_weights, empty).mean())
    drawn = list(weighted_sampler(ds, weights, num_samples=4000, seed=0))
    share = drawn.count(rare) / len(drawn)
    assert share > 0.3  # uniform sampling would give 1/11 ~ 0.09
    assert drawn == list(weighted_sampler(ds, weights, num_samples=4000, seed=0))


def test_imgsz_must_fit_the_stride(spec) -> None:
    with pytest.raises(LeyoloError):
        DetectionDataset(spec, "train", imgsz=50, augment=True)


@pytest.mark.skipif(not SHAPES.exists(), reason="shared shapes dataset not present")
def test_coco_json_labels_match_txt_labels() -> None:
    spec = load_data_yaml(SHAPES)
    # cache_labels=False: a test must not leave files in the shared dataset
    from_json = DetectionDataset(spec, "val", imgsz=320, augment=False, cache_labels=False)
    txt_spec = dataclasses.replace(spec, jsons={})
    from_txt = DetectionDataset(txt_spec, "val", imgsz=320, augment=False, cache_labels=False)
    assert [r.path for r in from_json.labels] == [r.path for r in from_txt.labels]
    assert len(from_json) == 100
    for a, b in zip(from_json.labels, from_txt.labels):
        assert a.shape == b.shape
        order_a = np.lexsort(np.c_[a.boxes, a.classes].T[::-1])
        order_b = np.lexsort(np.c_[b.boxes, b.classes].T[::-1])
        np.testing.assert_array_equal(a.classes[order_a], b.classes[order_b])
        np.testing.assert_allclose(a.boxes[order_a], b.boxes[order_b], atol=1e-4)
