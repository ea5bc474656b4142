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

import contextlib
import logging
import os
from pathlib import Path

from ..config.values import SocketmapSpec, parse_spec
from ..keys import IPAddress, parse_key
from ..ratelog import RateLimitedLog
from ..relay.table import RelayTable
from ..server.netstring import NetstringError, NetstringReader, encode
from ..server.stream import Framing, StreamLimits, StreamServer
from ..server.transport import bind_endpoint

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

NOTFOUND = b"NOTFOUND "
BAD_REQUEST = b"PERM bad request"
#: The reply when answering failed unexpectedly: Postfix and Sendmail retry later (451).
INTERNAL_ERROR = b"TEMP internal error"


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


#: Netstrings: a request over the length limit gets "PERM bad request", then the connection closes.
NETSTRINGS = Framing("socketmap", lambda limits: NetstringReader(), encode, (NetstringError,), BAD_REQUEST)


class SocketmapServer:
    """Every socketmap endpoint of one daemon, answering from ``table``."""

    def __init__(self, table: RelayTable, specs: tuple[str, ...], limits: StreamLimits) -> None:
        self.table = table
        self.specs = [parse_spec(spec) for spec in specs]
        self.limits = limits
        #: Where each endpoint is bound (an inet port 0 replaced by the real one).
        self.bound: list[SocketmapSpec] = []
        self.servers: list[StreamServer] = []
        self._unix_paths: list[Path] = []

    def handle(self, request: bytes, *_: object) -> bytes:
        return answer(self.table, request)

    async def start(self) -> None:
        for spec in self.specs:
            sock, bound = bind_endpoint(spec)
            self.bound.append(bound)
            if spec.path is not None:
                self._unix_paths.append(spec.path)
            self.servers.append(await StreamServer(sock, self.handle, NETSTRINGS, self.limits).start())
        if self.bound:
            log.info("socketmap on %s", ", ".join(str(spec) for spec in self.bound))

    async def close(self) -> None:
        """Stop listening and close every connection: lookups are answered at once,
        so nothing is owed."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.drain(1.0)
            server.sock.close()
        self.servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()
