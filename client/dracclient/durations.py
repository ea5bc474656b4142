"""Durations as people write them in configs and on command lines."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``2h``, ``1d`` -> seconds. A unit is required: a bare
    number is ambiguous (legacy ``-e`` counts minutes)."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h or 1d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a lifetime must be positive")
    return seconds
