"""Follow log files like ``tail -F``, by polling: rotation-proof, complete lines only.

Polling (every 0.25 s by default) needs no inotify and behaves the same on
every filesystem; a mail log grows by a few lines a second. One
:meth:`FileFollower.poll` does all the work synchronously (so tests drive it
step by step), and :meth:`FileFollower.run` repeats it on an asyncio loop.

* Start at the end of an existing file (``from_start`` reads it whole); a
  file that does not exist yet is read from its first byte once it appears.
* Rename rotation (logrotate's default): when the path names another file,
  the old one is read to its end, then the new one from its start. The old
  one stays open for ``grace`` seconds for a writer that has not reopened
  its log yet (rsyslog until its HUP).
* copytruncate: a file shorter than the offset reached was truncated; it is
  read again from its start.
* Only complete lines are emitted. A fragment is never taken for a line: when
  starting at the end of a file whose last line is unfinished, and after an
  over-long line, everything up to the next newline is skipped. Otherwise a
  log writer cut short could hand us the tail of someone else's text.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Longer lines are dropped (rsyslog's own default limit is 8 KiB).
MAX_LINE = 64 * 1024
#: Bytes read per file per poll, so one huge burst cannot stall the event loop.
READ_LIMIT = 1 << 20
CHUNK = 64 * 1024


class _OpenFile:
    """One open file: its identity, how far it was read, and its unfinished last line."""

    def __init__(self, fd: int, offset: int, skipping: bool) -> None:
        info = os.fstat(fd)
        self.fd = fd
        self.identity = (info.st_dev, info.st_ino)
        self.offset = offset
        self.skipping = skipping
        self.buffer = bytearray()

    def truncated(self) -> bool:
        return os.fstat(self.fd).st_size < self.offset

    def restart(self) -> None:
        self.offset = 0
        self.buffer.clear()
        self.skipping = False

    def read(self, limit: int) -> tuple[list[bytes], bool]:
        """Complete lines from the offset on, at most ``limit`` bytes; True if more is waiting."""
        lines: list[bytes] = []
        taken = 0
        while taken < limit:
            data = os.pread(self.fd, min(CHUNK, limit - taken), self.offset)
            if not data:
                return lines, False
            self.offset += len(data)
            taken += len(data)
            self._split(data, lines)
        return lines, True

    def _split(self, data: bytes, lines: list[bytes]) -> None:
        self.buffer += data
        start = 0
        while (end := self.buffer.find(b"\n", start)) >= 0:
            if self.skipping:
                self.skipping = False
            else:
                lines.append(bytes(self.buffer[start:end]))
            start = end + 1
        del self.buffer[:start]
        if len(self.buffer) > MAX_LINE:
            log.debug("dropping a line longer than %d bytes", MAX_LINE)
            self.buffer.clear()
            self.skipping = True

    def close(self) -> None:
        os.close(self.fd)


class FileFollower:
    """Follows one path across rotations; :meth:`poll` returns the new complete lines."""

    def __init__(
        self,
        path: Path,
        *,
        from_start: bool = False,
        interval: float = 0.25,
        grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.from_start = from_start
        self.interval = interval
        self.grace = grace
        self.clock = clock
        self._current: _OpenFile | None = None
        self._retired: list[tuple[_OpenFile, float]] = []
        self._started = False
        self._warned = False

    @property
    def offset(self) -> int | None:
        return self._current.offset if self._current is not None else None

    def _open(self) -> _OpenFile | None:
        """Open the path: at its end on the very first poll (unless from_start), else at 0."""
        at_end = not self._started and not self.from_start
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                # Whatever appears at this path later is new: read it whole.
                self._started = True
            elif not self._warned:
                log.warning("cannot open %s (will keep trying): %s", self.path, exc.strerror)
                self._warned = True
            return None
        self._started = True
        self._warned = False
        size = os.fstat(fd).st_size if at_end else 0
        # Starting inside an unfinished line: skip to its end, never take its tail for a line.
        skipping = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        log.debug("following %s from offset %d", self.path, size)
        return _OpenFile(fd, size, skipping)

    def _path_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def poll(self, limit: int = READ_LIMIT) -> tuple[list[str], bool]:
        """New complete lines (without their newline), and whether more input is waiting."""
        raw: list[bytes] = []
        more = False
        if self._current is None:
            self._current = self._open()
        current = self._current
        if current is not None:
            if current.truncated():
                log.info("%s was truncated (copytruncate?): reading it again from its start", self.path)
                current.restart()
            lines, more = current.read(limit)
            raw += lines
            identity = self._path_identity()
            if not more and identity is not None and identity != current.identity:
                log.info("%s was rotated: finished the old file, following the new one", self.path)
                self._retired.append((current, self.clock() + self.grace))
                self._current = self._open()
                if self._current is not None:
                    lines, more = self._current.read(limit)
                    raw += lines
        raw += self._read_retired(limit)
        return [line.decode("utf-8", errors="replace") for line in raw], more

    def _read_retired(self, limit: int) -> list[bytes]:
        raw: list[bytes] = []
        now = self.clock()
        for entry in list(self._retired):
            old, deadline = entry
            lines, more = old.read(limit)
            raw += lines
            if now >= deadline and not more:
                old.close()
                self._retired.remove(entry)
        return raw

    def reopen(self) -> list[str]:
        """SIGHUP: finish rotated files now and look at the path again; the lines read meanwhile."""
        lines, _ = self.poll()
        for entry in list(self._retired):
            entry[0].close()
        self._retired.clear()
        if self._current is None:
            self._current = self._open()
        return lines

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        for old, _ in self._retired:
            old.close()
        self._retired.clear()

    async def run(self, emit: Callable[[str], None]) -> None:
        """Poll forever (until cancelled), handing each line to ``emit``."""
        while True:
            try:
                lines, more = self.poll()
            except OSError as exc:
                # Start again at the end: re-reading old logins would authorize them again.
                log.warning("reading %s failed, reopening it at its end: %s", self.path, exc)
                self.close()
                self._started = self.from_start = False
                lines, more = [], False
            for line in lines:
                emit(line)
            await asyncio.sleep(0 if more else self.interval)
