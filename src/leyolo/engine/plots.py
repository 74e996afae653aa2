"""``results.csv`` and the PNG plots a person looks at after training or validation."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_write


def append_results(path: Path, row: dict[str, float]) -> None:
    """Append one epoch row (rewrites the file atomically, header included)."""
    rows = read_results(path)
    rows.append(row)
    keys = list(rows[0].keys())
    for r in rows:
        keys += [k for k in r if k not in keys]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_results(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()} for row in csv.DictReader(fh)]
    for row in rows:
        if "epoch" in row:
            row["epoch"] = int(row["epoch"])
    return rows


def plot_results(path: Path, out_dir: Path) -> list[Path]:
    """Loss curves and mAP curves as PNGs; returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = read_results(path)
    if not rows:
        return []
    epochs = [r["epoch"] for r in rows]
    written = []
    groups = {
        "loss.png": [k for k in rows[0] if k.startswith("train/")],
        "map.png": [k for k in rows[0] if k.startswith("metrics/")],
    }
    for name, keys in groups.items():
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
        for ax, key in zip(axes[0], keys):
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", markersize=3)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        target = out_dir / name
        atomic_write(target, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        written.append(target)
    return written


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_pr_curves(curves: tuple[np.ndarray, np.ndarray], names: Sequence[str], path: Path,
                   per_class_limit: int = 20) -> Path | None:
    """Precision vs recall at IoU 0.5 (COCO's interpolated curve): the class mean, and each class when few."""
    plt = _pyplot()
    if plt is None:
        return None
    precision, recall = curves  # [K, R], [R]
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    valid = ~np.isnan(precision).any(1) & (precision >= 0).all(1)
    if valid.sum() <= per_class_limit:
        for k in np.flatnonzero(valid):
            ap = float(precision[k].mean())
            ax.plot(recall, precision[k], lw=1, alpha=0.7, label=f"{names[k]} {ap:.3f}")
    if valid.any():
        mean = precision[valid].mean(0)
        ax.plot(recall, mean, lw=2.5, color="black", label=f"all classes {float(mean.mean()):.3f} mAP@0.5")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: Path, conf: float, iou: float,
                          label_limit: int = 30) -> Path | None:
    """The confusion matrix, each true-class column normalised to 1 (counts in the cells when small)."""
    plt = _pyplot()
    if plt is None:
        return None
    totals = matrix.sum(0, keepdims=True)
    normalised = matrix / np.maximum(totals, 1)
    labels = [*names, "background"]
    size = min(4 + 0.3 * len(labels), 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if len(labels) <= label_limit:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (r, c), value in np.ndenumerate(matrix):
            if value:
                ax.text(c, r, str(value), ha="center", va="center", fontsize=6,
                        color="white" if normalised[r, c] > 0.5 else "black")
    ax.set(xlabel="true", ylabel="predicted", title=f"confusion matrix (conf {conf:g}, IoU {iou:g})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
