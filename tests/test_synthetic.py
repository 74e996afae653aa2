"""The synthetic shapes generator: exact boxes, determinism, safety of the output folder."""

from __future__ import annotations

import numpy as np
import pytest

from leyolo.data.datasets import load_data_yaml, split_images
from leyolo.data.synthetic import draw_sample, generate_shapes_dataset
from leyolo.errors import LeyoloError


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_boxes_are_tight_around_visible_pixels(seed: int) -> None:
    image, boxes, classes, masks = draw_sample(np.random.default_rng(seed), 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert len(boxes) == len(classes) == len(masks) >= 1
    assert set(classes.tolist()) <= {0, 1, 2}
    for box, mask in zip(boxes, masks):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # the shape's pixels really carry its colour in the image
        colours = image[mask > 0]
        assert (colours == colours[0]).all()


def test_dataset_layout_and_labels(tmp_path) -> None:
    yaml_path = generate_shapes_dataset(tmp_path / "d", n_train=6, n_val=3, imgsz=64, seed=0, progress=False)
    spec = load_data_yaml(yaml_path)
    assert spec.names == ["circle", "square", "triangle"]
    assert len(split_images(spec, "train")) == 6 and len(split_images(spec, "val")) == 3
    for label in (tmp_path / "d" / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line]
        assert rows, label
        for row in rows:
            assert len(row) == 5 and row[0] in {"0", "1", "2"}
            values = [float(v) for v in row[1:]]
            assert all(0.0 <= v <= 1.0 for v in values) and values[2] > 0 and values[3] > 0


def test_deterministic_per_seed(tmp_path) -> None:
    def labels(seed: int, name: str) -> list[str]:
        root = generate_shapes_dataset(tmp_path / name, n_train=4, n_val=2, imgsz=64, seed=seed, progress=False).parent
        return [p.read_text() for p in sorted((root / "labels").rglob("*.txt"))]

    assert labels(5, "a") == labels(5, "b")
    assert labels(5, "a") != labels(6, "c")


def test_reuses_identical_dataset_and_refuses_foreign_folders(tmp_path) -> None:
    first = generate_shapes_dataset(tmp_path / "d", n_train=2, n_val=1, imgsz=64, progress=False)
    stamp = first.stat().st_mtime_ns
    assert generate_shapes_dataset(tmp_path / "d", n_train=2, n_val=1, imgsz=64, progress=False) == first
    assert first.stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(LeyoloError, match="other parameters"):
        generate_shapes_dataset(tmp_path / "d", n_train=3, n_val=1, imgsz=64, progress=False)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(LeyoloError, match="not empty"):
        generate_shapes_dataset(user, n_train=2, n_val=1, imgsz=64, progress=False)
    assert (user / "thesis.tex").read_text() == "precious"


def test_synth_cli(tmp_path, capsys) -> None:
    from leyolo.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--n-train", "2", "--n-val", "1", "--imgsz", "64", "-q"]) == 0
    assert "dataset ready" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "s"), "--n-train", "3", "--n-val", "1", "--imgsz", "64", "-q"]) == 1


def test_demo_pipeline_end_to_end(tmp_path) -> None:
    """The demo's plumbing on a tiny budget (its quality is measured in BENCHMARKS.md, not here)."""
    from leyolo.tools.demo import run_demo

    lines = list(run_demo(tmp_path / "demo", minutes=0.002, n_train=8, n_val=4, imgsz=64, workers=0, min_epochs=2))
    text = "\n".join(lines)
    assert "validation (pycocotools, 4 images)" in text
    assert "trained leyolo-n for 2 epochs" in text  # the minimum: 0.12 s of budget fits less than one epoch on any machine
    assert "longer than the 0.002-minute target" in text and "images/s" in text
    assert "the model is still weak" in text and "leyolo demo --time" in text  # 2 epochs of 8 images learn nothing
    assert (tmp_path / "demo" / "train" / "weights" / "best.safetensors").is_file()
    assert len(list((tmp_path / "demo" / "predictions").glob("*.jpg"))) == 4
    assert (tmp_path / "demo" / "train" / "results.csv").is_file()
