"""From a login's address text to the addresses to authorize, or a reason not to.

In order: the text must be an IP address that is a unicast host address
(IPv4-mapped IPv6 counts as its IPv4 address, as the MTAs see such a
client); addresses in trusted networks (a list, and optionally Postfix's
``mynetworks``) need nothing; an address (or prefix) already sent within
the de-duplication window is not sent again; and a rule may widen the
address to a prefix. Through dracd's admin socket a prefix the MTAs' partial
lookups can match (IPv4 /16, /24; IPv6 /48, /64, /80...) is one network
entry, and one a little longer than those (a /56) is its /64s; the DRAC
protocol carries host addresses only, so there a prefix is enumerated
(IPv4 /24 or longer, IPv6 /120 or longer). Every refusal is logged at
debug level.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dracclient.drac import Entry, IPAddress, canonical, relayable

from .presets import Login

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The shortest prefixes a rule may ask for (as network entries, through the admin socket).
MIN_PREFIX4 = 16
MIN_PREFIX6 = 48
#: The shortest prefixes that can be enumerated into host addresses (254 and 256 of them).
MIN_HOSTS4 = 24
MIN_HOSTS6 = 120
#: Most entries one prefix may become (a /56 is 256 /64 entries).
MAX_ENTRIES = 256
MAX_REMEMBERED = 65536


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an address to authorize, or None if it is not a unicast host address."""
    try:
        address = canonical(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    if not relayable(address) or (address.version == 4 and address.is_reserved):
        return None
    return address


@dataclass(frozen=True)
class Authorization:
    """What to send for one login."""

    rule: str
    login: IPAddress
    #: The prefix the rule widened the address to, or None for the address alone.
    network: IPNetwork | None
    #: What to ADD: host addresses, or network entries.
    entries: tuple[Entry, ...]
    lifetime: int

    @property
    def key(self) -> IPAddress | IPNetwork:
        return self.network if self.network is not None else self.login

    def describe(self) -> str:
        if self.network is None:
            return str(self.login)
        if self.entries and not isinstance(self.entries[0], IPAddress):
            if len(self.entries) == 1:
                return f"{self.network} (for {self.login})"
            return f"{self.network} ({len(self.entries)} networks, for {self.login})"
        return f"{self.network} ({len(self.entries)} addresses, for {self.login})"


def entry_prefix(prefix: int, version: int, networks: bool) -> int:
    """The prefix length of the entries a rule's prefix becomes: the next length the MTAs'
    partial lookups match (whole octets or groups), or the host length without networks."""
    max_prefixlen = 32 if version == 4 else 128
    if not networks:
        return max_prefixlen
    step = 8 if version == 4 else 16
    return min(-(-prefix // step) * step, max_prefixlen)


def expand(address: IPAddress, prefix4: int, prefix6: int, networks: bool = True,
           ) -> tuple[IPNetwork | None, tuple[Entry, ...]]:
    """The prefix around ``address`` and the entries that authorize it: the address alone at
    /32 or /128, else network entries (``networks``) or the prefix's host addresses."""
    prefix = prefix4 if address.version == 4 else prefix6
    if prefix == address.max_prefixlen:
        return None, (address,)
    network = ipaddress.ip_network((address, prefix), strict=False)
    length = entry_prefix(prefix, address.version, networks)
    if length < address.max_prefixlen:
        return network, tuple(network.subnets(new_prefix=length))
    hosts: list[Entry] = [host for host in network.hosts() if relayable(host)]
    if address not in hosts:  # e.g. x.y.z.255 logging in from a wider network than the /24
        hosts.append(address)
    return network, tuple(hosts)


def prefix_problem(prefix: int, version: int, networks: bool) -> str | None:
    """Why a rule may not ask for this prefix with this target, or None."""
    if prefix < (MIN_HOSTS4 if version == 4 else MIN_HOSTS6) and not networks:
        return ("the DRAC protocol carries host addresses only, so a prefix is enumerated and "
                f"/{MIN_HOSTS4 if version == 4 else MIN_HOSTS6} is the widest; network entries "
                "need target.admin_socket")
    if 2 ** (entry_prefix(prefix, version, networks) - prefix) > MAX_ENTRIES:
        return (f"it would take more than {MAX_ENTRIES} entries: use a prefix the MTAs match "
                "whole (IPv4 /16, /24; IPv6 /48, /64, /80 ...) or one at most 8 bits shorter")
    return None


class Policy:
    """Decides, for each login, what (if anything) to authorize; remembers what it sent."""

    def __init__(
        self,
        trusted: Iterable[IPNetwork] = (),
        dedup: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        networks: bool = True,
    ) -> None:
        #: Whether the target takes network entries (dracd's admin socket does).
        self.networks = networks
        self.trusted = tuple(trusted)
        self.dedup = dedup
        self.clock = clock
        self._sent: OrderedDict[IPAddress | IPNetwork, float] = OrderedDict()

    def configure(self, trusted: Iterable[IPNetwork], dedup: float) -> None:
        """New settings (on reload); what was sent is still remembered."""
        self.trusted = tuple(trusted)
        self.dedup = dedup

    def decide(self, login: Login) -> Authorization | None:
        rule = login.rule
        address = parse_address(login.ip)
        if address is None:
            log.debug("ignored %r from %s: not a unicast host address", login.ip, rule.name)
            return None
        if (network := self._trusted_network(address)) is not None:
            log.debug("ignored %s from %s: trusted network %s", address, rule.name, network)
            return None
        prefix, entries = expand(address, rule.options.prefix4, rule.options.prefix6, self.networks)
        wanted = tuple(entry for entry in entries if not self._trusted(entry))
        authorization = Authorization(rule.name, address, prefix, wanted, rule.options.lifetime)
        now = self.clock()
        self._forget_older_than(now - self.dedup)
        if authorization.key in self._sent:
            log.debug("ignored %s from %s: sent less than %g s ago", authorization.describe(), rule.name,
                      self.dedup)
            return None
        self._sent[authorization.key] = now
        while len(self._sent) > MAX_REMEMBERED:
            self._sent.popitem(last=False)
        return authorization

    def forget(self, authorization: Authorization) -> None:
        """The ADD failed: let the next login try again."""
        self._sent.pop(authorization.key, None)

    def _trusted(self, entry: Entry) -> bool:
        if isinstance(entry, IPAddress):
            return self._trusted_network(entry) is not None
        return any(entry.version == network.version and entry.subnet_of(network)  # type: ignore[arg-type]
                   for network in self.trusted)

    def _trusted_network(self, address: IPAddress) -> IPNetwork | None:
        for network in self.trusted:
            if address.version == network.version and address in network:
                return network
        return None

    def _forget_older_than(self, limit: float) -> None:
        while self._sent:
            key, when = next(iter(self._sent.items()))
            if when > limit:
                return
            del self._sent[key]


class MynetworksError(ValueError):
    """Postfix's mynetworks could not be read."""


def parse_mynetworks(text: str) -> tuple[list[IPNetwork], list[str]]:
    """The networks in a ``mynetworks`` value, and the entries that are not networks.

    Entries are separated by whitespace or commas; IPv6 ones are written
    ``[2001:db8::]/32``. Lookup tables (``hash:...``), files (``/path``) and
    negations (``!net``) are skipped: trusting fewer networks only means
    sending some addresses dracd does not need, never relaying more.
    """
    networks: list[IPNetwork] = []
    skipped: list[str] = []
    for entry in text.replace(",", " ").split():
        host, slash, length = entry.partition("/")
        try:
            networks.append(ipaddress.ip_network(host.strip("[]") + slash + length, strict=False))
        except ValueError:
            skipped.append(entry)
    return networks, skipped


def postfix_mynetworks(config_dir: Path | None = None, postconf: str = "postconf") -> list[IPNetwork]:
    """Postfix's ``mynetworks`` through ``postconf -h`` (its computed default included)."""
    command = [postconf, *(["-c", str(config_dir)] if config_dir else []), "-h", "mynetworks"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MynetworksError(f"cannot run {' '.join(command)}: {exc}") from None
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()
        raise MynetworksError(f"{' '.join(command)} failed: {detail[-1] if detail else result.returncode}")
    networks, skipped = parse_mynetworks(result.stdout)
    for entry in skipped:
        log.warning("postfix mynetworks: skipping %r (not a network this program can expand)", entry)
    return networks
