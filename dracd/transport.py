"""asyncio UDP and TCP endpoints for ONC RPC. No DRAC knowledge here.

Both hand each message to a ``Dispatch`` coroutine with the caller's
address and send back whatever it returns. TCP uses record marking with a
size limit and an idle timeout.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from dracclient.record import RecordReader, encode_record
from dracclient.xdr import XdrError

from .keys import IPAddress

log = logging.getLogger(__name__)

Dispatch = Callable[[bytes, IPAddress, int, str], Awaitable[bytes | None]]

MAX_RECORD = 64 * 1024
IDLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    netid: str
    host: str
    port: int


def _caller(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[IPAddress, int]:
    return ipaddress.ip_address(sockaddr[0].split("%", 1)[0]), sockaddr[1]


def bind_listeners(hosts: tuple[str, ...], port: int, attempts: int = 20) -> list[Listener]:
    """Bind UDP and TCP on every host, all on one port.

    With port 0 the kernel picks the first socket's port and the others
    follow it; if one of them finds that port taken, start over.
    """
    for _ in range(attempts):
        listeners: list[Listener] = []
        chosen = port
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
                    sock = socket.socket(family, kind)
                    listeners.append(Listener(sock, name, host, 0))
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if kind == socket.SOCK_STREAM:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((host, chosen))
                    chosen = sock.getsockname()[1]
                    if kind == socket.SOCK_STREAM:
                        sock.listen(128)
                    sock.setblocking(False)
        except OSError as exc:
            for listener in listeners:
                listener.sock.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            raise
        return [
            Listener(item.sock, item.netid + ("6" if ":" in item.host else ""), item.host, chosen)
            for item in listeners
        ]
    raise OSError(errno.EADDRINUSE, "could not find one free port for every listener")


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        caller, port = _caller(addr)
        reply = await self.dispatch(data, caller, port, "udp")
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class TcpConnection:
    """One TCP client: read records, answer each (concurrently), close when idle."""

    def __init__(self, dispatch: Dispatch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.dispatch = dispatch
        self.reader = reader
        self.writer = writer
        self.caller, self.port = _caller(writer.get_extra_info("peername"))
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        records = RecordReader(MAX_RECORD)
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), IDLE_TIMEOUT)
                if not data:
                    break
                for record in records.feed(data):
                    task = asyncio.get_running_loop().create_task(self._answer(record))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            if self.tasks:
                await asyncio.wait(self.tasks)
        except XdrError as exc:
            log.info("closing TCP connection from %s: %s", self.caller, exc)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.writer.close()

    async def _answer(self, record: bytes) -> None:
        reply = await self.dispatch(record, self.caller, self.port, "tcp")
        if reply is not None and not self.writer.is_closing():
            self.writer.write(encode_record(reply))


async def serve_tcp(sock: socket.socket, dispatch: Dispatch) -> asyncio.Server:

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await TcpConnection(dispatch, reader, writer).serve()

    server = await asyncio.start_server(accept, sock=sock)
    return server


async def serve_udp(sock: socket.socket, dispatch: Dispatch) -> tuple[asyncio.DatagramTransport, UdpProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: UdpProtocol(dispatch), sock=sock)
    return transport, protocol
