"""Berkeley DB btree/hash maps, as Postfix (btree:, hash:) and Sendmail read them.

The readers flock(2) the file and mmap it, so updating in place crashes
them when the file grows (DESIGN.md §3). Every write builds a complete new
file beside the map, fsyncs it and renames it over the map while holding
flock(LOCK_EX) on the old one: open MTA sessions keep a consistent old
inode and the next session opens the new one.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from berkeleydb import db

from ..keys import IPAddress, KeyStyle, parse_key, parse_value
from . import MapError

log = logging.getLogger(__name__)

_DB_TYPES = {"btree": db.DB_BTREE, "hash": db.DB_HASH}
MAP_MODE = 0o644


class BerkeleyMap:
    def __init__(self, path: Path, kind: str, style: KeyStyle) -> None:
        self.path = path
        self.kind = kind
        self.style = style

    def write(self, entries: Mapping[IPAddress, int]) -> None:
        items = sorted((key, self.style.value(expiry)) for address, expiry in entries.items()
                       for key in self.style.keys(address))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self._build(tmp, items)
            with self._locked(fcntl.LOCK_EX):
                os.rename(tmp, self.path)
            _fsync_dir(self.path.parent)
        except (OSError, db.DBError) as exc:
            _unlink_quietly(tmp)
            raise MapError(f"cannot write {self.path}: {_describe(exc)}") from exc

    def _build(self, tmp: Path, items: list[tuple[bytes, bytes]]) -> None:
        _unlink_quietly(tmp)
        # O_EXCL|O_NOFOLLOW: never write through a planted file or symlink.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MAP_MODE)
        try:
            os.fchmod(fd, MAP_MODE)
            table = db.DB()
            try:
                # Berkeley DB accepts an existing empty file as a new database.
                table.open(str(tmp), dbtype=_DB_TYPES[self.kind], flags=db.DB_CREATE, mode=MAP_MODE)
                for key, value in items:
                    table.put(key, value)
            finally:
                table.close()
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> dict[IPAddress, int]:
        if not self.path.exists():
            return {}
        entries: dict[IPAddress, int] = {}
        skipped = 0
        try:
            with self._locked(fcntl.LOCK_SH):
                for key, value in _records(self.path):
                    address, expiry = parse_key(key), parse_value(value)
                    if address is None or expiry is None:
                        skipped += 1
                        continue
                    entries[address] = max(expiry, entries.get(address, 0))
        except (OSError, db.DBError) as exc:
            raise MapError(f"cannot read {self.path}: {_describe(exc)}") from exc
        if skipped:
            log.warning("%s: ignored %d records that are not address keys with expiry values", self.path, skipped)
        return entries

    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)


def _records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    try:
        cursor = table.cursor()
        record = cursor.first()
        while record is not None:
            yield record
            record = cursor.next()
        cursor.close()
    finally:
        table.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc.args[-1] if exc.args else exc)
