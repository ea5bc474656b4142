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
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dracclient.record import RecordReader, encode_record
from dracclient.xdr import XdrError

from .dispatch import PeerCred
from .keys import IPAddress
from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

Dispatch = Callable[[bytes, IPAddress | None, int, str, PeerCred | None], Awaitable[bytes | None]]

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+
_PEERGROUPS_BUFFER = 1024



@dataclass(frozen=True)
class StreamLimits:
    """What one TCP or UNIX-socket client may cost us."""

    max_record: int = 64 * 1024
    max_connections: int = 256
    #: A connection with no partial record is closed after this long.
    idle_timeout: float = 120.0
    #: A record that has started must be complete within this long (slow senders).
    record_timeout: float = 10.0
    #: Calls of one connection answered concurrently; reading waits beyond it.
    max_in_flight: int = 64


#: Datagrams being answered at once; beyond it new ones are dropped (clients retransmit).
MAX_UDP_IN_FLIGHT = 4096


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
        if len(self.tasks) >= MAX_UDP_IN_FLIGHT:
            limited.warning("udp", "UDP overload: %d calls in progress, dropping datagrams", len(self.tasks))
            return
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        caller, port = _caller(addr)
        reply = await self.dispatch(data, caller, port, "udp", None)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class AdminSocketInUse(Exception):
    """Another live server listens on the admin socket's path."""


def peer_cred(sock: socket.socket) -> PeerCred:
    """Who is at the other end of a UNIX socket, as the kernel says."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return PeerCred(pid, uid, gid, _peer_groups(sock, pid))


def _peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """Supplementary groups: SO_PEERGROUPS (Python caps its buffer at 1024 bytes,
    256 groups), else the peer's /proc status for callers in more groups."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BUFFER)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(gid) for gid in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def bind_unix(path: Path) -> socket.socket:
    """Listen on ``path``, replacing a stale socket but never a live one.

    The socket is mode 0666 on purpose: access is decided per call from the
    caller's credentials, so a refused caller gets the protocol's refusal.
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise AdminSocketInUse(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                os.unlink(path)
            else:
                raise AdminSocketInUse(f"{path} is in use by another server")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class StreamConnection:
    """One TCP or UNIX-socket client: read records, answer each (concurrently), close when idle."""

    def __init__(
        self, dispatch: Dispatch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: StreamLimits
    ) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("socket")
        self.cred: PeerCred | None = None
        self.caller: IPAddress | None = None
        self.port = 0
        if sock.family == socket.AF_UNIX:
            self.transport = "unix"
            self.cred = peer_cred(sock)
        else:
            self.transport = "tcp"
            self.caller, self.port = _caller(writer.get_extra_info("peername"))
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_activity = time.monotonic()

    def close(self) -> None:
        self.writer.close()

    async def serve(self) -> None:
        limits = self.limits
        records = RecordReader(limits.max_record)
        try:
            while True:
                if len(self.tasks) >= limits.max_in_flight:
                    await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                timeout = limits.record_timeout if records.pending else limits.idle_timeout
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                self.last_activity = time.monotonic()
                for record in records.feed(data):
                    task = asyncio.get_running_loop().create_task(self._answer(record))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            if self.tasks:
                await asyncio.wait(self.tasks)
        except XdrError as exc:
            limited.warning(f"record-{self.transport}", "closing %s connection from %s: %s",
                            self.transport, self.caller or self.cred, exc)
        except TimeoutError:
            log.debug("closing idle or stalled %s connection from %s", self.transport, self.caller or self.cred)
        except ConnectionError:
            pass
        finally:
            self.writer.close()

    async def _answer(self, record: bytes) -> None:
        reply = await self.dispatch(record, self.caller, self.port, self.transport, self.cred)
        if reply is not None and not self.writer.is_closing():
            self.writer.write(encode_record(reply))


async def serve_stream(sock: socket.socket, dispatch: Dispatch, limits: StreamLimits) -> asyncio.Server:
    """Serve TCP or a UNIX socket: the connection tells which.

    At max_connections a new client does not wait for idle ones to time out:
    the connection that has been quiet longest (and owes no answer) makes room,
    so clients that connect and send nothing cannot lock others out.
    """
    active: set[StreamConnection] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = StreamConnection(dispatch, reader, writer, limits)
        if len(active) >= limits.max_connections:
            quiet = [c for c in active if not c.tasks]
            if not quiet:
                limited.warning("connections", "refusing a connection: %d busy connections open", len(active))
                writer.close()
                return
            oldest = min(quiet, key=lambda c: c.last_activity)
            limited.warning("evict", "%d connections open: closing the quietest, from %s",
                            len(active), oldest.caller or oldest.cred)
            oldest.close()
        active.add(connection)
        try:
            await connection.serve()
        finally:
            active.discard(connection)

    if sock.family == socket.AF_UNIX:
        return await asyncio.start_unix_server(accept, sock=sock)
    return await asyncio.start_server(accept, sock=sock)


async def serve_udp(sock: socket.socket, dispatch: Dispatch) -> tuple[asyncio.DatagramTransport, UdpProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: UdpProtocol(dispatch), sock=sock)
    return transport, protocol
