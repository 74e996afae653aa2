"""A set-prediction model (test-only, ``toy_set_model``) through predict, val, ONNX export and training.

It is registered from outside the package with its own criterion; nothing in ``leyolo`` knows it.
What it proves: the predictor, exporter, evaluator and trainer read the model's ``output_kind``
("set": top-k over queries x classes, no NMS) and the registry entry's criterion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_set_model import ToySetModel, registered

import leyolo
from leyolo.cli import main
from leyolo.data.synthetic import generate_shapes_dataset
from leyolo.engine.plots import read_results
from leyolo.losses import build_criterion
from leyolo.ops import topk_postprocess

IMGSZ = 128


@pytest.fixture(scope="module")
def toy():
    with registered() as name:
        yield name


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("toy-shapes"), n_train=8, n_val=4, imgsz=IMGSZ, seed=3,
                                   progress=False)


@pytest.fixture(scope="module")
def model(toy):
    torch.manual_seed(0)
    return leyolo.create_model(toy, nc=3, names=["circle", "square", "triangle"]).eval()


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)]


def test_topk_postprocess_keeps_overlapping_queries_and_every_class():
    """Two queries on the same box both survive (no NMS); a query scoring two classes appears twice."""
    boxes = np.array([[10, 10, 10], [10, 10, 50], [40, 40, 60], [40, 40, 60]], np.float32)  # [4, Q=3]
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.05, 0.2]], np.float32)  # [nc=2, Q]
    det = topk_postprocess(np.concatenate([boxes, scores]), conf=0.15, max_det=10)
    assert det.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.2])
    assert det.classes.tolist() == [0, 0, 1, 1]
    assert det.boxes[0].tolist() == det.boxes[1].tolist() == [10, 10, 40, 40]  # identical boxes, both kept
    assert len(topk_postprocess(np.concatenate([boxes, scores]), conf=0.15, max_det=2)) == 2


def test_predict_is_top_k_over_queries_and_classes(model):
    detector = leyolo.Detector(model)
    image = _images()[1]
    result = detector.predict(image, backend="torch", conf=0.5)[0]
    with torch.no_grad():
        decoded = model.decode(model(torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255))
    expected = int((decoded[0, 4:] > 0.5).sum())  # every (query, class) pair above conf: no suppression
    assert 0 < expected <= 8 * 3
    assert len(result) == expected
    assert result.scores.min() > 0.5 and np.all(np.diff(result.scores) <= 0)


@pytest.mark.parametrize("nms", [False, True], ids=["decoded", "topk-in-graph"])
def test_onnx_export_runs_in_onnxruntime_like_torch(model, tmp_path, nms):
    detector = leyolo.Detector(model)
    path = detector.export(tmp_path / f"toy-{nms}.onnx", imgsz=IMGSZ, dynamic=True, nms=nms, conf=0.25, max_det=20)
    exported = leyolo.load(path)
    assert exported.meta.kind == "set"
    for image in _images():
        ref = detector.predict(image, backend="torch", conf=0.25, max_det=20)[0]
        out = exported.predict(image, backend="onnxruntime", conf=0.25, max_det=20)[0]
        assert len(ref) > 0
        assert len(out) == len(ref)
        np.testing.assert_array_equal(out.classes, ref.classes)
        np.testing.assert_allclose(out.boxes.xyxy, ref.boxes.xyxy, atol=1e-3)
        np.testing.assert_allclose(out.scores, ref.scores, atol=1e-5)


def test_val_scores_every_query_class_pair(model, shapes):
    metrics = leyolo.Detector(model).val(shapes, imgsz=IMGSZ, backend="onnxruntime")
    assert metrics["images"] == 4
    assert metrics["detections"] == 4 * 8 * 3  # conf 0, no NMS: all 24 pairs of each image (< 300)
    assert 0.0 <= metrics["mAP50"] <= 1.0 and not metrics["multi_label"]


def test_criterion_comes_from_the_registry_and_learns(model, toy):
    """The trainer's criterion for this model is the one its entry names; a few steps lower it."""
    criterion = build_criterion(model)
    assert type(criterion).__name__ == "ToySetCriterion"
    torch.manual_seed(0)
    net = ToySetModel(nc=3).train()
    images = torch.rand(2, 3, IMGSZ, IMGSZ)
    targets = torch.tensor([[0, 1, 10, 20, 60, 80], [1, 2, 30, 30, 90, 120], [1, 0, 5, 5, 40, 40]])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, items = criterion(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert set(items) == {"cls", "l1"}
    assert losses[-1] < 0.5 * losses[0]


def test_trainer_trains_saves_and_reloads_a_set_model(toy, shapes, tmp_path):
    result = leyolo.train(toy, str(shapes), epochs=2, imgsz=IMGSZ, batch=4, workers=0, project=str(tmp_path),
                          name="toy", plots=False, optimizer="AdamW", lr0=0.002)
    rows = read_results(tmp_path / "toy" / "results.csv")
    assert len(rows) == 2 and "train/l1" in rows[0] and "metrics/mAP50" in rows[0]
    assert result["metrics"]["detections"] == 4 * 24
    reloaded = leyolo.load(result["best"])
    assert reloaded.meta.kind == "set" and reloaded.meta.arch == toy
    assert len(reloaded.predict(_images()[0], conf=0.0)[0]) == 24
    # the CLI exports it like any other model
    onnx_path = tmp_path / "toy.onnx"
    assert main(["export", "--model", result["best"], "--out", str(onnx_path), "--imgsz", str(IMGSZ)]) == 0
    assert leyolo.load(onnx_path).meta.kind == "set"
