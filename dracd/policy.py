"""Who may add addresses: the allow list (legacy dracd.allow plus CIDR lines).

Legacy lines are ``NETMASK NETADDR``, mask first, both dotted quads, and
anything after the address is ignored, as DRAC's ``sscanf("%[0-9.]
%[0-9.]")`` did. A caller is allowed if ``caller & mask == addr``, exactly
DRAC's test: the address is *not* masked, so a line whose address has bits
outside its mask (the fields swapped, a host address with a net mask)
matches nobody. Masking it, as dracd once did, let such a line admit whole
networks that legacy refused. We also take ``NET/LEN`` lines for IPv4 and
IPv6 (our extension); one with host bits set (``192.0.2.5/24``) follows the
same rule and matches nobody. Either kind is kept, and reported in
``AllowList.problems`` (``--check-config``, the log at start and reload).
``#`` starts a comment. Without an allow file the legacy default holds:
loopback and the host's own addresses.
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
    """A legacy rule: any mask, contiguous or not, applied bitwise as DRAC did,
    to the caller only (``addr`` with bits outside ``mask`` matches nobody)."""

    mask: int
    addr: int

    def matches(self, caller: IPAddress) -> bool:
        return caller.version == 4 and int(caller) & self.mask == self.addr

    def problem(self) -> str | None:
        """Why this rule can match no caller, or None."""
        if self.addr & ~self.mask & 0xFFFFFFFF:
            mask, addr = ipaddress.IPv4Address(self.mask), ipaddress.IPv4Address(self.addr)
            return (f"address {addr} has bits outside mask {mask}, so it matches no caller, as in DRAC "
                    "(the mask comes first, and the address needs its host bits zero)")
        return None


@dataclass(frozen=True, slots=True)
class NetRule:
    """A CIDR line; ``exact`` False when its address had host bits set (it then matches nobody)."""

    network: Network
    exact: bool = True

    def matches(self, caller: IPAddress) -> bool:
        return self.exact and in_networks(caller, (self.network,))

    def problem(self) -> str | None:
        if self.exact:
            return None
        return (f"address has bits outside the /{self.network.prefixlen} prefix, so it matches no caller "
                f"(the network is {self.network})")


Rule = MaskRule | NetRule


@dataclass(frozen=True)
class AllowList:
    rules: tuple[Rule, ...]
    source: str
    #: Lines that can match no caller, each naming file and line: reported, not fatal.
    problems: tuple[str, ...] = ()

    def permits(self, caller: IPAddress) -> bool:
        caller = canonical(caller)
        return any(rule.matches(caller) for rule in self.rules)


def parse_allow_line(text: str) -> Rule | None:
    """Parse one line; None for blank and comment lines; ValueError if invalid."""
    fields = text.split("#", 1)[0].split()
    if not fields:
        return None
    if len(fields) >= 2 and "/" not in fields[0]:
        # Legacy: the words after NETADDR were never read.
        mask = ipaddress.IPv4Address(fields[0])
        addr = ipaddress.IPv4Address(fields[1])
        return MaskRule(int(mask), int(addr))
    # A lone address is refused: it is more likely a legacy line missing its netaddr.
    if len(fields) == 1 and "/" in fields[0]:
        network = ipaddress.ip_network(fields[0], strict=False)
        return NetRule(network, exact=network.network_address == ipaddress.ip_address(fields[0].split("/")[0]))
    raise ValueError("expected 'NETMASK NETADDR' or 'NETWORK/PREFIX'")


def load_allow_file(path: Path) -> AllowList:
    """Read an allow file; raises OSError or AllowFileError naming file and line."""
    rules, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rule = parse_allow_line(line)
            except ValueError as exc:
                raise AllowFileError(f"{path}, line {number}: {line.strip()!r}: {exc}") from None
            if rule is not None:
                rules.append(rule)
                problem = rule.problem()
                if problem is not None:
                    problems.append(f"{path}, line {number}: {line.strip()!r}: {problem}")
    return AllowList(tuple(rules), str(path), tuple(problems))


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


def load_allow(path: Path | None, *, quiet: bool = False) -> AllowList:
    """The allow list from ``path`` (``Config.allow_path``); None: the legacy default.
    A named file that is missing is an error: a typo must not silently widen access.
    Lines that match nobody are logged as warnings unless ``quiet`` (--check-config
    prints them itself)."""
    if path is None:
        return default_allow_list()
    allow = load_allow_file(path)
    if not quiet:
        for problem in allow.problems:
            log.warning("%s", problem)
    return allow


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
