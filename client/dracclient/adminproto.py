"""Version 3 of program 900101: dracd's administration procedures.

The wire format is docs/drac.x; this module encodes and decodes it, on
bytes only, for both the server and the client.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from .drac import IPAddress, IPNetwork
from .xdr import Packer, Unpacker, XdrError

#: What an admin procedure names: a host address, or a network (an authorized prefix).
Target = IPAddress | IPNetwork

DRACVERS_ADMIN = 3
DRACPROC_ADD3 = 1
DRACPROC_DEL3 = 2
DRACPROC_GET3 = 3
DRACPROC_LIST3 = 4
DRACPROC_FLUSH3 = 5
DRACPROC_STATUS3 = 6
MAX_LIST = 8192
#: Longest lifetime an admin may give one entry (about ten years): ADD3 past it is ADMIN_INVAL.
MAX_LIFETIME = 10 * 365 * 86400
MAX_COUNTERS = 4096
_MAX_STRING = 4096


class AdminStat(enum.IntEnum):
    ADMIN_OK = 0
    ADMIN_NOTFOUND = 1
    ADMIN_SYSERR = 2
    ADMIN_INVAL = 3
    ADMIN_EXPIRED = 4


@dataclass(frozen=True, slots=True)
class Entry:
    address: Target
    expiry: int


@dataclass(frozen=True, slots=True)
class ListPage:
    status: AdminStat
    cookie: int
    total: int
    entries: list[Entry]
    more: bool


@dataclass(frozen=True, slots=True)
class Counter:
    """One operator figure: ``name{labels}`` and its value (durations in microseconds)."""

    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Status:
    entries: int
    map_path: str
    map_type: str
    last_write: int
    last_write_us: int
    lifetime: int
    started: int
    server_version: str
    counters: tuple[Counter, ...] = ()


def _stat(value: int) -> AdminStat:
    try:
        return AdminStat(value)
    except ValueError:
        raise XdrError(f"unknown adminstat {value}") from None


def pack_addr(packer: Packer, address: IPAddress) -> Packer:
    return packer.opaque(address.packed)


def unpack_addr(reader: Unpacker) -> IPAddress:
    raw = reader.opaque(16)
    if len(raw) not in (4, 16):
        raise XdrError(f"an address has 4 or 16 bytes, not {len(raw)}")
    return ipaddress.ip_address(raw)


def pack_target(packer: Packer, target: Target) -> Packer:
    """A drac_target: the address bytes, then the prefix length (the full length for a host)."""
    if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return pack_addr(packer, target.network_address).uint(target.prefixlen)
    return pack_addr(packer, target).uint(target.max_prefixlen)


def unpack_target(reader: Unpacker) -> Target:
    address, prefix = unpack_addr(reader), reader.uint()
    if prefix == address.max_prefixlen:
        return address
    try:
        return ipaddress.ip_network((address, prefix))
    except ValueError as exc:  # prefix too long, or host bits set
        raise XdrError(f"not a network: {address}/{prefix}: {exc}") from None


def encode_target(target: Target) -> bytes:
    return pack_target(Packer(), target).bytes()


def decode_target(data: bytes) -> Target:
    reader = Unpacker(data)
    target = unpack_target(reader)
    reader.done()
    return target


def encode_add3(target: Target, lifetime: int) -> bytes:
    return pack_target(Packer(), target).uint(lifetime).bytes()


def decode_add3(data: bytes) -> tuple[Target, int]:
    reader = Unpacker(data)
    target, lifetime = unpack_target(reader), reader.uint()
    reader.done()
    return target, lifetime


def encode_adminstat(stat: AdminStat) -> bytes:
    return Packer().uint(stat).bytes()


def decode_adminstat(data: bytes) -> AdminStat:
    reader = Unpacker(data)
    stat = _stat(reader.uint())
    reader.done()
    return stat


def encode_get3_res(stat: AdminStat, expiry: int = 0) -> bytes:
    return Packer().uint(stat).uhyper(expiry).bytes()


def decode_get3_res(data: bytes) -> tuple[AdminStat, int]:
    reader = Unpacker(data)
    result = _stat(reader.uint()), reader.uhyper()
    reader.done()
    return result


def encode_list3_args(cookie: int, offset: int, count: int) -> bytes:
    return Packer().uhyper(cookie).uint(offset).uint(count).bytes()


def decode_list3_args(data: bytes) -> tuple[int, int, int]:
    reader = Unpacker(data)
    result = reader.uhyper(), reader.uint(), reader.uint()
    reader.done()
    return result


def encode_list3_res(page: ListPage) -> bytes:
    packer = Packer().uint(page.status).uhyper(page.cookie).uint(page.total).uint(len(page.entries))
    for entry in page.entries:
        pack_target(packer, entry.address).uhyper(entry.expiry)
    return packer.bool(page.more).bytes()


def decode_list3_res(data: bytes) -> ListPage:
    reader = Unpacker(data)
    status, cookie, total = _stat(reader.uint()), reader.uhyper(), reader.uint()
    count = reader.uint()
    if count > MAX_LIST:
        raise XdrError(f"{count} entries in one page exceed {MAX_LIST}")
    entries = [Entry(unpack_target(reader), reader.uhyper()) for _ in range(count)]
    more = reader.bool()
    reader.done()
    return ListPage(status, cookie, total, entries, more)


def encode_flush3_res(stat: AdminStat, removed: int) -> bytes:
    return Packer().uint(stat).uint(removed).bytes()


def decode_flush3_res(data: bytes) -> tuple[AdminStat, int]:
    reader = Unpacker(data)
    result = _stat(reader.uint()), reader.uint()
    reader.done()
    return result


def encode_status3_res(status: Status) -> bytes:
    packer = (
        Packer().uint(status.entries).string(status.map_path).string(status.map_type)
        .uhyper(status.last_write).uint(status.last_write_us).uint(status.lifetime)
        .uhyper(status.started).string(status.server_version).uint(len(status.counters))
    )
    for counter in status.counters:
        packer.string(counter.name).uhyper(counter.value)
    return packer.bytes()


def decode_status3_res(data: bytes) -> Status:
    reader = Unpacker(data)
    fields = (
        reader.uint(), reader.string(_MAX_STRING), reader.string(_MAX_STRING), reader.uhyper(), reader.uint(),
        reader.uint(), reader.uhyper(), reader.string(_MAX_STRING),
    )
    count = reader.uint()
    if count > MAX_COUNTERS:
        raise XdrError(f"{count} counters exceed {MAX_COUNTERS}")
    counters = tuple(Counter(reader.string(_MAX_STRING), reader.uhyper()) for _ in range(count))
    reader.done()
    return Status(*fields, counters=counters)
