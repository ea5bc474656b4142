"""What a config value may be: one parser per kind of value.

Each takes a YAML value (or, for ``parse_*`` and ``cli_int``, a command-line
text) and returns the typed value, or raises ValueError saying what was
expected; config.KEYS pairs them with the keys. No key names here.
"""

from __future__ import annotations

import grp
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dracclient.checks import expect, networks, resolve, string
from dracclient.durations import parse_duration


def parse_listen(text: str) -> str:
    """A listen address: an IPv4 or IPv6 literal (brackets allowed)."""
    return str(ipaddress.ip_address(text.strip().strip("[]")))


def parse_metrics_listen(text: str) -> str:
    """``ADDR:PORT`` for the Prometheus endpoint, IPv6 in brackets: ``[::1]:9150``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9150")
    address = ipaddress.ip_address(host.strip("[]"))
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"


@dataclass(frozen=True)
class SocketmapSpec:
    """Where to serve socketmap: ``inet:HOST:PORT`` (port 0: any free port) or ``unix:PATH``."""

    kind: str
    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_spec(text: str) -> SocketmapSpec:
    """``inet:HOST:PORT`` (IPv6 HOST in brackets or not) or ``unix:PATH``; ValueError otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if sep and kind == "unix" and rest:
        return SocketmapSpec("unix", path=Path(rest))
    if sep and kind == "inet":
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                pass
            else:
                return SocketmapSpec("inet", host=str(address), port=int(port))
    raise ValueError(f"{text!r}: expected inet:ADDR:PORT (e.g. inet:127.0.0.1:8800) or unix:PATH")


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) for Sentinel and Cluster addresses."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:26379")
    return host, int(port)


def parse_redis_url(text: str) -> str:
    """A redis-py URL: ``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://...`` or ``unix://PATH``."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
        raise ValueError(f"{text!r}: expected redis://HOST:PORT/DB, rediss://... or unix://PATH")
    return text.strip()


def listen_addresses(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("an address or a list of addresses", isinstance(items, list) and bool(items), value)
    return tuple(parse_listen(string(item)) for item in items)


def group_ids(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    gids = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            gids.append(item)
            continue
        expect("a group name or number", isinstance(item, str) and item != "", item)
        try:
            gids.append(grp.getgrnam(item).gr_gid)
        except KeyError:
            raise ValueError(f"no such group {item!r}") from None
    return tuple(gids)


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def udp_sources(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """``any`` (legacy), ``loopback``, or a list of networks."""
    if value == "any":
        return None
    if value == "loopback":
        return LOOPBACK
    if isinstance(value, list):
        return networks(value)
    raise ValueError(f"expected any, loopback or a list of networks, got {value!r}")


def optional_path(value: Any) -> str | None:
    return None if value in (None, "") else string(value)


def metrics_address(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return parse_metrics_listen(string(value))


def socketmap_specs(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("a list of inet:ADDR:PORT or unix:PATH", isinstance(items, list), value)
    return tuple(str(parse_spec(string(item))) for item in items)


def host_ports(value: Any) -> tuple[tuple[str, int], ...]:
    items = [value] if isinstance(value, str) else value
    expect("a list of HOST:PORT", isinstance(items, list) and bool(items), value)
    return tuple(parse_host_port(string(item)) for item in items)


def seconds(value: Any) -> float:
    expect("seconds between 0.05 and 60", isinstance(value, int | float) and not isinstance(value, bool)
            and 0.05 <= value <= 60, value)
    return float(value)


def redis_prefix(text: str) -> str:
    # The prefix is matched as a glob (SCAN MATCH, PSUBSCRIBE): no glob characters in it.
    expect("a string without * ? [ ] or \\", not any(c in text for c in "*?[]\\"), text)
    return text


def auto_boolean(value: Any) -> bool | None:
    expect("true, false or auto", isinstance(value, bool) or value == "auto", value)
    return None if value == "auto" else bool(value)


def duration(value: Any) -> int:
    return parse_duration(str(value) if isinstance(value, int) and not isinstance(value, bool) else string(value))


def cli_int(check: Callable[[Any], int]) -> Callable[[str], int]:
    """An integer option: the text as a number, then the key's own range check."""
    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        return check(number)
    return convert


def relative_path(value: Any, base: Path) -> Any:
    return None if value is None else resolve(base, str(value))


def relative_specs(specs: tuple[str, ...], base: Path) -> tuple[str, ...]:
    return tuple(f"unix:{resolve(base, spec[5:])}" if spec.startswith("unix:") else spec for spec in specs)
