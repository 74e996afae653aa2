"""What a new user trips over: messages that suggest the fix, outputs with the usual permissions and
ids, help text without noise, per-image predict lines, info on exports, val plots."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest
from shared_data import COCO_DATA, HAVE_SHARED, NANO, VAL_IMAGES, needs_shared

import leyolo
from leyolo.cli import main
from leyolo.errors import LeyoloError
from leyolo.ops import check_imgsz


def test_imgsz_errors_suggest_the_nearest_sizes(capsys):
    with pytest.raises(LeyoloError, match=r"got 333 \(try 320 or 352\)"):
        check_imgsz(333)
    assert check_imgsz(320) == 320
    assert main(["info", "--model", "leyolo-n", "--imgsz", "333"]) == 1
    assert "(try 320 or 352)" in capsys.readouterr().err


def test_model_name_typos_suggest_the_nearest_name(capsys):
    with pytest.raises(LeyoloError, match="did you mean leyolo-n"):
        leyolo.load("leyolo-nn")
    with pytest.raises(LeyoloError, match="did you mean yolov12-n"):
        leyolo.create_model("yolov12n")
    assert main(["info", "--model", "leyloo-s"]) == 1
    assert "did you mean leyolo-s" in capsys.readouterr().err


def test_saved_weights_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = leyolo.load("leyolo-n").save(tmp_path / "n.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_train_help_shows_only_real_defaults(capsys):
    with pytest.raises(SystemExit):
        from leyolo.cli import build_parser

        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    assert text.count("the latest run") == 1 and "(default: 16)" in text


def test_info_on_an_onnx_export(tmp_path, capsys):
    path = leyolo.load("leyolo-n").export(tmp_path / "n.onnx", imgsz=64)
    assert main(["info", "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnx export" in out and "80 classes" in out and "weights (BatchNorm folded)" in out
    assert main(["info", "--model", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx" and info["dynamic"] is True and info["params"] > 1_000_000


def test_predict_prints_a_line_per_image_with_class_counts(tmp_path, capsys):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((64, 64, 3), 90, np.uint8))
    assert main(["predict", "--model", "leyolo-n", "--source", str(tmp_path), "--no-save", "--imgsz", "64",
                 "--conf", "0.0", "--max-det", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_image = [ln for ln in lines if ln.startswith(("1/2", "2/2"))]
    assert len(per_image) == 2 and "img0.png" in per_image[0] and " ms)" in per_image[0]
    assert any(ln.startswith("2 images, 4 detections") for ln in lines)


@needs_shared
def test_predict_json_uses_coco_ids_and_scores_with_pycocotools(tmp_path):
    """predict --save-json and val --json agree on category ids; the predict file scores with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "pred"
    assert main(["predict", "--model", str(NANO), "--source", str(VAL_IMAGES), "--save-dir", str(out), "--no-save",
                 "--save-json", "--conf", "0.001", "--imgsz", "320", "-q"]) == 0
    val_json = tmp_path / "val.json"
    assert main(["val", "--model", str(NANO), "--data", str(COCO_DATA), "--imgsz", "320", "--single-label",
                 "--json", str(val_json), "--no-plots", "-q"]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    val = json.loads(val_json.read_text())
    assert len(pred) > 1000
    by_box = {(r["image_id"], tuple(r["bbox"])): r["category_id"] for r in val}
    shared = [(by_box[(r["image_id"], tuple(r["bbox"]))], r["category_id"]) for r in pred
              if (r["image_id"], tuple(r["bbox"])) in by_box]
    assert len(shared) > 0.9 * len(pred) and all(a == b for a, b in shared)
    assert {r["category_id"] for r in pred if r["score"] > 0.5} & {1}  # persons are COCO id 1, not class 0
    gt = COCO(str(COCO_DATA.parent / "annotations" / "instances_val2017.json"))
    results = gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in pred])
    evaluator = COCOeval(gt, results, "bbox")
    evaluator.params.imgIds = sorted({r["image_id"] for r in pred})
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] > 0.25  # the published nano at 320 single-label scores 0.289 here


@pytest.mark.skipif(not HAVE_SHARED, reason="needs the published nano and coco-mini under ../shared")
def test_val_cli_prints_precision_recall_and_writes_plots(tmp_path, capsys):
    assert main(["val", "--model", str(NANO), "--data", str(COCO_DATA), "--imgsz", "320",
                 "--save-dir", str(tmp_path / "val"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out
    for name in ("pr_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "val" / name).read_bytes()[:4] == b"\x89PNG"


def test_predict_augment_runs_on_the_recipes_larger_input(tmp_path, monkeypatch):
    import leyolo.inference.predictor as predictor_module

    sizes = []
    real = predictor_module.augmented_passes
    monkeypatch.setattr(predictor_module, "augmented_passes",
                        lambda image, imgsz, *a, **k: sizes.append(imgsz) or real(image, imgsz, *a, **k))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 96, 3), 90, np.uint8))
    assert main(["predict", "--model", "leyolo-n", "--source", str(tmp_path / "a.png"), "--augment", "--no-save",
                 "-q"]) == 0
    assert main(["predict", "--model", "leyolo-n", "--source", str(tmp_path / "a.png"), "--augment", "--no-save",
                 "--imgsz", "320", "-q"]) == 0
    assert sizes == [832, 320]  # 1.3 x the model's 640 unless --imgsz says otherwise


def test_outputs_of_sources_with_the_same_stem_do_not_overwrite_each_other(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.full((64, 64, 3), 60, np.uint8))
    cv2.imwrite(str(src / "a.png"), np.full((64, 64, 3), 200, np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--model", "leyolo-n", "--source", str(src), "--save-dir", str(out), "--save-txt",
                 "--imgsz", "64", "--conf", "0.0", "--max-det", "1", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a-2.png", "a.jpg"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a-2.txt", "a.txt"]
    assert cv2.imread(str(out / "a.jpg")).mean() < cv2.imread(str(out / "a-2.png")).mean()  # each its own


def test_results_of_non_8bit_arrays_draw_and_save(tmp_path):
    detector = leyolo.load("leyolo-n")
    for image in (np.random.default_rng(0).random((48, 64, 3), dtype=np.float32),
                  np.full((48, 64), 30000, np.uint16)):
        r = detector.predict(image, imgsz=64, conf=0.0, max_det=2)[0]
        assert r.image.dtype == np.uint8 and r.image.shape == (48, 64, 3)
        assert cv2.imread(str(r.save(tmp_path / "r.png"))).shape == (48, 64, 3)


def test_live_sources_are_not_queued_ahead(monkeypatch):
    from leyolo.inference.predictor import Predictor
    from leyolo.inference.sources import Frame

    class Live(list):
        live = True

    monkeypatch.setattr(Predictor, "_prefetched", lambda self, frames: pytest.fail("prefetched a live source"))
    predictor = leyolo.load("leyolo-n").predictor(backend="torch", imgsz=64)
    results = list(predictor.stream(Live([Frame("cam0", np.zeros((64, 64, 3), np.uint8), frame=0)])))
    assert len(results) == 1 and results[0].frame == 0


@needs_shared
def test_default_onnx_export_reproduces_torch_on_coco_mini(tmp_path):
    """The default export (dynamic shapes) letterboxes each image to its own rectangle, as torch does."""
    nano = leyolo.load(NANO)
    export = leyolo.load(nano.export(tmp_path / "nano.onnx"))
    assert export.meta.extra["dynamic"] is True
    files = sorted(VAL_IMAGES.glob("*.jpg"))
    torch_results = nano.predict(files, backend="torch")
    onnx_results = export.predict(files)
    assert len(torch_results) == len(onnx_results) == 79
    assert sum(len(r) for r in torch_results) > 200
    for a, b in zip(torch_results, onnx_results):
        assert len(a) == len(b), a.path
        np.testing.assert_array_equal(a.boxes.cls, b.boxes.cls)
        np.testing.assert_allclose(a.boxes.xyxy, b.boxes.xyxy, atol=1e-3)
