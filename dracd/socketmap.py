"""Live lookups for the MTAs over the socketmap protocol.

Postfix ``socketmap:inet:HOST:PORT:NAME`` / ``socketmap:unix:PATH:NAME``
(socketmap_table(5)) and Sendmail ``K... socket`` send one netstring per
lookup, ``NAME KEY``, and read one back: ``OK VALUE``, ``NOTFOUND ``,
``TEMP reason`` or ``PERM reason``. dracd serves one table, so NAME is not
checked: any name gets the relay table. The key follows the map's rules
(DESIGN.md §3): lower-cased, Postfix's compressed and Sendmail's ``ipv6:``
full IPv6 forms both resolve, and only a validated unicast address can match.
The value is the expiry in epoch seconds; an entry is found while its expiry
is later than now, to the second, whatever the expiry loop has done yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .keys import IPAddress, parse_key
from .netstring import NetstringError, NetstringReader, encode
from .ratelog import RateLimitedLog
from .table import RelayTable
from .transport import StreamLimits, bind_unix

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

NOTFOUND = b"NOTFOUND "
BAD_REQUEST = b"PERM bad request"
#: The reply when answering failed unexpectedly: Postfix and Sendmail retry later (451).
INTERNAL_ERROR = b"TEMP internal error"


@dataclass(frozen=True)
class SocketmapSpec:
    """Where to serve: ``inet:HOST:PORT`` (port 0: any free port) or ``unix:PATH``."""

    kind: str
    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_spec(text: str) -> SocketmapSpec:
    """``inet:HOST:PORT`` (IPv6 HOST in brackets or not) or ``unix:PATH``; ValueError otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if sep and kind == "unix" and rest:
        return SocketmapSpec("unix", path=Path(rest))
    if sep and kind == "inet":
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                pass
            else:
                return SocketmapSpec("inet", host=str(address), port=int(port))
    raise ValueError(f"{text!r}: expected inet:ADDR:PORT (e.g. inet:127.0.0.1:8800) or unix:PATH")


def answer(table: RelayTable, request: bytes) -> bytes:
    """The reply to one request payload ``NAME KEY``, whatever its bytes: a bug met on the
    way is a TEMP reply and one log line a minute, never a dropped connection."""
    try:
        return _answer(table, request)
    except Exception as exc:
        limited.error("socketmap-error", "socketmap request %r failed, answered TEMP: %r",
                      request[:80], exc, exc_info=exc)
        return INTERNAL_ERROR


def _answer(table: RelayTable, request: bytes) -> bytes:
    name, sep, key = request.partition(b" ")
    if not sep or not name or not key:
        return BAD_REQUEST
    entry = parse_key(key.lower())
    if entry is None:
        return NOTFOUND
    # A host is found through a network entry that holds it too: one exact query
    # answers, whatever Postfix's partial lookups of the compressed text would give.
    expiry = table.lookup(entry) if isinstance(entry, IPAddress) else table.get(entry)
    if expiry is None or expiry <= table.clock():
        return NOTFOUND
    return b"OK " + str(expiry).encode()


class _Connection:
    def __init__(self, table: RelayTable, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 limits: StreamLimits) -> None:
        self.table = table
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.last_activity = time.monotonic()

    def close(self) -> None:
        self.writer.close()

    async def serve(self) -> None:
        requests = NetstringReader()
        try:
            while True:
                timeout = self.limits.record_timeout if requests.pending else self.limits.idle_timeout
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                self.last_activity = time.monotonic()
                try:
                    payloads = requests.feed(data)
                except NetstringError as exc:
                    limited.warning("socketmap-framing", "closing socketmap connection: %s", exc)
                    self.writer.write(encode(BAD_REQUEST))
                    await self.writer.drain()
                    break
                for payload in payloads:
                    self.writer.write(encode(answer(self.table, payload)))
                await self.writer.drain()
        except TimeoutError:
            log.debug("closing idle or stalled socketmap connection")
        except ConnectionError:
            pass
        finally:
            self.writer.close()


class SocketmapServer:
    """Every socketmap endpoint of one daemon, answering from ``table``."""

    def __init__(self, table: RelayTable, specs: tuple[str, ...], limits: StreamLimits) -> None:
        self.table = table
        self.specs = [parse_spec(spec) for spec in specs]
        self.limits = limits
        #: Where each endpoint is bound (an inet port 0 replaced by the real one).
        self.bound: list[SocketmapSpec] = []
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[Path] = []
        self._active: set[_Connection] = set()

    async def start(self) -> None:
        for spec in self.specs:
            if spec.kind == "unix":
                assert spec.path is not None
                sock = bind_unix(spec.path)
                self._unix_paths.append(spec.path)
                self._servers.append(await asyncio.start_unix_server(self._accept, sock=sock))
                self.bound.append(spec)
            else:
                sock = _bind_inet(spec.host, spec.port)
                port = sock.getsockname()[1]
                self._servers.append(await asyncio.start_server(self._accept, sock=sock))
                self.bound.append(SocketmapSpec("inet", host=spec.host, port=port))
        if self.bound:
            log.info("socketmap on %s", ", ".join(str(spec) for spec in self.bound))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self.table, reader, writer, self.limits)
        if len(self._active) >= self.limits.max_connections:
            # MTAs keep their connections open between lookups: the quietest makes room.
            oldest = min(self._active, key=lambda c: c.last_activity)
            limited.warning("socketmap-evict", "%d socketmap connections open: closing the quietest",
                            len(self._active))
            oldest.close()
        self._active.add(connection)
        try:
            await connection.serve()
        finally:
            self._active.discard(connection)

    async def close(self) -> None:
        """Stop listening and close every connection: lookups never need draining."""
        for server in self._servers:
            server.close()
        for connection in list(self._active):
            connection.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()


def _bind_inet(host: str, port: int) -> socket.socket:
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
