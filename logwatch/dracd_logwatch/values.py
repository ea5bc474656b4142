"""Converters for dracd-logwatch's YAML values: each checks one value and raises
ValueError saying what was expected (config.py adds the file and key)."""

from __future__ import annotations

import pwd
import re
from typing import Any

from dracclient.checks import expect, string
from dracclient.client import server_host
from dracclient.durations import parse_duration

_PROGRAM = re.compile(r"[^\s\[\]:]+")


def duration(value: Any) -> int:
    expect("a duration like 90s, 30m or 2h", isinstance(value, str), value)
    return parse_duration(value)


def dedup(value: Any) -> int:
    return 0 if value == 0 or value == "0" else duration(value)


def seconds(value: Any) -> float:
    if isinstance(value, str):
        return float(parse_duration(value))
    expect("a number of seconds", isinstance(value, int | float) and not isinstance(value, bool)
            and 0 < value <= 300, value)
    return float(value)


def interval(value: Any) -> float:
    expect("a number of seconds (0.01..60)", isinstance(value, int | float) and not isinstance(value, bool)
            and 0.01 <= value <= 60, value)
    return float(value)


def programs(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("a program name (syslog tag) or a list of them", isinstance(items, list) and bool(items), value)
    for item in items:
        expect("a program name without spaces, brackets or colons",
                isinstance(item, str) and _PROGRAM.fullmatch(item) is not None, item)
    return tuple(items)


def strings(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("a string or a list of strings", isinstance(items, list) and bool(items), value)
    return tuple(string(item) for item in items)


def servers(value: Any) -> tuple[str, ...]:
    names = strings(value)
    for name in names:
        server_host(name)  # ValueError for a host name: never resolved
    return names


def prefix(low: int, high: int, why: str) -> Any:
    def convert(value: Any) -> int:
        expect(f"a prefix length {low}..{high}", isinstance(value, int) and not isinstance(value, bool), value)
        if value < low:
            raise ValueError(f"/{value} is shorter than /{low}: {why}")
        expect(f"a prefix length {low}..{high}", value <= high, value)
        return int(value)
    return convert


WHY4 = "a wider prefix than a /16 is a whole provider's customers, not one user's network"
WHY6 = "a wider prefix than a /48 (one site's allocation) is a whole provider's customers"


def users(value: Any) -> tuple[int, ...]:
    """User names or numeric uids, as uids (a name must exist now)."""
    items: Any = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
    expect("a user name or uid, or a list of them", isinstance(items, list) and bool(items), value)
    uids = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**32:
            uids.append(item)
            continue
        expect("a user name or uid", isinstance(item, str) and bool(item), item)
        name = str(item)
        try:
            uids.append(int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ValueError(f"expected a user name or uid, got {item!r}: no such user") from None
    return tuple(uids)
