"""Group commit: many ADDs, one journal flush and one map update.

An ADD changes the table, then waits for a commit that includes its
change. Only one commit runs at a time; every change that arrives while it
runs is served by the next one. A commit carries the changes since the
previous one: they are appended to the journal (dracd.publish.journal) and flushed
while the map thread brings the map up to date, unflushed (a commit of a few
changes the spare can take in place does both on the loop thread; a lone ADD,
one login at a time, is committed so in the loop iteration after the one that
read it, with no task step and no wait for a burst); the ADDs are
answered once both are done, and the journal notes which map file is now
dracd's (unflushed), so a start after a crash can tell a map someone else
changed since from one the crash set back. The whole table is written instead (the map
in the map thread, and a new journal generation) for the first write,
after a failure, when someone else replaced the map, or when the changes
outnumber the entries. A failed commit fails the waiters it was meant to
serve and is retried with a back-off, so the map catches up by itself once
the disk is writable again. The journal is compacted in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from ..metrics import Metrics
from . import recovery
from .journal import Journal
from .maps import MapError, MapWriter, StaleMap

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
#: A write waits while each GATHER_ROUND loop iterations bring changes, for at most GATHER_MAX.
GATHER_ROUND = 3
GATHER_MAX = 0.002
FULL_WRITE_CHANGES = 1024
#: A commit of at most this many changes flushes the journal on the loop thread (see _journaled).
INLINE_CHANGES = 256
#: A commit of at most this many changes updates the map on the loop thread too, when the
#: spare can take them in place (see _commit_lone and _journaled).
INLINE_MAP_CHANGES = 4
#: How long the loop blocks for a small map update before it awaits it instead (see _journaled).
MAP_WAIT = 0.002


@dataclass(frozen=True)
class Job:
    """One map write: the whole table (``entries``), or the changes since the last write
    (``changes``: entry code -> expiry, None where the entry is gone)."""

    entries: dict[int, int] | None = None
    changes: dict[int, int | None] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """For metrics and logs: "full" or "incremental"."""
        return "full" if self.entries is not None else "incremental"


class Changes(Protocol):
    """What the committer reads of the relay table (relay.table.RelayTable): entry codes,
    the changes since the last take, and a version that every change bumps."""

    version: int

    def __len__(self) -> int: ...
    def snapshot(self) -> dict[int, int]: ...
    def codes(self) -> Mapping[int, int]: ...
    def copy_codes(self) -> dict[int, int]: ...
    def take_changes(self) -> dict[int, int | None]: ...
    def pending_changes(self) -> int: ...
    # For a map someone else replaced (recovery.take_in_replacement): its newer entries go in.
    clock: Callable[[], float]
    def set_codes(self, entries: Mapping[int, int]) -> None: ...


class Committer:
    def __init__(self, table: Changes, writer: MapWriter, journal: Journal,
                 metrics: Metrics | None = None) -> None:
        self.table = table
        self.writer = writer
        self.journal = journal
        self.metrics = metrics if metrics is not None else Metrics()
        #: monotonic time of the oldest table change not yet on disk (for map_lag).
        self._pending_since: float | None = None
        self.written_version = -1
        self.last_write: float | None = None
        self.last_duration = 0.0
        #: (table version, callback): who waits for which write.
        self._waiters: list[tuple[int, Callable[[MapError | None], None]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dracd-map")
        # Big journal appends in a thread of their own; a compaction's state in another,
        # so that commits go on while it is written.
        self._journal_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dracd-journal")
        self._state_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dracd-state")
        self._compaction: asyncio.Task[None] | None = None
        #: A compaction failed: only a full write (a new journal generation) is safe now.
        self._full_needed = False
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = RETRY_FIRST
        self._failing = False
        #: A _kick is scheduled; the commit task is between waking and its commit's end.
        self._kicked = False
        self._busy = False
        #: Changes taken from the table that the map did not take in place yet (_commit_lone).
        self._carry: dict[int, int | None] = {}
        #: How many changes the last commit carried (a big one: a burst, gather the next).
        self._last_changes = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dracd-commit")

    async def commit(self) -> None:
        """Return once the map on disk holds the table as it is now; raise MapError if it cannot."""
        if self.written_version >= self.table.version:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_written(functools.partial(_settle_future, future))
        await future

    def on_written(self, callback: Callable[[MapError | None], None]) -> None:
        """Call ``callback(None)`` once the map on disk holds the table as it is now, or
        ``callback(error)`` if that write failed; at once if it already does. For request
        paths that answer from a callback instead of a task per request."""
        target = self.table.version
        if self.written_version >= target:
            callback(None)
            return
        self._changed()
        self._waiters.append((target, callback))
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kick)

    def request(self) -> None:
        """Ask for a write without waiting for it (expiry, reloads)."""
        self._changed()
        self._wake.set()

    def _changed(self) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()

    def write_now(self, full: bool = True, final: bool = False) -> None:
        """Synchronous write of the current table, for start-up and shutdown: the whole
        map, or (``full=False``) the changes if the map is one this writer wrote. Starts
        the journal if it is not running; ``final``: the map alone, then the journal is
        removed, as the map holds everything (a clean stop)."""
        updatable = self.writer.can_update()
        if self._replaced(updatable):  # say a stop just after someone replaced the map: merge it first
            recovery.take_in_replacement(self.table, self.writer.path, *recovery.read_replacement(self.writer))
        version = self.table.version
        started, since, self._pending_since = time.monotonic(), self._pending_since, None
        job = self._job(full or not updatable)
        try:
            if job.entries is not None and final:
                self.writer.write_codes(job.entries)
            elif job.entries is not None or job.changes:
                self._write(job)
            if not final:
                if not self.journal.active:
                    self.journal.start(self.table.codes())
                self.journal.note_map(self.writer.identity())
        except Exception:
            self._failed(since)
            raise
        if final:
            self.journal.close(clean=True)
        self._done(version, started, job.kind, since)

    def _job(self, full: bool) -> Job:
        """What to write now: the whole table (``full``: asked for, or a map this writer
        cannot update; nothing written yet; a change log as big as the table, such as a
        flush), else the changes since the last write. Taken on the loop thread (the table is
        not thread-safe), as codes: turning 100k expired entries into addresses here
        would stall requests."""
        pending = self._pending()
        if (full or self._full_needed or self.written_version < 0
                or pending > max(FULL_WRITE_CHANGES, len(self.table))):
            self._carry = {}
            return Job(entries=self.table.snapshot())
        return Job(changes=self._take())

    def _pending(self) -> int:
        """How many changes the map lacks: the table's since the last take, and the carried."""
        return self.table.pending_changes() + len(self._carry)

    def _take(self) -> dict[int, int | None]:
        """The table's changes since the last take, after any the map has not taken yet."""
        changes = self.table.take_changes()
        if self._carry:
            changes, self._carry = {**self._carry, **changes}, {}
        return changes

    def _write(self, job: Job) -> None:
        """Write outside the journal: durable by itself (start-up, full writes)."""
        if job.entries is None:
            self.writer.update_codes(job.changes)
        else:
            # A new generation first: its state covers every journal there was.
            self.journal.start(job.entries)
            self._full_needed = False
            self.writer.write_codes(job.entries)
        self.journal.note_map(self.writer.identity())

    def adopted(self) -> None:
        """The map already holds the table as it is now (it was just loaded from it)."""
        self.written_version = self.table.version

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._compacted()
        self.journal.close()
        waiters, self._waiters = self._waiters, []
        for _, callback in waiters:
            callback(MapError("server is shutting down"))
        for executor in (self._executor, self._journal_executor, self._state_executor):
            executor.shutdown(wait=True)

    def _done(self, version: int, started: float, kind: str, since: float | None) -> None:
        now = time.monotonic()
        self.written_version = version
        self.last_write = time.time()
        self.last_duration = now - started
        self.metrics.map_writes.inc(kind)
        self.metrics.map_write.observe(self.last_duration)
        if since is not None:
            self.metrics.map_lag.value = max(0, round((now - since) * 1e6))

    def _failed(self, since: float | None) -> None:
        self.metrics.map_writes.inc("failed")
        self._still_pending(since)

    def _still_pending(self, since: float | None) -> None:
        """A write did not happen: its changes are still pending since ``since``."""
        if since is not None and (self._pending_since is None or since < self._pending_since):
            self._pending_since = since

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # write_now() wrote the whole map at start: from here on, changes suffice
        # unless the writer says otherwise (can_update) or a write failed (_full_needed).
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            try:
                await self._commit_once(loop)
            finally:
                self._busy = False

    async def _commit_once(self, loop: asyncio.AbstractEventLoop) -> None:
        await self._gather()
        # One look at the map per commit: it decides both the merge and a full write.
        updatable = self.writer.can_update()
        replaced = self._replaced(updatable)
        if replaced:
            await self._take_in_replacement()
        version = self.table.version
        if version <= self.written_version and not replaced:
            self._pending_since = None  # a request with nothing new to write
            self._settle(version, None)
            return
        started, since, self._pending_since = time.monotonic(), self._pending_since, None
        job = self._job(not updatable)
        try:
            if job.entries is not None:
                await self._compacted()  # a new generation must not race the state being written
                await loop.run_in_executor(self._executor, self._write, job)
            else:
                await self._journaled(job.changes)
        except StaleMap as exc:
            log.warning("%s; writing the whole map", exc)
            self._still_pending(since)
            self._full_needed = True
            self._wake.set()
            return
        except MapError as exc:
            self._fail(version, since, exc)
            return
        self._succeed(version, started, job.kind, since)

    def _succeed(self, version: int, started: float, kind: str, since: float | None) -> None:
        self._done(version, started, kind, since)
        if self._failing:
            log.warning("map %s is writable again", self.writer.path)
            self._failing, self._retry_delay = False, RETRY_FIRST
        self._settle(version, None)
        if self._waiters or self.table.version > self.written_version:
            self._wake.set()

    def _fail(self, version: int, since: float | None, exc: MapError) -> None:
        """A commit failed: its waiters get the error, and a full write is retried later."""
        self._failed(since)
        self._full_needed = True
        self._settle(version, exc)
        self._schedule_retry(exc)

    def _kick(self) -> None:
        """Serve the changes that came in since the last loop iteration: a lone ADD (one
        login at a time) on the spot, here, if the spare takes it in place; anything else
        by the commit task, which gathers a burst first."""
        self._kicked = False
        if not self._commit_lone():
            self._wake.set()

    def _commit_lone(self) -> bool:
        """Commit a few changes on the loop thread, with no task step and no gathering
        (issue 21: at one login at a time these cost more than the commit itself). Only
        while nothing else is going on: no commit running, the last one small too (else a
        burst is on its way and the task gathers it), no failure or full write pending,
        the map still ours. False: nothing was done, the task commits."""
        pending = self._pending()
        if (self._busy or self._failing or self._full_needed or self.written_version < 0
                or not 0 < pending <= INLINE_MAP_CHANGES or self._last_changes > INLINE_MAP_CHANGES
                or not self.journal.active):
            return False
        version = self.table.version
        started, since, self._pending_since = time.monotonic(), self._pending_since, None
        changes = self._take()
        try:
            # update_in_place() looks at the map first: one replaced meanwhile is left to the task.
            placed = self._commit_in_place(changes)
        except MapError as exc:
            self._fail(version, since, exc)
            return True
        if not placed:
            self._carry = changes  # the task writes them, by a copy of the map (or merges)
            self._still_pending(since)
            return False
        self._journal_written()
        self._succeed(version, started, "incremental", since)
        return True

    def check_map(self) -> None:
        """A cheap look (one stat) at whether the map in place is still the file this
        writer last put there; if not, the commit task merges it and writes the map
        again (dracd.publish.recovery). Called on every expiry tick."""
        if self._task is not None and self._replaced(self.writer.can_update()):
            self._changed()
            self._wake.set()

    def _replaced(self, updatable: bool) -> bool:
        """The map is not the one this writer last put in place (``updatable``: can_update())."""
        return not updatable and self.writer.identity() is not None

    async def _take_in_replacement(self) -> None:
        """Someone else replaced, changed or deleted the map: keep its valid entries (in
        the map thread, so no write of ours runs meanwhile), then a full write follows."""
        loop = asyncio.get_running_loop()
        found, entries = await loop.run_in_executor(self._executor, recovery.read_replacement, self.writer)
        recovery.take_in_replacement(self.table, self.writer.path, found, entries)

    async def _journaled(self, changes: dict[int, int | None]) -> None:
        """Flush the changes to the journal while the map takes them."""
        journal = self.journal
        self._last_changes = len(changes)
        if len(changes) <= INLINE_MAP_CHANGES and self._commit_in_place(changes):
            self._journal_written()
            return
        if len(changes) <= INLINE_CHANGES:
            # The map thread updates the map while this thread waits for the journal's
            # flush: blocking the loop for ~0.2 ms costs less than waking it from two
            # threads (measured: 0.38 ms a commit, against 0.47 ms both ways round).
            # Should the update be a copy after all (an MTA holds the spare), the loop
            # stops waiting for it after MAP_WAIT and awaits it instead.
            update = self._executor.submit(self.writer.update_codes, changes, False)
            try:
                journal.commit(changes)
            finally:
                try:
                    update.result(MAP_WAIT)
                except concurrent.futures.TimeoutError:
                    await asyncio.wrap_future(update)
        else:
            loop = asyncio.get_running_loop()
            synced = loop.run_in_executor(self._journal_executor, journal.commit, changes)
            try:
                await loop.run_in_executor(self._executor, self.writer.update_codes, changes, False)
            finally:
                await asyncio.wait([synced])
            synced.result()
        # Which map is dracd's (not flushed: see Journal.note_map).
        journal.note_map(self.writer.identity())
        self._journal_written()

    def _commit_in_place(self, changes: dict[int, int | None]) -> bool:
        """The spare takes ``changes`` in place on this thread, then the journal flushes them
        with its note of the map now in place; False, nothing done, if the spare cannot."""
        if not self.writer.update_in_place(changes):
            return False
        self._last_changes = len(changes)
        self.journal.commit(changes, self.writer.identity())
        return True

    def _journal_written(self) -> None:
        if self._compaction is None and self.journal.wants_compaction():
            self._compact()

    def _compact(self) -> None:
        """Start a new journal file and write the table as the state that covers the old
        one, in the background. The switch happens now, so later batches go to the new file."""
        journal, loop = self.journal, asyncio.get_running_loop()
        snapshot = self.table.copy_codes()
        try:
            covered = journal.switch()
        except MapError as exc:
            log.error("journal compaction failed: %s", exc)
            return

        async def compact() -> None:
            try:
                await loop.run_in_executor(self._state_executor, journal.write_state, snapshot, covered)
            except MapError as exc:
                log.error("journal compaction failed: %s; writing the whole map and journal afresh", exc)
                self._full_needed = True
                self._wake.set()
            finally:
                self._compaction = None

        self._compaction = loop.create_task(compact(), name="dracd-compaction")

    async def _compacted(self) -> None:
        if self._compaction is not None:
            await asyncio.wait([self._compaction])

    async def _gather(self) -> None:
        """Let ADDs that are on their way reach the table first, so one write
        serves the whole burst: while loop iterations keep bringing changes
        (asyncio reads one datagram per socket per iteration, and a call takes
        a few iterations to reach the table), yield again, up to GATHER_MAX."""
        deadline = time.monotonic() + GATHER_MAX
        while time.monotonic() < deadline:
            before = self.table.version
            for _ in range(GATHER_ROUND):
                await asyncio.sleep(0)
            if self.table.version == before:
                return

    def _settle(self, version: int, error: MapError | None) -> None:
        keep: list[tuple[int, Callable[[MapError | None], None]]] = []
        due: list[tuple[int, Callable[[MapError | None], None]]] = []
        for waiter in self._waiters:
            (keep if waiter[0] > version else due).append(waiter)
        self._waiters = keep
        for _, callback in due:
            try:
                callback(error)
            except Exception:
                log.exception("a commit waiter failed")

    def _schedule_retry(self, exc: MapError) -> None:
        if not self._failing:
            log.error("%s; answering ADD_SYSERR until it can be written", exc)
        self._failing = True
        asyncio.get_running_loop().call_later(self._retry_delay, self._wake.set)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)


def _settle_future(future: asyncio.Future[None], error: MapError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
