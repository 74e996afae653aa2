"""Precision/recall at the best-F1 confidence and the confusion matrix, on a case computed by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leyolo.data.datasets import load_data_yaml
from leyolo.engine.evaluator import CocoEvaluator, format_metrics
from leyolo.structures import Results

A, B, C, EMPTY = [10, 10, 40, 40], [60, 60, 90, 90], [20, 50, 60, 90], [70, 5, 95, 30]


def _dataset(root):
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for name, rows in (("1", [(0, A), (1, B)]), ("2", [(0, C)])):
        cv2.imwrite(str(root / "images" / "val" / f"{name}.png"), np.zeros((100, 100, 3), np.uint8))
        lines = [f"{c} {(b[0] + b[2]) / 200} {(b[1] + b[3]) / 200} {(b[2] - b[0]) / 100} {(b[3] - b[1]) / 100}"
                 for c, b in rows]
        (root / "labels" / "val" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames: [a, b]\n")
    return root / "data.yaml"


def _result(boxes, scores, classes):
    return Results(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes, np.int64), ["a", "b"],
                   (100, 100))


def test_precision_recall_and_confusion_matrix_by_hand(tmp_path):
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path)), "val")
    images = sorted(evaluator.images)
    # image 1: a on A (TP), b on B (TP), b on A (wrong class); image 2: a on C (TP, low score), a on nothing (FP)
    evaluator.add(images[0], _result([A, B, A], [0.9, 0.8, 0.5], [0, 1, 1]))
    evaluator.add(images[1], _result([C, EMPTY], [0.3, 0.6], [0, 0]))
    metrics = evaluator.summarize(plots_dir=tmp_path / "plots")
    # thresholds in (0.6, 0.8]: a keeps 0.9 (TP) -> P 1, R 1/2; b keeps 0.8 (TP) -> P 1, R 1: mean F1 6/7, the best
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(0.75)
    assert 0.6 < metrics["pr_conf"] <= 0.8
    # conf 0.25, IoU 0.45, rows predicted, columns true, last = background
    assert metrics["confusion_matrix"] == [[2, 0, 1], [0, 1, 1], [0, 0, 0]]
    for name in ("confusion_matrix.png", "pr_curve.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_metrics(metrics)
    assert "precision" in text and "recall" in text


def test_missed_objects_land_in_the_background_row(tmp_path):
    evaluator = CocoEvaluator(load_data_yaml(_dataset(tmp_path)), "val")
    images = sorted(evaluator.images)
    evaluator.add(images[0], _result([A], [0.9], [0]))
    evaluator.add(images[1], _result(np.zeros((0, 4)), [], []))
    metrics = evaluator.summarize(plots_dir=tmp_path)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 0, 0], [1, 1, 0]]  # B and C missed
    assert metrics["recall"] == pytest.approx(0.25)  # a: 1 of 2; b: 0 of 1 (its precision counts 1: no detections)
