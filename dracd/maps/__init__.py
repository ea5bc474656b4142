"""Map writers: where the relay table is published for the MTAs.

A writer replaces its whole output from a snapshot of the table and can
read back what it wrote, for restarts. Backends are imported only when
chosen, so an optional dependency is needed only by the sites that use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ..keys import IPAddress, KeyStyle


class MapError(Exception):
    """The map could not be written or read."""


class MapWriter(Protocol):
    path: Path

    def write(self, entries: Mapping[IPAddress, int]) -> None:
        """Replace the whole map with ``entries``; raise :class:`MapError` on failure."""

    def read(self) -> dict[IPAddress, int]:
        """The entries in the current map (empty if there is none)."""


BERKELEY_TYPES = ("btree", "hash")


def open_writer(kind: str, path: Path, style: KeyStyle) -> MapWriter:
    if kind in BERKELEY_TYPES:
        from .berkeley import BerkeleyMap

        return BerkeleyMap(path, kind, style)
    raise MapError(f"unknown map type {kind!r}")
