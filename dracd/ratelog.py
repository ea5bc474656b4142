"""Rate-limited warnings: a flood must not turn into a flood of log lines."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs a message at most once per ``interval`` per key, counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        self._log(logging.WARNING, key, message, args, exc_info)

    def error(self, key: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        self._log(logging.ERROR, key, message, args, exc_info)

    def log(self, level: int, key: str, message: str, *args: object,
            exc_info: BaseException | None = None) -> None:
        """Log at ``level`` unless ``key`` was logged within ``interval``; ``exc_info``: a
        traceback, written with the one line that is logged (never with the ones counted)."""
        self._log(level, key, message, args, exc_info)

    def _log(self, level: int, key: str, message: str, args: tuple[object, ...],
             exc_info: BaseException | None) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            message += f" ({suppressed} more like this since the last report)"
        # stacklevel: the record names the caller of warning()/error()/log(), not this module.
        self.logger.log(level, message, *args, exc_info=exc_info, stacklevel=3)
