"""ONC RPC v2 messages (RFC 5531): the dracclient.rpc encoders and decoders,
and dracclient.rpccall's blocking calls against fake peers and the real server."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient import rpc
from dracclient.drac import encode_add_args
from dracclient.errors import BadReply, RpcRefused, RpcTimeout, Unavailable
from dracclient.record import RecordReader, encode_record
from dracclient.rpc import (
    AUTH_NONE,
    MAX_AUTH_BYTES,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    MsgType,
    NotACall,
    OpaqueAuth,
    RejectStat,
    Reply,
    ReplyStat,
    RpcError,
    RpcVersionMismatch,
    decode_call,
    decode_reply,
    encode_accepted,
    encode_auth_error,
    encode_call,
    encode_rpc_mismatch,
    peek_xid,
)
from dracclient.rpccall import Transport, call, new_xid
from dracclient.xdr import Packer, XdrError
from tests.fixtures.server import ServerThread

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

FAST = settings(max_examples=300, deadline=None)
U32 = st.integers(0, 0xFFFFFFFF)


def words(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


# --- calls ------------------------------------------------------------------


def test_encode_call_layout() -> None:
    data = encode_call(0x01020304, 900101, 2, 1, b"ARGS")
    assert data == words(0x01020304, 0, 2, 900101, 2, 1, 0, 0, 0, 0) + b"ARGS"


def test_encode_call_with_auth_sys_cred() -> None:
    cred = OpaqueAuth(AuthFlavor.AUTH_SYS, b"\x00\x00\x00\x01\x00")
    data = encode_call(7, 100000, 4, 3, cred=cred)
    assert data == words(7, 0, 2, 100000, 4, 3, 1, 5) + b"\x00\x00\x00\x01\x00\x00\x00\x00" + words(0, 0)
    call = decode_call(data)
    assert call.cred == cred
    assert call.verf == AUTH_NONE
    assert call.args == b""


def test_decode_call_fields() -> None:
    call = decode_call(words(9, 0, 2, 900101, 1, 0, 0, 0, 3, 4) + b"verf" + b"rest")
    assert (call.xid, call.prog, call.vers, call.proc) == (9, 900101, 1, 0)
    assert call.cred == AUTH_NONE
    assert call.verf == OpaqueAuth(3, b"verf")
    assert call.args == b"rest"


def test_decode_call_rejects_replies() -> None:
    with pytest.raises(NotACall):
        decode_call(encode_accepted(5))


def test_decode_call_rejects_unknown_message_type() -> None:
    with pytest.raises(NotACall):
        decode_call(words(5, 2, 2, 900101, 1, 1, 0, 0, 0, 0))


@pytest.mark.parametrize("rpcvers", [0, 1, 3, 0xFFFFFFFF])
def test_decode_call_rpc_version_mismatch_keeps_xid(rpcvers: int) -> None:
    with pytest.raises(RpcVersionMismatch) as info:
        # Even with nothing after the version word, the xid is known.
        decode_call(words(0xABCD, 0, rpcvers))
    assert info.value.xid == 0xABCD
    assert isinstance(info.value, XdrError)


def test_decode_call_every_truncation_raises_xdr_error() -> None:
    data = encode_call(1, 2, 3, 4, cred=OpaqueAuth(1, b"abcde"), verf=OpaqueAuth(0, b"xy"))
    # The arguments are opaque to decode_call; everything before them is required.
    for end in range(len(data)):
        with pytest.raises(XdrError):
            decode_call(data[:end])
    assert decode_call(data).args == b""


def test_decode_call_auth_body_limit() -> None:
    """RFC 5531's opaque_auth body<400>, as a literal: 400 bytes are a call, 401 are not."""
    assert MAX_AUTH_BYTES == 400
    for cred, verf in ((OpaqueAuth(1, b"a" * 400), AUTH_NONE), (AUTH_NONE, OpaqueAuth(1, b"v" * 400)),
                       (OpaqueAuth(1, b"a" * 400), OpaqueAuth(1, b"v" * 400))):
        call = decode_call(encode_call(1, 2, 3, 4, b"args", cred=cred, verf=verf))
        assert (call.cred, call.verf, call.args) == (cred, verf, b"args")
    for cred, verf in ((OpaqueAuth(1, b"a" * 401), AUTH_NONE), (AUTH_NONE, OpaqueAuth(1, b"v" * 401))):
        with pytest.raises(XdrError, match="exceeds limit 400"):
            decode_call(encode_call(1, 2, 3, 4, cred=cred, verf=verf))


def call_bytes(cred_length: int, verf_length: int, args: bytes) -> bytes:
    return encode_call(7, 900101, 1, 1, args, cred=OpaqueAuth(1, bytes(i % 255 + 1 for i in range(cred_length))),
                       verf=OpaqueAuth(2, b"\xff" * verf_length))


@pytest.mark.parametrize("cred_length", [0, 1, 2, 3, 4, 255, 256, 399, 400])
@pytest.mark.parametrize("verf_length", [0, 1, 3, 4, 400])
@pytest.mark.parametrize("args", [b"", b"\0\0\0\1"])
def test_the_fast_path_takes_every_well_formed_call_as_the_careful_one_does(
        cred_length: int, verf_length: int, args: bytes) -> None:
    """The server's hot path (rpc._fast_call) decodes each well-formed call itself, down to
    the edges (no arguments, bodies of 0 and 400 bytes), exactly as the field-by-field path."""
    data = call_bytes(cred_length, verf_length, args)
    fast = rpc._fast_call(data)
    assert fast is not None, "a well-formed call left the fast path"
    assert fast == rpc._careful_call(data) == decode_call(data)
    assert fast.args == args and len(fast.verf.body) == verf_length


@pytest.mark.parametrize(("cred_length", "verf_length", "at"), [(1, 0, 33), (1, 0, 35), (0, 1, 41), (0, 1, 43),
                                                                (5, 3, 39), (5, 3, 51)])
def test_non_zero_padding_anywhere_is_refused_by_both_paths(cred_length: int, verf_length: int, at: int) -> None:
    data = bytearray(call_bytes(cred_length, verf_length, b""))
    assert data[at] == 0
    data[at] = 0x80
    assert rpc._fast_call(bytes(data)) is None
    with pytest.raises(XdrError, match="padding"):
        decode_call(bytes(data))


def test_a_version_mismatch_says_which_version() -> None:
    with pytest.raises(RpcVersionMismatch, match=r"^RPC version 3, expected 2$"):
        decode_call(words(1, 0, 3, 900101, 1, 1, 0, 0, 0, 0))


def test_decode_call_rejects_non_zero_auth_padding() -> None:
    data = bytearray(encode_call(1, 2, 3, 4, cred=OpaqueAuth(1, b"a")))
    data[33] = 1  # first pad byte after the one-byte body (flavor at 24, length at 28)
    with pytest.raises(XdrError, match="padding"):
        decode_call(bytes(data))


# --- replies ----------------------------------------------------------------


def test_encode_accepted_success_layout() -> None:
    assert encode_accepted(3, results=b"\0\0\0\1") == words(3, 1, 0, 0, 0, 0, 1)


@pytest.mark.parametrize("stat", [AcceptStat.PROG_UNAVAIL, AcceptStat.PROC_UNAVAIL,
                                  AcceptStat.GARBAGE_ARGS, AcceptStat.SYSTEM_ERR])
def test_encode_accepted_errors_carry_no_results(stat: AcceptStat) -> None:
    data = encode_accepted(3, stat, b"ignored")
    assert data == words(3, 1, 0, 0, 0, stat)
    reply = decode_reply(data)
    assert reply.accept_stat is stat
    assert reply.results == b""
    assert reply.mismatch is None


def test_prog_mismatch_round_trip() -> None:
    data = encode_accepted(3, AcceptStat.PROG_MISMATCH, mismatch=(1, 2))
    assert data == words(3, 1, 0, 0, 0, 2, 1, 2)
    reply = decode_reply(data)
    assert reply == Reply(3, ReplyStat.MSG_ACCEPTED, accept_stat=AcceptStat.PROG_MISMATCH, mismatch=(1, 2))


def test_rpc_mismatch_round_trip() -> None:
    data = encode_rpc_mismatch(4)
    assert data == words(4, 1, 1, 0, 2, 2)
    reply = decode_reply(data)
    assert reply.reply_stat is ReplyStat.MSG_DENIED
    assert reply.reject_stat is RejectStat.RPC_MISMATCH
    assert reply.mismatch == (2, 2)
    assert reply.accept_stat is None


@pytest.mark.parametrize("stat", list(AuthStat)[1:])
def test_auth_error_round_trip(stat: AuthStat) -> None:
    data = encode_auth_error(5, stat)
    assert data == words(5, 1, 1, 1, stat)
    reply = decode_reply(data)
    assert (reply.reply_stat, reply.reject_stat, reply.auth_stat) == (ReplyStat.MSG_DENIED, RejectStat.AUTH_ERROR, stat)


def test_decode_reply_keeps_verifier_and_results() -> None:
    data = encode_accepted(6, results=b"RESULTS!", verf=OpaqueAuth(AuthFlavor.AUTH_SHORT, b"abc"))
    reply = decode_reply(data)
    assert reply.verf == OpaqueAuth(AuthFlavor.AUTH_SHORT, b"abc")
    assert reply.results == b"RESULTS!"


@pytest.mark.parametrize(
    "data",
    [
        words(1, 0, 2, 3, 4, 5, 0, 0, 0, 0),  # a call
        words(1, 1, 2),  # reply_stat 2
        words(1, 1, 1, 2),  # reject_stat 2
        words(1, 1, 1, 1, 99),  # unknown auth_stat
        words(1, 1, 0, 0, 0, 6),  # accept_stat 6
        words(1, 1, 0, 0, 0, 2, 1),  # PROG_MISMATCH without high
        words(1, 1, 0, 0, 0, 1, 0),  # trailing word after PROG_UNAVAIL
        words(1, 1, 1, 0, 2, 2, 0),  # trailing word after RPC_MISMATCH
        words(1, 1, 1, 1, 1, 0),  # trailing word after AUTH_ERROR
        words(1, 1, 0, 0, 1) + b"a\0\0",  # verifier body cut short
    ],
)
def test_decode_reply_rejects_malformed(data: bytes) -> None:
    with pytest.raises(XdrError):
        decode_reply(data)


def test_decode_reply_every_truncation_raises() -> None:
    for data in (encode_accepted(1, AcceptStat.PROG_MISMATCH, mismatch=(1, 2)), encode_rpc_mismatch(1),
                 encode_auth_error(1, AuthStat.AUTH_TOOWEAK), encode_accepted(1)):
        for end in range(len(data)):
            with pytest.raises(XdrError):
                decode_reply(data[:end])


def test_rpc_error_hierarchy() -> None:
    assert issubclass(NotACall, RpcError)
    assert issubclass(RpcVersionMismatch, RpcError)
    assert issubclass(RpcError, XdrError)


def test_peek_xid() -> None:
    assert peek_xid(b"\x12\x34\x56\x78rest") == 0x12345678
    assert peek_xid(b"\x12\x34\x56\x78") == 0x12345678
    assert peek_xid(b"\x12\x34\x56") is None


@pytest.mark.parametrize("mtype", [0, 2])
def test_decode_reply_refuses_what_is_not_a_reply_even_if_the_rest_would_read(mtype: int) -> None:
    """A call's words after the type (here: an accepted, empty SUCCESS) make no reply."""
    with pytest.raises(RpcError, match="^not a reply message$"):
        decode_reply(words(7, mtype, 0, 0, 0, 0))
    assert decode_reply(words(7, 1, 0, 0, 0, 0)).accept_stat is AcceptStat.SUCCESS


def test_prog_mismatch_without_versions_encodes_zeros() -> None:
    assert encode_accepted(9, AcceptStat.PROG_MISMATCH) == words(9, 1, 0, 0, 0, 2, 0, 0)


def test_message_type_values() -> None:
    """RFC 5531's numbers, as literals."""
    assert (MsgType.CALL, MsgType.REPLY) == (0, 1)
    assert [s.value for s in AcceptStat] == [0, 1, 2, 3, 4, 5]
    assert [(s.name, s.value) for s in AuthStat] == [
        ("AUTH_OK", 0), ("AUTH_BADCRED", 1), ("AUTH_REJECTEDCRED", 2), ("AUTH_BADVERF", 3),
        ("AUTH_REJECTEDVERF", 4), ("AUTH_TOOWEAK", 5), ("AUTH_INVALIDRESP", 6), ("AUTH_FAILED", 7)]
    assert [(f.name, f.value) for f in AuthFlavor] == [
        ("AUTH_NONE", 0), ("AUTH_SYS", 1), ("AUTH_SHORT", 2), ("AUTH_DH", 3), ("RPCSEC_GSS", 6)]
    assert [(s.name, s.value) for s in ReplyStat] == [("MSG_ACCEPTED", 0), ("MSG_DENIED", 1)]
    assert [(s.name, s.value) for s in RejectStat] == [("RPC_MISMATCH", 0), ("AUTH_ERROR", 1)]


@pytest.mark.parametrize(
    "reply, text",
    [
        (decode_reply(encode_accepted(1, AcceptStat.PROC_UNAVAIL)), "PROC_UNAVAIL"),
        (decode_reply(encode_accepted(1, AcceptStat.PROG_MISMATCH, mismatch=(1, 2))), "PROG_MISMATCH (1, 2)"),
        (decode_reply(encode_rpc_mismatch(1)), "RPC_MISMATCH (2, 2)"),
        (decode_reply(encode_auth_error(1, AuthStat.AUTH_TOOWEAK)), "AUTH_TOOWEAK"),
    ],
)
def test_rpc_refused_names_the_status(reply: Reply, text: str) -> None:
    error = RpcRefused(reply)
    assert text in str(error)
    assert error.reply is reply


# --- properties -------------------------------------------------------------


auths = st.builds(OpaqueAuth, U32, st.binary(max_size=MAX_AUTH_BYTES))


@FAST
@given(U32, U32, U32, U32, st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)), auths, auths)
def test_call_round_trip(xid: int, prog: int, vers: int, proc: int, args: bytes,
                         cred: OpaqueAuth, verf: OpaqueAuth) -> None:
    call = decode_call(encode_call(xid, prog, vers, proc, args, cred=cred, verf=verf))
    assert (call.xid, call.prog, call.vers, call.proc, call.args) == (xid, prog, vers, proc, args)
    assert (call.cred, call.verf) == (cred, verf)


@FAST
@given(U32, st.sampled_from(AcceptStat), st.binary(max_size=32), st.tuples(U32, U32), auths)
def test_accepted_round_trip(xid: int, stat: AcceptStat, results: bytes, mismatch: tuple[int, int],
                             verf: OpaqueAuth) -> None:
    reply = decode_reply(encode_accepted(xid, stat, results, mismatch=mismatch, verf=verf))
    assert (reply.xid, reply.reply_stat, reply.accept_stat, reply.verf) == (xid, ReplyStat.MSG_ACCEPTED, stat, verf)
    assert reply.results == (results if stat == AcceptStat.SUCCESS else b"")
    assert reply.mismatch == (mismatch if stat == AcceptStat.PROG_MISMATCH else None)


@FAST
@given(U32, U32, U32, st.sampled_from(AuthStat))
def test_denied_round_trip(xid: int, low: int, high: int, auth: AuthStat) -> None:
    reply = decode_reply(encode_rpc_mismatch(xid, low, high))
    assert (reply.xid, reply.reject_stat, reply.mismatch) == (xid, RejectStat.RPC_MISMATCH, (low, high))
    reply = decode_reply(encode_auth_error(xid, auth))
    assert (reply.xid, reply.reject_stat, reply.auth_stat) == (xid, RejectStat.AUTH_ERROR, auth)


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """Valid messages cut, extended or with one word replaced: closer to the edge than random bytes."""
    return st.one_of(
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.binary(max_size=12).map(lambda tail: base + tail),
        st.tuples(st.integers(0, len(base) // 4 - 1), U32).map(
            lambda iw: base[: iw[0] * 4] + iw[1].to_bytes(4, "big") + base[iw[0] * 4 + 4 :]),
    )


hostile_calls = st.one_of(
    st.binary(max_size=120),
    _mutations(encode_call(1, 900101, 1, 1, b"\xc0\0\2\7", cred=OpaqueAuth(1, bytes(20)))),
)
hostile_replies = st.one_of(
    st.binary(max_size=80),
    _mutations(encode_accepted(1, AcceptStat.PROG_MISMATCH, mismatch=(1, 2))),
    _mutations(encode_accepted(1, results=b"\0\0\0\0", verf=OpaqueAuth(1, b"abcd"))),
    _mutations(encode_rpc_mismatch(1)),
    _mutations(encode_auth_error(1, AuthStat.AUTH_BADCRED)),
)


@FAST
@given(hostile_calls)
def test_decode_call_only_raises_xdr_error(data: bytes) -> None:
    try:
        call = decode_call(data)
    except XdrError:
        return
    assert len(call.cred.body) <= MAX_AUTH_BYTES
    assert len(call.verf.body) <= MAX_AUTH_BYTES


@FAST
@given(hostile_replies)
def test_decode_reply_only_raises_xdr_error(data: bytes) -> None:
    try:
        reply = decode_reply(data)
    except XdrError:
        return
    assert (reply.accept_stat is None) == (reply.reply_stat == ReplyStat.MSG_DENIED)


def test_pack_call_matches_manual_packer() -> None:
    manual = Packer().uint(1).uint(0).uint(2).uint(3).uint(4).uint(5).uint(0).opaque(b"").uint(0).opaque(b"")
    assert encode_call(1, 3, 4, 5) == manual.bytes()


# --- rpccall: blocking calls over real sockets -------------------------------------

TIMEOUT = 5.0
PROG = 0x3FFF_0000  # nothing is registered: these calls go to fake servers on known ports


class Background:
    """Run ``fn`` in a thread; ``result()`` joins (bounded) and re-raises its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "fake server still running"
        if self._error is not None:
            raise self._error
        return self._value


@pytest.fixture
def udp_peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


@pytest.fixture
def tcp_peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


def read_call(conn: socket.socket) -> bytes:
    reader = RecordReader(1 << 16)
    while True:
        chunk = conn.recv(65536)
        assert chunk, "client closed before sending a call"
        records = reader.feed(chunk)
        if records:
            return records[0]


def test_udp_retransmits_same_xid(udp_peer: socket.socket) -> None:
    def serve() -> list[int]:
        first, _ = udp_peer.recvfrom(65536)  # ignored: as if lost
        second, client = udp_peer.recvfrom(65536)
        udp_peer.sendto(encode_accepted(peek_xid(second) or 0, results=b"\0\0\0\7"), client)
        assert first == second  # the very same message, not just the same xid
        return [peek_xid(first) or 0, peek_xid(second) or 0]

    peer = Background(serve)
    assert call(address(udp_peer), PROG, 1, 1, b"\0\0\0\1", timeout=TIMEOUT) == b"\0\0\0\7"
    first_xid, second_xid = peer.result()
    assert first_xid == second_xid


def test_udp_ignores_reply_with_wrong_xid(udp_peer: socket.socket) -> None:
    def serve() -> None:
        message, client = udp_peer.recvfrom(65536)
        xid = peek_xid(message) or 0
        udp_peer.sendto(encode_accepted(xid ^ 1, results=b"wrong"), client)
        udp_peer.sendto(b"\0", client)  # too short to carry an xid
        udp_peer.sendto(encode_accepted(xid, results=b"right"), client)

    peer = Background(serve)
    assert call(address(udp_peer), PROG, 1, 0, timeout=TIMEOUT) == b"right"
    peer.result()


def test_udp_timeout_when_nothing_answers(udp_peer: socket.socket) -> None:
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        call(address(udp_peer), PROG, 1, 0, timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < TIMEOUT / 2
    # It kept asking, always with one xid.
    udp_peer.settimeout(0)
    xids = set()
    with contextlib.suppress(BlockingIOError):
        while True:
            xids.add(peek_xid(udp_peer.recv(65536)))
    assert len(xids) == 1


def test_tcp_timeout_when_nothing_answers(tcp_peer: socket.socket) -> None:
    def serve() -> bytes:
        conn, _ = tcp_peer.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            message = read_call(conn)
            conn.recv(1)  # hold the connection open until the client gives up
            return message

    peer = Background(serve)
    with pytest.raises(RpcTimeout):
        call(address(tcp_peer), PROG, 2, 0, transport="tcp", timeout=0.5)
    assert decode_call(peer.result()).vers == 2


def test_udp_unreachable_port_is_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed = address(sock)
    with pytest.raises(Unavailable):
        call(closed, PROG, 1, 0, timeout=TIMEOUT)


def test_tcp_connection_refused_is_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        started = time.monotonic()
        with pytest.raises(Unavailable):
            call(address(sock), PROG, 1, 0, transport="tcp", timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2  # refused at once, not timed out


def test_tcp_closed_before_reply_is_unavailable(tcp_peer: socket.socket) -> None:
    def serve() -> None:
        conn, _ = tcp_peer.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            read_call(conn)

    peer = Background(serve)
    with pytest.raises(Unavailable, match="closed"):
        call(address(tcp_peer), PROG, 1, 0, transport="tcp", timeout=TIMEOUT)
    peer.result()


def test_unix_socket_missing_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        call(str(tmp_path / "nothing.sock"), PROG, 1, 0, transport="unix", timeout=TIMEOUT)


@pytest.mark.parametrize("garbage", [b"", b"\x01", words(1, 0, 2, 3, 4, 5, 0, 0, 0, 0), words(1, 1, 0, 0, 0, 9)])
def test_udp_garbage_reply_is_bad_reply(udp_peer: socket.socket, garbage: bytes) -> None:
    def serve() -> None:
        message, client = udp_peer.recvfrom(65536)
        udp_peer.sendto(message[:4] + garbage[4:], client)

    peer = Background(serve)
    with pytest.raises(BadReply):
        call(address(udp_peer), PROG, 1, 0, timeout=TIMEOUT)
    peer.result()


@pytest.mark.parametrize("kind", ["garbage record", "record too large", "bad padding"])
def test_tcp_garbage_reply_is_bad_reply(tcp_peer: socket.socket, kind: str) -> None:
    def serve() -> None:
        conn, _ = tcp_peer.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            xid = (peek_xid(read_call(conn)) or 0).to_bytes(4, "big")
            if kind == "garbage record":
                conn.sendall(encode_record(xid + b"\0\0\0\1\0\0"))
            elif kind == "record too large":
                conn.sendall(b"\xff\xff\xff\xff")
            else:
                conn.sendall(encode_record(xid + words(1, 0, 0, 1) + b"a\1\0\0" + words(0)))
            with contextlib.suppress(OSError):
                conn.recv(1)

    peer = Background(serve)
    with pytest.raises(BadReply):
        call(address(tcp_peer), PROG, 1, 0, transport="tcp", timeout=TIMEOUT)
    peer.result()


def test_tcp_skips_records_for_other_xids(tcp_peer: socket.socket) -> None:
    def serve() -> bytes:
        conn, _ = tcp_peer.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            message = read_call(conn)
            xid = peek_xid(message) or 0
            stale = encode_record(encode_accepted(xid + 1, results=b"old!"))
            fresh = encode_record(encode_accepted(xid, results=b"new!"), fragment_size=5)
            for index in range(0, len(stale + fresh), 7):  # dribble it in
                conn.sendall((stale + fresh)[index : index + 7])
            return message

    peer = Background(serve)
    assert call(address(tcp_peer), PROG, 2, 1, b"ARGS", transport="tcp", timeout=TIMEOUT) == b"new!"
    message = decode_call(peer.result())
    assert (message.prog, message.vers, message.proc, message.args) == (PROG, 2, 1, b"ARGS")


@pytest.mark.parametrize(
    "reply, check",
    [
        (lambda xid: encode_accepted(xid, AcceptStat.PROG_UNAVAIL),
         lambda r: r.accept_stat is AcceptStat.PROG_UNAVAIL),
        (lambda xid: encode_accepted(xid, AcceptStat.PROG_MISMATCH, mismatch=(1, 2)),
         lambda r: (r.accept_stat, r.mismatch) == (AcceptStat.PROG_MISMATCH, (1, 2))),
        (lambda xid: encode_accepted(xid, AcceptStat.GARBAGE_ARGS),
         lambda r: r.accept_stat is AcceptStat.GARBAGE_ARGS),
        (lambda xid: encode_rpc_mismatch(xid),
         lambda r: (r.reject_stat, r.mismatch) == (RejectStat.RPC_MISMATCH, (2, 2))),
        (lambda xid: encode_auth_error(xid, AuthStat.AUTH_TOOWEAK),
         lambda r: r.auth_stat is AuthStat.AUTH_TOOWEAK),
    ],
)
def test_refusal_is_rpc_refused(udp_peer: socket.socket, reply: Callable[[int], bytes],
                                check: Callable[[Reply], bool]) -> None:
    def serve() -> None:
        message, client = udp_peer.recvfrom(65536)
        udp_peer.sendto(reply(peek_xid(message) or 0), client)

    peer = Background(serve)
    with pytest.raises(RpcRefused) as info:
        call(address(udp_peer), PROG, 1, 0, timeout=TIMEOUT)
    peer.result()
    assert check(info.value.reply)


def test_source_address_is_bound(udp_peer: socket.socket) -> None:
    def serve() -> str:
        message, client = udp_peer.recvfrom(65536)
        udp_peer.sendto(encode_accepted(peek_xid(message) or 0), client)
        return str(client[0])

    peer = Background(serve)
    assert call(address(udp_peer), PROG, 1, 0, timeout=TIMEOUT, source=("127.0.0.2", 0)) == b""
    assert peer.result() == "127.0.0.2"


def test_unix_transport(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                message = read_call(conn)
                conn.sendall(encode_record(encode_accepted(peek_xid(message) or 0, results=b"unix")))

    peer = Background(serve)
    assert call(str(path), PROG, 1, 0, transport="unix", timeout=TIMEOUT) == b"unix"
    peer.result()


def test_new_xids_differ() -> None:
    assert len({new_xid() for _ in range(50)}) > 45


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_calls_against_the_real_server(make_server: Callable[..., ServerThread], host: str,
                                       transport: Transport) -> None:
    server = make_server()
    prog = server.config.program
    endpoint = (host, server.port)
    assert call(endpoint, prog, 1, 0, transport=transport, timeout=TIMEOUT) == b""
    args = encode_add_args(ipaddress.ip_address("2001:db8::99"))
    assert call(endpoint, prog, 2, 1, args, transport=transport, timeout=TIMEOUT) == b"\0\0\0\0"
    with pytest.raises(RpcRefused) as info:
        call(endpoint, prog, 1, 7, transport=transport, timeout=TIMEOUT)
    assert info.value.reply.accept_stat is AcceptStat.PROC_UNAVAIL
    with pytest.raises(RpcRefused) as info:
        call(endpoint, prog, 4, 0, transport=transport, timeout=TIMEOUT)
    # Version 3 (admin) is served over streams only: over UDP the range is 1..2.
    versions = (1, 2) if transport == "udp" else (1, 3)
    assert (info.value.reply.accept_stat, info.value.reply.mismatch) == (AcceptStat.PROG_MISMATCH, versions)
    with pytest.raises(RpcRefused) as info:
        call(endpoint, prog, 1, 1, b"\0\0", transport=transport, timeout=TIMEOUT)
    assert info.value.reply.accept_stat is AcceptStat.GARBAGE_ARGS


auth_bodies = st.binary(max_size=420)


@settings(max_examples=400)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 7), auth_bodies, auth_bodies,
       st.binary(max_size=40), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
       st.integers(-8, 8))
def test_fast_call_path_agrees_with_the_careful_one(xid: int, prog: int, flavor: int, cred: bytes, verf: bytes,
                                                   args: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    """decode_call's struct fast path decodes exactly what the field-by-field path does,
    and leaves everything else (bad lengths, padding, truncation) to it."""
    data = bytearray(encode_call(xid, prog, 1, 1, args, cred=OpaqueAuth(flavor, cred[:400]),
                                 verf=OpaqueAuth(flavor, verf[:400])))
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    message = bytes(data[: len(data) + cut] if cut < 0 else data + b"\0" * cut)
    fast = rpc._fast_call(message)
    try:
        careful = rpc._careful_call(message)
    except XdrError:
        assert fast is None
    else:
        assert fast is None or fast == careful
