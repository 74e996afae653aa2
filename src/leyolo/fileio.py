"""File writing that never leaves a half-written file or folder behind, and finding an export's files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import LeyoloError


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for an instant, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting, briefly
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes files private, and some writers (safetensors) recreate the file 0600: outputs
        # get the usual permissions of a new file under the user's umask
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_dir(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then swap it in for ``path``.

    A crash leaves the old folder intact (at worst renamed to ``.<name>.old``, never half-written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise LeyoloError(f"{path}: exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.parent / f".{path.name}.old"
    moved = False
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output folder gets the usual mode
        write(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not path.exists():
            os.replace(old, path)  # the swap itself failed: put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


class PartialFile:
    """A text file written piece by piece under a hidden name and moved into place by ``finish``.

    For outputs that grow for as long as a stream runs (JSON, MOT rows): memory stays bounded,
    and a crash leaves no half-written file under the final name.
    """

    def __init__(self, path: str | Path, tag: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}{tag}.partial")
        self.handle = open(self.partial, "w", encoding="utf-8")  # noqa: SIM115 (closed by finish or discard)

    def write(self, text: str) -> None:
        self.handle.write(text)

    def finish(self, path: str | Path | None = None) -> Path:
        self.handle.close()
        final = Path(path) if path is not None else self.path
        os.chmod(self.partial, 0o666 & ~_umask())
        os.replace(self.partial, final)
        return final

    def discard(self) -> None:
        self.handle.close()
        Path(self.partial).unlink(missing_ok=True)


def model_file(path: str | Path, suffix: str, what: str) -> tuple[Path, Path]:
    """(the ``suffix`` file, its ``.bin`` weights) of a two-file export given as its folder or that file.

    OpenVINO (``.xml``) and NCNN (``.param``) both store a graph beside a ``.bin``; a missing or
    ambiguous file is one ``LeyoloError`` line.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"*{suffix}"))
        if len(found) != 1:
            raise LeyoloError(f"{path}: expected one {what} {suffix} in the folder, found {len(found)}")
        path = found[0]
    if path.suffix.lower() != suffix or not path.is_file():
        raise LeyoloError(f"{path}: not {what} ({suffix})")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise LeyoloError(f"{path}: weights file {weights.name} is missing")
    return path, weights
