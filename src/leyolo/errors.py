"""Project exceptions: every user-facing failure is a ``LeyoloError`` with a one-line message."""

from __future__ import annotations


class LeyoloError(Exception):
    """A problem the user can act on (bad path, bad file, bad argument)."""


class UnsafeCheckpointError(LeyoloError):
    """A pickle asked for something outside the allow-list; nothing of it was run."""
