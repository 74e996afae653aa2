"""Where the tests find ``../shared`` (published nano, coco-mini, shapes) and what they use without it.

Tests that need the shared data skip with a reason when it is absent; tests that only need *some*
detector and images fall back to an untrained leyolo-n and synthetic pictures.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
NANO = SHARED / "weights" / "LeYOLONano.pt"
COCO_MINI = SHARED / "datasets" / "coco-mini"
COCO_DATA = COCO_MINI / "data.yaml"
VAL_IMAGES = COCO_MINI / "images" / "val2017"
SHAPES_DATA = SHARED / "datasets" / "shapes" / "data.yaml"
HAVE_SHARED = NANO.is_file() and VAL_IMAGES.is_dir() and COCO_DATA.is_file()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"published nano / coco-mini not found under {SHARED}")


def synthetic_image(seed: int, h: int = 360, w: int = 480) -> np.ndarray:
    """A grey BGR picture with four coloured discs (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 150, (h, w, 3), dtype=np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40))
        cv2.circle(img, (x, y), int(rng.integers(15, 40)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


def sample_images() -> list[np.ndarray]:
    """Three BGR images of different shapes: coco-mini val photos when available, else synthetic."""
    if HAVE_SHARED:
        return [cv2.imread(str(p)) for p in sorted(VAL_IMAGES.glob("*.jpg"))[:3]]
    return [synthetic_image(0, 360, 480), synthetic_image(1, 480, 320), synthetic_image(2, 300, 300)]


def sample_detector():
    """The published nano when available, else an untrained leyolo-n (deterministic init)."""
    import torch

    import leyolo

    if HAVE_SHARED:
        return leyolo.load(NANO)
    torch.manual_seed(0)
    return leyolo.load("leyolo-n")


def sample_conf() -> float:
    """A score threshold that keeps some boxes: an untrained head scores everything near its prior."""
    return 0.25 if HAVE_SHARED else 0.001


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
