"""Who may add addresses: the allow list (legacy dracd.allow plus CIDR lines).

Legacy lines are ``NETMASK NETADDR``, mask first, both dotted quads; a
caller is allowed if ``caller & mask == addr``. We also take ``NET/LEN``
lines for IPv4 and IPv6. ``#`` starts a comment. Without an allow file the
legacy default holds: loopback and the host's own addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .keys import IPAddress, canonical

if TYPE_CHECKING:
    from .dispatch import CallContext

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(address: IPAddress, networks: Iterable[Network]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (families never mix)."""
    return any(address.version == net.version and address in net for net in networks)


class AllowFileError(ValueError):
    """A line of the allow file is not valid; the message names file and line."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """A legacy rule: any mask, contiguous or not, applied bitwise as DRAC did."""

    mask: int
    addr: int

    def matches(self, caller: IPAddress) -> bool:
        return caller.version == 4 and int(caller) & self.mask == self.addr


@dataclass(frozen=True, slots=True)
class NetRule:
    network: Network

    def matches(self, caller: IPAddress) -> bool:
        return in_networks(caller, (self.network,))


Rule = MaskRule | NetRule


@dataclass(frozen=True)
class AllowList:
    rules: tuple[Rule, ...]
    source: str

    def permits(self, caller: IPAddress) -> bool:
        caller = canonical(caller)
        return any(rule.matches(caller) for rule in self.rules)


def parse_allow_line(text: str) -> Rule | None:
    """Parse one line; None for blank and comment lines; ValueError if invalid."""
    fields = text.split("#", 1)[0].split()
    if not fields:
        return None
    if len(fields) == 2:
        mask = ipaddress.IPv4Address(fields[0])
        addr = ipaddress.IPv4Address(fields[1])
        return MaskRule(int(mask), int(addr) & int(mask))
    # A lone address is refused: it is more likely a legacy line missing its netaddr.
    if len(fields) == 1 and "/" in fields[0]:
        return NetRule(ipaddress.ip_network(fields[0], strict=False))
    raise ValueError("expected 'NETMASK NETADDR' or 'NETWORK/PREFIX'")


def load_allow_file(path: Path) -> AllowList:
    """Read an allow file; raises OSError or AllowFileError naming file and line."""
    rules = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rule = parse_allow_line(line)
            except ValueError as exc:
                raise AllowFileError(f"{path}, line {number}: {line.strip()!r}: {exc}") from None
            if rule is not None:
                rules.append(rule)
    return AllowList(tuple(rules), str(path))


def host_addresses() -> set[IPAddress]:
    """The host's own interface addresses."""
    import psutil

    found: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found


def default_allow_list() -> AllowList:
    """Legacy default: 127.0.0.1 and the host's own addresses (and ::1)."""
    own = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} | host_addresses()
    rules = tuple(NetRule(ipaddress.ip_network(address)) for address in sorted(own, key=lambda a: (a.version, a)))
    return AllowList(rules, "built-in default (loopback and this host's addresses)")


def load_allow(path: Path, explicit: bool) -> AllowList:
    """The allow list from ``path``; when it is absent, the default unless the
    file was named explicitly (a typo must not silently widen access)."""
    if not path.exists() and not explicit:
        log.info("no allow file %s: allowing loopback and this host's own addresses", path)
        return default_allow_list()
    return load_allow_file(path)


@dataclass(frozen=True)
class AdminPolicy:
    """Who may use the admin procedures (and ADD over the UNIX socket).

    On the UNIX socket the kernel vouches for the caller: root, dracd's own
    user, or a member of an admin group. Over TCP only the admin allow list
    (empty by default) counts; UDP never, as its source can be forged.
    """

    groups: frozenset[int] = frozenset()
    allow: tuple[Network, ...] = ()
    uid: int = field(default_factory=os.geteuid)

    def permits(self, ctx: CallContext) -> bool:
        if ctx.transport == "unix":
            cred = ctx.cred
            return cred is not None and (
                cred.uid in (0, self.uid) or cred.gid in self.groups or bool(cred.groups & self.groups)
            )
        if ctx.transport == "tcp" and ctx.caller is not None:
            caller = canonical(ctx.caller)
            return in_networks(caller, self.allow)
        return False
