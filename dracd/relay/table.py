"""The relay table: address (or network) -> expiry time, with no I/O.

Compact, so a million entries fit in well under 150 MB: an entry is held as
an int code (keys.entry_code), expiry times are shared int objects, and
expiry is a timer wheel, one list of codes per second, instead of a heap of
tuples. Expiring costs O(expired); a refresh leaves its old slot behind,
skipped when that second comes, and the wheel is rebuilt should such
leftovers outnumber the live entries. The clock is injected so tests
advance time instead of sleeping.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from ..keys import Entry, IPAddress, code_entry, code_network, covering_code, entry_code

Clock = Callable[[], float]


class RelayTable:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._expiry: dict[int, int] = {}
        #: second -> the codes due then (and leftovers of refreshed or removed ones).
        self._wheel: dict[int, list[int]] = {}
        #: The wheel's seconds, as a heap; and how many live codes each one has.
        self._seconds: list[int] = []
        self._live: dict[int, int] = {}
        self._times: dict[int, int] = {}
        self._slots = 0
        #: Bumped on every change, so writers can tell which state they saved.
        self.version = 0
        #: What changed since the last take_changes(): code -> expiry, None if gone.
        self._changes: dict[int, int | None] = {}
        #: How many network entries of each (version, prefix length): what lookup() must try.
        self._prefixes: Counter[tuple[int, int]] = Counter()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, entry: object) -> bool:
        return isinstance(entry, Entry) and entry_code(entry) in self._expiry

    def __iter__(self) -> Iterator[Entry]:
        return map(code_entry, list(self._expiry))

    def get(self, entry: Entry) -> int | None:
        return self._expiry.get(entry_code(entry))

    def lookup(self, address: IPAddress) -> int | None:
        """The latest expiry among ``address`` and the network entries that contain it."""
        best = self._expiry.get(entry_code(address))
        for version, prefixlen in self._prefixes:
            code = covering_code(address, version, prefixlen)
            expiry = None if code is None else self._expiry.get(code)
            if expiry is not None and (best is None or expiry > best):
                best = expiry
        return best

    def load(self, entries: dict[int, int]) -> None:
        """Start from ``entries`` (the map, read at start), with no change log, as the map
        already holds them. The dict becomes the table's own: a million entries are not copied."""
        if self._expiry:
            raise ValueError("load() fills an empty table")
        self._expiry = entries
        for code, expiry in entries.items():
            entries[code] = self._slot(code, expiry)
            network = code_network(code)
            if network is not None:
                self._prefixes[network] += 1
        self.version += 1

    def add(self, entry: Entry, lifetime: int) -> int:
        """Authorize ``entry`` for ``lifetime`` seconds from now; return its expiry."""
        expiry = int(self.clock()) + lifetime
        self.set(entry, expiry)
        return expiry

    def set(self, entry: Entry, expiry: int) -> None:
        code = entry_code(entry)
        if self._expiry.get(code) == expiry:
            return
        self._changes[code] = self._place(code, expiry)
        self.version += 1
        if self._slots > 2 * len(self._expiry) + 1024:
            self._rebuild()

    def remove(self, entry: Entry) -> bool:
        code = entry_code(entry)
        expiry = self._expiry.pop(code, None)
        if expiry is None:
            return False
        self._live[expiry] -= 1
        self._forget_prefix(code)
        self._changes[code] = None
        self.version += 1
        return True

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        removed = len(self._expiry)
        if removed:
            self._changes.update(dict.fromkeys(self._expiry))
            self._reset()
            self.version += 1
        return removed

    def next_expiry(self) -> int | None:
        while self._seconds and not self._live[self._seconds[0]]:
            self._drop_second(heapq.heappop(self._seconds))
        return self._seconds[0] if self._seconds else None

    def expire(self, now: float | None = None, limit: int | None = None) -> list[Entry]:
        """Remove and return the entries whose expiry is at or before ``now``
        (at most ``limit`` of them, so a caller can spread the work)."""
        now = self.clock() if now is None else now
        gone: list[int] = []
        while self._seconds and self._seconds[0] <= now and (limit is None or len(gone) < limit):
            second = self._seconds[0]
            slots = self._wheel[second]
            while slots and (limit is None or len(gone) < limit):
                code = slots.pop()
                self._slots -= 1
                if self._expiry.get(code) == second:
                    del self._expiry[code]
                    self._live[second] -= 1
                    self._forget_prefix(code)
                    self._changes[code] = None
                    gone.append(code)
            if not slots:
                self._drop_second(heapq.heappop(self._seconds))
        if gone:
            self.version += 1
        return [code_entry(code) for code in gone]

    def set_codes(self, entries: Mapping[int, int]) -> None:
        """Set expiries by entry code (entries of a map someone else wrote, merged in)."""
        changed = False
        for code, expiry in entries.items():
            if self._expiry.get(code) != expiry:
                self._changes[code] = self._place(code, expiry)
                changed = True
        if changed:
            self.version += 1
            if self._slots > 2 * len(self._expiry) + 1024:
                self._rebuild()

    def pull_in(self, latest: int, step: int) -> int:
        """After the wall clock stepped back by ``step`` seconds: every entry due after
        ``latest`` (now + lifetime) moves ``step`` seconds earlier, but not before
        ``latest``, so none outlives now + its lifetime. O(distinct seconds due) plus the
        entries moved. Returns how many moved."""
        # Decided before anything moves, so an entry moved to a second that is itself
        # due after ``latest`` is not moved again; and once, though a code refreshed away
        # and back is in its second's list twice.
        targets = {code: max(second - step, latest) for second in self._times if second > latest
                   for code in self._wheel[second] if self._expiry.get(code) == second}
        for code, target in targets.items():
            self._changes[code] = self._place(code, target)
        moved = len(targets)
        if moved:
            self.version += 1
            if self._slots > 2 * len(self._expiry) + 1024:
                self._rebuild()
        return moved

    def snapshot(self) -> dict[int, int]:
        """The whole table (by entry code, see keys.entry_code); also resets the change
        log, as a full write covers it."""
        self._changes = {}
        return self.copy_codes()

    def codes(self) -> Mapping[int, int]:
        """The table itself as entry codes, not a copy: only for code that runs while the
        table cannot change (start-up, shutdown)."""
        return self._expiry

    def copy_codes(self) -> dict[int, int]:
        """The whole table as entry codes, leaving the change log alone."""
        return dict(self._expiry)

    def take_changes(self) -> dict[int, int | None]:
        """What changed since the last snapshot() or take_changes(), by entry code: cheap
        to take on the loop, however many."""
        changes, self._changes = self._changes, {}
        return changes

    def pending_changes(self) -> int:
        return len(self._changes)

    def _place(self, code: int, expiry: int) -> int:
        """Set ``code``'s expiry; return the shared int object now holding it."""
        previous = self._expiry.get(code)
        if previous is None:
            network = code_network(code)
            if network is not None:
                self._prefixes[network] += 1
        else:
            self._live[previous] -= 1
        expiry = self._expiry[code] = self._slot(code, expiry)
        return expiry

    def _slot(self, code: int, expiry: int) -> int:
        """Put ``code`` in the wheel at ``expiry``; return that second's shared int object."""
        slots = self._wheel.get(expiry)
        if slots is None:
            slots = self._wheel[expiry] = []
            self._live[expiry] = 0
            self._times[expiry] = expiry
            heapq.heappush(self._seconds, expiry)
        else:
            expiry = self._times[expiry]  # one int object per second, not per entry
        slots.append(code)
        self._slots += 1
        self._live[expiry] += 1
        return expiry

    def _drop_second(self, second: int) -> None:
        self._slots -= len(self._wheel.pop(second))
        del self._live[second], self._times[second]

    def _forget_prefix(self, code: int) -> None:
        network = code_network(code)
        if network is not None:
            self._prefixes[network] -= 1
            if not self._prefixes[network]:
                del self._prefixes[network]

    def _rebuild(self) -> None:
        entries = list(self._expiry.items())
        self._reset()
        for code, expiry in entries:
            self._place(code, expiry)

    def _reset(self) -> None:
        """Empty every structure (the change log is the caller's business)."""
        self._expiry.clear()
        self._wheel.clear()
        self._seconds.clear()
        self._live.clear()
        self._times.clear()
        self._prefixes.clear()
        self._slots = 0
