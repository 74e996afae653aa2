"""The Results API an Ultralytics user expects: ``r.boxes.xyxy/.xywh/.conf/.cls/.id``, ``plot``, ``save``,
``to_json``, ``to_coco`` with default ids, ``detector(images)`` and ``detector.predict(folder)``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import leyolo
from leyolo.coco import COCO_CATEGORY_IDS, COCO_NAMES, category_ids
from leyolo.errors import LeyoloError
from leyolo.structures import Boxes, Results


def _results(image=None, path=None, ids=None) -> Results:
    return Results(np.array([[10, 20, 30, 60], [150, 50, 200, 90]], np.float32), np.array([0.9, 0.4], np.float32),
                   np.array([2, 0], np.int64), ["cat", "dog", "bird"], (100, 200), path=path, image=image, ids=ids)


def test_boxes_formats():
    boxes = _results().boxes
    assert isinstance(boxes, Boxes) and len(boxes) == 2
    np.testing.assert_array_equal(boxes.xyxy[0], [10, 20, 30, 60])
    np.testing.assert_array_equal(boxes.xywh[0], [20, 40, 20, 40])  # centre x, centre y, w, h
    np.testing.assert_allclose(boxes.xyxyn[1], [0.75, 0.5, 1.0, 0.9])
    np.testing.assert_allclose(boxes.xywhn[1], [0.875, 0.7, 0.25, 0.4])
    assert boxes.conf.tolist() == pytest.approx([0.9, 0.4]) and boxes.cls.tolist() == [2, 0]
    assert boxes.id is None and boxes.data.shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(boxes), boxes.xyxy)
    assert boxes[:, 0].tolist() == [10, 150]  # 2-D index: the xyxy array
    high = boxes[boxes.conf > 0.5]
    assert isinstance(high, Boxes) and len(high) == 1 and high.cls.tolist() == [2]
    assert boxes[1].xyxy.tolist() == [[150, 50, 200, 90]]
    tracked = _results(ids=np.array([7, 3])).boxes
    assert tracked.id.tolist() == [7, 3] and tracked.data[:, 4].tolist() == [7, 3]


def test_results_keeps_the_numpy_arrays():
    r = _results()
    assert r.scores is r.boxes.conf and r.classes is r.boxes.cls
    assert r.class_names == ["bird", "cat"] and r.summary() == "1 bird, 1 cat"


def test_to_json_and_to_coco():
    r = _results(path="images/000000000139.jpg")
    rows = json.loads(r.to_json())
    assert rows[0] == {"name": "bird", "class": 2, "confidence": 0.9, "box": {"x1": 10, "y1": 20, "x2": 30, "y2": 60}}
    records = r.to_coco()
    assert {rec["image_id"] for rec in records} == {139}  # COCO file names carry the image id
    assert [rec["category_id"] for rec in records] == [3, 1]
    assert records[0]["bbox"] == [10.0, 20.0, 20.0, 40.0]
    other = _results(path="street.png").to_coco()
    assert other[0]["image_id"] == _results(path="street.png").default_image_id() > 0  # stable, positive
    assert category_ids(COCO_NAMES)[0] == 1 and category_ids(COCO_NAMES)[-1] == 90
    assert len(set(COCO_CATEGORY_IDS)) == 80


def test_plot_keeps_labels_inside_the_image_and_save_writes_it(tmp_path):
    image = np.zeros((100, 200, 3), np.uint8)
    r = _results(image)
    drawn = r.plot()
    assert drawn.shape == image.shape and (image == 0).all() and drawn[40, 10].any()
    assert drawn[48:52, 196:200].any()  # the right-edge box's label is drawn inside, not cut off
    path = r.save(tmp_path / "out.png")
    np.testing.assert_array_equal(cv2.imread(str(path)), drawn)
    with pytest.raises(LeyoloError, match="save as one of"):
        r.save(tmp_path / "out.txt")
    with pytest.raises(LeyoloError, match="no image to draw on"):
        _results().plot()


def test_detector_call_and_folder(tmp_path):
    torch.manual_seed(0)
    detector = leyolo.load("leyolo-n")
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((64, 96, 3), 40 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    results = detector(tmp_path, imgsz=64, conf=0.0, max_det=3)  # a folder, as the CLI takes
    assert [r.path for r in results] == [str(tmp_path / f"{i}.png") for i in range(3)]
    assert all(len(r) == 3 for r in results)
    same = detector.predict(str(tmp_path / "*.png"), imgsz=64, conf=0.0, max_det=3)
    np.testing.assert_allclose(same[1].boxes.xyxy, results[1].boxes.xyxy, atol=1e-4)
    with pytest.raises(LeyoloError, match="no such file or folder"):
        detector(tmp_path / "missing")
