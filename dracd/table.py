"""The relay table: address -> expiry time, with no I/O.

Expiry uses a heap of (expiry, address) with lazy deletion, so expiring
costs O(expired * log n), not a scan of the table. The clock is injected so
tests advance time instead of sleeping.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator

from .keys import IPAddress

Clock = Callable[[], float]


class RelayTable:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._expiry: dict[IPAddress, int] = {}
        self._heap: list[tuple[int, int, IPAddress]] = []
        self._seq = 0
        #: Bumped on every change, so writers can tell which state they saved.
        self.version = 0
        #: What changed since the last take_changes(): address -> expiry, None if gone.
        self._changes: dict[IPAddress, int | None] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, address: object) -> bool:
        return address in self._expiry

    def __iter__(self) -> Iterator[IPAddress]:
        return iter(self._expiry)

    def get(self, address: IPAddress) -> int | None:
        return self._expiry.get(address)

    def add(self, address: IPAddress, lifetime: int) -> int:
        """Authorize ``address`` for ``lifetime`` seconds from now; return its expiry."""
        expiry = int(self.clock()) + lifetime
        self.set(address, expiry)
        return expiry

    def set(self, address: IPAddress, expiry: int) -> None:
        if self._expiry.get(address) == expiry:
            return
        self._expiry[address] = expiry
        self._changes[address] = expiry
        # The sequence number breaks ties so addresses of both families never get compared.
        self._seq += 1
        heapq.heappush(self._heap, (expiry, self._seq, address))
        self.version += 1
        if len(self._heap) > 2 * len(self._expiry) + 1024:
            self._compact()

    def remove(self, address: IPAddress) -> bool:
        if self._expiry.pop(address, None) is None:
            return False
        self._changes[address] = None
        self.version += 1
        return True

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        removed = len(self._expiry)
        if removed:
            self._changes.update(dict.fromkeys(self._expiry))
            self._expiry.clear()
            self._heap.clear()
            self.version += 1
        return removed

    def next_expiry(self) -> int | None:
        while self._heap:
            expiry, _, address = self._heap[0]
            if self._expiry.get(address) == expiry:
                return expiry
            heapq.heappop(self._heap)
        return None

    def expire(self, now: float | None = None, limit: int | None = None) -> list[IPAddress]:
        """Remove and return the entries whose expiry is at or before ``now``
        (at most ``limit`` of them, so a caller can spread the work)."""
        now = self.clock() if now is None else now
        gone: list[IPAddress] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(gone) < limit):
            expiry, _, address = heapq.heappop(self._heap)
            if self._expiry.get(address) == expiry:
                del self._expiry[address]
                self._changes[address] = None
                gone.append(address)
        if gone:
            self.version += 1
        return gone

    def snapshot(self) -> dict[IPAddress, int]:
        """The whole table; also resets the change log, as a full write covers it."""
        self._changes = {}
        return dict(self._expiry)

    def take_changes(self) -> dict[IPAddress, int | None]:
        """What changed since the last snapshot or take_changes()."""
        changes, self._changes = self._changes, {}
        return changes

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if self._expiry.get(item[2]) == item[0]]
        heapq.heapify(self._heap)
