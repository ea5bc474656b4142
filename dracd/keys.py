"""How an address or network becomes a map key, and back.

The MTAs impose the rules (DESIGN.md §3): lower-case text keys, one NUL
style per file, Postfix asks for the compressed IPv6 form and Sendmail for
``ipv6:`` and the full form. Only validated addresses ever become keys.

A network entry (an authorized /24 or /64, say) must be found by the MTAs'
own partial lookups: Postfix and Sendmail retry a client address with its
last ``.octet`` (IPv4) or ``:group`` (IPv6) cut off, again and again. So a
network key is a whole number of octets or groups, and only such networks
are entries (:func:`entry_network`). Postfix cuts the *compressed* IPv6
text, so which strings a /64's hosts produce depends on where ``::`` falls:
see :func:`postfix_network_keys`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from dataclasses import dataclass

# The address types and rules are the protocol's (dracclient, shared with dracd-logwatch);
# the rest of dracd takes them from here, with the key rules.
from dracclient.drac import Entry as Entry
from dracclient.drac import IPAddress as IPAddress
from dracclient.drac import IPNetwork as IPNetwork
from dracclient.drac import canonical as canonical
from dracclient.drac import relayable as relayable


class Ipv6Keys(enum.StrEnum):
    POSTFIX = "postfix"
    SENDMAIL = "sendmail"
    BOTH = "both"


def entry_network(network: IPNetwork) -> Entry | None:
    """``network`` as a table entry: a host for /32 and /128, the network if the MTAs can
    match it by partial lookups (IPv4 /8, /16, /24; IPv6 /48../112 in whole groups) and it
    holds unicast hosts; else None."""
    if network.prefixlen == network.max_prefixlen:
        address = canonical(network.network_address)
        return address if relayable(address) else None
    # A one-group IPv6 key ("10") would read as an IPv4 /8; Postfix's access(5) wants 3+ groups.
    step, shortest = (8, 8) if network.version == 4 else (16, 48)
    if network.prefixlen < shortest or network.prefixlen % step:
        return None
    if network.is_multicast or network.network_address.is_unspecified and network.prefixlen < 32:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED):
        return None
    return network


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _groups(network: ipaddress.IPv6Network) -> list[str]:
    """The network's whole leading groups, in hex without leading zeros."""
    return [f"{int(group, 16):x}" for group in network.network_address.exploded.split(":")][
        : network.prefixlen // 16]


def postfix_network_keys(network: ipaddress.IPv6Network) -> list[str]:
    """The strings Postfix's partial lookups produce for hosts in ``network``, and only for them.

    A host whose compressed text writes the network's groups one by one yields them
    joined ("2001:db8:1:2"). When the network ends in zero groups, the ``::`` of a host
    may start inside them ("2001:db8::5" for 2001:db8:0:0::/64): cut after ``::``,
    "2001:db8:" implies two zero groups from there on, so it names a subset of the
    network only if those cover the network's remaining groups; a host whose ``::``
    starts earlier cannot be told apart from hosts outside, and is not matched."""
    groups = _groups(network)
    keys = [":".join(groups)]
    n = len(groups)
    for start in (n - 1, n):  # 1-based group where "::" begins: the first zero of its run
        if start >= 2 and groups[start - 2] != "0" and all(group == "0" for group in groups[start - 1:]):
            keys.append(":".join(groups[: start - 1]) + ":")
    return keys


def key_siblings(network: IPNetwork) -> list[IPNetwork]:
    """Other networks that share a Postfix key with ``network`` (2001:db8::/48 and
    2001:db8::/64 both give "2001:db8:"): the table must not hold both, or removing
    one would delete the key the other still needs."""
    if not isinstance(network, ipaddress.IPv6Network):
        return []
    siblings: list[IPNetwork] = []
    for key in postfix_network_keys(network)[1:]:
        leading = key.rstrip(":").split(":")
        for groups in (len(leading) + 1, len(leading) + 2):
            address = ipaddress.IPv6Address(":".join(leading + ["0"] * (8 - len(leading))))
            other = entry_network(ipaddress.IPv6Network((address, 16 * groups)))
            if (isinstance(other, ipaddress.IPv6Network) and other != network
                    and key in postfix_network_keys(other)):
                siblings.append(other)
    return siblings


# Entry codes: one int per entry, for a compact table. IPv4 hosts are their
# 32-bit value; bit 128 marks IPv6; bits 129 and up hold a network's prefix
# length plus one (0 for a host).
_V6 = 1 << 128
_NET_SHIFT = 129
#: Codes below this are IPv4 hosts (their 32-bit value): the common case, handled without objects.
HOSTS4 = 1 << 32


def entry_code(entry: Entry) -> int:
    if isinstance(entry, ipaddress.IPv4Address):
        return int(entry)
    if isinstance(entry, ipaddress.IPv6Address):
        return int(entry) | _V6
    code = int(entry.network_address) | ((entry.prefixlen + 1) << _NET_SHIFT)
    return code | _V6 if entry.version == 6 else code


def code_entry(code: int) -> Entry:
    address, prefixlen = code & (_V6 - 1), (code >> _NET_SHIFT) - 1
    if code & _V6:
        return ipaddress.IPv6Address(address) if prefixlen < 0 else ipaddress.IPv6Network((address, prefixlen))
    return ipaddress.IPv4Address(address) if prefixlen < 0 else ipaddress.IPv4Network((address, prefixlen))


def valid_code(code: int) -> bool:
    """Whether ``code`` is what entry_code() makes of an entry that may become a key: for
    codes read back from disk (journal replay), which must not bring in what no ADD could."""
    if 0 < code < HOSTS4:
        return code >> 28 != _MULTICAST4 and code != 0xFFFFFFFF
    if code < 0 or code >> _NET_SHIFT > 129:
        return False
    try:
        entry = code_entry(code)
    except ValueError:  # a prefix too long for its family, or host bits set
        return False
    if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
        fits = entry_network(entry) == entry
    else:
        fits = relayable(entry) and canonical(entry) == entry
    return fits and entry_code(entry) == code


def code_network(code: int) -> tuple[int, int] | None:
    """(version, prefix length) of a network's code; None for a host."""
    prefixlen = (code >> _NET_SHIFT) - 1
    return None if prefixlen < 0 else (6 if code & _V6 else 4, prefixlen)


def covering_code(address: IPAddress, version: int, prefixlen: int) -> int | None:
    """The code of the /prefixlen network entry that would hold ``address``."""
    if address.version != version:
        return None
    bits = address.max_prefixlen - prefixlen
    code = (int(address) >> bits << bits) | ((prefixlen + 1) << _NET_SHIFT)
    return code | _V6 if version == 6 else code


_MULTICAST4 = 0xE


def parse_key_code(key: bytes) -> int | None:
    """parse_key() as an entry code; an IPv4 host key, by far the most common, without
    building an address object (a million of them at start-up)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, key.rstrip(b"\0").decode("ascii"))
    except (OSError, ValueError):  # ValueError: an embedded NUL; UnicodeDecodeError is one too
        entry = parse_key(key)
        return None if entry is None else entry_code(entry)
    code = int.from_bytes(packed, "big")
    return code if code and code >> 28 != _MULTICAST4 and code != 0xFFFFFFFF else None


def sendmail_form(address: ipaddress.IPv6Address) -> str:
    """Sendmail's full form: eight groups in hex, no zero compression."""
    return "ipv6:" + ":".join(f"{int(group, 16):x}" for group in address.exploded.split(":"))


@dataclass(frozen=True, slots=True)
class KeyStyle:
    """The key and value format of one map file."""

    nul: bool = False
    cidr: bool = False
    ipv6: Ipv6Keys = Ipv6Keys.POSTFIX

    def keys(self, entry: Entry) -> list[bytes]:
        if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return self._network_keys(entry)
        address = entry
        if isinstance(address, ipaddress.IPv4Address):
            texts = [socket.inet_ntoa(address.packed)]  # str()'s text, at C speed
        else:
            assert isinstance(address, ipaddress.IPv6Address)
            texts = []
            if self.ipv6 != Ipv6Keys.SENDMAIL:
                texts.append(str(address))
            if self.ipv6 != Ipv6Keys.POSTFIX:
                texts.append(sendmail_form(address))
        suffix = f"/{address.max_prefixlen}" if self.cidr else ""
        end = b"\0" if self.nul else b""
        return [(text + suffix).encode() + end for text in texts]

    def code_keys(self, code: int) -> list[bytes]:
        """keys() of an entry code; an IPv4 host's without building its address object."""
        if code >> 32 or self.cidr:
            return self.keys(code_entry(code))
        text = socket.inet_ntoa(code.to_bytes(4, "big")).encode()
        return [text + b"\0" if self.nul else text]

    def _network_keys(self, network: IPNetwork) -> list[bytes]:
        end = b"\0" if self.nul else b""
        if self.cidr:
            texts = [str(network)]
        elif isinstance(network, ipaddress.IPv4Network):
            texts = [".".join(str(network.network_address).split(".")[: network.prefixlen // 8])]
        else:
            texts = []
            if self.ipv6 != Ipv6Keys.SENDMAIL:
                texts += postfix_network_keys(network)
            if self.ipv6 != Ipv6Keys.POSTFIX:
                texts.append("ipv6:" + ":".join(_groups(network)))
        return [text.encode() + end for text in texts]

    def value(self, expiry: int) -> bytes:
        return str(expiry).encode() + (b"\0" if self.nul else b"")


def parse_key(key: bytes) -> Entry | None:
    """The entry a key stands for, in any style we or legacy DRAC write; else None.
    A secondary Postfix network key (ending in ":") gives None: its network has a main key."""
    try:
        text = key.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        return None
    if "\0" in text:  # one trailing NUL style or the other, never junk after a NUL
        return None
    text = text.removeprefix("ipv6:")
    if "/" in text:
        try:
            return entry_network(ipaddress.ip_network(text))
        except ValueError:
            return None
    address = _parse_host(text)
    if address is None:
        return _parse_partial(text)
    return canonical(address) if relayable(address) else None


def _parse_host(text: str) -> IPAddress | None:
    """inet_pton: the strict C parser (no leading zeros, no scope), many times faster than
    ipaddress's on the million keys of a big map."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):  # ValueError: an embedded NUL, which inet_pton refuses so
        return None


def _parse_partial(text: str) -> IPNetwork | None:
    """A network written as its leading octets ("192.0.2") or whole groups ("2001:db8:1:2")."""
    if _PARTIAL4.fullmatch(text):
        octets = text.split(".")
        if all(int(octet) <= 255 and str(int(octet)) == octet for octet in octets):
            padded = ".".join(octets + ["0"] * (4 - len(octets)))
            network = entry_network(ipaddress.IPv4Network(f"{padded}/{8 * len(octets)}"))
            return network if isinstance(network, ipaddress.IPv4Network) else None
    elif _PARTIAL6.fullmatch(text):
        groups = text.split(":")
        padded = ":".join(groups + ["0"] * (8 - len(groups)))
        network = entry_network(ipaddress.IPv6Network(f"{padded}/{16 * len(groups)}"))
        return network if isinstance(network, ipaddress.IPv6Network) else None
    return None


_PARTIAL4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}")
_PARTIAL6 = re.compile(r"[0-9a-f]{1,4}(:[0-9a-f]{1,4}){2,6}")


def parse_value(value: bytes) -> int | None:
    """An expiry value (decimal epoch seconds), or None if it is not one."""
    text = value.rstrip(b"\0")
    return int(text) if text.isdigit() and len(text) <= 12 else None
