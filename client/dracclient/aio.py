"""asyncio twins of :func:`dracclient.add` and :func:`dracclient.ping`.

Same signatures, same semantics, same errors as the blocking versions, for
MRAs that run an event loop::

    from dracclient import aio
    await aio.add("192.0.2.7", servers=["192.0.2.1", "192.0.2.2"], timeout=2.0)

UDP runs on a datagram endpoint that retransmits the same message with a
doubling interval and keeps only the datagram carrying our xid; TCP runs on
``asyncio.open_connection`` with :class:`~dracclient.record.RecordReader`
(through :class:`~dracclient.rpccall.StreamReply`). Every encoder, decoder
and check comes from :mod:`dracclient.rpccall`, :mod:`dracclient.rpcbind`
and :mod:`dracclient.client`; only the I/O is written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from . import rpcbind
from .client import (
    StreamOrDatagram,
    addstat_error,
    check_options,
    dracd_peer,
    finish,
    not_registered,
    prepare_add,
    rpcbind_peer,
    server_host,
)
from .drac import DRACPROC_ADD, DRACPROC_NULL, DRACPROG, IPAddress
from .errors import DracError, RpcRefused, ServerResult
from .record import encode_record
from .rpccall import (
    Address,
    Deadline,
    StreamReply,
    Transport,
    check_reply,
    failure,
    family,
    is_reply_to,
    resend_intervals,
    start_call,
)
from .xdr import XdrError

__all__ = ["add", "call", "lookup", "ping"]


class _Datagrams(asyncio.DatagramProtocol):
    """Completes ``reply`` with the first datagram carrying ``xid``, or with the socket's error
    (e.g. ECONNREFUSED when an ICMP port unreachable comes back)."""

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if is_reply_to(data, self.xid) and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.reply.done():
            self.reply.set_exception(exc)


async def call(
    address: Address,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    *,
    transport: Transport = "udp",
    timeout: float = 5.0,
    deadline: Deadline | None = None,
    retries: int | None = None,
    source: tuple[str, int] | None = None,
    peer: str | None = None,
) -> bytes:
    """The asyncio twin of :func:`dracclient.rpccall.call`: same arguments, results and errors."""
    deadline, peer, xid, message = start_call(address, prog, vers, proc, args, timeout, deadline, peer)
    try:
        if transport == "udp":
            assert isinstance(address, tuple)
            data = await _udp(address, message, xid, deadline, retries, source)
        else:
            data = await _stream(address, transport, message, xid, deadline, source)
    except (OSError, EOFError, XdrError) as exc:
        raise failure(exc, peer, deadline) from None
    return check_reply(data, peer)


async def _udp(
    address: tuple[str, int],
    message: bytes,
    xid: int,
    deadline: Deadline,
    retries: int | None,
    source: tuple[str, int] | None,
) -> bytes:
    loop = asyncio.get_running_loop()
    endpoint, protocol = await loop.create_datagram_endpoint(
        lambda: _Datagrams(xid), remote_addr=address, local_addr=source, family=family(address[0]))
    try:
        for interval in resend_intervals(retries):
            wait = min(interval, deadline.left())
            endpoint.sendto(message)
            done, _ = await asyncio.wait({protocol.reply}, timeout=wait)
            if done:
                return protocol.reply.result()
        raise TimeoutError()
    finally:
        endpoint.close()
        if protocol.reply.done() and not protocol.reply.cancelled():
            protocol.reply.exception()  # retrieved: a late error must not be logged as unhandled


async def _stream(
    address: Address,
    transport: Transport,
    message: bytes,
    xid: int,
    deadline: Deadline,
    source: tuple[str, int] | None,
) -> bytes:
    async with asyncio.timeout(deadline.left()):
        if transport == "unix":
            assert isinstance(address, str)
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            assert isinstance(address, tuple)
            reader, writer = await asyncio.open_connection(
                address[0], address[1], family=family(address[0]), local_addr=source)
        try:
            writer.write(encode_record(message))
            await writer.drain()
            replies = StreamReply(xid)
            while (record := replies.feed(await reader.read(65536))) is None:
                pass
        finally:
            writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return record


async def lookup(
    prog: int, vers: int, host: str, transport: StreamOrDatagram, *, deadline: Deadline, peer: str | None = None
) -> tuple[str, int] | None:
    """The asyncio twin of :func:`dracclient.rpcbind.lookup` (GETADDR, then portmap GETPORT)."""
    netid = rpcbind.lookup_netid(host, transport)
    _, via = rpcbind.netid_route(netid, host)
    rpcb = (host, rpcbind.RPCBIND_PORT)
    try:
        results = await call(rpcb, rpcbind.RPCBPROG, rpcbind.RPCBVERS4, rpcbind.RPCBPROC_GETADDR,
                             rpcbind.getaddr_args(prog, vers, netid), transport=via, deadline=deadline, peer=peer)
    except RpcRefused:
        if netid.endswith("6"):
            raise
        results = await call(rpcb, rpcbind.RPCBPROG, rpcbind.PMAPVERS, rpcbind.PMAPPROC_GETPORT,
                             rpcbind.getport_args(prog, vers, transport), deadline=deadline, peer=peer)
        port = rpcbind.parse_getport(results)
        return (host, port) if port else None
    return rpcbind.found_at(rpcbind.parse_getaddr(results), host)


async def _endpoint(
    server: str, host: str, vers: int, transport: StreamOrDatagram, port: int | None, prog: int, deadline: Deadline
) -> tuple[str, int]:
    if port is not None:
        return host, port
    found = await lookup(prog, vers, host, transport, deadline=deadline, peer=rpcbind_peer(server))
    if found is None:
        raise not_registered(server, prog, vers, transport)
    return found


async def add(
    address: str | IPAddress,
    *,
    servers: str | Sequence[str] = "localhost",
    timeout: float = 5.0,
    retries: int | None = None,
    transport: StreamOrDatagram = "udp",
    port: int | None = None,
    prog: int = DRACPROG,
    source: tuple[str, int] | None = None,
) -> list[ServerResult]:
    """The asyncio twin of :func:`dracclient.add`: same arguments, results and errors.

    All servers are called concurrently within one deadline. Returns one
    :class:`~dracclient.client.ServerResult` per server if at least one took
    the address; otherwise raises the first server's error with ``.results``.
    """
    request = prepare_add(address, servers, timeout=timeout, retries=retries, transport=transport, port=port,
                          prog=prog)
    deadline = Deadline(timeout)

    async def one(server: str, host: str) -> ServerResult:
        try:
            endpoint = await _endpoint(server, host, request.vers, transport, port, prog, deadline)
            results = await call(endpoint, prog, request.vers, DRACPROC_ADD, request.args, transport=transport,
                                 deadline=deadline, retries=retries, source=source, peer=dracd_peer(server))
        except DracError as exc:
            return ServerResult(server, exc)
        return ServerResult(server, addstat_error(results, server, request.address))

    outcomes = await asyncio.gather(*(one(server, host) for server, host in request.targets))
    return finish(list(outcomes))


async def ping(
    server: str = "localhost",
    *,
    vers: int = 1,
    timeout: float = 5.0,
    transport: StreamOrDatagram = "udp",
    port: int | None = None,
    prog: int = DRACPROG,
) -> float:
    """The asyncio twin of :func:`dracclient.ping`: the NULL procedure's round trip in seconds."""
    host = server_host(server)
    check_options(timeout=timeout, retries=None, transport=transport, port=port, prog=prog, vers=vers)
    deadline = Deadline(timeout)
    endpoint = await _endpoint(server, host, vers, transport, port, prog, deadline)
    started = time.monotonic()
    await call(endpoint, prog, vers, DRACPROC_NULL, transport=transport, deadline=deadline,
               peer=dracd_peer(server))
    return time.monotonic() - started
