"""A client for rpcbind (RFC 1833): look up, register and unregister programs.

Registration is only accepted from the local host. Over the UNIX socket
rpcbind records the owner as ``superuser`` (for root), which stops other
local users from unregistering us; UDP to 127.0.0.1 is the fallback.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .errors import BadReply, DracError, RpcRefused
from .rpccall import Deadline, Transport, call
from .xdr import Packer, Unpacker, XdrError

RPCBPROG = 100000
RPCBVERS4 = 4
PMAPVERS = 2
RPCBPROC_SET = 1
RPCBPROC_UNSET = 2
RPCBPROC_GETADDR = 3
RPCBPROC_DUMP = 4
PMAPPROC_GETPORT = 3
RPCBIND_PORT = 111
RPCBIND_SOCKET = "/run/rpcbind.sock"
IPPROTO = {"udp": 17, "tcp": 6}
MAX_UADDR = 1024


def format_uaddr(host: str, port: int) -> str:
    """Universal address: the host's text form followed by the port's two bytes."""
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    return f"{ipaddress.ip_address(host)}.{port >> 8}.{port & 0xFF}"


def parse_uaddr(uaddr: str) -> tuple[str, int]:
    """Split a universal address into (host, port); raises ValueError if malformed."""
    host, high, low = uaddr.rsplit(".", 2)
    if not all(part.isascii() and part.isdigit() and int(part) < 256 for part in (high, low)):
        raise ValueError(f"bad port in universal address {uaddr!r}")
    port = int(high) << 8 | int(low)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in universal address {uaddr!r}")
    return str(ipaddress.ip_address(host)), port


def _rpcb(prog: int, vers: int, netid: str, uaddr: str, owner: str) -> bytes:
    return Packer().uint(prog).uint(vers).string(netid).string(uaddr).string(owner).bytes()


def _uint(results: bytes, what: str) -> int:
    """The one unsigned int an rpcbind reply holds (SET, UNSET: a bool; GETPORT: a port)."""
    try:
        reader = Unpacker(results)
        value = reader.uint()
        reader.done()
    except XdrError as exc:
        raise BadReply(f"bad {what} reply: {exc}") from None
    return value


def _local_call(proc: int, args: bytes, timeout: float, socket_path: str) -> bytes:
    if os.path.exists(socket_path):
        try:
            return call(socket_path, RPCBPROG, RPCBVERS4, proc, args, transport="unix", timeout=timeout)
        except DracError:
            pass
    return call(("127.0.0.1", RPCBIND_PORT), RPCBPROG, RPCBVERS4, proc, args, timeout=timeout)


def register(
    prog: int, vers: int, netid: str, uaddr: str, *, timeout: float = 3.0, socket_path: str = RPCBIND_SOCKET
) -> bool:
    """RPCBPROC_SET on the local rpcbind. False if rpcbind refuses (e.g. already registered)."""
    args = _rpcb(prog, vers, netid, uaddr, str(os.getuid()))
    return _uint(_local_call(RPCBPROC_SET, args, timeout, socket_path), "rpcbind") != 0


def unregister(
    prog: int, vers: int, netid: str = "", *, timeout: float = 3.0, socket_path: str = RPCBIND_SOCKET
) -> bool:
    """RPCBPROC_UNSET on the local rpcbind; an empty netid removes every netid."""
    args = _rpcb(prog, vers, netid, "", str(os.getuid()))
    return _uint(_local_call(RPCBPROC_UNSET, args, timeout, socket_path), "rpcbind") != 0


def netid_route(netid: str, host: str | None) -> tuple[str, Transport]:
    """rpcbind answers GETADDR for the netid the request arrived on, whatever
    r_netid says, so each netid must be asked over its own transport."""
    transport: Transport = "tcp" if netid.startswith("tcp") else "udp"
    if host is None:
        host = "::1" if netid.endswith("6") else "127.0.0.1"
    return host, transport


_netid_route = netid_route


def getaddr_args(prog: int, vers: int, netid: str) -> bytes:
    """Arguments of RPCBPROC_GETADDR."""
    return _rpcb(prog, vers, netid, "", "")


def parse_getaddr(results: bytes) -> tuple[str, int] | None:
    """The (host, port) a GETADDR reply names, or None if not registered."""
    try:
        reader = Unpacker(results)
        uaddr = reader.string(MAX_UADDR)
        reader.done()
        return parse_uaddr(uaddr) if uaddr else None
    except (XdrError, ValueError) as exc:
        raise BadReply(f"bad GETADDR reply: {exc}") from None


def getaddr(
    prog: int, vers: int, netid: str, *, host: str | None = None, timeout: float = 3.0,
    deadline: Deadline | None = None, peer: str | None = None,
) -> tuple[str, int] | None:
    """rpcbind v4 GETADDR: where ``prog``/``vers`` listens for ``netid``, or None."""
    host, transport = netid_route(netid, host)
    results = call((host, RPCBIND_PORT), RPCBPROG, RPCBVERS4, RPCBPROC_GETADDR, getaddr_args(prog, vers, netid),
                   transport=transport, timeout=timeout, deadline=deadline, peer=peer)
    return parse_getaddr(results)


@dataclass(frozen=True)
class Mapping:
    prog: int
    vers: int
    netid: str
    uaddr: str
    owner: str

    @property
    def port(self) -> int:
        return parse_uaddr(self.uaddr)[1]


def dump(*, timeout: float = 3.0, socket_path: str = RPCBIND_SOCKET) -> list[Mapping]:
    """RPCBPROC_DUMP on the local rpcbind: every registration it holds."""
    reader = Unpacker(_local_call(RPCBPROC_DUMP, b"", timeout, socket_path))
    found = []
    try:
        while reader.uint():
            found.append(Mapping(reader.uint(), reader.uint(), reader.string(MAX_UADDR),
                                 reader.string(MAX_UADDR), reader.string(MAX_UADDR)))
        reader.done()
    except XdrError as exc:
        raise BadReply(f"bad DUMP reply: {exc}") from None
    return found


def getport_args(prog: int, vers: int, proto: str) -> bytes:
    """Arguments of portmap v2 PMAPPROC_GETPORT."""
    return Packer().uint(prog).uint(vers).uint(IPPROTO[proto]).uint(0).bytes()


def parse_getport(results: bytes) -> int | None:
    """The port a GETPORT reply names, or None if not registered."""
    port = _uint(results, "GETPORT")
    if port > 0xFFFF:
        raise BadReply(f"bad GETPORT reply: port {port}")
    return port or None


def getport(
    prog: int, vers: int, proto: str, *, host: str = "127.0.0.1", timeout: float = 3.0,
    deadline: Deadline | None = None, peer: str | None = None,
) -> int | None:
    """portmap v2 GETPORT, for rpcbind-less portmappers; None if not registered."""
    results = call((host, RPCBIND_PORT), RPCBPROG, PMAPVERS, PMAPPROC_GETPORT, getport_args(prog, vers, proto),
                   timeout=timeout, deadline=deadline, peer=peer)
    return parse_getport(results)


def lookup_netid(host: str, transport: str) -> str:
    """The netid to ask about: ``udp``/``tcp``, with ``6`` for an IPv6 host."""
    return transport + ("6" if ":" in host else "")


def found_at(found: tuple[str, int] | None, host: str) -> tuple[str, int] | None:
    """A GETADDR answer as an address to call: a wildcard means the host we asked."""
    if found and found[0] in ("0.0.0.0", "::"):
        return host, found[1]
    return found


def lookup(
    prog: int, vers: int, host: str, transport: str, *, timeout: float = 3.0,
    deadline: Deadline | None = None, peer: str | None = None,
) -> tuple[str, int] | None:
    """Find a program's address on ``host`` (an IP literal): rpcbind v4 GETADDR,
    then, if the peer is a portmapper that refuses version 4 (IPv4 only), portmap
    v2 GETPORT. Both steps share one deadline. None if not registered."""
    deadline = deadline or Deadline(timeout)
    netid = lookup_netid(host, transport)
    try:
        found = getaddr(prog, vers, netid, host=host, deadline=deadline, peer=peer)
    except RpcRefused:
        if netid.endswith("6"):
            raise
        port = getport(prog, vers, transport, host=host, deadline=deadline, peer=peer)
        return (host, port) if port else None
    return found_at(found, host)
