"""Map writers: where the relay table is published for the MTAs.

A writer replaces its whole output from a snapshot of the table, or
applies the changes since its last write to a copy of what it wrote (far
cheaper for big tables), and can read back what it wrote, for restarts. Backends are imported only when
chosen, so an optional dependency is needed only by the sites that use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ...config import MAP_TYPES
from ...keys import KeyStyle


class MapError(Exception):
    """The map could not be written or read."""


class StaleMap(MapError):
    """The map on disk is not the one this writer last wrote: a full write is needed."""


class MapWriter(Protocol):
    path: Path

    def write_codes(self, entries: Mapping[int, int]) -> None:
        """Replace the whole map with ``entries`` (entry code -> expiry, see keys.entry_code);
        raise :class:`MapError` on failure."""

    def update_codes(self, changes: Mapping[int, int | None], durable: bool = True) -> None:
        """Apply ``changes`` (None: remove the entry) without touching a file a reader has
        open. Raise :class:`StaleMap` if the map is not the one last written here.
        ``durable=False``: readers must see the result, but it need not survive a crash
        (a journal makes it durable)."""

    def update_in_place(self, changes: Mapping[int, int | None]) -> bool:
        """``update_codes(changes, durable=False)`` if that is cheap (no copy of the map),
        and True; else change nothing and return False."""

    def can_update(self) -> bool:
        """Whether :meth:`update` may be used (this writer wrote the current map)."""

    def read_codes(self, verify: bool = False) -> dict[int, int]:
        """The entries in the current map by entry code (empty if there is none).
        ``verify``: raise :class:`MapError` if the file's structure is damaged (torn)."""

    def adopt(self) -> bool:
        """Treat the map just read as written here, if it is exactly what a full write
        would produce; False if it needs one."""

    def identity(self) -> tuple[int, int, int, int] | None:
        """(device, inode, size, mtime) of the map this writer last put in place, or None."""


def open_writer(kind: str, path: Path, style: KeyStyle) -> MapWriter:
    if kind in MAP_TYPES:
        from .berkeley import BerkeleyMap

        return BerkeleyMap(path, kind, style)
    raise MapError(f"unknown map type {kind!r}")


def unsafe_directory(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that users other than its owner
    may write to without the sticky bit (anyone there could swap the map), or None."""
    import stat

    for directory in [path.parent, *path.parent.parents]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            return directory
    return None
