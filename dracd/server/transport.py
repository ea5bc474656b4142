"""Sockets: binding every endpoint, and the UDP server for ONC RPC. No DRAC knowledge here.

Each message goes to a ``Dispatch`` function with the caller's address; the
reply is the one it returns, or the one it passes to the ``respond`` callback
later (see dispatch.Dispatcher.dispatch): no task per message. Streams (TCP,
UNIX sockets) are served by stream.StreamServer.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.values import SocketmapSpec
from ..keys import IPAddress
from ..ratelog import RateLimitedLog
from .dispatch import PENDING, PeerCred, Pending, Respond

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

#: A socket address as socket.recvfrom returns it (a tuple, or a path on a UNIX socket).
SockAddr = tuple[Any, ...] | str
#: (message, caller, port, transport, cred, respond) -> the reply now, PENDING or None (no answer).
Dispatch = Callable[[bytes, IPAddress | None, int, str, PeerCred | None, Respond], bytes | Pending | None]

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+
_PEERGROUPS_BUFFER = 1024



#: Datagrams being answered at once; beyond it new ones are dropped (clients retransmit).
MAX_UDP_IN_FLIGHT = 4096
#: Datagrams read per readiness of a UDP socket: one epoll wake-up serves a burst, and
#: the bound lets the rest of the loop (the map writer, TCP) run in between.
UDP_BATCH = 64
#: Caller addresses remembered (sockaddr text -> address object); then forgotten at once.
CALLER_CACHE = 4096


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    netid: str
    host: str
    port: int


def caller_of(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[IPAddress, int]:
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


class CallerCache:
    """The address object of a sockaddr's host text: ``ipaddress.ip_address()`` costs more
    than a DRAC ADD's checks, and MTAs call from a handful of addresses. Bounded, as a
    forger can send from many: when full it starts over."""

    def __init__(self, size: int = CALLER_CACHE) -> None:
        self.size = size
        self._known: dict[str, IPAddress] = {}

    def get(self, host: str) -> IPAddress:
        address = self._known.get(host)
        if address is None:
            if len(self._known) >= self.size:
                self._known.clear()
            address = self._known[host] = ipaddress.ip_address(host.split("%", 1)[0])
        return address


def send_datagram(sock: socket.socket, data: bytes, addr: SockAddr) -> bool:
    """Send one reply without waiting; False if it was dropped. A full send buffer drops
    it (the client retransmits), rather than queueing replies without bound."""
    try:
        sock.sendto(data, addr)
    except BlockingIOError:
        limited.warning("udp-send", "UDP send buffer full: dropping replies (clients retransmit)")
        return False
    except OSError as exc:
        log.debug("UDP reply to %s failed: %s", addr, exc)
        return False
    return True


class UdpServer:
    """One UDP socket read by hand: asyncio's datagram transport reads one datagram per
    loop iteration (an epoll per call) and answers through a task per call; here each
    readiness drains up to ``batch`` datagrams and each is answered by a plain sendto."""

    def __init__(self, sock: socket.socket, dispatch: Dispatch, *, max_in_flight: int = MAX_UDP_IN_FLIGHT,
                 batch: int = UDP_BATCH) -> None:
        self.sock = sock
        self.dispatch = dispatch
        self.max_in_flight = max_in_flight
        self.batch = batch
        #: Calls read and not answered yet (PENDING ones wait for the map).
        self.in_flight = 0
        #: For tests and debugging: readiness callbacks, datagrams read, dropped (overload or send).
        self.wakeups = 0
        self.received = 0
        self.dropped = 0
        self.closed = False
        self._callers = CallerCache()
        self._idle: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        self.wakeups += 1
        recvfrom, dispatch, callers = self.sock.recvfrom, self.dispatch, self._callers
        for _ in range(self.batch):
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # an ICMP error queued on the socket, say: it is consumed
                log.debug("UDP error: %s", exc)
                continue
            self.received += 1
            if self.in_flight >= self.max_in_flight:
                self.dropped += 1
                limited.warning("udp", "UDP overload: %d calls in progress, dropping datagrams", self.in_flight)
                continue
            # Counted before dispatch: the reply may come (through respond) before it returns.
            self.in_flight += 1
            try:
                reply = dispatch(data, callers.get(addr[0]), addr[1], "udp", None,
                                 functools.partial(self._respond, addr))
            except Exception:  # dispatch never raises; if it did, one datagram is lost, not the socket
                log.exception("UDP datagram from %s", addr)
                reply = None
            if reply is PENDING:
                continue
            self.in_flight -= 1
            if reply is not None:
                if not send_datagram(self.sock, reply, addr):
                    self.dropped += 1

    def _respond(self, addr: SockAddr, reply: bytes) -> None:
        self.in_flight -= 1
        if self._idle is not None and self.in_flight <= 0 and not self._idle.done():
            self._idle.set_result(None)
        # Once closed, calls still finish (their table changes stand) but answer no one.
        if not self.closed and not send_datagram(self.sock, reply, addr):
            self.dropped += 1

    def idle(self) -> asyncio.Future[None]:
        """Done once no call read from this socket is left to answer."""
        if self._idle is None or self._idle.done():
            self._idle = self._loop.create_future()
        if self.in_flight <= 0:
            self._idle.set_result(None)
        return self._idle

    def close(self) -> None:
        """Stop reading; the socket itself is its listener's to close."""
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())


class AdminSocketInUse(Exception):
    """Another live server listens on the admin socket's path."""


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


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on one address (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_endpoint(spec: SocketmapSpec) -> tuple[socket.socket, SocketmapSpec]:
    """A listening socket for ``inet:HOST:PORT`` or ``unix:PATH``, and where it is bound
    (an inet port 0 replaced by the port it got)."""
    if spec.kind == "unix":
        assert spec.path is not None
        return bind_unix(spec.path), spec
    sock = bind_tcp(spec.host, spec.port)
    return sock, SocketmapSpec("inet", host=spec.host, port=sock.getsockname()[1])


def serve_udp(sock: socket.socket, dispatch: Dispatch) -> UdpServer:
    return UdpServer(sock, dispatch)


def host_addresses() -> set[IPAddress]:
    """The host's own interface addresses."""
    import psutil

    found: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found
