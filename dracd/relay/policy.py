"""Who may add addresses: the allow list (legacy dracd.allow plus CIDR lines).

A line is read exactly as DRAC 1.12 read it: a line starting with ``#`` is
a comment, and ``sscanf("%[0-9.] %[0-9.]")`` must find a run of digits and
dots at the very start, blanks, and another run: NETMASK then NETADDR, each
converted by ``inet_addr()``, and anything after the address is ignored. So
``255.255.255.0 192.0.2.0;x`` is the line ``255.255.255.0 192.0.2.0``, an
octal or short part means what it meant there (``010`` is 8, ``10.1`` is
10.0.0.1), and a run ``inet_addr()`` rejects became 255.255.255.255 (a mask
of one host, an address nobody has). A caller is allowed if ``caller & mask
== addr``, exactly DRAC's test: the address is *not* masked, so a line whose
address has bits outside its mask (the fields swapped, a host address with
a net mask) matches nobody. Our extension: a line whose first word is
``NET/LEN``, IPv4 or IPv6 (leading blanks and a ``#`` comment allowed); one
with host bits set (``192.0.2.5/24``) follows the same rule and matches
nobody. Every other line DRAC skipped, and so do we: a lone address, a host
name, a line that starts with blanks, a CIDR line that cannot be read. A
file is never refused for its lines; each line that is skipped, or kept but
surely not what was meant, is reported naming file and line in
``AllowList.problems`` (``--check-config``, the log at start and reload).
Without an allow file the legacy default holds: loopback and the host's own
addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..keys import IPAddress, canonical
from ..server.transport import host_addresses

if TYPE_CHECKING:
    from ..server.dispatch import CallContext

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(address: IPAddress, networks: Iterable[Network]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (families never mix)."""
    return any(address.version == net.version and address in net for net in networks)


@dataclass(frozen=True, slots=True)
class MaskRule:
    """A legacy rule: any mask, contiguous or not, applied bitwise as DRAC did,
    to the caller only (``addr`` with bits outside ``mask`` matches nobody)."""

    mask: int
    addr: int
    #: How inet_addr() read fields that do not say what they seem to (see legacy_rule).
    notes: tuple[str, ...] = field(default=(), compare=False)

    def matches(self, caller: IPAddress) -> bool:
        return caller.version == 4 and int(caller) & self.mask == self.addr

    def problem(self) -> str | None:
        """Why this rule can match no caller or is surely not what was meant, or None."""
        found = list(self.notes)
        if self.addr & ~self.mask & ALL_ONES:
            mask, addr = ipaddress.IPv4Address(self.mask), ipaddress.IPv4Address(self.addr)
            found.append(f"address {addr} has bits outside mask {mask}, so it matches no caller, as in DRAC "
                         "(the mask comes first, and the address needs its host bits zero)")
        return "; ".join(found) or None


@dataclass(frozen=True, slots=True)
class NetRule:
    """A CIDR line; ``exact`` False when its address had host bits set (it then matches nobody)."""

    network: Network
    exact: bool = True
    #: Words after the network (ignored, reported).
    rest: str = field(default="", compare=False)

    def matches(self, caller: IPAddress) -> bool:
        return self.exact and in_networks(caller, (self.network,))

    def problem(self) -> str | None:
        found = []
        if not self.exact:
            found.append(f"address has bits outside the /{self.network.prefixlen} prefix, so it matches no caller "
                         f"(the network is {self.network})")
        if self.rest:
            found.append(f"{self.rest!r} after the network is ignored (one network per line; "
                         "a # starts a comment)")
        return "; ".join(found) or None


Rule = MaskRule | NetRule


@dataclass(frozen=True)
class AllowList:
    rules: tuple[Rule, ...]
    source: str
    #: Lines skipped, or kept but surely not what was meant, each naming file and line:
    #: reported, never fatal.
    problems: tuple[str, ...] = ()

    def permits(self, caller: IPAddress) -> bool:
        caller = canonical(caller)
        return any(rule.matches(caller) for rule in self.rules)


ALL_ONES = 0xFFFFFFFF
#: sscanf("%[0-9.] %[0-9.]") at the start of a line: a run, C-locale blanks, a run.
_LEGACY = re.compile(r"([0-9.]+)[ \t\n\v\f\r]+([0-9.]+)")
#: The largest last part of a 1-, 2-, 3- and 4-part inet_addr() string.
_LAST_PART = (ALL_ONES, 0xFFFFFF, 0xFFFF, 0xFF)


def inet_addr(text: str) -> int | None:
    """glibc's ``inet_addr()`` on a run of digits and dots; None where it failed
    (it then returned INADDR_NONE, 255.255.255.255). One to four parts, a part
    with a leading 0 is octal, the last part fills the bytes left: ``10.1`` is
    10.0.0.1, ``192.168.010.1`` is 192.168.8.1."""
    parts = text.split(".")
    if len(parts) > 4 or not all(parts):
        return None
    values = []
    for part in parts:
        octal = len(part) > 1 and part[0] == "0"
        if octal and not set(part) <= set("01234567"):
            return None
        values.append(int(part, 8 if octal else 10))
    *head, last = values
    if any(value > 0xFF for value in head) or last > _LAST_PART[len(head)]:
        return None
    return sum(value << (24 - 8 * i) for i, value in enumerate(head)) | last


def legacy_rule(mask_text: str, addr_text: str) -> MaskRule:
    """The rule DRAC made of the two runs it read, with a note for each that is
    not the plain dotted quad it was read as."""
    mask, addr = inet_addr(mask_text), inet_addr(addr_text)
    notes = []
    for name, text, value in (("mask", mask_text, mask), ("address", addr_text, addr)):
        if value is None:
            notes.append(f"{name} {text!r} is not an address: DRAC's inet_addr() made it 255.255.255.255")
        elif str(ipaddress.IPv4Address(value)) != text:
            notes.append(f"{name} {text!r} reads as {ipaddress.IPv4Address(value)}, as in DRAC "
                         "(a leading 0 is octal; a short address fills the last bytes)")
    if mask is None and addr is not None:
        notes.append(f"so the line allows {ipaddress.IPv4Address(addr)} alone")
    return MaskRule(ALL_ONES if mask is None else mask, ALL_ONES if addr is None else addr, tuple(notes))


def parse_allow_line(text: str) -> Rule | None:
    """Parse one line; None for blank and comment lines; ValueError, saying why,
    for a line that is skipped (as DRAC skipped it)."""
    if text.startswith("#"):
        return None
    legacy = _LEGACY.match(text)
    if legacy is not None:
        return legacy_rule(legacy.group(1), legacy.group(2))
    fields = text.split("#", 1)[0].split(None, 1)
    if not fields:
        return None
    if "/" in fields[0]:
        try:
            network = ipaddress.ip_network(fields[0], strict=False)
        except ValueError as exc:
            raise ValueError(f"not a network: {exc}") from None
        exact = network.network_address == ipaddress.ip_address(fields[0].split("/")[0])
        return NetRule(network, exact=exact, rest=fields[1].strip() if len(fields) > 1 else "")
    if text[0].isspace() and _LEGACY.match(text.lstrip()):
        raise ValueError("it starts with a blank, and DRAC read only lines that start with the mask")
    raise ValueError("expected 'NETMASK NETADDR' (DRAC skipped any other line) or 'NETWORK/PREFIX'")


def load_allow_file(path: Path) -> AllowList:
    """Read an allow file (OSError if it cannot be read). A line that is skipped, or
    kept but surely not what was meant, is a problem naming file and line."""
    rules, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            where = f"{path}, line {number}: {line.strip()!r}"
            try:
                rule = parse_allow_line(line)
            except ValueError as exc:
                problems.append(f"{where}: skipped: {exc}")
                continue
            if rule is not None:
                rules.append(rule)
                problem = rule.problem()
                if problem is not None:
                    problems.append(f"{where}: {problem}")
    return AllowList(tuple(rules), str(path), tuple(problems))


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
        if ctx.transport == "unix" or ctx.cred is not None:  # any UNIX socket: Dovecot's policy one too
            cred = ctx.cred
            return cred is not None and (
                cred.uid in (0, self.uid) or cred.gid in self.groups or bool(cred.groups & self.groups)
            )
        if ctx.transport == "tcp" and ctx.caller is not None:
            caller = canonical(ctx.caller)
            return in_networks(caller, self.allow)
        return False
