"""CocoEvaluator: YOLO-label and COCO-json ground truth, hand-checkable mAP values, edge cases."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_data import SHARED

from leyolo.data.datasets import load_data_yaml
from leyolo.engine.evaluator import CocoEvaluator, format_metrics
from leyolo.errors import LeyoloError
from leyolo.structures import Results

NAMES = ["cat", "dog", "bird"]


def _results(boxes: list[list[float]], classes: list[int], scores: list[float] | None = None,
             shape: tuple[int, int] = (200, 200)) -> Results:
    return Results(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores if scores is not None else [1.0] * len(classes), np.float32),
        np.asarray(classes, np.int64),
        NAMES,
        shape,
    )


def _yolo_line(cls: int, box: list[float], h: int, w: int) -> str:
    x1, y1, x2, y2 = box
    return f"{cls} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"


def _dataset(tmp_path: Path, gt: dict[str, list[tuple[int, list[float]]]], shape: tuple[int, int] = (200, 300),
             extra_yaml: str = "") -> Path:
    """images/val/<name>.png of ``shape`` with YOLO labels from pixel xyxy boxes; returns data.yaml."""
    h, w = shape
    for name, objects in gt.items():
        image = tmp_path / "images" / "val" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(image), np.zeros((h, w, 3), np.uint8))
        label = tmp_path / "labels" / "val" / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(_yolo_line(c, b, h, w) + "\n" for c, b in objects))
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"val: images/val\nnames: {NAMES}\n{extra_yaml}")
    return yaml_path


GT = {
    "a": [(0, [10, 20, 110, 120]), (1, [150, 30, 290, 190])],
    "b": [(2, [5, 5, 60, 40])],
    "c": [],
}


def test_perfect_detections_score_one(tmp_path: Path) -> None:
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, GT)))
    assert [p.name for p in evaluator.images] == ["a.png", "b.png", "c.png"]
    assert [evaluator.image_id(p) for p in evaluator.images] == [1, 2, 3]
    assert evaluator.category_ids == [1, 2, 3]
    for path in evaluator.images:
        objects = GT[path.stem]
        evaluator.add(path, _results([b for _, b in objects], [c for c, _ in objects], shape=(200, 300)))
    metrics = evaluator.summarize(verbose=True)
    assert metrics["mAP50-95"] == pytest.approx(1.0)
    assert metrics["mAP50"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    assert metrics["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0})
    assert metrics["images"] == 3 and metrics["detections"] == 3
    assert "Average Precision" in metrics["text"]


def test_iou_between_thresholds(tmp_path: Path) -> None:
    """GT 100x100 at x=10; prediction shifted 23 px: IoU = 77/123 = 0.626 -> matched at 0.50..0.60 only."""
    gt = {"a": [(0, [10, 10, 110, 110])]}
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, gt, shape=(200, 200))))
    evaluator.add(evaluator.images[0], _results([[33, 10, 133, 110]], [0]))
    metrics = evaluator.summarize(verbose=True)
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP75"] == 0.0
    assert metrics["mAP50-95"] == pytest.approx(0.3)  # 3 of 10 IoU thresholds
    assert metrics["mAP_large"] == pytest.approx(0.3)
    assert math.isnan(metrics["mAP_small"])  # no small objects at all: nan, not pycocotools' -1
    assert metrics["per_class"]["cat"] == pytest.approx(0.3)
    assert math.isnan(metrics["per_class"]["dog"])
    table = format_metrics(metrics)
    assert "mAP50-95" in table and "0.3000" in table and "dog" in table and "n/a" in table
    assert table.index("cat") < table.index("dog") < table.index("bird")  # class order


def test_ranking_matters(tmp_path: Path) -> None:
    """A confident false positive ahead of the true positive halves precision: AP = 0.5 at every IoU."""
    gt = {"a": [(0, [10, 10, 110, 110])], "b": []}
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, gt, shape=(200, 200))))
    evaluator.add(evaluator.images[0], _results([[10, 10, 110, 110]], [0], [0.5]))
    evaluator.add(evaluator.images[1], _results([[10, 10, 110, 110]], [0], [0.9]))
    assert evaluator.summarize()["mAP50-95"] == pytest.approx(0.5, abs=0.01)


def test_no_detections_give_zeros(tmp_path: Path) -> None:
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, GT)))
    evaluator.add(evaluator.images[0], _results([], []))
    metrics = evaluator.summarize(verbose=True)
    assert metrics["detections"] == 0
    for key in ("mAP50-95", "mAP50", "mAP75", "AR100"):
        assert metrics[key] == 0.0
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": 0.0}


def test_wrong_class_scores_zero(tmp_path: Path) -> None:
    gt = {"a": [(0, [10, 10, 110, 110])]}
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, gt, shape=(200, 200))))
    evaluator.add(evaluator.images[0], _results([[10, 10, 110, 110]], [1]))
    assert evaluator.summarize()["mAP50-95"] == 0.0


def test_bad_label_lines_are_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    yaml_path = _dataset(tmp_path, {"a": [(0, [10, 10, 110, 110])]}, shape=(200, 200))
    label = tmp_path / "labels" / "val" / "a.txt"
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        evaluator = CocoEvaluator(load_data_yaml(yaml_path))
    assert evaluator.problems == [
        f"{label}:2: class 7 out of range 0..2",
        f"{label}:3: expected 5 columns (class cx cy w h), got 3",
    ]
    assert f"{label}:2" in caplog.text and f"{label}:3" in caplog.text
    evaluator.add(evaluator.images[0], _results([[10, 10, 110, 110]], [0]))
    assert evaluator.summarize()["mAP50-95"] == pytest.approx(1.0)  # only the good box is ground truth


def test_add_checks_and_write_json(tmp_path: Path) -> None:
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path, GT)))
    with pytest.raises(LeyoloError, match="not an image of the 'val' split"):
        evaluator.image_id(tmp_path / "elsewhere.png")
    with pytest.raises(LeyoloError, match="class index 5"):
        evaluator.add(evaluator.images[0], Results(
            np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.array([5]), [str(i) for i in range(6)], (1, 1)))
    evaluator.add(str(evaluator.images[1]), _results([[5, 5, 60, 40.5]], [2], [0.25]))
    with pytest.raises(LeyoloError, match="already added"):
        evaluator.add(evaluator.images[1], _results([], []))
    out = evaluator.write_json(tmp_path / "out" / "dets.json")
    assert json.loads(out.read_text()) == evaluator.detections == [
        {"image_id": 2, "category_id": 3, "bbox": [5.0, 5.0, 55.0, 35.5], "score": 0.25}
    ]
    assert list((tmp_path / "out").iterdir()) == [out]  # no temporary left behind


def _coco_json(tmp_path: Path) -> Path:
    """Two images in the json (category ids 3 and 7, as in real COCO's gaps); a third image only on disk."""
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        image = tmp_path / "images" / "val" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(image), np.zeros((100, 120, 3), np.uint8))
    doc = {
        "images": [{"id": 42, "file_name": "x.jpg", "height": 100, "width": 120},
                   {"id": 7, "file_name": "val/y.jpg", "height": 100, "width": 120}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_json_ids_and_category_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _coco_json(tmp_path)
    (tmp_path / "data.yaml").write_text("val: images/val\nval_json: ann.json\nnames: [cat, dog]\n")
    with caplog.at_level(logging.WARNING, logger="leyolo"):
        evaluator = CocoEvaluator(load_data_yaml(tmp_path / "data.yaml"))
    assert "z.jpg" in caplog.text  # on disk, not in the json: warned and skipped
    assert [p.name for p in evaluator.images] == ["x.jpg", "y.jpg"]
    assert evaluator.category_ids == [3, 7]  # class i -> i-th sorted category id
    assert evaluator.image_id(evaluator.images[0]) == 42 and evaluator.image_id("y.jpg") == 7
    evaluator.add(evaluator.images[0], Results(np.array([[10, 10, 60, 50]], np.float32), np.ones(1, np.float32),
                                               np.array([1]), ["cat", "dog"], (100, 120)))
    evaluator.add(evaluator.images[1], Results(np.array([[0, 0, 30, 30]], np.float32), np.ones(1, np.float32),
                                               np.array([0]), ["cat", "dog"], (100, 120)))
    assert evaluator.summarize()["mAP50-95"] == pytest.approx(1.0)


def test_coco_json_class_count_mismatch(tmp_path: Path) -> None:
    _coco_json(tmp_path)
    (tmp_path / "data.yaml").write_text("val: images/val\nval_json: ann.json\nnames: [cat, dog, bird]\n")
    with pytest.raises(LeyoloError, match="2 categories but data.yaml names 3 classes"):
        CocoEvaluator(load_data_yaml(tmp_path / "data.yaml"))


def test_broken_json_is_a_leyolo_error(tmp_path: Path) -> None:
    _coco_json(tmp_path)
    (tmp_path / "ann.json").write_text("{not json")
    (tmp_path / "data.yaml").write_text("val: images/val\nval_json: ann.json\nnames: [cat, dog]\n")
    with pytest.raises(LeyoloError, match="not a usable COCO annotation file"):
        CocoEvaluator(load_data_yaml(tmp_path / "data.yaml"))


def test_coco_mini_ground_truth_scores_one() -> None:
    root = SHARED / "datasets" / "coco-mini"
    if not root.is_dir():
        pytest.skip("../shared not found")
    spec = load_data_yaml(root / "data.yaml")
    evaluator = CocoEvaluator(spec, "val")
    assert len(evaluator.category_ids) == 80 and evaluator.category_ids[:3] == [1, 2, 3]
    gt = json.loads(spec.jsons["val"].read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:  # COCOeval ignores crowd boxes; predicting them would be false positives
            by_image.setdefault(ann["image_id"], []).append(ann)
    for path in evaluator.images:
        anns = by_image.get(evaluator.image_id(path), [])
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        classes = np.array([evaluator.category_ids.index(a["category_id"]) for a in anns], np.int64)
        evaluator.add(path, Results(boxes.astype(np.float32), np.ones(len(anns), np.float32), classes,
                                    spec.names, (1, 1)))
    metrics = evaluator.summarize(verbose=True)
    assert metrics["images"] == len(evaluator.images) > 0
    assert metrics["mAP50-95"] == pytest.approx(1.0)
    assert metrics["mAP50"] == pytest.approx(1.0)
    present = [v for v in metrics["per_class"].values() if not math.isnan(v)]
    assert present and all(v == pytest.approx(1.0) for v in present)
