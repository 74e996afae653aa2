"""Project exceptions: every user-facing failure is a ``LeyoloError`` with a one-line message."""

from __future__ import annotations


class LeyoloError(Exception):
    """A problem the user can act on (bad path, bad file, bad argument)."""


class UnsafeCheckpointError(LeyoloError):
    """A pickle asked for something outside the allow-list; nothing of it was run."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message, at most ``limit`` characters, or its type name.

    Third-party runtimes (onnxruntime, OpenVINO, TorchScript, torch-pruning) raise multi-line
    messages with C++ backtraces; a user-facing ``LeyoloError`` keeps only their first line.
    """
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit] if line else type(exc).__name__
