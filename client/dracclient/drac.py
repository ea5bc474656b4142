"""The DRAC program: numbers, result codes and argument encodings.

Version 1 carries an IPv4 address as one XDR unsigned int. Version 2 carries
``char ip_addr6[16]``, which rpcgen encodes as sixteen XDR ints, one per
byte, sign-extended by C clients (0xb8 travels as ``ff ff ff b8``).
"""

from __future__ import annotations

import enum
import ipaddress

from .xdr import Packer, Unpacker, XdrError

DRACPROG = 900101
DRACVERS = 1
DRACVERS6 = 2
DRACPROC_NULL = 0
DRACPROC_ADD = 1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: What a relay table holds: a host address, or a network (never a /32 or /128: those are hosts).
Entry = IPAddress | IPNetwork


def canonical(address: IPAddress) -> IPAddress:
    """Fold IPv4-mapped IPv6 addresses to IPv4, as the MTAs see such clients."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def relayable(address: IPAddress) -> bool:
    """Whether an address may become a key: a unicast host, not a wildcard."""
    if isinstance(address, ipaddress.IPv4Address):
        # The same tests on the integer (a server's hot path): 0.0.0.0, 224.0.0.0/4, broadcast.
        value = int(address)
        return value != 0 and value >> 28 != 0xE and value != 0xFFFF_FFFF
    return not (address.is_unspecified or address.is_multicast)


class AddStat(enum.IntEnum):
    ADD_SUCCESS = 0
    ADD_PERM = 1
    ADD_SYSERR = 2
    ADD_UNKOWN = 3  # sic: the name in DRAC's drac.x


def version_for(address: IPAddress) -> int:
    """The protocol version that carries ``address``."""
    return DRACVERS if address.version == 4 else DRACVERS6


def encode_add_args(address: IPAddress, *, sign_extend: bool = True) -> bytes:
    """Arguments of DRACPROC_ADD in the version matching the address family."""
    if address.version == 4:
        return Packer().uint(int(address)).bytes()
    packer = Packer()
    for byte in address.packed:
        packer.int(byte - 256 if sign_extend and byte > 127 else byte)
    return packer.bytes()


def decode_add_v1(args: bytes, *, trailing: bool = False) -> ipaddress.IPv4Address:
    """``trailing``: ignore bytes after the argument, as a libtirpc server (legacy
    rpc.dracd) does: its XDR decoder stops at the argument's end and looks no further."""
    if len(args) == 4 or (trailing and len(args) > 4):
        return ipaddress.IPv4Address(int.from_bytes(args[:4], "big"))
    reader = Unpacker(args)  # too short, or trailing bytes not allowed: the reader says which
    address = ipaddress.IPv4Address(reader.uint())
    if not trailing:
        reader.done()
    return address


def decode_add_v2(args: bytes, *, trailing: bool = False) -> ipaddress.IPv6Address:
    """Decode sixteen char words, accepting both sign-extended and plain bytes;
    ``trailing`` as for decode_add_v1."""
    reader = Unpacker(args)
    raw = bytearray()
    for _ in range(16):
        word = reader.int()
        if not -128 <= word <= 255:
            raise XdrError(f"char word {word} out of range")
        raw.append(word & 0xFF)
    if not trailing:
        reader.done()
    return ipaddress.IPv6Address(bytes(raw))


def encode_addstat(stat: AddStat) -> bytes:
    return Packer().uint(stat).bytes()


def decode_addstat(results: bytes) -> AddStat:
    reader = Unpacker(results)
    value = reader.uint()
    reader.done()
    try:
        return AddStat(value)
    except ValueError:
        raise XdrError(f"unknown addstat {value}") from None
