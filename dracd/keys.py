"""How an address becomes a map key, and back.

The MTAs impose the rules (DESIGN.md §3): lower-case text keys, one NUL
style per file, Postfix asks for the compressed IPv6 form and Sendmail for
``ipv6:`` and the full form. Only validated addresses ever become keys.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Ipv6Keys(enum.StrEnum):
    POSTFIX = "postfix"
    SENDMAIL = "sendmail"
    BOTH = "both"


_SENDMAIL_PREFIX = b"ipv6:"


def canonical(address: IPAddress) -> IPAddress:
    """Fold IPv4-mapped IPv6 addresses to IPv4, as the MTAs see such clients."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def relayable(address: IPAddress) -> bool:
    """Whether an address may become a key: a unicast host, not a wildcard."""
    return not (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    )


def sendmail_form(address: ipaddress.IPv6Address) -> str:
    """Sendmail's full form: eight groups in hex, no zero compression."""
    return "ipv6:" + ":".join(f"{int(group, 16):x}" for group in address.exploded.split(":"))


@dataclass(frozen=True, slots=True)
class KeyStyle:
    """The key and value format of one map file."""

    nul: bool = False
    cidr: bool = False
    ipv6: Ipv6Keys = Ipv6Keys.POSTFIX

    def keys(self, address: IPAddress) -> list[bytes]:
        if address.version == 4:
            texts = [str(address)]
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

    def value(self, expiry: int) -> bytes:
        return str(expiry).encode() + (b"\0" if self.nul else b"")


def parse_key(key: bytes) -> IPAddress | None:
    """The address a key stands for, in any style we or legacy DRAC write; else None."""
    text = key.rstrip(b"\0")
    if text.startswith(_SENDMAIL_PREFIX):
        text = text[len(_SENDMAIL_PREFIX) :]
    text, _, prefix = text.partition(b"/")
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if prefix and prefix != str(address.max_prefixlen).encode():
        return None
    return canonical(address) if relayable(address) else None


def parse_value(value: bytes) -> int | None:
    """An expiry value (decimal epoch seconds), or None if it is not one."""
    text = value.rstrip(b"\0")
    return int(text) if text.isdigit() and len(text) <= 12 else None
