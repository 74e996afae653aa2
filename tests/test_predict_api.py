"""``Detector.predict`` and the two backends (torch, onnxruntime), dynamic and static ONNX exports.

The ``detector`` is the published nano on coco-mini photos, or without ``../shared`` the shapes model
trained by the session fixture on mosaics of its val images: both find objects at ``conf``, so every
comparison below compares non-empty sets of detections (``_assert_same`` checks that first).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from shared_data import HAVE_SHARED

import leyolo
from leyolo.errors import LeyoloError
from leyolo.inference.backends import OnnxRuntimeBackend, TorchBackend
from leyolo.inference.predictor import PredictConfig, Predictor
from leyolo.models.base import DecodedModel
from leyolo.structures import Results


@pytest.fixture(scope="module")
def onnx_dynamic(detector, tmp_path_factory) -> Path:
    return detector.export(tmp_path_factory.mktemp("onnx") / "nano-dyn.onnx", imgsz=320, dynamic=True)


@pytest.fixture(scope="module")
def onnx_static(detector, tmp_path_factory) -> Path:
    return detector.export(tmp_path_factory.mktemp("onnx") / "nano-320.onnx", imgsz=320, dynamic=False)


def _assert_same(a: Results, b: Results, box_atol: float = 1e-2, score_atol: float = 1e-4) -> None:
    assert len(a) > 0, "nothing to compare: the reference has no detections"
    assert len(a) == len(b), (a, b)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=box_atol, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=score_atol, rtol=0)


def test_predict_arrays_results_are_sane(detector, images, conf):
    results = detector.predict(images, imgsz=320, conf=conf)
    assert len(results) == len(images)
    nc = len(detector.names)
    assert all(len(r) > 0 for r in results), [len(r) for r in results]
    for img, r in zip(images, results):
        h, w = img.shape[:2]
        assert isinstance(r, Results)
        assert r.orig_shape == (h, w)
        assert r.path is None
        assert r.names == detector.names and nc == (80 if HAVE_SHARED else 3)
        boxes = np.asarray(r.boxes)  # xyxy pixels
        assert boxes.dtype == np.float32 and boxes.shape == (len(r), 4)
        assert r.scores.shape == (len(r),) and r.classes.shape == (len(r),)
        assert r.classes.dtype == np.int64
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= w).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (r.scores >= conf).all() and (r.scores <= 1).all()
        assert (np.diff(r.scores) <= 0).all(), "detections come highest score first"
        assert ((r.classes >= 0) & (r.classes < nc)).all()
        assert r.class_names == [detector.names[c] for c in r.classes.tolist()]
        drawn = r.draw()
        assert drawn.shape == img.shape and not np.array_equal(drawn, img)
        assert np.array_equal(r.image, img), "draw() must not modify the original image"


def test_predict_single_array_and_path(detector, images, conf, tmp_path):
    path = tmp_path / "one.png"
    assert cv2.imwrite(str(path), images[0])
    from_array = detector.predict(images[0], imgsz=320, conf=conf)
    from_path = detector.predict(path, imgsz=320, conf=conf)
    assert len(from_array) == 1 and len(from_path) == 1
    assert from_path[0].path == str(path)
    _assert_same(from_array[0], from_path[0], box_atol=1e-4, score_atol=1e-6)


def test_predict_unreadable_path_raises(detector, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(LeyoloError, match="bad.jpg"):
        detector.predict([bad], imgsz=320)


def test_predict_odd_array_types(detector, images, conf):
    """Gray, BGRA, uint16 and float renderings of one image give the same detections."""
    img = images[0]
    variants = [
        cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR),
        cv2.cvtColor(img, cv2.COLOR_BGR2GRAY),
        np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]),
        img.astype(np.uint16) * 257,
        img.astype(np.float32) / 255.0,
    ]
    results = detector.predict(variants, imgsz=320, conf=conf)
    _assert_same(results[0], results[1], box_atol=1e-4, score_atol=1e-6)  # gray == gray replicated to BGR
    reference = detector.predict(img, imgsz=320, conf=conf)[0]
    for r in results[2:]:
        assert r.orig_shape == img.shape[:2]
        _assert_same(reference, r, box_atol=1e-4, score_atol=1e-6)


def test_batch_matches_batch_one(detector, images, conf):
    same = [cv2.resize(img, (480, 360)) for img in images[:2]]  # same shape: batched together
    one = detector.predict(same, imgsz=320, conf=conf, batch=1)
    two = detector.predict(same, imgsz=320, conf=conf, batch=2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        _assert_same(a, b, box_atol=1e-3, score_atol=1e-5)


def test_mixed_shapes_with_batch(detector, images, conf):
    batched = detector.predict(images, imgsz=320, conf=conf, batch=3)
    single = [detector.predict(img, imgsz=320, conf=conf)[0] for img in images]
    for a, b in zip(single, batched):
        _assert_same(a, b, box_atol=1e-3, score_atol=1e-5)


def test_multi_label_keeps_at_least_single_label(detector, images):
    single = detector.predict(images[0], imgsz=320, conf=0.01)[0]
    multi = detector.predict(images[0], imgsz=320, conf=0.01, multi_label=True)[0]
    assert len(single) > 0 and len(multi) >= len(single)
    assert multi.scores[0] == pytest.approx(single.scores[0], abs=1e-6)


def test_max_det_and_conf(detector, images, conf):
    every = detector.predict(images[0], imgsz=320, conf=0.001)[0]
    assert len(every) > 7  # a low threshold keeps plenty of candidates ...
    low = detector.predict(images[0], imgsz=320, conf=0.001, max_det=7)[0]
    assert len(low) == 7  # ... of which max_det keeps the best 7
    np.testing.assert_array_equal(low.scores, every.scores[:7])
    kept = detector.predict(images[0], imgsz=320, conf=conf)[0]
    assert len(kept) >= 2, kept.scores
    # a threshold between the best and the second-best score keeps exactly the best detection
    high_conf = float(kept.scores[0] + kept.scores[1]) / 2
    high = detector.predict(images[0], imgsz=320, conf=high_conf)[0]
    assert len(high) == 1 and (high.scores >= high_conf).all()
    np.testing.assert_allclose(np.asarray(high.boxes), np.asarray(kept.boxes)[:1], atol=1e-4, rtol=0)
    nothing = detector.predict(images[0], imgsz=320, conf=min(1.0, float(kept.scores[0]) + 1e-3))[0]
    assert len(nothing) == 0  # above the best score: nothing


def test_bad_config_raises(detector, images):
    with pytest.raises(LeyoloError, match="multiple of 32"):
        detector.predict(images[0], imgsz=100)
    with pytest.raises(LeyoloError, match="conf"):
        detector.predict(images[0], imgsz=320, conf=1.5)


def test_torch_and_onnxruntime_agree(detector, images, conf):
    torch_res = detector.predict(images, imgsz=320, conf=conf, backend="torch")
    ort_res = detector.predict(images, imgsz=320, conf=conf, backend="onnxruntime")
    assert all(len(r) > 0 for r in torch_res)
    for a, b in zip(torch_res, ort_res):
        _assert_same(a, b, box_atol=1e-2, score_atol=1e-4)


def test_dynamic_onnx_non_square(detector, onnx_dynamic, images, conf):
    det = leyolo.load(onnx_dynamic)
    backend = det.backend("onnxruntime", 320)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.fixed_hw is None
    img = cv2.resize(images[0], (640, 400))  # letterboxed to 320 x 200 -> 320 x 224, not square
    predictor = det.predictor("onnxruntime", imgsz=320, conf=conf)
    blob, info = predictor.prepare(img)
    assert blob.shape == (1, 3, 224, 320)
    res = det.predict(img, imgsz=320, conf=conf)  # default backend: the file runs on onnxruntime
    assert res[0].orig_shape == (400, 640)
    ref = detector.predict(img, imgsz=320, conf=conf, backend="torch")  # "auto" would be onnxruntime too
    _assert_same(ref[0], res[0], box_atol=1e-2, score_atol=1e-4)
    # a different size than the export's own works too with dynamic axes
    res480 = det.predict(img, imgsz=480, conf=conf, backend="onnxruntime")
    _assert_same(detector.predict(img, imgsz=480, conf=conf, backend="torch")[0], res480[0], box_atol=1e-2,
                 score_atol=1e-4)


def test_static_onnx_predicts_with_square_padding(detector, onnx_static, images, conf):
    det = leyolo.load(onnx_static)
    backend = det.backend("onnxruntime", 320)
    assert backend.fixed_hw == (320, 320) and backend.fixed_batch == 1
    img = cv2.resize(images[1], (640, 400))
    predictor = det.predictor("onnxruntime", imgsz=320, conf=conf, batch=2)
    assert predictor.config.square
    blob, _ = predictor.prepare(img)
    assert blob.shape == (1, 3, 320, 320)
    res = det.predict([img, img], imgsz=320, conf=conf, batch=2)  # fixed batch 1 is split internally
    torch_square = Predictor(TorchBackend(detector.model), detector.names,
                             PredictConfig(imgsz=320, conf=conf, square=True)).predict_arrays([img])[0]
    for r in res:
        _assert_same(torch_square, r, box_atol=1e-2, score_atol=1e-4)
    with pytest.raises(LeyoloError, match="320"):
        det.predict(img, imgsz=640)


def test_static_onnx_raw_output_matches_torch(detector, onnx_static, images):
    img = cv2.resize(images[2], (320, 320))
    x = cv2.dnn.blobFromImage(img, 1 / 255.0, swapRB=True)
    ort_out = OnnxRuntimeBackend(onnx_static)(x)
    torch_out = TorchBackend(detector.model)(x)  # the BatchNorm-folded DecodedModel the torch backend runs
    with torch.inference_mode():
        unfused = DecodedModel(detector.model).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(unfused[:, :4], torch_out[:, :4], atol=1e-2, rtol=0)  # folding BN changes nothing
    np.testing.assert_allclose(unfused[:, 4:], torch_out[:, 4:], atol=1e-4, rtol=0)
    assert ort_out.shape == torch_out.shape == (1, 4 + len(detector.names), 2100)  # 40^2 + 20^2 + 10^2 anchors
    assert (torch_out[:, 4:].max(1) > 0.25).sum() > 0  # the image holds confident detections, not only priors
    # boxes are pixels up to 320 and stride-32 boxes scale the DFL expectation's float32 noise by 32:
    # 1e-3 px plus a relative 1e-5 (about 100 ulp) covers kernel-order differences between runtimes
    np.testing.assert_allclose(ort_out[:, :4], torch_out[:, :4], atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(ort_out[:, 4:], torch_out[:, 4:], atol=1e-5, rtol=0)
    assert (ort_out[:, 4:] >= 0).all() and (ort_out[:, 4:] <= 1).all()


def test_onnx_metadata(detector, onnx_static, onnx_dynamic):
    for path, imgsz in ((onnx_static, 320), (onnx_dynamic, 320)):
        det = leyolo.load(path)
        assert det.names == detector.names
        assert det.meta.imgsz == imgsz
        assert det.meta.arch == detector.meta.arch == "leyolo-n"
        assert det.meta.stride == 32 and det.meta.pad_value == 114
        assert "onnx" in repr(det)
        info = det.info()  # what the export's metadata says; GFLOPs need the PyTorch model
        assert info["format"] == "onnx" and info["imgsz"] == imgsz and info["gflops"] is None
        assert info["dynamic"] is (path == onnx_dynamic) and info["params"] > 0
    if HAVE_SHARED:
        assert leyolo.load(onnx_static).names[0] == "person"


def test_stream_reports_unreadable_files(detector, images, conf, tmp_path):
    good = tmp_path / "a.jpg"
    assert cv2.imwrite(str(good), images[0])
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    items = list(detector.stream(tmp_path, imgsz=320, conf=conf))
    assert len(items) == 2
    assert isinstance(items[0], Results) and items[0].path == str(good)
    assert not isinstance(items[1], Results) and items[1].image is None and "b.jpg" in items[1].error
