"""One framed-stream server for every TCP and UNIX-socket endpoint of dracd.

ONC RPC over TCP and the admin socket (record marking) and the socketmap
(netstrings) differ only in how bytes become messages (a ``Framing``) and in
who answers them (a ``Dispatch``); what a client may cost the server is decided
here, once, for all of them:

- Connections: never more than ``max_connections`` per endpoint, counted when
  the kernel hands the socket over (``connection_made``), not when a task gets
  round to it. At the limit the quietest connection that owes no answer makes
  room at once (silent clients cannot lock others out); if every one is busy,
  the newcomer is closed.
- Backpressure: a connection stops being read while the replies it has not
  taken exceed the transport's high-water mark, or while ``max_in_flight`` of
  its calls are unanswered; a client that never reads costs that much, no more.
- Time: a message must be complete within ``record_timeout`` of its first
  byte, however slowly it trickles in; a connection with nothing started and
  nothing owed is closed after ``idle_timeout``, and so is one whose client has
  not taken a reply for that long.

A ``asyncio.Protocol`` per connection, no task and no StreamReader: one
``data_received`` feeds the framer and dispatches what is whole, and the
replies of one loop iteration go out in one write.

A *conversation* framing (HTTP/1.1, see http.py) answers in request order: its
framer hands out one message at a time and frames each reply itself (status,
keep-alive); the connection is not read while that message is unanswered, and
the messages already buffered are taken one by one as the replies go out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from dracclient.record import RecordReader, encode_record
from dracclient.xdr import XdrError

from ..keys import IPAddress
from ..ratelog import RateLimitedLog
from .dispatch import PENDING, PeerCred
from .transport import Dispatch, caller_of

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+
_PEERGROUPS_BUFFER = 1024
#: Unsent reply bytes of one connection above which it is not read (the transport's high-water mark).
WRITE_HIGH_WATER = 64 * 1024
#: Connections accepted per readiness of a listening socket (and its listen backlog): also
#: how far past the limit the descriptors of one endpoint may go for a moment, twice over
#: (accepted and not yet counted; turned away and not yet closed).
ACCEPT_BATCH = 64
#: Descriptors kept for dracd's own files (map, spare, journal, state, rpcbind, Redis, logs)
#: beyond those open when the limits are fitted.
RESERVE = 64


@dataclass(frozen=True)
class StreamLimits:
    """What one TCP or UNIX-socket client may cost us."""

    max_record: int = 64 * 1024
    max_connections: int = 256
    #: A connection with no partial record and no answer owed is closed after this long.
    idle_timeout: float = 120.0
    #: A record must be complete within this long of its first byte (slow senders).
    record_timeout: float = 10.0
    #: Calls of one connection answered concurrently; reading waits beyond it.
    max_in_flight: int = 64


class Framer(Protocol):
    """Feed bytes, get whole messages; ``pending`` is true while a message has begun."""

    @property
    def pending(self) -> int | bool: ...

    def feed(self, data: bytes) -> list[bytes]: ...


class Conversation(Framer, Protocol):
    """A framer that answers in order: ``feed`` and ``next`` give at most one message
    while none is owed; ``answer`` frames the reply to it (then ``closing`` says the
    connection must close once it is sent); errors carry their own response, ``wire``."""

    closing: bool

    def next(self) -> list[bytes]: ...

    def answer(self, reply: bytes) -> bytes: ...


@dataclass(frozen=True)
class Framing:
    """How one protocol cuts a byte stream into messages and frames its replies."""

    #: For log lines: "rpc" or "socketmap".
    name: str
    reader: Callable[[StreamLimits], Framer]
    frame: Callable[[bytes], bytes]
    #: What ``Framer.feed`` raises on bytes that cannot be framed.
    errors: tuple[type[Exception], ...]
    #: Sent (framed) before closing a connection whose framing broke; None: just close.
    refusal: bytes | None = None
    #: The framer is a Conversation: one message at a time, replies framed by it, in order.
    conversation: bool = False


RPC_RECORDS = Framing("rpc", lambda limits: RecordReader(limits.max_record), encode_record, (XdrError,))


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


def fit_descriptors(endpoints: int, max_connections: int) -> int:
    """The max_connections each of ``endpoints`` stream endpoints may have so that all
    of them full still leave RESERVE descriptors. The soft RLIMIT_NOFILE is raised as far
    as that needs and the hard limit allows; beyond it, the limit is lowered (logged)."""
    if endpoints == 0:
        return max_connections
    open_now = len(os.listdir("/proc/self/fd"))
    need = open_now + RESERVE + endpoints * (max_connections + 2 * ACCEPT_BATCH)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft >= need:
        return max_connections
    fitted = max(1, (soft - open_now - RESERVE) // endpoints - 2 * ACCEPT_BATCH)
    log.warning("max_connections %d on %d stream endpoints needs %d descriptors, more than the open-files "
                "limit %d (LimitNOFILE=): at most %d connections on each", max_connections, endpoints, need,
                soft, fitted)
    return fitted


class StreamConnection(asyncio.Protocol):
    """One client of a StreamServer: frame, dispatch, answer, within the limits."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.limits = server.limits
        self.framing = server.framing
        self.framer = server.framing.reader(server.limits)
        self.conversation = cast(Conversation, self.framer) if server.framing.conversation else None
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.cred: PeerCred | None = None
        self.caller: IPAddress | None = None
        self.port = 0
        self.kind = "tcp"
        #: Calls read and not answered yet.
        self.in_flight = 0
        #: Replies of this loop iteration, written together by _flush.
        self._outbox: list[bytes] = []
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self.closed = False
        self.last_activity = self.loop.time()
        #: Ties of last_activity go to the older connection (uvloop's clock moves once per iteration).
        self.serial = next(server.serials)
        #: When the message now pending must be complete (loop time), None if none is.
        self._record_deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __str__(self) -> str:
        return f"{self.kind} connection from {self.caller or self.cred}"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without deriving from it.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        try:
            if sock.family == socket.AF_UNIX:
                self.kind = "unix"
                self.cred = peer_cred(sock)
            else:
                self.caller, self.port = caller_of(transport.get_extra_info("peername"))
        except (OSError, ValueError, TypeError):
            transport.abort()  # gone before we looked (peername None, ENOTCONN)
            self.closed = True
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self.server.admit(self):
            return
        self._arm(self.loop.time() + self.limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = now = self.loop.time()
        try:
            messages = self.framer.feed(data)
        except self.framing.errors as exc:
            self._refuse(exc)
            return
        for message in messages:
            self._dispatch(message)
        if self.conversation is not None:
            messages = messages + self._converse()
            if self.closed:
                return
        self._track(now, bool(messages))
        self._steer_reading()

    def _track(self, now: float, took: bool) -> None:
        """Start or stop the clock of a message begun and not yet whole."""
        if not self.framer.pending:
            self._record_deadline = None
        elif self._record_deadline is None or took:
            # A new message began in this read: its clock starts now.
            self._record_deadline = now + self.limits.record_timeout
            self._arm(self._record_deadline)

    def _refuse(self, exc: Exception) -> None:
        limited.warning(f"framing-{self.framing.name}-{self.kind}", "closing %s: %s", self, exc)
        wire = getattr(exc, "wire", None)
        if isinstance(wire, bytes):
            if not self._outbox:
                self.loop.call_soon(self._flush)
            self._outbox.append(wire)
        elif self.framing.refusal is not None:
            self._send(self.framing.refusal)
        self._close_after_flush()

    def _converse(self) -> list[bytes]:
        """A conversation once nothing is owed: close if its last reply said so, else take
        the messages already buffered, one at a time, while they are answered at once."""
        conversation = self.conversation
        assert conversation is not None
        taken: list[bytes] = []
        while not self.closed and not self.in_flight:
            if conversation.closing:
                self._close_after_flush()
                break
            try:
                messages = conversation.next()
            except self.framing.errors as exc:
                self._refuse(exc)
                break
            if not messages:
                break
            taken += messages
            for message in messages:
                self._dispatch(message)
        return taken

    def eof_received(self) -> bool:
        """Half-closed by the client: answer what is in flight, then close."""
        self._eof = True
        if not self.in_flight:
            self._close_after_flush()
        return True  # keep the transport open for the replies

    def pause_writing(self) -> None:
        self._write_paused = True
        self._steer_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_activity = self.loop.time()  # the client took replies: not idle
        self._steer_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._outbox.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.forget(self)

    # Calls and replies

    def _dispatch(self, message: bytes) -> None:
        self.in_flight += 1  # before dispatch: respond may run before it returns
        try:
            reply = self.server.handle(message, self.caller, self.port, self.kind, self.cred, self._respond)
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not take the connection's peers down
            limited.error(f"handler-{self.framing.name}", "handling a message on %s failed", self, exc_info=exc)
            reply = None
        if reply is PENDING:
            return
        self.in_flight -= 1
        if reply is not None:
            self._send(reply)
        elif self.conversation is not None:
            self._close_after_flush()  # a conversation cannot go on unanswered

    def _respond(self, reply: bytes) -> None:
        self.in_flight -= 1
        if self.closed:
            return
        self._send(reply)
        if self.conversation is not None and not self._eof:
            took = bool(self._converse())
            if self.closed:
                return
            self._track(self.loop.time(), took)
        if self._eof and not self.in_flight:
            self._close_after_flush()
        else:
            self._steer_reading()

    def _send(self, reply: bytes) -> None:
        """Queue a reply for the end of this loop iteration: one map write answers many
        ADDs at once, and one write() of them all is one send() instead of one each."""
        if not self._outbox:
            self.loop.call_soon(self._flush)
        conversation = self.conversation
        self._outbox.append(self.framing.frame(reply) if conversation is None else conversation.answer(reply))

    def _flush(self) -> None:
        if self._outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def _steer_reading(self) -> None:
        """Read while the client takes its replies and owes us few answers."""
        assert self.transport is not None
        # A conversation is not read while a message is owed: its answers go in order.
        limit = 1 if self.conversation is not None else self.limits.max_in_flight
        stop = self._write_paused or self.in_flight >= limit
        if stop == self._read_paused or self.closed or self.transport.is_closing():
            return
        self._read_paused = stop
        if stop:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # Closing

    def _close_after_flush(self) -> None:
        if self.closed:
            return
        self._flush()
        self.closed = True
        assert self.transport is not None
        self.transport.close()
        self.server.forget(self)

    def abort(self) -> None:
        """Close now, dropping unsent replies (eviction, a stalled stop)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.server.forget(self)

    def close_when_idle(self) -> None:
        """At stop: close now if nothing is owed, else once the answers are out."""
        if not self.in_flight:
            self._close_after_flush()
        else:
            self._eof = True

    # Timeouts: one timer, moved only when a deadline comes earlier than it.

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._check_time)

    def _check_time(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self._record_deadline is not None and now >= self._record_deadline:
            log.debug("closing %s: a message did not complete within %g s", self, self.limits.record_timeout)
            self.abort()
            return
        idle_until = self.last_activity + self.limits.idle_timeout
        if now >= idle_until and (not self.in_flight or self._write_paused):
            log.debug("closing idle or stalled %s", self)
            self.abort()
            return
        deadlines = [idle_until if now < idle_until else now + self.limits.idle_timeout]
        if self._record_deadline is not None:
            deadlines.append(self._record_deadline)
        self._arm(min(deadlines))


class StreamServer:
    """One listening socket (TCP or UNIX: the socket tells), one framing, one handler."""

    def __init__(self, sock: socket.socket, handle: Dispatch, framing: Framing, limits: StreamLimits) -> None:
        self.sock = sock
        self.handle = handle
        self.framing = framing
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.active: set[StreamConnection] = set()
        self.serials = itertools.count()
        self._server: asyncio.Server | None = None

    async def start(self) -> StreamServer:
        if self.sock.family == socket.AF_UNIX:
            self._server = await self.loop.create_unix_server(lambda: StreamConnection(self), sock=self.sock,
                                                              backlog=ACCEPT_BATCH)
        else:
            self._server = await self.loop.create_server(lambda: StreamConnection(self), sock=self.sock,
                                                         backlog=ACCEPT_BATCH)
        return self

    def admit(self, connection: StreamConnection) -> bool:
        """Count a new connection in, making room if need be; False: it was closed instead."""
        if len(self.active) >= self.limits.max_connections:
            quiet = [c for c in self.active if not c.in_flight]
            if not quiet:
                limited.warning(f"connections-{self.framing.name}",
                                "refusing a %s: %d busy connections open", connection, len(self.active))
                connection.abort()
                return False
            oldest = min(quiet, key=lambda c: (c.last_activity, c.serial))
            limited.warning(f"evict-{self.framing.name}", "%d %s connections open: closing the quietest, %s",
                            len(self.active), self.framing.name, oldest)
            oldest.abort()  # leaves self.active now, so the next accept picks another
        self.active.add(connection)
        return True

    def forget(self, connection: StreamConnection) -> None:
        self.active.discard(connection)

    def close(self) -> None:
        """Stop accepting; connections finish what they owe (see drain)."""
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Close every connection once its answers are out; abort what is left after
        ``timeout``. True if all finished in time."""
        for connection in list(self.active):
            connection.close_when_idle()
        deadline = self.loop.time() + timeout
        while self.active and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        finished = not self.active
        for connection in list(self.active):
            connection.abort()
        return finished
