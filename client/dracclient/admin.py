"""Client of dracd's admin procedures (version 3 of program 900101, docs/drac.x).

On the dracd host the admin talks over dracd's UNIX socket, where the
kernel tells dracd who is calling; from elsewhere over TCP, if dracd's
admin allow list names the caller.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from . import rpcbind
from .adminproto import (
    DRACPROC_ADD3,
    DRACPROC_DEL3,
    DRACPROC_FLUSH3,
    DRACPROC_GET3,
    DRACPROC_LIST3,
    DRACPROC_STATUS3,
    DRACVERS_ADMIN,
    MAX_LIFETIME,
    MAX_LIST,
    AdminStat,
    Entry,
    Status,
    Target,
    decode_adminstat,
    decode_flush3_res,
    decode_get3_res,
    decode_list3_res,
    decode_status3_res,
    encode_add3,
    encode_list3_args,
    encode_target,
)
from .client import server_host
from .drac import DRACPROG
from .errors import BadReply, DracError, InvalidRequest, PermissionRefused, RpcRefused, ServerError, Unavailable
from .rpc import ReplyStat
from .rpccall import call
from .xdr import XdrError

DEFAULT_SOCKET = "/run/dracd/dracd.sock"
T = TypeVar("T")


class NotFound(DracError):
    """The address is not in the table."""


class ListingExpired(ServerError):
    """The server dropped the listing (ADMIN_EXPIRED: idle too long, or too many
    listings at once); start again."""


def parse_target(value: str | Target) -> Target:
    """An address, or a network written ADDR/PREFIX ("192.0.2.0/24", "2001:db8:1:2::/64").
    Raises ValueError."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network) or (isinstance(value, str) and "/" in value):
        network = ipaddress.ip_network(value)
        if network.prefixlen < network.max_prefixlen:
            return network
        value = network.network_address
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def check_lifetime(lifetime: int) -> None:
    """Raise ValueError for a lifetime no dracd takes (0 means dracd's own)."""
    if not isinstance(lifetime, int) or not 0 <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime {lifetime!r} s is not between 0 and {MAX_LIFETIME} s (ten years)")


def _refused(target: Target | None) -> str:
    """Why dracd answers ADMIN_INVAL for ``target`` (its log says which rule)."""
    if target is None:
        return "invalid request"
    if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return ("not a network the MTAs' lookups can match (IPv4 /8, /16, /24; IPv6 /48 to /112 "
                "in steps of 16), or one sharing a map key with an entry")
    return "not a unicast host address"


class AdminClient:
    """One dracd, reached at ``socket_path`` (UNIX) or else at ``server`` over TCP."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        server: str | None = None,
        port: int | None = None,
        prog: int = DRACPROG,
        timeout: float = 5.0,
    ) -> None:
        if (socket_path is None) == (server is None):
            raise ValueError("give either socket_path or server")
        self.socket_path = socket_path
        self.server = None if server is None else server_host(server)
        self.port = port
        self.prog = prog
        self.timeout = timeout

    @property
    def where(self) -> str:
        return self.socket_path or str(self.server)

    def _call(self, proc: int, args: bytes = b"") -> bytes:
        try:
            if self.socket_path is not None:
                return call(self.socket_path, self.prog, DRACVERS_ADMIN, proc, args, transport="unix",
                            timeout=self.timeout)
            assert self.server is not None
            port = self.port
            if port is None:
                found = rpcbind.lookup(self.prog, DRACVERS_ADMIN, self.server, "tcp", timeout=self.timeout)
                if found is None:
                    raise Unavailable(f"dracd's admin version is not registered with rpcbind on {self.server}")
                port = found[1]
            return call((self.server, port), self.prog, DRACVERS_ADMIN, proc, args, transport="tcp",
                        timeout=self.timeout)
        except RpcRefused as exc:
            if exc.reply.reply_stat == ReplyStat.MSG_DENIED and exc.reply.auth_stat is not None:
                raise PermissionRefused(f"{self.where}: not an admin caller ({exc.reply.auth_stat.name})") from None
            raise

    @staticmethod
    def _decode(what: str, decoder: Callable[[bytes], T], data: bytes) -> T:
        try:
            return decoder(data)
        except XdrError as exc:
            raise BadReply(f"bad {what} reply: {exc}") from None

    def _check(self, stat: AdminStat, address: Target | None = None) -> None:
        if stat == AdminStat.ADMIN_OK:
            return
        if stat == AdminStat.ADMIN_NOTFOUND:
            raise NotFound(f"{address} is not in the table")
        if stat == AdminStat.ADMIN_INVAL:
            # The lifetime was checked before the call, so the address is what dracd refused.
            raise InvalidRequest(f"{self.where} rejected {address}: {_refused(address)}")
        raise ServerError(f"{self.where} could not write its map ({stat.name})")

    def ping(self) -> float:
        """Round-trip time of the NULL procedure, in seconds."""
        started = time.monotonic()
        self._call(0)
        return time.monotonic() - started

    def add(self, address: str | Target, lifetime: int = 0) -> None:
        """Authorize ``address`` (or a network, "192.0.2.0/24") for ``lifetime`` seconds
        (0: the server's lifetime)."""
        addr = parse_target(address)
        check_lifetime(lifetime)
        stat = self._decode("ADD", decode_adminstat, self._call(DRACPROC_ADD3, encode_add3(addr, lifetime)))
        self._check(stat, addr)

    def delete(self, address: str | Target) -> None:
        """Remove ``address`` (or a network entry); raises NotFound if it was not there."""
        addr = parse_target(address)
        stat = self._decode("DEL", decode_adminstat, self._call(DRACPROC_DEL3, encode_target(addr)))
        self._check(stat, addr)

    def get(self, address: str | Target) -> int | None:
        """The expiry of the entry ``address`` (epoch seconds), or None if there is none."""
        addr = parse_target(address)
        stat, expiry = self._decode("GET", decode_get3_res, self._call(DRACPROC_GET3, encode_target(addr)))
        if stat == AdminStat.ADMIN_NOTFOUND:
            return None
        self._check(stat, addr)
        return int(expiry)

    def entries(self, page_size: int = MAX_LIST) -> Iterator[Entry]:
        """Every entry of a snapshot of the table, page by page (at most MAX_LIST a page)."""
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive integer, not {page_size!r}")
        return self._pages(min(page_size, MAX_LIST))

    def _pages(self, count: int) -> Iterator[Entry]:
        cookie, offset = 0, 0
        while True:
            data = self._call(DRACPROC_LIST3, encode_list3_args(cookie, offset, count))
            page = self._decode("LIST", decode_list3_res, data)
            if page.status == AdminStat.ADMIN_EXPIRED:
                raise ListingExpired(f"{self.where} dropped the listing (idle too long); start again")
            self._check(page.status)
            yield from page.entries
            if not page.more:
                return
            cookie = page.cookie
            # The server serves at most ``count`` a page: advancing by page_size would skip entries.
            offset += count

    def flush(self) -> int:
        """Remove every entry; return how many there were."""
        stat, removed = self._decode("FLUSH", decode_flush3_res, self._call(DRACPROC_FLUSH3))
        self._check(stat)
        return int(removed)

    def status(self) -> Status:
        return self._decode("STATUS", decode_status3_res, self._call(DRACPROC_STATUS3))
