"""The relay table: address (or network) -> expiry time, with no I/O.

Expiry uses a heap of (expiry, address) with lazy deletion, so expiring
costs O(expired * log n), not a scan of the table. The clock is injected so
tests advance time instead of sleeping.
"""

from __future__ import annotations

import heapq
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from .keys import Entry, IPAddress

Clock = Callable[[], float]


class RelayTable:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._expiry: dict[Entry, int] = {}
        self._heap: list[tuple[int, int, Entry]] = []
        self._seq = 0
        #: Bumped on every change, so writers can tell which state they saved.
        self.version = 0
        #: What changed since the last take_changes(): address -> expiry, None if gone.
        self._changes: dict[Entry, int | None] = {}
        #: How many network entries of each (version, prefix length): what lookup() must try.
        self._prefixes: Counter[tuple[int, int]] = Counter()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, address: object) -> bool:
        return address in self._expiry

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._expiry)

    def get(self, address: Entry) -> int | None:
        return self._expiry.get(address)

    def lookup(self, address: IPAddress) -> int | None:
        """The latest expiry among ``address`` and the network entries that contain it."""
        best = self._expiry.get(address)
        for version, prefixlen in self._prefixes:
            if version == address.version:
                network = ipaddress.ip_network((address, prefixlen), strict=False)
                expiry = self._expiry.get(network)
                if expiry is not None and (best is None or expiry > best):
                    best = expiry
        return best

    def load(self, entries: Mapping[Entry, int]) -> None:
        """Start from ``entries`` (the map, read at start): one heapify instead of a push
        each, and no change log, as the map already holds them."""
        if self._expiry:
            raise ValueError("load() fills an empty table")
        self._expiry = dict(entries)
        self._heap = [(expiry, seq, entry) for seq, (entry, expiry) in enumerate(self._expiry.items())]
        heapq.heapify(self._heap)
        self._seq = len(self._heap)
        self._prefixes.update((e.version, e.prefixlen) for e in self._expiry if not isinstance(e, IPAddress))
        self.version += 1

    def add(self, address: Entry, lifetime: int) -> int:
        """Authorize ``address`` for ``lifetime`` seconds from now; return its expiry."""
        expiry = int(self.clock()) + lifetime
        self.set(address, expiry)
        return expiry

    def set(self, address: Entry, expiry: int) -> None:
        previous = self._expiry.get(address)
        if previous == expiry:
            return
        if previous is None and not isinstance(address, IPAddress):
            self._prefixes[address.version, address.prefixlen] += 1
        self._expiry[address] = expiry
        self._changes[address] = expiry
        # The sequence number breaks ties so addresses of both families never get compared.
        self._seq += 1
        heapq.heappush(self._heap, (expiry, self._seq, address))
        self.version += 1
        if len(self._heap) > 2 * len(self._expiry) + 1024:
            self._compact()

    def remove(self, address: Entry) -> bool:
        if self._expiry.pop(address, None) is None:
            return False
        self._forget_prefix(address)
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
            self._prefixes.clear()
            self.version += 1
        return removed

    def next_expiry(self) -> int | None:
        while self._heap:
            expiry, _, address = self._heap[0]
            if self._expiry.get(address) == expiry:
                return expiry
            heapq.heappop(self._heap)
        return None

    def expire(self, now: float | None = None, limit: int | None = None) -> list[Entry]:
        """Remove and return the entries whose expiry is at or before ``now``
        (at most ``limit`` of them, so a caller can spread the work)."""
        now = self.clock() if now is None else now
        gone: list[Entry] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(gone) < limit):
            expiry, _, address = heapq.heappop(self._heap)
            if self._expiry.get(address) == expiry:
                del self._expiry[address]
                self._forget_prefix(address)
                self._changes[address] = None
                gone.append(address)
        if gone:
            self.version += 1
        return gone

    def snapshot(self) -> dict[Entry, int]:
        """The whole table; also resets the change log, as a full write covers it."""
        self._changes = {}
        return dict(self._expiry)

    def take_changes(self) -> dict[Entry, int | None]:
        """What changed since the last snapshot or take_changes()."""
        changes, self._changes = self._changes, {}
        return changes

    def _forget_prefix(self, entry: Entry) -> None:
        if not isinstance(entry, IPAddress):
            key = entry.version, entry.prefixlen
            self._prefixes[key] -= 1
            if not self._prefixes[key]:
                del self._prefixes[key]

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if self._expiry.get(item[2]) == item[0]]
        heapq.heapify(self._heap)
