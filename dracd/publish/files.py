"""The few file-system steps the map writer and the journal both need."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make renames and new names in ``directory`` durable."""
    _sync(directory, os.O_RDONLY | os.O_DIRECTORY, os.fsync)


def fdatasync(path: Path) -> None:
    _sync(path, os.O_RDONLY | os.O_NOFOLLOW, os.fdatasync)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync(path: Path, flags: int, sync: Callable[[int], None]) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        sync(fd)
    finally:
        os.close(fd)
