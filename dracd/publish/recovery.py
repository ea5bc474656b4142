"""Start-up after a crash, and a map someone else changed: never trust a damaged file
over an intact one.

After a crash the acknowledged entries may be in three places: the state, the
journal files and the map on disk (dracd updates the map before it answers, so
after kill -9 the map holds every acknowledged entry; after a power cut it may
be older, as map renames are not flushed). Each file is checked on its own:

- the state: whole (magic, size, CRC) or not trusted at all;
- each journal file: its header (epoch, the map dracd last put in place), then
  every batch whose CRC holds, also those after a bad stretch (the reader
  resynchronises on the next batch of the file's epoch), and stale batches of
  the file's previous uses (kept apart by their epoch tag);
- the map: Berkeley DB's own verify.

When all is intact and the map is the file dracd last wrote, the state and
the journals are replayed alone (so what dracd deleted stays deleted). Any
damage (a bad state, a bad header, a bad stretch between good batches, a
truncated or missing file) or a map that is someone else's makes the result
the union of every source instead: the replay and every unexpired entry of the
map, the later expiry winning (merge_foreign: the one rule for a map changed by
someone else, at start-up and while running). A damaged file is renamed aside
(``<name>.damaged-<UTC time>``) before anything is written, and the log names
it, the byte ranges skipped and the batches read.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..keys import valid_code
from .files import fsync_dir
from .journal import (
    BATCH,
    BATCH_MAGIC,
    CHUNK,
    HEADER_SIZE,
    RECORD,
    Journal,
    JournalError,
    _unpack_records,
    parse_header,
)
from .maps import MapError, MapWriter

log = logging.getLogger(__name__)

_MAGIC_BYTES = struct.pack("<I", BATCH_MAGIC)
_TAG_MASK = 0xFFFF_FFFF


@dataclass
class Batch:
    offset: int
    tag: int
    records: memoryview


@dataclass
class FileScan:
    """What one journal file holds."""

    path: Path
    #: The header's epoch, or None if the header is damaged.
    epoch: int | None = None
    recorded_map: bytes | None = None
    #: Every batch whose CRC holds, in file order.
    batches: list[Batch] = field(default_factory=list)
    #: What is wrong with the file (empty: intact).
    damage: list[str] = field(default_factory=list)

    @property
    def tag(self) -> int | None:
        """The epoch tag of the file's current batches (inferred if the header is damaged)."""
        if self.epoch is not None:
            return self.epoch & _TAG_MASK
        first = next((batch for batch in self.batches if batch.offset == HEADER_SIZE), None)
        if first is not None:
            return first.tag
        return max((batch.tag for batch in self.batches), default=None)

    def current(self) -> list[Batch]:
        tag = self.tag
        return [batch for batch in self.batches if batch.tag == tag]


def scan_journal(path: Path) -> FileScan:
    """Every batch of ``path`` whose CRC holds, and what is wrong with the file."""
    scan = FileScan(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        scan.damage.append(f"unreadable ({exc.strerror})")
        return scan
    header = parse_header(data[:HEADER_SIZE])
    if header is not None:
        scan.epoch, scan.recorded_map = header
    else:
        scan.damage.append("header damaged (epoch and map note unknown)")
    if len(data) % CHUNK != HEADER_SIZE % CHUNK:
        scan.damage.append(f"truncated or extended to {len(data)} bytes (not the preallocated size)")
    scan.batches = list(_valid_batches(data))
    # Current batches follow one another from the header on; a gap between two of them
    # is a stretch the reader had to skip (stale batches and zeros only come after them).
    tag, expected = scan.tag, HEADER_SIZE
    current = [batch for batch in scan.batches if batch.tag == tag]
    for number, batch in enumerate(current):
        if batch.offset != expected:
            scan.damage.append(f"bytes {expected}-{batch.offset} unreadable before batch {number + 1} of "
                               f"{len(current)} (skipped; the batches after them were read)")
        expected = batch.offset + BATCH.size + len(batch.records)
    return scan


def _valid_batches(data: bytes) -> Iterator[Batch]:
    """Every batch in ``data`` whose CRC holds: after a bad one, the next batch magic on."""
    view = memoryview(data)
    offset = HEADER_SIZE
    while offset + BATCH.size <= len(data):
        magic, tag, count, crc = BATCH.unpack_from(data, offset)
        end = offset + BATCH.size + count * RECORD.size
        if magic == BATCH_MAGIC and end <= len(data):
            records = view[offset + BATCH.size:end]
            if zlib.crc32(records, zlib.crc32(struct.pack("<II", tag, count))) == crc:
                yield Batch(offset, tag, records)
                offset = end
                continue
        found = data.find(_MAGIC_BYTES, offset + 1)
        if found < 0:
            return
        offset = found


@dataclass
class StateScan:
    covered: int = -1
    entries: dict[int, int] = field(default_factory=dict)
    damage: str | None = None
    present: bool = False
    #: From a state whose only fault is its checksum: entries read anyway, not trusted
    #: alone (merged with the other sources, their expiries capped at now + lifetime).
    salvaged: dict[int, int] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        return self.present and self.damage is None


def scan_state(journal: Journal) -> StateScan:
    scan = StateScan()
    if not os.path.lexists(journal.state_path):
        return scan
    scan.present = True
    try:
        scan.covered, scan.entries = journal._read_state()
    except JournalError as exc:
        scan.damage = str(exc)
        try:
            scan.salvaged = journal._read_state(salvage=True)[1]
        except JournalError:
            pass
    return scan


def replay(state: StateScan, files: list[FileScan]) -> dict[int, int]:
    """A trustworthy state, then the journal batches it does not cover, in epoch order.
    Without one, every batch found (stale ones of reused files too) from nothing, in
    epoch order; the caller merges what a damaged state still held."""
    entries = dict(state.entries) if state.trusted else {}
    batches: list[tuple[int, int, int, Batch]] = []
    for index, scan in enumerate(files):
        chosen = scan.current() if state.trusted else scan.batches
        batches += [(batch.tag, index, batch.offset, batch) for batch in chosen]
    covered = state.covered & _TAG_MASK if state.trusted else -1
    for tag, _, _, batch in sorted(batches, key=lambda item: item[:3]):
        if tag <= covered:
            continue
        for code, expiry in _unpack_records(batch.records):
            if expiry < 0:
                entries.pop(code, None)
            else:
                entries[code] = expiry
    return entries


def newer_entries(ours: Mapping[int, int], theirs: Mapping[int, int], now: float) -> tuple[dict[int, int], int]:
    """The one rule for a map someone else wrote (legacy rpc.dracd after a rollback, an
    admin's db5.3_load or makemap, an older copy put back) and for a map read after
    damage, at start-up and while running: every unexpired, valid entry of ``theirs``
    that ``ours`` lacks or holds with an earlier expiry is taken; ``ours`` keeps the rest
    (an acknowledged ADD is never lost; expiry removes what the other writer deleted).
    Also how many of those taken ``ours`` lacked."""
    taken = {code: expiry for code, expiry in theirs.items()
             if expiry > now and ours.get(code, -1) < expiry and valid_code(code)}
    return taken, sum(1 for code in taken if code not in ours)


def merge_foreign(ours: Mapping[int, int], theirs: Mapping[int, int], now: float) -> tuple[dict[int, int], int, int]:
    """``ours`` with newer_entries() of ``theirs``; also how many of those ``ours`` lacked
    and how many it had with an earlier expiry."""
    taken, lacking = newer_entries(ours, theirs, now)
    return {**ours, **taken}, lacking, len(taken) - lacking


def set_aside(path: Path, stamp: str) -> Path | None:
    """Rename a damaged file out of dracd's way, keeping it for the admin."""
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        os.rename(path, aside)
    except OSError as exc:
        log.error("%s: cannot move it aside to %s: %s", path, aside.name, exc.strerror)
        return None
    return aside


def keep_aside(path: Path, stamp: str) -> Path | None:
    """A hard link to a damaged map, which dracd's next write replaces by rename."""
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        os.link(path, aside, follow_symlinks=False)
    except OSError as exc:
        log.error("%s: cannot keep a copy as %s: %s", path, aside.name, exc.strerror)
        return None
    return aside


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def recover(journal: Journal, writer: MapWriter, lifetime: int,
            clock: Callable[[], float] = time.time) -> dict[int, int] | None:
    """The table to restart with after a crash, or None if dracd stopped cleanly (no
    state nor journal: the map alone holds everything). Damaged files are moved aside
    and every step is logged. ``lifetime``: the cap on what a damaged state's entries
    may keep (now + lifetime)."""
    if not journal.exists():
        return None
    map_path = journal.map_path
    stamp = _stamp()
    state = scan_state(journal)
    files = [scan_journal(path) for path in journal.paths if os.path.lexists(path)]
    damaged = [scan for scan in files if scan.damage]
    problems: list[str] = []
    if state.damage is not None:
        problems.append(f"{journal.state_path.name}: {state.damage}")
    elif not state.present:
        problems.append(f"{journal.state_path.name}: missing")
    missing = [path.name for path in journal.paths if not os.path.lexists(path)]
    problems += [f"{name}: missing" for name in missing]
    for scan in damaged:
        read = len(scan.current())
        problems += [f"{scan.path.name}: {what} ({read} valid batches read)" for what in scan.damage]
    entries = replay(state, files)
    invalid = [code for code in entries if not valid_code(code)]
    if invalid:
        # Only a valid code came from an ADD: a CRC says the bytes are as written, not by whom.
        log.warning("%s: ignored %d records that are no relayable entry", journal.state_path.parent, len(invalid))
        for code in invalid:
            del entries[code]
    epochs = [scan.epoch for scan in files if scan.epoch is not None]
    tags = [batch.tag for scan in files for batch in scan.batches]
    headers = [(scan.epoch, index, scan.recorded_map) for index, scan in enumerate(files) if scan.epoch is not None]
    recorded = max(headers, key=lambda head: head[:2])[2] if headers else None
    journal.resume(max([state.covered, *epochs, *tags], default=0), None if problems else recorded)
    for problem in problems:
        log.warning("recovery: %s", problem)
    if state.salvaged:
        cap = int(clock()) + lifetime
        salvaged = {code: min(expiry, cap) for code, expiry in state.salvaged.items()}
        entries, only_there, _ = merge_foreign(entries, salvaged, clock())
        log.warning("recovery: %s: its checksum fails, but its layout holds: %d entries read from it "
                    "(%d not in the journal, expiries capped at now + %d s), merged",
                    journal.state_path.name, len(salvaged), only_there, lifetime)
    # Nothing that may hold acknowledged entries is overwritten before it was read:
    # damaged files go aside now, the intact ones are merged into the table below.
    for path in ([journal.state_path] if state.damage is not None else []) + [scan.path for scan in damaged]:
        aside = set_aside(path, stamp)
        if aside is not None:
            log.warning("recovery: %s moved aside to %s (kept for inspection; dracd no longer reads it)",
                        path.name, aside.name)
    if damaged or state.damage is not None:
        try:
            fsync_dir(map_path.parent)
        except OSError:
            pass
    log.warning("dracd did not stop cleanly: %d entries recovered from its journal; rewriting %s",
                len(entries), map_path)
    return _with_the_map(journal, writer, entries, bool(problems), clock(), stamp)


def _with_the_map(journal: Journal, writer: MapWriter, journaled: dict[int, int], damaged: bool,
                  now: float, stamp: str) -> dict[int, int]:
    """The replay, merged with the map on disk unless that map is the very file dracd
    last put in place and nothing was damaged (then the replay alone, so what dracd
    deleted stays deleted). A map that does not verify is read as far as it can be
    (after a copy is kept aside), and its valid entries are merged too."""
    path = journal.map_path
    if not path.exists():
        if damaged:
            log.warning("recovery: %s is missing; the table is what the journal and state hold", path)
        return journaled
    try:
        theirs = writer.read_codes(verify=True)
    except MapError as exc:
        aside = keep_aside(path, stamp)
        log.warning("%s; taken as torn by the crash: a copy is kept as %s and what can still be read of it is "
                    "merged", exc, aside.name if aside else "(none)")
        try:
            theirs = writer.read_codes()
        except MapError:
            theirs = {}
    mine = not damaged and journal.holds_last_written_map()
    if mine:
        dropped = sum(1 for code, expiry in theirs.items() if expiry > now and code not in journaled)
        if dropped:
            log.info("%s: %d of its unexpired entries were deleted by dracd after its last map write "
                     "(the journal says so); they stay deleted", path, dropped)
        return journaled
    merged, only_theirs, later = merge_foreign(journaled, theirs, now)
    lacking = sum(1 for code, expiry in journaled.items() if expiry > now and code not in theirs)
    newer = sum(1 for code, expiry in journaled.items() if code in theirs and theirs[code] < expiry)
    why = ("the journal or state was damaged" if damaged else
           "changed by another writer since dracd's last write (or set back to another copy)")
    log.warning("%s %s: kept its %d entries (%d not in the journal, %d with a later expiry) and merged %d entries "
                "from the journal (%d it lacked, %d with a later expiry)", path, why, len(theirs), only_theirs,
                later, lacking + newer, lacking, newer)
    return merged


def read_replacement(writer: MapWriter) -> tuple[str, dict[int, int]]:
    """In the map thread, when the map in place is not the file dracd last put there:
    what is there now, described for the log, and its entries."""
    path = writer.path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "deleted", {}
    except OSError as exc:
        return f"unreadable ({exc.strerror})", {}
    written = writer.identity()
    how = ("changed in place" if written is not None and (st.st_dev, st.st_ino) == written[:2]
           else "replaced by another file")
    try:
        entries = writer.read_codes(verify=True)
    except MapError as exc:
        aside = keep_aside(path, _stamp())
        return f"{how}, which dracd cannot read ({exc}; kept as {aside.name if aside else '-'})", {}
    return f"{how} ({st.st_size} bytes, {len(entries)} entries)", entries


class Merging(Protocol):
    """What take_in_replacement() needs of the relay table (relay.table.RelayTable)."""

    clock: Callable[[], float]

    def __len__(self) -> int: ...
    def codes(self) -> Mapping[int, int]: ...
    def set_codes(self, entries: Mapping[int, int]) -> None: ...


def take_in_replacement(table: Merging, path: Path, found: str, entries: Mapping[int, int]) -> None:
    """Merge what read_replacement() found into the running table (the caller then
    writes the whole map), and say so."""
    if not entries and found == "deleted":
        log.warning("%s was deleted by someone else since dracd's last write: writing it again (%d entries)",
                    path, len(table))
        return
    now = table.clock()
    ours = table.codes()
    taken, lacking = newer_entries(ours, entries, now)
    missing = sum(1 for code in ours if code not in entries)
    table.set_codes(taken)
    log.warning("%s was %s since dracd's last write: kept %d of its entries (%d dracd lacked, %d with a later "
                "expiry); writing the whole map again with the %d entries of dracd's own it lacked",
                path, found, len(taken), lacking, len(taken) - lacking, missing)
