"""``leyolo demo``: the whole loop on data it makes itself (generate -> train -> validate -> predict).

The demo must end with a model that finds the shapes on any machine that can run it, including a
busy 2-core one, so it sizes its work by what it measures rather than by the clock alone:

* small images (``DEMO_IMGSZ``) and a short-budget recipe, so each optimizer step is cheap;
* before training, a few steps are timed with one thread and with all usable CPUs, and the
  faster count is used (on a machine other jobs keep busy, torch's spinning thread pool can make
  two threads many times slower than one);
* the time budget is a target: the trainer plans the epoch count from the measured speed, but
  never fewer than ``MIN_EPOCHS``, the work that reaches mAP50 >= 0.5 here (BENCHMARKS.md); on a
  slow machine the demo takes longer and says so;
* the result is judged: a weak model is reported as weak, with the reason and what to do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

DEMO_IMGSZ = 160
DEMO_TRAIN, DEMO_VAL = 240, 60
MIN_EPOCHS = 15  # measured: mAP50 >= 0.5 with margin at this size and recipe (BENCHMARKS.md, "leyolo demo")
WEAK_MAP50 = 0.5
# A short-budget recipe: the published one spends ~100 iterations warming up and accumulates
# gradients to 64 images, which in a few minutes leaves too few optimizer steps to learn; mosaic
# shrinks objects that are already small at this image size.
DEMO_RECIPE = {"optimizer": "AdamW", "lr0": 0.006, "momentum": 0.9, "nbs": 16, "batch": 16, "warmup_epochs": 1.0,
               "min_warmup_iters": 0, "close_mosaic": 0, "mosaic": 0.0}


def fastest_threads(imgsz: int, batch: int, reps: int = 2) -> tuple[int, dict[int, float]]:
    """The torch thread count (1 or all usable CPUs) whose training steps run faster here, and the
    seconds per step measured for each (interleaved, fastest of ``reps``)."""
    import torch

    from ..inference.cpus import usable_cpus
    from ..losses import build_criterion
    from ..models.registry import create_model

    counts = sorted({1, usable_cpus()})
    if len(counts) == 1:
        return counts[0], {}
    model = create_model("leyolo-n", nc=3).train().to(memory_format=torch.channels_last)
    criterion = build_criterion(model)
    images = torch.rand(batch, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([[i, i % 3, 10.0, 10.0, imgsz / 2, imgsz / 2] for i in range(batch)])
    previous = torch.get_num_threads()
    best = {n: float("inf") for n in counts}
    try:
        for rep in range(reps + 1):
            for n in counts:
                torch.set_num_threads(n)
                start = time.perf_counter()
                loss, _ = criterion(model(images), targets)
                loss.backward()
                model.zero_grad(set_to_none=True)
                if rep:  # the first round warms up
                    best[n] = min(best[n], time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(best, key=best.get), best


def run_demo(out: str | Path = "runs/demo", *, minutes: float = 3.0, device: str = "cpu", n_train: int = DEMO_TRAIN,
             n_val: int = DEMO_VAL, imgsz: int = DEMO_IMGSZ, seed: int = 0, workers: int = 1,
             min_epochs: int = MIN_EPOCHS) -> Iterator[str]:
    """Run the demo, yielding the lines a person should read (where things are, what was reached)."""
    from ..api import load, train
    from ..data.datasets import load_data_yaml, split_images
    from ..data.synthetic import generate_shapes_dataset

    out = Path(out)
    start = time.perf_counter()
    data = generate_shapes_dataset(out / "data", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    yield f"dataset: {data} ({n_train} train / {n_val} val images, 3 classes, {imgsz} px)"
    threads, timings = fastest_threads(imgsz, DEMO_RECIPE["batch"]) if device == "cpu" else (None, {})
    if timings:
        yield ("training on " + (f"{threads} thread" + "s" * (threads > 1)) + " (a training step took "
               + ", ".join(f"{t:.2f} s on {n}" for n, t in timings.items()) + ")")
    result = train("leyolo-n", str(data), imgsz=imgsz, time=minutes, min_epochs=min_epochs, device=device,
                   workers=workers, threads=threads, project=str(out), name="train", exist_ok=True, seed=seed,
                   **DEMO_RECIPE)
    epochs, took = result["epochs"], result["seconds"] / 60
    line = f"trained leyolo-n for {epochs} epochs in {took:.1f} min: {result['save_dir']}"
    if took > minutes * 1.15 and epochs <= min_epochs:
        speed = epochs * n_train / result["seconds"]
        line += (f" (longer than the {minutes:g}-minute target: the demo needs {min_epochs} epochs to learn, "
                 f"and this machine trained {speed:.1f} images/s)")
    yield line
    detector = load(result["best"])
    metrics = detector.val(data, imgsz=imgsz, device=device)
    yield (f"validation (pycocotools, {metrics['images']} images): mAP50 {metrics['mAP50']:.3f}, "
           f"mAP50-95 {metrics['mAP50-95']:.3f}, precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
    if not metrics["mAP50"] >= WEAK_MAP50:
        yield (f"the model is still weak (mAP50 {metrics['mAP50']:.3f} < {WEAK_MAP50}): {epochs} epochs were not "
               f"enough here; run 'leyolo demo --time {max(2 * minutes, minutes + 3):g}' for a longer training")
    predictions = out / "predictions"
    images = split_images(load_data_yaml(data), "val")[:8]
    boxes = 0
    for r in detector.predict(images, imgsz=imgsz, conf=0.25):
        r.save(predictions / f"{Path(r.path).stem}.jpg")
        boxes += len(r)
    yield f"annotated predictions on {len(images)} val images ({boxes} boxes at conf 0.25): {predictions}"
    yield f"best weights: {result['best']} (try: leyolo predict --model {result['best']} --source <images>)"
    plots = [Path(result["save_dir"]) / name for name in ("loss.png", "map.png")] + [Path(p) for p in result["plots"]]
    yield f"plots: {', '.join(str(p) for p in plots if p.is_file())}"
    yield f"done in {(time.perf_counter() - start) / 60:.1f} min"
