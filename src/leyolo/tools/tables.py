"""Markdown and CSV tables for the tools' reports (bench, ablate, quantize, prune)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from ..fileio import atomic_write

Column = str | tuple[str, str, str]  # a key (header = key), or (key, header, format spec such as ".4f")


def _cell(value: Any, spec: str | None, digits: int | None) -> str:
    if value is None or value == "":
        return "-"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.{3 if digits is None else digits}f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value).replace("|", "/")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
                   digits: dict[str, int] | None = None) -> str:
    """A GitHub Markdown table. Floats take the column's format spec, else ``digits[key]`` decimals
    (3 by default), ints get thousands separators, missing values print as '-'."""
    cols = [(c, c, "") if isinstance(c, str) else c for c in columns]
    digits = digits or {}
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k), f, digits.get(k)) for k, _, f in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: Path, stem: str, header: str,
                digits: dict[str, int]) -> tuple[Path, Path]:
    """``<stem>.csv`` (full precision) and ``<stem>.md`` (rounded, with ``header`` above), written atomically."""

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in columns} for r in rows)

    text = f"{header}\n\n{markdown_table(rows, columns, digits)}\n"
    md_path = atomic_write(out / f"{stem}.md", lambda tmp: Path(tmp).write_text(text))
    return atomic_write(out / f"{stem}.csv", write_csv), md_path
