"""data.yaml loading, split listing, the images->labels rule, YOLO label parsing and header sizes."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from leyolo.data.datasets import (
    DatasetSpec,
    image_size,
    label_path,
    load_data_yaml,
    read_yolo_labels,
    split_images,
)
from leyolo.data.images import read_image
from leyolo.errors import LeyoloError


def _image(path: Path, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))
    return path


def _dataset(tmp_path: Path, yaml_text: str | None = None) -> Path:
    """images/{train,val} with two images each, and a data.yaml."""
    for split in ("train", "val"):
        _image(tmp_path / "images" / split / "b.jpg")
        _image(tmp_path / "images" / split / "a.png")
    (tmp_path / "images" / "val" / "notes.txt").write_text("not an image")
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(yaml_text or "train: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    return yaml_path


def test_load_resolves_root_names_and_splits(tmp_path: Path) -> None:
    spec = load_data_yaml(_dataset(tmp_path))
    assert isinstance(spec, DatasetSpec)
    assert spec.root == tmp_path.resolve()
    assert spec.names == ["cat", "dog"] and spec.nc == 2
    assert spec.splits["val"] == [tmp_path.resolve() / "images" / "val"]
    assert spec.jsons == {}
    assert [p.name for p in split_images(spec, "val")] == ["a.png", "b.jpg"]  # sorted, non-images dropped


def test_relative_root_list_names_and_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _dataset(data)
    (data / "ann.json").write_text("{}")
    cfg = tmp_path / "cfg" / "d.yaml"
    cfg.parent.mkdir()
    cfg.write_text("path: ../data\nval: images/val\nval_json: ann.json\nnames: [cat, dog, 3]\n")
    spec = load_data_yaml(cfg)
    assert spec.root == data.resolve()
    assert spec.names == ["cat", "dog", "3"]
    assert spec.jsons == {"val": data.resolve() / "ann.json"}
    assert "train" not in spec.splits  # a val-only yaml is fine ...
    with pytest.raises(LeyoloError, match="no 'train' split"):  # ... until train is asked for
        split_images(spec, "train")


def test_split_as_list_of_folders_and_txt_list(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _image(tmp_path / "extra" / "deep" / "c.bmp")  # folders are searched recursively
    (tmp_path / "list.txt").write_text("images/train/a.png\n\n# comment\n./images/train/b.jpg\n")
    (tmp_path / "data.yaml").write_text("train: [images/train, extra]\nval: list.txt\nnames: [x]\n")
    spec = load_data_yaml(tmp_path / "data.yaml")
    assert [p.name for p in split_images(spec, "train")] == ["c.bmp", "a.png", "b.jpg"]  # sorted by full path
    assert [p.name for p in split_images(spec, "val")] == ["a.png", "b.jpg"]
    (tmp_path / "list.txt").write_text("images/train/a.png\nimages/train/gone.jpg\n")
    with pytest.raises(LeyoloError, match=r"list\.txt:2: .*gone\.jpg"):
        split_images(spec, "val")


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.yaml").write_text("val: empty\nnames: [x]\n")
    with pytest.raises(LeyoloError, match="'val' split has no images"):
        split_images(load_data_yaml(tmp_path / "data.yaml"), "val")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("val: images/val\nnames: [a\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("val: images/val\n", "missing 'names'"),
        ("val: images/val\nnames: {0: a, 2: b}\n", "'names' keys must be exactly 0..1"),
        ("val: images/val\nnames: []\n", "'names' is empty"),
        ("val: images/val\nnc: 3\nnames: [a, b]\n", "'nc' is 3"),
        ("val: images/nope\nnames: [a]\n", "'val' path images/nope not found"),
        ("path: elsewhere\nval: images/val\nnames: [a]\n", "dataset root 'path: elsewhere' not found"),
        ("val: images/val\nval_json: ann/missing.json\nnames: [a]\n", "'val_json' path ann/missing.json not found"),
    ],
)
def test_bad_yaml_raises_one_line(tmp_path: Path, text: str, message: str) -> None:
    yaml_path = _dataset(tmp_path, text or "\n")
    with pytest.raises(LeyoloError, match=message) as info:
        load_data_yaml(yaml_path)
    assert "\n" not in str(info.value) and str(yaml_path) in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(LeyoloError, match="no such dataset description"):
        load_data_yaml(tmp_path / "absent.yaml")
    with pytest.raises(LeyoloError, match="is a directory"):
        load_data_yaml(tmp_path)


def test_label_path_rule() -> None:
    assert label_path("d/images/val2017/000000000139.jpg") == Path("d/labels/val2017/000000000139.txt")
    assert label_path("/x/images/a/images/b/c.png") == Path("/x/images/a/labels/b/c.txt")  # the last one only
    assert label_path("/x/pics/c.jpeg") == Path("/x/pics/c.txt")  # no images folder: beside the image
    assert label_path("/images/c.jpg") == Path("/labels/c.txt")


def test_read_yolo_labels_skips_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(
        "0 0.5 0.5 0.2 0.4\n"  # 1 ok
        "\n"  # 2 blank: ignored silently
        "1 0.5 0.5 0.2\n"  # 3 wrong column count
        "1 0.5 abc 0.2 0.2\n"  # 4 not a number
        "2 0.5 0.5 0.2 0.2\n"  # 5 class out of range (nc=2)
        "1 1.2 0.5 0.2 0.2\n"  # 6 not normalised
        "1 0.5 0.5 0.0 0.2\n"  # 7 zero width
        "1.0 1.0000005 0.0 1.0 -0.0000005\n"  # 8 class 1.0 is fine; height -5e-7 is within tolerance but not positive
        "1 1.0000005 -0.0000005 0.3 0.3\n"  # 9 ok within 1e-6, clipped to [0, 1]
        "0 0.5 0.5 0.2 0.4\n"  # 10 duplicate of line 1
        "0.5 0.5 0.5 0.2 0.4\n"  # 11 fractional class
        "1 nan 0.5 0.2 0.2\n"  # 12 nan
    )
    classes, boxes, problems = read_yolo_labels(path, nc=2)
    assert classes.dtype == np.int64 and boxes.dtype == np.float32
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(boxes, [[0.5, 0.5, 0.2, 0.4], [1.0, 0.0, 0.3, 0.3]])
    lines = [p.split(": ", 1)[0] for p in problems]
    assert lines == [f"{path}:{n}" for n in (3, 4, 5, 6, 7, 8, 10, 11, 12)]
    assert "expected 5 columns" in problems[0]
    assert "not a number" in problems[1]
    assert "out of range" in problems[2]
    assert "outside [0, 1]" in problems[3]
    assert "non-positive" in problems[4] and "non-positive" in problems[5]
    assert "duplicate of line 1" in problems[6]


def test_read_yolo_labels_missing_and_unreadable(tmp_path: Path) -> None:
    classes, boxes, problems = read_yolo_labels(tmp_path / "none.txt", nc=3)
    assert classes.shape == (0,) and boxes.shape == (0, 4) and problems == []
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    classes, boxes, problems = read_yolo_labels(tmp_path / "bin.txt", nc=3)
    assert classes.shape == (0,) and len(problems) == 1 and "cannot read" in problems[0]


def _exif_jpeg(path: Path, orientation: int) -> Path:
    """A JPEG with a hand-made EXIF orientation tag spliced in after SOI."""
    ok, buf = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    assert ok
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp"])
def test_image_size_matches_decoder(tmp_path: Path, suffix: str) -> None:
    path = _image(tmp_path / f"a{suffix}", h=21, w=37)
    assert image_size(path) == read_image(path).shape[:2] == (21, 37)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_image_size_follows_exif_rotation(tmp_path: Path, orientation: int) -> None:
    path = _exif_jpeg(tmp_path / "r.jpg", orientation)
    assert image_size(path) == read_image(path).shape[:2]
    assert image_size(path) == ((50, 30) if orientation in (6, 8) else (30, 50))


def test_image_size_of_a_broken_file_raises(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(LeyoloError):
        image_size(tmp_path / "x.jpg")
