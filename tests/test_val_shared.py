"""``leyolo val`` with the published nano on coco-mini, scored independently with pycocotools.

Reference numbers (shared/reference/LEYOLO.md) come from the authors' implementation on the
same 79 images. Our detections are written with ``--json`` and re-scored here with plain
pycocotools, so a bug in the library's evaluator cannot hide a wrong number.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from shared_data import COCO_DATA as DATA
from shared_data import COCO_MINI, NANO, SHARED

from leyolo.cli import main

GT_JSON = COCO_MINI / "annotations" / "instances_val2017.json"

if not (NANO.is_file() and DATA.is_file() and GT_JSON.is_file()):
    pytest.skip(f"needs the published nano and coco-mini under {SHARED} (absent)", allow_module_level=True)

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

TOL = 0.005
# (imgsz, single_label) -> mAP50-95 of the authors' implementation on coco-mini val
REFERENCE = {(320, False): 0.3056, (320, True): 0.2893, (640, False): 0.4267, (640, True): 0.4123}


@pytest.fixture(scope="module")
def gt() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(GT_JSON))


def coco_map(gt: COCO, detections: Path) -> float:
    """mAP50-95 of a COCO results file, restricted to the val images."""
    records = json.loads(detections.read_text())
    assert records, "no detections written"
    with contextlib.redirect_stdout(io.StringIO()):
        res = gt.loadRes(records)
        ev = COCOeval(gt, res, "bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def printed_map(stdout: str) -> float:
    match = re.search(r"^\s*mAP50-95\s+([\d.]+)\s*$", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


def run_val(tmp_path: Path, capsys, imgsz: int, single_label: bool, backend: str = "torch",
            data: Path = DATA) -> tuple[Path, str]:
    out = tmp_path / f"dets-{imgsz}-{backend}-{'single' if single_label else 'multi'}.json"
    argv = ["-q", "val", "--model", str(NANO), "--data", str(data), "--imgsz", str(imgsz), "--json", str(out),
            "--backend", backend, "--save-dir", str(tmp_path / "plots")]
    if single_label:
        argv.append("--single-label")
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    assert out.is_file()
    return out, captured.out


def check(gt, tmp_path, capsys, imgsz, single_label, backend):
    out, stdout = run_val(tmp_path, capsys, imgsz, single_label, backend)
    assert "images 79" in stdout
    records = json.loads(out.read_text())
    val_ids = set(gt.getImgIds())
    assert {r["image_id"] for r in records} <= val_ids
    assert {r["category_id"] for r in records} <= set(gt.getCatIds())
    assert len(records) <= 300 * len(val_ids)
    assert min(r["score"] for r in records) >= 0.001
    ours = coco_map(gt, out)
    assert ours == pytest.approx(REFERENCE[imgsz, single_label], abs=TOL)
    # what the CLI prints is what pycocotools gives on what it wrote
    assert printed_map(stdout) == pytest.approx(ours, abs=1e-4)
    return ours


def test_val_320_multi_label(gt, tmp_path, capsys):
    check(gt, tmp_path, capsys, 320, False, "torch")


def test_val_320_single_label(gt, tmp_path, capsys):
    check(gt, tmp_path, capsys, 320, True, "torch")


def test_val_320_onnxruntime(gt, tmp_path, capsys):
    check(gt, tmp_path, capsys, 320, False, "onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("single_label", [False, True], ids=["multi", "single"])
def test_val_640(gt, tmp_path, capsys, single_label, backend):
    check(gt, tmp_path, capsys, 640, single_label, backend)


def test_val_yolo_txt_only(gt, tmp_path, capsys):
    """The same split without the COCO json: ground truth from the txt labels (crowd boxes left out)."""
    lines = [line for line in DATA.read_text().splitlines()
             if not line.startswith(("path:", "train_json:", "val_json:"))]
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {COCO_MINI.resolve()}\n" + "\n".join(lines) + "\n")
    out, stdout = run_val(tmp_path, capsys, 320, False, data=data)
    txt_map = printed_map(stdout)
    assert "images 79" in stdout
    assert txt_map > 0.25
    assert txt_map == pytest.approx(REFERENCE[320, False], abs=0.01)
    records = json.loads(out.read_text())
    # without a json the images are numbered 1..N and classes map to category ids 1..80
    assert {r["image_id"] for r in records} <= set(range(1, 80))
    assert {r["category_id"] for r in records} <= set(range(1, 81))
