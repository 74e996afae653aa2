"""``results.csv`` and the PNG curves a person looks at after training."""

from __future__ import annotations

import csv
from pathlib import Path

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
