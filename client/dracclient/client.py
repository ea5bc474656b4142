"""The client API that MRA hooks call after a successful login."""

from __future__ import annotations

import ipaddress

from . import rpcbind
from .drac import DRACPROC_ADD, DRACPROC_NULL, DRACPROG, AddStat, decode_addstat, encode_add_args, version_for
from .errors import BadReply, PermissionRefused, ServerError, Unavailable
from .rpccall import Transport, call
from .xdr import XdrError


def _endpoint(
    server: str, vers: int, transport: Transport, port: int | None, prog: int, timeout: float
) -> tuple[str, int]:
    if port is not None:
        return server, port
    found = rpcbind.lookup(prog, vers, server, transport, timeout=timeout)
    if found is None:
        raise Unavailable(f"program {prog} version {vers} is not registered with rpcbind on {server}")
    return found


def add(
    server: str,
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    timeout: float = 5.0,
    transport: Transport = "udp",
    port: int | None = None,
    prog: int = DRACPROG,
) -> None:
    """Authorize ``address`` for relaying on the DRAC server ``server``.

    The protocol version follows the address family (1 for IPv4, 2 for
    IPv6); an IPv4-mapped IPv6 address is sent as IPv4. Without ``port`` the
    server's rpcbind is asked. Returns on ADD_SUCCESS; raises a
    :class:`~dracclient.errors.DracError` subclass otherwise.
    """
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    vers = version_for(addr)
    endpoint = _endpoint(server, vers, transport, port, prog, timeout)
    results = call(endpoint, prog, vers, DRACPROC_ADD, encode_add_args(addr), transport=transport, timeout=timeout)
    try:
        stat = decode_addstat(results)
    except XdrError as exc:
        raise BadReply(f"bad ADD result: {exc}") from None
    if stat == AddStat.ADD_PERM:
        raise PermissionRefused(f"{server} refused this host (ADD_PERM): check dracd.allow")
    if stat != AddStat.ADD_SUCCESS:
        raise ServerError(f"{server} could not record {addr} ({stat.name})")


def ping(
    server: str, *, vers: int = 1, timeout: float = 5.0, transport: Transport = "udp",
    port: int | None = None, prog: int = DRACPROG,
) -> None:
    """Call the NULL procedure; raises like :func:`add` if the server does not answer."""
    endpoint = _endpoint(server, vers, transport, port, prog, timeout)
    call(endpoint, prog, vers, DRACPROC_NULL, transport=transport, timeout=timeout)
