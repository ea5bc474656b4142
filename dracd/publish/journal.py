"""The table's write-ahead journal: what makes an acknowledged ADD durable.

Making the map itself durable at every commit costs two flushes (the file,
then its directory for the rename). With a journal, a commit appends the
changes to a preallocated file and flushes that one, while the map is only
brought up to date for the readers; after a crash, the table is rebuilt
from the journal and the map rewritten from it before anyone is answered.

Files beside the map (dracd.db):

- ``.dracd.db.state``: the whole table at some moment, written to a
  temporary name, flushed and renamed in, so it is complete or absent. It
  names the newest journal *epoch* it covers.
- ``.dracd.db.journal.0`` and ``.1``: a header naming the file's epoch, then
  batches of changes (code, expiry or deleted), each with its epoch and a
  CRC, so a batch torn by a crash and stale batches from the file's previous
  use both end the replay there. After the header, a note of the map file
  dracd last put in place (a digest of its inode, size and mtime), rewritten
  unflushed after every map write: a start after a crash replays the journal
  alone only over that very file (or a missing or torn map); a map someone
  else changed since (legacy rpc.dracd after a rollback) is merged instead,
  so neither writer's ADDs are lost (daemon.Daemon.load_table).

Compaction keeps the journal short: appends move to the other file under a
new epoch, and the table as it was at that moment becomes the new state;
once that is on disk, the old file is free for the next switch. Replay is
the state, then every journal file newer than it, in epoch order: setting
an expiry or deleting is idempotent, so changes found in both are harmless.

A clean stop removes all three (the map, flushed, holds everything), so a
site can still swap binaries and find only the map.

Not thread-safe: the committer calls everything but recover() and
write_state() from one thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..keys import HOSTS4, valid_code
from .files import fsync_dir, unlink_quietly
from .lock import hold
from .maps import MapError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<8sQI")  # magic, epoch, crc32 of the first two
JOURNAL_MAGIC = b"DRACDJ01"
HEADER_SIZE = 32
#: After the header: which map dracd last put in place (a digest of its inode, size and
#: mtime) and a crc32 of the digest; all zeros: none recorded.
MAP_SLOT = struct.Struct("<8sI")
NO_MAP = bytes(MAP_SLOT.size)
BATCH = struct.Struct("<IIII")  # magic, epoch (low 32 bits), record count, crc32 of the rest and the records
BATCH_MAGIC = 0x4A424154
RECORD = struct.Struct("<18sq")  # entry code (big-endian), expiry; -1: deleted
STATE = struct.Struct("<8sQQQ")  # magic, epoch covered, IPv4 hosts, other entries
STATE_MAGIC = b"DRACDST1"
CRC = struct.Struct("<I")
#: The journal grows by this much at a time, written as zeros, so that a
#: commit's flush is an overwrite that changes no file size (half the cost).
CHUNK = 64 << 10
#: A journal file this long, or COMPACT_RATIO times the last state if bigger, is compacted.
COMPACT_MIN = 16 << 20
COMPACT_RATIO = 4
#: Entries written to the state at a time.
SLICE = 1 << 16


class JournalError(MapError):
    """The journal could not be written or read (a MapError: the ADDs it was to make
    durable fail the same way)."""


class Journal:
    def __init__(self, map_path: Path) -> None:
        self.map_path = map_path
        self.state_path = map_path.with_name(f".{map_path.name}.state")
        self.paths = (map_path.with_name(f".{map_path.name}.journal.0"),
                      map_path.with_name(f".{map_path.name}.journal.1"))
        #: Whether appends may go on (between start() and close()).
        self._open = False
        self._current = 0
        self.epoch = 0
        self._offset = 0
        self._allocated = 0
        self._state_bytes = 0
        #: The map slot as the current file holds it (or will, once start() wrote it).
        self._map_slot = NO_MAP
        #: The digest recover() found: the map dracd last put in place before it stopped.
        self._recorded_map: bytes | None = None
        #: Descriptors holding flock(LOCK_EX) on the journal files while they are in use,
        #: so that a second dracd refuses the map even if its lock file was deleted (lock.py).
        self._held: list[int] = []

    @property
    def active(self) -> bool:
        return self._open

    def exists(self) -> bool:
        return any(path.exists() for path in (self.state_path, *self.paths))

    def recover(self) -> dict[int, int]:
        """The table the state and journals hold (entry code -> expiry)."""
        covered, entries = -1, dict[int, int]()
        if self.state_path.exists():
            covered, entries = self._read_state()
        headers = [(head[0], index, head[1]) for index, path in enumerate(self.paths)
                   if path.exists() and (head := _file_header(path)) is not None]
        journals = sorted((epoch, index) for epoch, index, _ in headers)
        # The newest file names the map last put in place (switch() carries it over).
        self._recorded_map = max(headers, key=lambda head: head[:2])[2] if headers else None
        for epoch, index in journals:
            self.epoch = max(self.epoch, epoch)
            if epoch <= covered:
                continue
            for code, expiry in _batches(self.paths[index], epoch):
                if expiry < 0:
                    entries.pop(code, None)
                else:
                    entries[code] = expiry
        self.epoch = max(self.epoch, covered)
        # Only a valid code came from an ADD: a CRC says the bytes are as written, not by whom.
        invalid = [code for code in entries if not valid_code(code)]
        if invalid:
            log.warning("%s: ignored %d records that are no relayable entry", self.state_path.parent,
                        len(invalid))
            for code in invalid:
                del entries[code]
        return entries

    def resume(self, epoch: int, recorded_map: bytes | None) -> None:
        """What a recovery read elsewhere (dracd.publish.recovery) found: the newest epoch
        in any file, and the map the newest intact header names (None: unknown)."""
        self.epoch, self._recorded_map = epoch, recorded_map

    def holds_last_written_map(self) -> bool:
        """After recover(): whether the map in place is the very file dracd last put
        there (same inode, size and mtime as recorded). False if it changed since,
        or if no journal recorded one (then nobody can tell whose it is)."""
        try:
            st = os.stat(self.map_path)
        except OSError:
            return False
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return self._recorded_map is not None and self._recorded_map == _map_digest(identity)

    def note_map(self, identity: tuple[int, int, int, int] | None) -> None:
        """Record which map dracd just put in place, (device, inode, size, mtime), so that
        a start after a crash can tell it from a map someone else wrote since. Not flushed:
        a crash that loses it (a power cut) makes the map look someone else's, and that
        map is merged with the journal, which loses nothing."""
        slot = self._new_slot(identity)
        if slot is None or not self._open:
            return  # unchanged, or start() writes it
        try:
            fd = os.open(self.paths[self._current], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.pwrite(fd, slot, HEADER.size)
            finally:
                os.close(fd)
        except OSError:
            self._map_slot = NO_MAP  # the next commit fails on this file anyway

    def _new_slot(self, identity: tuple[int, int, int, int] | None) -> bytes | None:
        """The map slot for ``identity``, now the one recorded; None if it already was."""
        slot = NO_MAP if identity is None else _map_slot(_map_digest(identity))
        if slot == self._map_slot:
            return None
        self._map_slot = slot
        return slot

    def start(self, entries: Mapping[int, int]) -> None:
        """A new generation from ``entries`` (the whole table): a state covering every
        journal there is, then both journal files afresh (owned by whoever we run as now)."""
        self.close()
        epoch = self.epoch + 1
        self.write_state(entries, epoch - 1)
        try:
            for index, path in enumerate(self.paths):
                unlink_quietly(path)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    os.pwrite(fd, _header(epoch if index == 0 else 0, self._map_slot), 0)
                    if index == 0:
                        os.pwrite(fd, bytes(CHUNK), HEADER_SIZE)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            fsync_dir(self.state_path.parent)
            self._held = [hold(path) for path in self.paths]
        except OSError as exc:
            self.close()
            raise JournalError(f"cannot write {self.paths[0]}: {exc.strerror}") from exc
        self._current, self.epoch, self._open = 0, epoch, True
        self._offset, self._allocated = HEADER_SIZE, HEADER_SIZE + CHUNK

    def commit(self, changes: Mapping[int, int | None],
               map_identity: tuple[int, int, int, int] | None = None) -> None:
        """Append ``changes`` (None: deleted) and flush them to disk; with ``map_identity``
        (the map just put in place), note_map() it in the same go, flushed with the batch
        (earlier than need be, never later). The file is opened each time: a descriptor
        held open for writing would keep the file system from being remounted read-only."""
        if not self._open:
            raise JournalError("the journal is not open")
        records = _pack_records((code, -1 if expiry is None else expiry) for code, expiry in changes.items())
        head = struct.pack("<II", self.epoch & 0xFFFF_FFFF, len(changes))
        batch = BATCH.pack(BATCH_MAGIC, self.epoch & 0xFFFF_FFFF, len(changes),
                           zlib.crc32(records, zlib.crc32(head))) + records
        end = self._offset + len(batch)
        slot = None if map_identity is None else self._new_slot(map_identity)
        try:
            fd = os.open(self.paths[self._current], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                while end > self._allocated:
                    os.pwrite(fd, bytes(CHUNK), self._allocated)
                    self._allocated += CHUNK
                if slot is not None:
                    os.pwrite(fd, slot, HEADER.size)
                os.pwrite(fd, batch, self._offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if slot is not None:
                self._map_slot = NO_MAP
            raise JournalError(f"cannot write {self.paths[self._current]}: {exc.strerror}") from exc
        self._offset = end

    def wants_compaction(self) -> bool:
        return self._open and self._offset > max(COMPACT_MIN, COMPACT_RATIO * self._state_bytes)

    def switch(self) -> int:
        """Move appends to the other file under a new epoch; return the epoch a state
        of the table as it is now must cover (then the old file may be reused)."""
        if not self._open:
            raise JournalError("the journal is not open")
        other = 1 - self._current
        try:
            fd = os.open(self.paths[other], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.pwrite(fd, _header(self.epoch + 1, self._map_slot), 0)
                os.fdatasync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as exc:
            raise JournalError(f"cannot write {self.paths[other]}: {exc.strerror}") from exc
        covered = self.epoch
        self._current, self.epoch = other, self.epoch + 1
        self._offset, self._allocated = HEADER_SIZE, max(HEADER_SIZE, size)
        return covered

    def write_state(self, entries: Mapping[int, int], covered: int) -> None:
        """Write the table as the state covering journal epochs up to ``covered``.
        Safe to call from another thread while commits go on, on a copy of the table."""
        hosts = sum(1 for code in entries if code < HOSTS4)
        others = _pack_records((code, expiry) for code, expiry in entries.items() if code >= HOSTS4)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        crc = size = 0
        try:
            unlink_quietly(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                # In slices, so a million entries never cost more than a slice of memory.
                parts: Iterator[bytes | array[int]] = itertools.chain(
                    [STATE.pack(STATE_MAGIC, covered, hosts, len(entries) - hosts)],
                    _slices("I", (code for code in entries if code < HOSTS4)),
                    _slices("q", (expiry for code, expiry in entries.items() if code < HOSTS4)),
                    [others])
                for part in parts:
                    view = memoryview(part).cast("B")
                    crc, size = zlib.crc32(view, crc), size + len(view)
                    while view:
                        view = view[os.write(fd, view):]
                os.write(fd, CRC.pack(crc))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.state_path)
            fsync_dir(self.state_path.parent)
        except OSError as exc:
            unlink_quietly(tmp)
            raise JournalError(f"cannot write {self.state_path}: {exc.strerror}") from exc
        self._state_bytes = size

    def close(self, *, clean: bool = False) -> None:
        """Stop appending; ``clean``: the map on disk holds everything, remove the files."""
        self._open = False
        held, self._held = self._held, []
        for fd in held:
            os.close(fd)
        if clean:
            for path in (self.state_path, *self.paths):
                unlink_quietly(path)
            try:
                fsync_dir(self.state_path.parent)
            except OSError:
                pass

    def _read_state(self, salvage: bool = False) -> tuple[int, dict[int, int]]:
        """The state's epoch and entries; ``salvage``: also when only its checksum fails
        (a recovery reads a damaged state that way, as one source among others)."""
        try:
            data = self.state_path.read_bytes()
        except OSError as exc:
            raise JournalError(f"cannot read {self.state_path}: {exc.strerror}") from exc
        if len(data) < STATE.size + CRC.size:
            raise JournalError(f"{self.state_path} is truncated")
        magic, covered, hosts, others = STATE.unpack_from(data)
        size = STATE.size + hosts * 12 + others * RECORD.size
        if magic != STATE_MAGIC or len(data) != size + CRC.size:
            raise JournalError(f"{self.state_path} is not a dracd state file or is truncated")
        if not salvage and zlib.crc32(memoryview(data)[:size]) != CRC.unpack_from(data, size)[0]:
            raise JournalError(f"{self.state_path} is damaged (checksum)")
        codes, expiries = array("I"), array("q")
        codes.frombytes(data[STATE.size:STATE.size + hosts * 4])
        expiries.frombytes(data[STATE.size + hosts * 4:STATE.size + hosts * 12])
        if sys.byteorder != "little":
            codes.byteswap()
            expiries.byteswap()
        entries = dict(zip(codes, expiries, strict=True))
        entries.update(_unpack_records(memoryview(data)[STATE.size + hosts * 12:size]))
        self._state_bytes = size
        return covered, entries


def _pack_records(items: Iterable[tuple[int, int]]) -> bytes:
    """(entry code, expiry) pairs as RECORDs: the code big-endian in 18 bytes."""
    return b"".join([RECORD.pack(code.to_bytes(18, "big"), expiry) for code, expiry in items])


def _unpack_records(records: memoryview) -> Iterator[tuple[int, int]]:
    for code, expiry in RECORD.iter_unpack(records):
        yield int.from_bytes(code, "big"), expiry


def _slices(typecode: str, values: Iterator[int]) -> Iterator[array[int]]:
    """``values`` as little-endian arrays of at most SLICE items."""
    while chunk := array(typecode, itertools.islice(values, SLICE)):
        if sys.byteorder != "little":
            chunk.byteswap()
        yield chunk


def _header(epoch: int, map_slot: bytes = NO_MAP) -> bytes:
    head = HEADER.pack(JOURNAL_MAGIC, epoch, 0)
    return (HEADER.pack(JOURNAL_MAGIC, epoch, zlib.crc32(head[:16])) + map_slot).ljust(HEADER_SIZE, b"\0")


def _map_digest(identity: tuple[int, int, int, int]) -> bytes:
    """A map file's (device, inode, size, mtime) as 8 bytes; the device is left out,
    as its number may change at a reboot."""
    _, inode, size, mtime = identity
    return hashlib.blake2b(struct.pack("<QQq", inode, size, mtime), digest_size=8).digest()


def _map_slot(digest: bytes) -> bytes:
    return MAP_SLOT.pack(digest, zlib.crc32(digest))


def _file_header(path: Path) -> tuple[int, bytes | None] | None:
    """A journal file's epoch and the map digest it records (None: none), or None if
    the file has no valid header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER.size + MAP_SLOT.size)
    except OSError:
        return None
    return parse_header(head)


def parse_header(head: bytes) -> tuple[int, bytes | None] | None:
    """_file_header() of a file's first bytes."""
    if len(head) < HEADER.size + MAP_SLOT.size:
        return None
    magic, epoch, crc = HEADER.unpack_from(head)
    if magic != JOURNAL_MAGIC or crc != zlib.crc32(head[:16]):
        return None
    digest, digest_crc = MAP_SLOT.unpack_from(head, HEADER.size)
    return epoch, (digest if head[HEADER.size:] != NO_MAP and digest_crc == zlib.crc32(digest) else None)


def _batches(path: Path, epoch: int) -> Iterator[tuple[int, int]]:
    """The records of the valid batches of ``path``, up to the first torn or stale one."""
    data = path.read_bytes()
    offset, tag = HEADER_SIZE, epoch & 0xFFFF_FFFF
    while offset + BATCH.size <= len(data):
        magic, batch_epoch, count, crc = BATCH.unpack_from(data, offset)
        end = offset + BATCH.size + count * RECORD.size
        if magic != BATCH_MAGIC or batch_epoch != tag or end > len(data):
            return
        records = memoryview(data)[offset + BATCH.size:end]
        if zlib.crc32(records, zlib.crc32(struct.pack("<II", batch_epoch, count))) != crc:
            return
        yield from _unpack_records(records)
        offset = end
