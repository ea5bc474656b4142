"""Blocking ONC RPC calls over UDP, TCP and UNIX stream sockets.

One absolute :class:`Deadline` covers the whole call (and can be shared by
several calls, e.g. an rpcbind lookup and the call it leads to). UDP
retransmits the very same message, so the same xid, with a doubling interval
and ignores datagrams that answer something else; TCP reads records until
the one answering our xid arrives.

The pieces without I/O (deadline, retransmission schedule, reply matching,
reply checking, error translation) are shared with :mod:`dracclient.aio`.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from typing import Literal

from .errors import BadReply, DracError, RpcRefused, RpcTimeout, Unavailable
from .record import RecordReader, encode_record
from .rpc import AcceptStat, ReplyStat, decode_reply, encode_call
from .xdr import XdrError

Transport = Literal["udp", "tcp", "unix"]
Address = tuple[str, int] | str
#: Replies this client reads are small; this bounds what a bad server can make us buffer.
MAX_REPLY = 1 << 24
#: Seconds before the first UDP retransmission; each later one waits twice as long.
FIRST_RETRY = 0.25


class Deadline:
    """One absolute point in time (``time.monotonic``) by which a call must end."""

    __slots__ = ("timeout", "at")

    def __init__(self, timeout: float) -> None:
        if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.at = time.monotonic() + self.timeout

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def left(self) -> float:
        """Seconds left; raises :class:`TimeoutError` once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        return left


def new_xid() -> int:
    return int.from_bytes(os.urandom(4), "big")


def resend_intervals(retries: int | None) -> Iterator[float]:
    """How long to wait after each UDP send before sending again.

    ``retries`` caps the retransmissions (None: as many as the deadline
    allows); after the last one the wait is infinite, i.e. up to the deadline.
    """
    interval = FIRST_RETRY
    sent = 0
    while retries is None or sent < retries:
        yield interval
        interval *= 2
        sent += 1
    yield math.inf


def is_reply_to(message: bytes, xid: int) -> bool:
    """Whether ``message`` carries ``xid`` (it may still be malformed)."""
    return message[:4] == xid.to_bytes(4, "big")


class StreamReply:
    """Feed TCP bytes, get the record that answers ``xid``; records for other
    xids are skipped, end of stream (an empty chunk) raises :class:`EOFError`."""

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self._reader = RecordReader(MAX_REPLY)

    def feed(self, chunk: bytes) -> bytes | None:
        if not chunk:
            raise EOFError()
        for record in self._reader.feed(chunk):
            if is_reply_to(record, self.xid):
                return record
        return None


def seconds(value: float) -> str:
    """A duration for messages: ``3.0``, ``0.25``."""
    return str(round(float(value), 3))


def describe(address: Address) -> str:
    """How messages name a peer when the caller gave no ``peer``."""
    return address if isinstance(address, str) else f"{address[0]} port {address[1]}"


def failure(exc: BaseException, peer: str, deadline: Deadline) -> DracError:
    """The :class:`DracError` for an exception raised while talking to ``peer``."""
    if isinstance(exc, TimeoutError):
        return RpcTimeout(f"cannot reach {peer}: timed out after {seconds(deadline.timeout)} s")
    if isinstance(exc, EOFError):
        return Unavailable(f"{peer} closed the connection before replying")
    if isinstance(exc, XdrError):
        return BadReply(f"bad reply from {peer}: {exc}")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return Unavailable(f"cannot reach {peer}: {reason[:1].lower()}{reason[1:]}")
    raise TypeError(f"not a call failure: {exc!r}")


def check_reply(data: bytes, peer: str) -> bytes:
    """The results of an accepted, successful reply; raises BadReply or RpcRefused."""
    try:
        reply = decode_reply(data)
    except XdrError as exc:
        raise BadReply(f"bad reply from {peer}: {exc}") from None
    if reply.reply_stat != ReplyStat.MSG_ACCEPTED or reply.accept_stat != AcceptStat.SUCCESS:
        raise RpcRefused(reply, peer)
    return reply.results


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_call(
    address: Address, prog: int, vers: int, proc: int, args: bytes, timeout: float, deadline: Deadline | None,
    peer: str | None,
) -> tuple[Deadline, str, int, bytes]:
    """The deadline, peer name, xid and encoded message of a new call."""
    xid = new_xid()
    return deadline or Deadline(timeout), peer or describe(address), xid, encode_call(xid, prog, vers, proc, args)


def call(
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
    """Call ``prog.vers.proc`` at ``address`` and return the undecoded results.

    ``address`` is ``(host, port)`` for udp/tcp (host an IP literal) and a
    path for unix. ``deadline`` (shared with other calls) replaces
    ``timeout``. ``retries`` caps UDP retransmissions. ``source`` binds the
    local end (tests use it to call from a given loopback address). ``peer``
    names the server in error messages, e.g. ``"dracd on 127.0.0.1"``.
    Raises :class:`RpcTimeout`, :class:`Unavailable`, :class:`BadReply` or
    :class:`RpcRefused`.
    """
    deadline, peer, xid, message = start_call(address, prog, vers, proc, args, timeout, deadline, peer)
    try:
        if transport == "udp":
            assert isinstance(address, tuple)
            data = _udp(address, message, xid, deadline, retries, source)
        else:
            data = _stream(address, transport, message, xid, deadline, source)
    except (OSError, EOFError, XdrError) as exc:
        raise failure(exc, peer, deadline) from None
    return check_reply(data, peer)


def _udp(
    address: tuple[str, int],
    message: bytes,
    xid: int,
    deadline: Deadline,
    retries: int | None,
    source: tuple[str, int] | None,
) -> bytes:
    with socket.socket(family(address[0]), socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind(source)
        sock.connect(address)
        for interval in resend_intervals(retries):
            deadline.left()
            sock.send(message)
            resend_at = time.monotonic() + interval
            while (wait := min(resend_at - time.monotonic(), deadline.remaining())) > 0:
                sock.settimeout(wait)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                if is_reply_to(data, xid):
                    return data
    raise TimeoutError()


def _stream(
    address: Address,
    transport: Transport,
    message: bytes,
    xid: int,
    deadline: Deadline,
    source: tuple[str, int] | None,
) -> bytes:
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        assert isinstance(address, tuple)
        sock = socket.socket(family(address[0]), socket.SOCK_STREAM)
    with sock:
        if source:
            sock.bind(source)
        sock.settimeout(deadline.left())
        sock.connect(address)
        sock.sendall(encode_record(message))
        replies = StreamReply(xid)
        while True:
            sock.settimeout(deadline.left())
            if (record := replies.feed(sock.recv(65536))) is not None:
                return record
