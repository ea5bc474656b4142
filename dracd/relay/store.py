"""The relay store: the one door to the table for every program.

A program checks a caller, then asks the store to put, remove or clear
addresses, and hears back once the change is durable (in the journal) and
visible (in the map): the store writes the table, the committer publishes
it. ``Store`` is the table of this host; ``SharedStore`` writes to the
table shared through Redis first (relay/shared.py) and then here, so that
a change Redis did not take is never acknowledged.

``put`` answers through a callback, with no task and no future, because an
MRA's ADD is the hot path; ``add`` is the same as a coroutine for the
programs that await (admin, the Dovecot policy endpoint).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from ..config import RedisConfig
from ..keys import Entry
from ..publish.commit import Committer
from .shared import SharedTable
from .table import RelayTable

#: ``done(expiry, error)``: the change is on disk and in the map (error None), or it is not.
Done = Callable[[int, Exception | None], None]


class NotShared(Exception):
    """Redis did not take a change (SharedTable has logged why)."""


class Store:
    """The table on this host, published to the map by the committer."""

    def __init__(self, table: RelayTable, committer: Committer) -> None:
        self.table = table
        self.committer = committer

    def put(self, address: Entry, lifetime: int, done: Done) -> None:
        """Put ``address`` in the table for ``lifetime`` seconds; ``done`` once published."""
        expiry = self.table.add(address, lifetime)
        self.committer.on_written(functools.partial(done, expiry))

    async def add(self, address: Entry, lifetime: int) -> int:
        """``put`` as a coroutine: the expiry once published; raises what stopped it
        (MapError: not written; NotShared: Redis did not take it)."""
        answer: asyncio.Future[tuple[int, Exception | None]] = asyncio.get_running_loop().create_future()

        def done(expiry: int, error: Exception | None) -> None:
            if not answer.done():
                answer.set_result((expiry, error))

        self.put(address, lifetime, done)
        expiry, error = await answer
        if error is not None:
            raise error
        return expiry

    async def remove(self, address: Entry) -> bool:
        """Remove ``address``: whether it was there. Raises NotShared if Redis would not
        (then nothing changed here either). Published at the next ``written``."""
        return self.table.remove(address)

    async def clear(self) -> int:
        """Remove every entry: how many. Raises NotShared as ``remove`` does."""
        return self.table.clear()

    async def written(self) -> None:
        """Return once the map holds the table as it is now; raise MapError if it cannot."""
        await self.committer.commit()

    async def start(self) -> None:
        """Serve from here on (the committer already runs)."""

    async def close(self) -> None:
        """No more changes (the committer is closed after this)."""


class SharedStore(Store):
    """The table shared with the other dracd of a site through Redis."""

    def __init__(self, table: RelayTable, committer: Committer, config: RedisConfig) -> None:
        super().__init__(table, committer)
        # Changes that arrive from Redis are published like local ones.
        self.shared = SharedTable(config, table, committer.request)
        self._puts: set[asyncio.Task[None]] = set()

    def put(self, address: Entry, lifetime: int, done: Done) -> None:
        # Redis is a network round trip away: this one change needs a task.
        task = asyncio.get_running_loop().create_task(self._put(address, lifetime, done))
        self._puts.add(task)
        task.add_done_callback(self._puts.discard)

    async def _put(self, address: Entry, lifetime: int, done: Done) -> None:
        expiry = int(self.table.clock()) + lifetime
        if not await self.shared.put(address, expiry):
            done(expiry, NotShared(f"Redis {self.shared.where} did not take it"))
            return
        self.table.set(address, expiry)
        self.committer.on_written(functools.partial(done, expiry))

    async def remove(self, address: Entry) -> bool:
        removed = await self.shared.delete(address)
        if removed is None:
            raise NotShared(f"Redis {self.shared.where} did not take it")
        return self.table.remove(address) or removed > 0

    async def clear(self) -> int:
        removed = await self.shared.flush()
        if removed is None:
            raise NotShared(f"Redis {self.shared.where} did not take it")
        return max(self.table.clear(), removed)

    async def start(self) -> None:
        await self.shared.start()
        # The shared entries reach the map before any MTA is told we are ready.
        await self.committer.commit()

    async def close(self) -> None:
        for task in self._puts:
            task.cancel()
        await self.shared.close()


def open_store(table: RelayTable, committer: Committer, redis: RedisConfig | None) -> Store:
    return Store(table, committer) if redis is None else SharedStore(table, committer, redis)
