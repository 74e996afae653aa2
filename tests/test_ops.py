"""Numeric primitives (IoU, NMS, postprocess, letterbox) and ``Results`` conversions."""

from __future__ import annotations

import numpy as np
import pytest

from leyolo.ops import (
    Detections,
    batched_nms,
    box_iou,
    letterbox,
    letterbox_shape,
    postprocess,
    unletterbox_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from leyolo.errors import LeyoloError
from leyolo.structures import Results

# -- boxes ----------------------------------------------------------------------------------

def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10], [10, 0, 20, 10]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 0.0, 0.5, 0.0], rtol=1e-6)
    # symmetric, and N x M
    np.testing.assert_allclose(box_iou(b, a)[:, 0], iou[0], rtol=1e-6)
    assert box_iou(b, b).shape == (5, 5)
    np.testing.assert_allclose(np.diag(box_iou(b, b)), 1.0)


def test_iou_degenerate_boxes():
    a = np.array([[0, 0, 0, 0]], np.float32)
    iou = box_iou(a, a)
    assert np.isfinite(iou).all() and iou[0, 0] == 0.0


def test_box_format_conversions():
    xywh = np.array([[10.0, 20.0, 4.0, 6.0]])
    xyxy = xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[8, 17, 12, 23]])
    np.testing.assert_allclose(xyxy_to_xywh(xyxy), [[8, 17, 4, 6]])  # COCO: top-left + size


# -- NMS ------------------------------------------------------------------------------------

def _reference_nms(boxes, scores, classes, thr):
    """Brute force: visit by descending score, keep a box unless a kept box of its class overlaps > thr."""
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if all(classes[j] != classes[i] or box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thr for j in keep):
            keep.append(int(i))
    return keep


def _random_boxes(rng, n, n_classes):
    """Boxes jittered around a few objects, so overlaps span the whole IoU range."""
    centres = rng.uniform(0, 80, (8, 2))[rng.integers(0, 8, n)]
    wh = rng.uniform(10, 30, (n, 2))
    xy = centres + rng.normal(0, 3, (n, 2)) - wh / 2
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, n_classes, n)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_batched_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    boxes, scores, classes = _random_boxes(rng, 120, 1 + seed % 4)
    keep = batched_nms(boxes, scores, classes, thr)
    expected = _reference_nms(boxes, scores, classes, thr)
    assert keep.tolist() == expected
    assert len(expected) < 120  # NMS removed something: the comparison is not trivial
    assert keep.dtype == np.int64


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_max_keep(seed):
    rng = np.random.default_rng(100 + seed)
    boxes, scores, classes = _random_boxes(rng, 80, 3)
    expected = _reference_nms(boxes, scores, classes, 0.5)
    for k in (1, 5, len(expected), len(expected) + 10):
        assert batched_nms(boxes, scores, classes, 0.5, max_keep=k).tolist() == expected[:k]


def test_batched_nms_class_aware():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep = batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1]  # the identical box of another class survives; the overlapping same-class one not
    keep = batched_nms(boxes, scores, np.array([0, 0, 0]), 0.5)
    assert keep.tolist() == [0]
    # threshold is strict: IoU exactly at the threshold is kept
    two = np.array([[0, 0, 10, 10], [0, 0, 5, 10]], np.float32)
    assert batched_nms(two, np.array([0.9, 0.8], np.float32), np.array([0, 0]), 0.5).tolist() == [0, 1]


def test_batched_nms_empty():
    keep = batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)
    assert keep.shape == (0,)


# -- postprocess ----------------------------------------------------------------------------

def _prediction() -> np.ndarray:
    """``[4 + 3, 4]``: anchor 0 is class 0 (0.9) and class 2 (0.6); anchor 1 overlaps anchor 0;
    anchor 2 is far away, class 1 at 0.3; anchor 3 is below every threshold."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [70, 70, 80, 80]], np.float32).T
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.01],  # class 0
            [0.1, 0.1, 0.3, 0.01],  # class 1
            [0.6, 0.1, 0.1, 0.01],  # class 2
        ],
        np.float32,
    )
    return np.concatenate([boxes, scores], 0)


def _as_set(det: Detections) -> set[tuple]:
    return {(tuple(np.round(b, 3).tolist()), round(float(s), 3), int(c)) for b, s, c in
            zip(det.boxes, det.scores, det.classes)}


def test_postprocess_single_label():
    det = postprocess(_prediction(), conf=0.25, iou=0.5)
    assert _as_set(det) == {((0, 0, 10, 10), 0.9, 0), ((50, 50, 60, 60), 0.3, 1)}
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)
    assert det.boxes.dtype == np.float32 and det.classes.dtype == np.int64


def test_postprocess_multi_label():
    det = postprocess(_prediction(), conf=0.25, iou=0.5, multi_label=True)
    # anchor 0 kept twice (classes 0 and 2); anchor 1 suppressed by anchor 0 in class 0
    assert _as_set(det) == {((0, 0, 10, 10), 0.9, 0), ((0, 0, 10, 10), 0.6, 2), ((50, 50, 60, 60), 0.3, 1)}
    assert len(det) == 3


def test_postprocess_thresholds():
    pred = _prediction()
    assert len(postprocess(pred, conf=0.95)) == 0
    assert isinstance(postprocess(pred, conf=0.95), Detections)
    high = postprocess(pred, conf=0.5, iou=0.5, multi_label=True)
    assert _as_set(high) == {((0, 0, 10, 10), 0.9, 0), ((0, 0, 10, 10), 0.6, 2)}
    # a looser IoU keeps the overlapping second box (IoU 0.9 < 0.95)
    loose = postprocess(pred, conf=0.25, iou=0.95)
    assert len(loose) == 3 and ((0, 0, 10, 9), 0.8, 0) in _as_set(loose)
    # max_det
    assert len(postprocess(pred, conf=0.25, iou=0.5, max_det=1)) == 1
    assert postprocess(pred, conf=0.25, iou=0.5, max_det=1).scores[0] == pytest.approx(0.9)
    # class filter
    only1 = postprocess(pred, conf=0.25, iou=0.5, classes=np.array([1]))
    assert _as_set(only1) == {((50, 50, 60, 60), 0.3, 1)}


def test_postprocess_max_candidates():
    pred = _prediction()
    # only the two best candidates (0.9 and 0.8, same place, same class) enter NMS: one survives
    det = postprocess(pred, conf=0.25, iou=0.5, max_candidates=2)
    assert _as_set(det) == {((0, 0, 10, 10), 0.9, 0)}
    det = postprocess(pred, conf=0.25, iou=0.5, multi_label=True, max_candidates=3)
    assert _as_set(det) == {((0, 0, 10, 10), 0.9, 0), ((0, 0, 10, 10), 0.6, 2)}


# -- letterbox ------------------------------------------------------------------------------

def test_letterbox_landscape():
    image = np.zeros((480, 640, 3), np.uint8)
    out, info = letterbox(image, 320)
    # r = 0.5 -> 240 x 320; height padded by (320 - 240) % 32 = 16, split 8 / 8
    assert out.shape == (256, 320, 3)
    assert info.ratio == 0.5 and info.pad == (0, 8)
    assert info.original_shape == (480, 640) and info.input_shape == (256, 320)
    assert (out[:8] == 114).all() and (out[-8:] == 114).all()
    assert (out[8:-8] == 0).all()
    assert letterbox_shape((480, 640), 320) == (256, 320)


def test_letterbox_portrait_and_odd_padding():
    out, info = letterbox(np.zeros((100, 50, 3), np.uint8), 320)
    assert out.shape == (320, 160, 3) and info.ratio == pytest.approx(3.2) and info.pad == (0, 0)
    # 100 x 45 at 96: r = 0.96 -> 96 x 43; width padded by 53 % 32 = 21: 10 left, 11 right
    out, info = letterbox(np.zeros((100, 45, 3), np.uint8), 96)
    assert out.shape == (96, 64, 3)
    assert info.pad == (10, 0)
    assert (out[:, :10] == 114).all() and (out[:, -11:] == 114).all()
    assert (out[:, 10:53] == 0).all()
    assert letterbox_shape((100, 45), 96) == (96, 64)


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (100, 50), (100, 45), (333, 777), (64, 64), (1, 300)])
@pytest.mark.parametrize("size", [96, 320, 640])
def test_letterbox_shape_agrees(shape, size):
    out, info = letterbox(np.full((*shape, 3), 7, np.uint8), size)
    assert out.shape[:2] == letterbox_shape(shape, size) == info.input_shape
    assert max(out.shape[:2]) == size
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0


def test_letterbox_square_mode():
    out, info = letterbox(np.zeros((480, 640, 3), np.uint8), 320, auto=False)
    assert out.shape == (320, 320, 3)
    assert info.pad == (0, 40)
    assert (out[:40] == 114).all() and (out[-40:] == 114).all() and (out[40:280] == 0).all()
    assert letterbox_shape((480, 640), 320, auto=False) == (320, 320)


def test_letterbox_pad_value_and_grayscale_free():
    out, _ = letterbox(np.zeros((480, 640, 3), np.uint8), 320, pad_value=0)
    assert (out == 0).all()
    same, info = letterbox(np.full((320, 320, 3), 9, np.uint8), 320)
    assert same.shape == (320, 320, 3) and info.ratio == 1.0 and info.pad == (0, 0) and (same == 9).all()


def test_unletterbox_inverts_known_box():
    _, info = letterbox(np.zeros((480, 640, 3), np.uint8), 320)
    original = np.array([[100, 60, 300, 400]], np.float32)
    in_net = np.array([[50, 38, 150, 208]], np.float32)  # x * 0.5, y * 0.5 + 8
    np.testing.assert_array_equal(unletterbox_boxes(in_net, info), original)
    # odd padding, portrait
    _, info = letterbox(np.zeros((100, 45, 3), np.uint8), 96)
    back = unletterbox_boxes(np.array([[10 + 9.6, 48, 10 + 38.4, 96]], np.float32), info)
    np.testing.assert_allclose(back, [[10, 50, 40, 100]], atol=1e-4)


def test_unletterbox_clips_to_image():
    _, info = letterbox(np.zeros((480, 640, 3), np.uint8), 320)
    back = unletterbox_boxes(np.array([[-20, 0, 400, 300]], np.float32), info)
    np.testing.assert_allclose(back, [[0, 0, 640, 480]])
    src = np.array([[50, 38, 150, 208]], np.float32)
    unletterbox_boxes(src, info)
    np.testing.assert_array_equal(src, [[50, 38, 150, 208]])  # input not modified


# -- Results --------------------------------------------------------------------------------

def _results(image=None) -> Results:
    return Results(
        boxes=np.array([[10, 20, 30, 60], [100, 50, 150, 90]], np.float32),
        scores=np.array([0.9, 0.4], np.float32),
        classes=np.array([2, 0], np.int64),
        names=["cat", "dog", "bird"],
        orig_shape=(100, 200),
        image=image,
    )


def test_results_to_coco():
    res = _results()
    recs = res.to_coco(image_id=42, category_ids=[1, 5, 17])
    assert recs == [
        {"image_id": 42, "category_id": 17, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9},
        {"image_id": 42, "category_id": 1, "bbox": [100.0, 50.0, 50.0, 40.0], "score": 0.4},
    ]
    # default ids: class index + 1 (what val writes for YOLO-labelled data), COCO's own ids for COCO's classes
    assert [r["category_id"] for r in res.to_coco(7)] == [3, 1]


def test_results_to_yolo_lines():
    res = _results()
    lines = res.to_yolo_lines()
    assert lines[0].split() == ["2", "0.100000", "0.400000", "0.100000", "0.400000", "0.90000"]
    assert [float(v) for v in lines[1].split()[1:5]] == pytest.approx([0.625, 0.7, 0.25, 0.4])
    assert res.to_yolo_lines(with_conf=False)[0] == "2 0.100000 0.400000 0.100000 0.400000"


def test_results_basics():
    res = _results()
    assert len(res) == 2
    assert res.class_names == ["bird", "cat"]
    assert "bird" in repr(res) and "cat" in repr(res)


def test_results_draw():
    image = np.zeros((100, 200, 3), np.uint8)
    res = _results(image)
    drawn = res.draw()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 0).all()  # the original is untouched
    assert drawn[40, 10].any() and drawn[60, 20].any()  # left edge and bottom edge of box 0
    assert not drawn[80:95, 160:195].any()  # far from both boxes
    other = res.draw(np.full((100, 200, 3), 255, np.uint8))
    assert (other != 255).any()
    empty = Results(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), ["a"], (100, 200),
                    image=image)
    np.testing.assert_array_equal(empty.draw(), image)
    with pytest.raises(LeyoloError, match="no image to draw on"):
        _results(None).draw()
