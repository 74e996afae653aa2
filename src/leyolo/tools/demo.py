"""``leyolo demo``: the whole loop on data it makes itself (generate -> train -> validate -> predict)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

DEMO_IMGSZ = 256
# A short-budget recipe: the published one spends ~100 iterations warming up and accumulates
# gradients to 64 images, which in three minutes leaves too few optimizer steps to learn.
DEMO_RECIPE = {"optimizer": "AdamW", "lr0": 0.002, "momentum": 0.9, "nbs": 16, "warmup_epochs": 1.0,
               "min_warmup_iters": 0, "close_mosaic": 2, "mosaic": 1.0}


def run_demo(out: str | Path = "runs/demo", *, minutes: float = 3.0, device: str = "cpu", n_train: int = 400,
             n_val: int = 60, imgsz: int = DEMO_IMGSZ, seed: int = 0, workers: int = 2) -> Iterator[str]:
    """Run the demo, yielding the lines a person should read (where things are, what was reached)."""
    from ..api import load, train
    from ..data.datasets import load_data_yaml, split_images
    from ..data.synthetic import generate_shapes_dataset

    out = Path(out)
    start = time.perf_counter()
    data = generate_shapes_dataset(out / "data", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    yield f"dataset: {data} ({n_train} train / {n_val} val images, 3 classes)"
    result = train("leyolo-n", str(data), imgsz=imgsz, time=minutes, batch=16, device=device, workers=workers,
                   project=str(out), name="train", exist_ok=True, seed=seed, **DEMO_RECIPE)
    yield f"trained leyolo-n for {result['epochs']} epochs in {result['seconds'] / 60:.1f} min: {result['save_dir']}"
    detector = load(result["best"])
    metrics = detector.val(data, imgsz=imgsz, device=device)
    yield (f"validation (pycocotools, {metrics['images']} images): mAP50 {metrics['mAP50']:.3f}, "
           f"mAP50-95 {metrics['mAP50-95']:.3f}")
    predictions = out / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    images = split_images(load_data_yaml(data), "val")[:8]
    for r in detector.predict(images, imgsz=imgsz, conf=0.25):
        import cv2

        cv2.imwrite(str(predictions / Path(r.path).name), r.draw())
    yield f"annotated predictions on {len(images)} val images: {predictions}"
    yield f"best weights: {result['best']} (try: leyolo predict --model {result['best']} --source <images>)"
    yield f"curves: {Path(result['save_dir']) / 'loss.png'}, {Path(result['save_dir']) / 'map.png'}"
    yield f"done in {(time.perf_counter() - start) / 60:.1f} min"
