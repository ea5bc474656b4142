"""Wall-clock steps: an entry never outlives now + its lifetime (issue 22).

Expiries are wall-clock times (the map holds them, and MTAs and legacy tools
read them so). A step of the wall clock (an admin's ``date -s``, NTP fixing a
clock far off) moves "now" under them: back by four hours, an entry added a
minute earlier would live four hours and ten minutes. The monotonic clock
does not step, so the difference of the two shows a step; on one back,
every entry due later than now + lifetime is pulled in by the step (but not
before now + lifetime: RelayTable.pull_in). A step forward only makes
entries end early (they expire at once if their time has passed): never late.

Across a restart there is no monotonic clock to compare with; the newest
modification time of the map and the journal files (set by the kernel at
dracd's last write) bounds the step instead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .table import RelayTable

log = logging.getLogger(__name__)

#: A change of (wall - monotonic) bigger than this is a step (NTP slews far less).
STEP = 1.0


class ClockSteps:
    """Watches the table's clock against the monotonic clock, on the expiry tick."""

    def __init__(self, table: RelayTable, lifetime: Callable[[], int]) -> None:
        self.table = table
        self.lifetime = lifetime
        self._offset = table.clock() - time.monotonic()

    def check(self) -> int:
        """Pull entries in after a backward step; how many moved (they must be written)."""
        offset = self.table.clock() - time.monotonic()
        step, self._offset = offset - self._offset, offset
        if step > STEP:
            log.warning("the wall clock stepped forward by %.0f s: entries end that much earlier", step)
            return 0
        if step >= -STEP:
            return 0
        return pull_in(self.table, -step, self.lifetime(), "stepped back")


def pull_in(table: RelayTable, step: float, lifetime: int, what: str) -> int:
    latest = int(table.clock()) + lifetime
    moved = table.pull_in(latest, int(step + 0.5))
    log.warning("the wall clock %s by %.0f s: %d entries due later than now + lifetime (%d s) moved in by "
                "as much (never before now + lifetime)", what, step, moved, lifetime)
    return moved


def last_written(paths: Iterable[Path]) -> float | None:
    """The newest modification time among ``paths`` (dracd's last write), None if none exist."""
    times = []
    for path in paths:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            pass
    return max(times, default=None)


def after_restart(table: RelayTable, written: float | None, lifetime: int) -> int:
    """At start: if the files were written "in the future", the clock stepped back while
    dracd was down by at least that much; pull the reloaded entries in by it."""
    if written is None:
        return 0
    step = written - table.clock()
    if step <= STEP:
        return 0
    return pull_in(table, step, lifetime, "is behind dracd's last write")
