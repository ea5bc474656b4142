"""Blocking ONC RPC calls over UDP, TCP and UNIX stream sockets.

One absolute deadline covers the whole call. UDP retransmits the same xid
with a doubling interval and ignores datagrams that answer something else.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Literal

from .errors import BadReply, RpcRefused, RpcTimeout, Unavailable
from .record import RecordReader, encode_record
from .rpc import AcceptStat, ReplyStat, decode_reply, encode_call
from .xdr import XdrError

Transport = Literal["udp", "tcp", "unix"]
#: Replies this client reads are small; this bounds what a bad server can make us buffer.
MAX_REPLY = 1 << 24
_FIRST_RETRY = 0.25


def new_xid() -> int:
    return int.from_bytes(os.urandom(4), "big")


def call(
    address: tuple[str, int] | str,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    *,
    transport: Transport = "udp",
    timeout: float = 5.0,
    source: tuple[str, int] | None = None,
) -> bytes:
    """Call ``prog.vers.proc`` at ``address`` and return the undecoded results.

    ``address`` is ``(host, port)`` for udp/tcp and a path for unix.
    ``source`` binds the local end, which tests use to call from a given
    loopback address.
    """
    deadline = time.monotonic() + timeout
    xid = new_xid()
    message = encode_call(xid, prog, vers, proc, args)
    try:
        if transport == "udp":
            assert isinstance(address, tuple)
            data = _udp(address, message, xid, deadline, source)
        else:
            data = _stream(address, transport, message, xid, deadline, source)
    except TimeoutError:
        raise RpcTimeout(f"no reply from {address} within {timeout:g} s") from None
    except OSError as exc:
        raise Unavailable(f"{address}: {exc.strerror or exc}") from None
    try:
        reply = decode_reply(data)
    except XdrError as exc:
        raise BadReply(f"undecodable reply from {address}: {exc}") from None
    if reply.reply_stat != ReplyStat.MSG_ACCEPTED or reply.accept_stat != AcceptStat.SUCCESS:
        raise RpcRefused(reply)
    return reply.results


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError()
    return left


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp(
    address: tuple[str, int], message: bytes, xid: int, deadline: float, source: tuple[str, int] | None
) -> bytes:
    with socket.socket(_family(address[0]), socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind(source)
        sock.connect(address)
        interval = _FIRST_RETRY
        while True:
            sock.send(message)
            resend_at = time.monotonic() + interval
            interval *= 2
            while (wait := min(resend_at - time.monotonic(), _remaining(deadline))) > 0:
                sock.settimeout(wait)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                if data[:4] == xid.to_bytes(4, "big"):
                    return data


def _stream(
    address: tuple[str, int] | str,
    transport: Transport,
    message: bytes,
    xid: int,
    deadline: float,
    source: tuple[str, int] | None,
) -> bytes:
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        assert isinstance(address, tuple)
        sock = socket.socket(_family(address[0]), socket.SOCK_STREAM)
    with sock:
        if source:
            sock.bind(source)
        sock.settimeout(_remaining(deadline))
        sock.connect(address)
        sock.sendall(encode_record(message))
        reader = RecordReader(MAX_REPLY)
        while True:
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                raise Unavailable(f"{address}: connection closed before the reply")
            try:
                records = reader.feed(chunk)
            except XdrError as exc:
                raise BadReply(str(exc)) from None
            for record in records:
                if record[:4] == xid.to_bytes(4, "big"):
                    return record
