"""The ``leyolo`` command, driven in-process through ``leyolo.cli.main``.

Uses the published nano checkpoint and coco-mini images from ``../shared`` when present,
otherwise the shapes model trained by the session fixture and mosaics of its val images: either
way the model finds objects, and the txt/json rows the CLI writes are asserted non-empty and equal
to what the Python API predicts on the same files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_data import HAVE_SHARED, NANO, VAL_IMAGES, synthetic_image

import leyolo
from leyolo.cli import main

IMGSZ = "320"


@pytest.fixture(scope="module")
def model(detector_weights) -> str:
    """The published nano (``../shared``) or the trained shapes model's weights file."""
    return detector_weights


@pytest.fixture(scope="module")
def api(detector):
    """The same model through the Python API, to compare the CLI's output with."""
    return detector


@pytest.fixture
def good_images(images):
    """``make(folder, n)``: ``n`` readable JPEGs with objects in ``folder`` (coco-mini val images,
    or mosaics of the shapes val images)."""

    def make(folder: Path, n: int = 2) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        if HAVE_SHARED:
            for src in sorted(VAL_IMAGES.glob("*.jpg"))[:n]:
                out.append(Path(shutil.copy(src, folder / src.name)))
        else:
            for i in range(n):
                path = folder / f"img{i}.jpg"
                assert cv2.imwrite(str(path), images[i])
                out.append(path)
        return out

    return make


def _any_images(folder: Path, n: int = 1) -> list[Path]:
    """``n`` readable JPEGs for tests about errors and files, not detections (no model needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"pic{i}.jpg"
        assert cv2.imwrite(str(path), synthetic_image(i))
        out.append(path)
    return out


def _label_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _assert_rows_match(rows: list[list[str]], ref) -> None:
    """YOLO txt rows (class cx cy w h conf) equal the API's detections of the same image."""
    assert len(ref) > 0 and len(rows) == len(ref), (rows, ref)
    h, w = ref.orig_shape
    xyxy = np.asarray(ref.boxes, np.float64)
    want = np.column_stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h,
                            (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h])
    assert [int(r[0]) for r in rows] == ref.classes.tolist()
    np.testing.assert_allclose([[float(v) for v in r[1:5]] for r in rows], want, atol=1e-4)
    np.testing.assert_allclose([float(r[5]) for r in rows], ref.scores, atol=1e-4)


def _lines(text: str) -> list[str]:
    """Output lines, with tqdm's carriage-return redraws split apart."""
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def _error_lines(text: str) -> list[str]:
    return [line for line in _lines(text) if line.startswith("error:")]


# -- help ------------------------------------------------------------------------------------------

HELP_CASES = {
    # every sub-command the README documents, plug-ins included (they must be wired, not only importable)
    (): ["info", "predict", "val", "export", "quantize", "prune", "bench", "ablate", "convert", "train", "synth",
         "demo", "--version", "--quiet"],
    ("info",): ["--model", "--imgsz", "--json"],
    ("predict",): ["--model", "--source", "--imgsz", "--conf", "--iou", "--max-det", "--batch", "--backend",
                   "--save-dir", "--no-save", "--save-txt", "--save-json"],
    ("val",): ["--model", "--data", "--split", "--imgsz", "--conf", "--single-label", "--json", "--backend", "--verbose"],
    ("export",): ["--model", "--format", "--imgsz", "--dynamic", "--out"],
    ("convert",): ["input", "output"],
}


@pytest.mark.parametrize("command", list(HELP_CASES), ids=lambda c: " ".join(c) or "main")
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: leyolo")
    for option in HELP_CASES[command]:
        assert option in out, f"{option} missing from `leyolo {' '.join(command)} --help`"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: leyolo" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert leyolo.__version__ in capsys.readouterr().out


# -- info ------------------------------------------------------------------------------------------

def test_info_json(capsys):
    assert main(["info", "--model", "leyolo-s", "--imgsz", "640", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    info = json.loads(last)
    assert info["model"] == "leyolo-s"
    assert info["params"] == 1_917_440
    assert info["imgsz"] == 640
    assert round(info["gflops"], 3) == 4.535  # the published figure, to its 3 decimals (4.5351)


def test_info_table(capsys):
    assert main(["info", "--model", "leyolo-n", "--imgsz", "320"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"^\s*\d+\s", line)]
    assert 34 <= len(rows) <= 40, out  # 35 layers + the head for nano
    assert "1,120,480" in out
    summary = [line for line in out.splitlines() if "GFLOPs" in line]
    assert summary and "leyolo-n" in summary[0] and "320" in summary[0]
    gflops = re.search(r"([\d.]+) GFLOPs", summary[0]).group(1)
    assert gflops == "0.668"  # the published figure, printed to its precision (0.66765)


def test_info_rejects_bad_imgsz(capsys):
    assert main(["info", "--model", "leyolo-n", "--imgsz", "100"]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "multiple of 32" in err and "Traceback" not in err


# -- predict ---------------------------------------------------------------------------------------

def test_predict_folder_with_bad_files(tmp_path, capsys, model, api, good_images):
    src = tmp_path / "src"
    good = good_images(src, 2)
    (src / "bad.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    full = good[0].read_bytes()
    (src / "trunc.jpg").write_bytes(full[: len(full) // 2])
    out_dir = tmp_path / "out"

    rc = main(["predict", "--model", model, "--source", str(src), "--imgsz", IMGSZ, "--conf", "0.25",
               "--save-dir", str(out_dir), "--save-txt", "--save-json"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.err
    skipped = sorted(set(line for line in _lines(captured.err) if line.startswith("skipped:")))
    assert len(skipped) == 2, captured.err  # one distinct line per unreadable file
    assert any("bad.jpg" in line for line in skipped)
    assert any("trunc.jpg" in line for line in skipped)
    assert not any(g.name in line for g in good for line in skipped)
    assert "2 images" in captured.out

    # annotated images and labels for the good files only
    for g in good:
        annotated = out_dir / g.name
        assert annotated.is_file()
        img = cv2.imread(str(annotated))
        assert img is not None and img.shape == cv2.imread(str(g)).shape
        assert (out_dir / "labels" / f"{g.stem}.txt").is_file()
    assert not (out_dir / "bad.jpg").exists() and not (out_dir / "trunc.jpg").exists()
    assert sorted(p.stem for p in (out_dir / "labels").iterdir()) == sorted(g.stem for g in good)

    rows = []
    nc = len(api.names)
    for g in good:
        fields_of_image = _label_rows(out_dir / "labels" / f"{g.stem}.txt")
        assert fields_of_image, f"no detections written for {g.name}"
        for fields in fields_of_image:
            assert len(fields) == 6, fields
            cls = int(fields[0])
            assert 0 <= cls < nc
            coords = [float(v) for v in fields[1:5]]
            assert all(0.0 <= v <= 1.0 for v in coords), fields
            assert 0.25 <= float(fields[5]) <= 1.0
            rows.append(fields)
        _assert_rows_match(fields_of_image, api.predict(g, imgsz=int(IMGSZ), conf=0.25)[0])

    records = json.loads((out_dir / "predictions.json").read_text())
    assert isinstance(records, list)
    assert len(rows) > 0 and len(records) == len(rows)
    for r in records:
        assert len(r["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in r["bbox"])
        assert r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert r["score"] >= 0.25
        assert r["file_name"] in {g.name for g in good}
    assert sorted(r["score"] for r in records) == pytest.approx(sorted(float(f[5]) for f in rows), abs=1e-4)
    assert {r["file_name"] for r in records} == {g.name for g in good}  # every good image has detections
    if HAVE_SHARED:
        assert {r["image_id"] for r in records} <= {int(g.stem) for g in good}


def test_predict_odd_image_formats(tmp_path, capsys, model, api, good_images):
    src = tmp_path / "odd"
    src.mkdir()
    base = cv2.imread(str(good_images(tmp_path / "base", 1)[0]))
    gray = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(base, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 200
    deep = base.astype(np.uint16) * 257
    assert cv2.imwrite(str(src / "gray.png"), gray)
    assert cv2.imwrite(str(src / "rgba.png"), rgba)
    assert cv2.imwrite(str(src / "deep16.png"), deep)
    assert cv2.imread(str(src / "deep16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out_dir = tmp_path / "out"
    rc = main(["predict", "--model", model, "--source", str(src), "--imgsz", IMGSZ, "--save-dir", str(out_dir),
               "--save-txt"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "skipped" not in captured.err
    for stem in ("gray", "rgba", "deep16"):
        annotated = cv2.imread(str(out_dir / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert annotated is not None and annotated.shape == base.shape and annotated.dtype == np.uint8
        assert (out_dir / "labels" / f"{stem}.txt").is_file()
    # the 16-bit rendering is the 8-bit photo (x 257): the same detections as the API on the photo itself
    _assert_rows_match(_label_rows(out_dir / "labels" / "deep16.txt"), api.predict(base, imgsz=int(IMGSZ))[0])
    for stem in ("gray", "rgba"):  # other renderings of the same photo: still objects found
        assert _label_rows(out_dir / "labels" / f"{stem}.txt"), stem


def test_predict_glob_source(tmp_path, capsys, model):
    src = tmp_path / "src"
    good = _any_images(src, 2)
    (src / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "out"
    rc = main(["predict", "--model", model, "--source", str(src / "*.jpg"), "--imgsz", IMGSZ,
               "--save-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_file()) == sorted(g.name for g in good)


def test_predict_no_save_writes_nothing(tmp_path, capsys, monkeypatch, model):
    src = tmp_path / "src"
    _any_images(src, 1)
    monkeypatch.chdir(tmp_path)
    rc = main(["predict", "--model", model, "--source", str(src), "--imgsz", IMGSZ, "--no-save"])
    assert rc == 0
    assert not (tmp_path / "runs").exists()
    assert "1 images" in capsys.readouterr().out


def test_predict_video(tmp_path, capsys, model, good_images):
    base = cv2.imread(str(good_images(tmp_path / "base", 1)[0]))
    frame0 = cv2.resize(base, (320, 240))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.roll(frame0, 4 * i, axis=1))
    writer.release()
    out_dir = tmp_path / "out"
    rc = main(["predict", "--model", model, "--source", str(video), "--imgsz", IMGSZ, "--save-dir", str(out_dir),
               "--save-txt"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "5 images" in captured.out
    out_video = out_dir / "clip.mp4"
    assert out_video.is_file() and out_video.stat().st_size > 0
    cap = cv2.VideoCapture(str(out_video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5
    labels = sorted(p.name for p in (out_dir / "labels").glob("*.txt"))
    assert labels == [f"clip_{i}.txt" for i in range(5)]
    assert all(_label_rows(out_dir / "labels" / name) for name in labels), "every frame shows objects"


def test_predict_default_save_dir_is_numbered(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    _any_images(src, 1)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["-q", "predict", "--model", "leyolo-n", "--source", str(src), "--imgsz", "64"]) == 0
    assert (tmp_path / "runs" / "predict").is_dir() and (tmp_path / "runs" / "predict2").is_dir()


def _assert_one_line_error(captured, *needles: str) -> None:
    assert "Traceback" not in captured.err
    errors = _error_lines(captured.err)
    assert len(errors) == 1, captured.err
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_predict_missing_source(tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert main(["predict", "--model", "leyolo-n", "--source", str(missing), "--imgsz", "64", "--no-save"]) == 1
    _assert_one_line_error(capsys.readouterr(), "nope.jpg")


def test_predict_empty_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--model", "leyolo-n", "--source", str(empty), "--imgsz", "64", "--no-save"]) == 1
    _assert_one_line_error(capsys.readouterr(), "empty")


def test_predict_glob_matching_nothing(tmp_path, capsys):
    pattern = str(tmp_path / "*.jpg")
    assert main(["predict", "--model", "leyolo-n", "--source", pattern, "--no-save"]) == 1
    _assert_one_line_error(capsys.readouterr(), "matches no files")


def test_missing_model_file(tmp_path, capsys):
    src = tmp_path / "src"
    _any_images(src, 1)
    model = tmp_path / "missing.pt"
    assert main(["predict", "--model", str(model), "--source", str(src), "--no-save"]) == 1
    _assert_one_line_error(capsys.readouterr(), "missing.pt")


def test_unknown_model_name(capsys):
    assert main(["info", "--model", "leyolo-xxl"]) == 1
    _assert_one_line_error(capsys.readouterr(), "leyolo-xxl", "leyolo-n")


def test_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    assert main(["info", "--model", str(bad)]) == 1
    _assert_one_line_error(capsys.readouterr(), "broken.pt")


@pytest.mark.parametrize("args", [["--conf", "2"], ["--iou", "-0.1"], ["--imgsz", "0"], ["--batch", "x"],
                                  ["--backend", "no-such-runtime"]])
def test_bad_arguments_exit_2(tmp_path, args, capsys):
    assert main(["predict", "--model", "leyolo-n", "--source", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_predict_bad_imgsz_is_input_error(tmp_path, capsys):
    src = tmp_path / "src"
    _any_images(src, 1)
    assert main(["predict", "--model", "leyolo-n", "--source", str(src), "--imgsz", "100", "--no-save"]) == 1
    _assert_one_line_error(capsys.readouterr(), "multiple of 32")


# -- val -------------------------------------------------------------------------------------------

def test_val_data_yaml_without_names(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    data = tmp_path / "data.yaml"
    data.write_text("path: .\nval: images\n")
    assert main(["val", "--model", "leyolo-n", "--data", str(data), "--imgsz", "64"]) == 1
    _assert_one_line_error(capsys.readouterr(), "names")


def test_val_missing_data_yaml(tmp_path, capsys):
    assert main(["val", "--model", "leyolo-n", "--data", str(tmp_path / "nothere.yaml")]) == 1
    _assert_one_line_error(capsys.readouterr(), "nothere.yaml")


def test_val_tiny_txt_dataset(tmp_path, capsys, monkeypatch, trained_shapes):
    """A two-image YOLO-txt dataset (two shapes val images with their labels), end to end through the CLI."""
    monkeypatch.chdir(tmp_path)  # anything written to a default ./runs folder stays in the test's folder
    images, labels = tmp_path / "images" / "val", tmp_path / "labels" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for src in trained_shapes.val_images[:2]:
        shutil.copy(src, images / src.name)
        shutil.copy(src.parents[2] / "labels" / "val" / f"{src.stem}.txt", labels / f"{src.stem}.txt")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: .\nval: images/val\nnames: [{', '.join(trained_shapes.names)}]\n")
    out_json = tmp_path / "dets.json"
    rc = main(["-q", "val", "--model", str(trained_shapes.weights), "--data", str(data),
               "--imgsz", str(trained_shapes.imgsz), "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "images 2" in captured.out and "mAP50-95" in captured.out
    printed = float(re.search(r"mAP50-95\D*([\d.]+)", captured.out).group(1))
    assert printed > 0.1, captured.out  # the trained model scores on its own val images
    records = json.loads(out_json.read_text())
    assert isinstance(records, list) and len(records) > 0
    assert all(r["image_id"] in (1, 2) and len(r["bbox"]) == 4 for r in records)
    assert {r["image_id"] for r in records} == {1, 2}  # both images have detections


# -- convert / export ------------------------------------------------------------------------------

def test_convert_then_info(tmp_path, capsys):
    source = str(NANO)
    if not HAVE_SHARED:  # an untrained leyolo-n, saved once so that both sides hold the same weights
        source = str(leyolo.load("leyolo-n").save(tmp_path / "source.safetensors"))
    out = tmp_path / "nano.safetensors"
    assert main(["convert", source, str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["info", "--model", str(out), "--imgsz", "320", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info == {"model": "leyolo-n", "params": 1_120_480, "gflops": pytest.approx(0.6677, abs=5e-5), "imgsz": 320}
    # the converted weights are the same network
    a, b = leyolo.load(source), leyolo.load(out)
    assert a.names == b.names
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_convert_rejects_other_suffix(tmp_path, capsys):
    assert main(["convert", "leyolo-n", str(tmp_path / "x.pt")]) == 1
    _assert_one_line_error(capsys.readouterr(), ".safetensors")


def test_export_onnx_then_load(tmp_path, capsys, model, api, good_images):
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", model, "--format", "onnx", "--imgsz", "320", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 1_000_000
    assert "exported" in capsys.readouterr().out
    det = leyolo.load(out)
    assert det.model is None and det.onnx_path == out
    assert det.meta.imgsz == 320 and det.meta.arch == "leyolo-n"
    assert det.names == api.names and len(det.names) == (80 if HAVE_SHARED else 3)
    # the exported file predicts through the CLI with the default backend setting, like the PyTorch model
    src = tmp_path / "src"
    good = good_images(src, 1)
    rc = main(["predict", "--model", str(out), "--source", str(src), "--imgsz", "320", "--save-txt",
               "--save-dir", str(tmp_path / "pred")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 images" in captured.out
    ref = api.predict(good[0], imgsz=320, backend="torch")[0]
    _assert_rows_match(_label_rows(tmp_path / "pred" / "labels" / f"{good[0].stem}.txt"), ref)
