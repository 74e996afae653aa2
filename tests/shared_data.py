"""Where the tests find ``../shared`` (published nano, coco-mini, shapes) and what they use without it.

``LEYOLO_SHARED`` overrides the location (``LEYOLO_SHARED=/nonexistent python -m pytest`` runs the
suite as if it were absent). Tests that need the shared data skip with a reason when it is absent;
tests that only need *a detector that really detects* and images with objects in them use the
published nano on coco-mini photos when it is there, and otherwise a ``leyolo-n`` trained once per
test session on a small synthetic shapes set (``train_shapes``, the ``trained_shapes`` fixture in
conftest) on mosaics of that set's val images.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest


def _shared_root() -> Path:
    override = os.environ.get("LEYOLO_SHARED")
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _shared_root()
NANO = SHARED / "weights" / "LeYOLONano.pt"
COCO_MINI = SHARED / "datasets" / "coco-mini"
COCO_DATA = COCO_MINI / "data.yaml"
VAL_IMAGES = COCO_MINI / "images" / "val2017"
SHAPES_DATA = SHARED / "datasets" / "shapes" / "data.yaml"
HAVE_SHARED = NANO.is_file() and VAL_IMAGES.is_dir() and COCO_DATA.is_file()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"published nano / coco-mini not found under {SHARED}")


# -- a detector that detects without ../shared -------------------------------------------------------

SHAPES_IMGSZ = 128  # the shapes images, training and val size
# The saved model's default input size (``meta.imgsz``): the sample images are 2x2-3x2 mosaics of the
# 128-px val images, so at 320 px their shapes keep about the scale the model was trained at.
SHAPES_SAMPLE_IMGSZ = 320
# Measured with one torch thread on the 2-core dev VM: ~41 s, val mAP50 0.52 / mAP50-95 0.31 for the
# best weights (1-6 boxes per val image at conf 0.25); the untrained network scores 0.0.
SHAPES_RECIPE: dict[str, Any] = dict(imgsz=SHAPES_IMGSZ, epochs=20, batch=8, workers=0, optimizer="AdamW", lr0=0.008,
                                     momentum=0.9, nbs=8, warmup_epochs=1.0, min_warmup_iters=0, close_mosaic=0,
                                     mosaic=0.0, plots=False, seed=0, progress=False)
# Below this the recipe did not converge (a machine or library change): fail loudly, once, in the fixture
# instead of as dozens of confusing empty-detection failures.
SHAPES_MIN_MAP50 = 0.3


@dataclass
class TrainedShapes:
    """A ``leyolo-n`` trained on a small synthetic shapes set (circle, square, triangle)."""

    detector: Any  # leyolo.Detector, loaded from ``weights``; read-only: load your own copy to change it
    weights: Path  # the best weights, saved with meta.imgsz = SHAPES_SAMPLE_IMGSZ (the default predict size)
    data: Path  # data.yaml
    val_images: list[Path]
    metrics: dict[str, Any]  # detector.val(data, imgsz=SHAPES_IMGSZ, backend="torch")
    untrained_metrics: dict[str, Any]  # the same for the untrained network (seed 0) on the same data
    train_result: dict[str, Any]
    seconds: float
    imgsz: int = SHAPES_IMGSZ
    names: list[str] = field(default_factory=list)


def train_shapes(root: Path) -> TrainedShapes:
    """Generate 96 train + 16 val 128-px shapes images under ``root`` and train ``leyolo-n`` on them."""
    import torch

    import leyolo
    from leyolo.data.synthetic import NAMES, generate_shapes_dataset

    data = generate_shapes_dataset(root / "data", n_train=96, n_val=16, imgsz=SHAPES_IMGSZ, seed=0, progress=False)
    torch.manual_seed(0)
    untrained = leyolo.Detector(leyolo.create_model("leyolo-n", nc=len(NAMES), names=NAMES))
    untrained_metrics = untrained.val(data, imgsz=SHAPES_IMGSZ, backend="torch")
    start = time.perf_counter()
    result = leyolo.train("leyolo-n", data, project=str(root / "runs"), name="shapes", exist_ok=True, **SHAPES_RECIPE)
    seconds = time.perf_counter() - start
    best = leyolo.load(result["best"])
    best.model.meta.imgsz = SHAPES_SAMPLE_IMGSZ
    weights = best.save(root / "shapes-n.safetensors")
    detector = leyolo.load(weights)
    assert detector.meta.imgsz == SHAPES_SAMPLE_IMGSZ
    metrics = detector.val(data, imgsz=SHAPES_IMGSZ, backend="torch")
    assert metrics["mAP50"] >= SHAPES_MIN_MAP50, (
        f"the test suite's shapes model did not learn (val mAP50 {metrics['mAP50']:.3f} < {SHAPES_MIN_MAP50} after "
        f"{seconds:.0f} s): every test that needs real detections without ../shared would be meaningless")
    val_images = sorted((data.parent / "images" / "val").glob("*.jpg"))
    return TrainedShapes(detector, weights, data, val_images, metrics, untrained_metrics, result, seconds,
                         names=list(detector.names))


def shapes_mosaics(val_images: list[Path]) -> list[np.ndarray]:
    """Three BGR images of different shapes (256x384, 384x256, 256x256) tiled from the 16 shapes val
    images: at 320 px the shapes keep about the scale the model was trained at (128 px images)."""
    tiles = [cv2.imread(str(p)) for p in val_images[:16]]
    assert len(tiles) == 16 and all(t is not None for t in tiles), val_images

    def grid(start: int, rows: int, cols: int) -> np.ndarray:
        return np.vstack([np.hstack(tiles[start + r * cols : start + (r + 1) * cols]) for r in range(rows)])

    return [grid(0, 2, 3), grid(6, 3, 2), grid(12, 2, 2)]


# -- what the shared fixtures hand out -----------------------------------------------------------------

def sample_images(trained: TrainedShapes | None = None) -> list[np.ndarray]:
    """Three BGR images of different shapes with objects in them: coco-mini val photos when available,
    else mosaics of the shapes val images (``trained`` is required then)."""
    if HAVE_SHARED:
        return [cv2.imread(str(p)) for p in sorted(VAL_IMAGES.glob("*.jpg"))[:3]]
    assert trained is not None, "without ../shared the sample images come from the trained shapes set"
    return shapes_mosaics(trained.val_images)


def sample_detector(trained: TrainedShapes | None = None):
    """The published nano when available, else (a fresh load of) the trained shapes model."""
    import leyolo

    if HAVE_SHARED:
        return leyolo.load(NANO)
    assert trained is not None, "without ../shared the sample detector is the trained shapes model"
    return leyolo.load(trained.weights)


def sample_weights(trained: TrainedShapes | None = None) -> str:
    """A weights file of ``sample_detector`` (for CLI tests)."""
    if HAVE_SHARED:
        return str(NANO)
    assert trained is not None
    return str(trained.weights)


def sample_conf() -> float:
    """A score threshold at which both sample detectors keep boxes on the sample images."""
    return 0.25


def synthetic_image(seed: int, h: int = 360, w: int = 480) -> np.ndarray:
    """A grey BGR picture with four coloured discs (deterministic per seed); no trained class in it."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 150, (h, w, 3), dtype=np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40))
        cv2.circle(img, (x, y), int(rng.integers(15, 40)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are identities), so that
    fusing changes the convs and parity checks compare something."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
