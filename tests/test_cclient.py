"""The reference C client (tests/c) speaks the legacy DRAC wire format.

``dracadd`` is built with rpcgen + libtirpc and run against a fake server
in this file: a loopback UDP socket and TCP listener, registered with the
system rpcbind under a private program number via ``pmapreg``, that records
the call bytes and answers with replies cut from the golden vectors
(tests/vectors/README.md, captured from DRAC 1.12 and a libtirpc client).

Calls are compared with the golden calls from offset 4 (the xid differs per
call); the program number word (offset 12) is the private one we registered
instead of 900101, and the comparison patches exactly that word.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.cclient import (
    C_SRC_DIR,
    DRACPROG,
    EXIT_CALL,
    EXIT_CREATE,
    EXIT_OK,
    EXIT_RESULT,
    EXIT_USAGE,
    build_c_tools,
    build_dracadd,
    pmapreg,
    private_prog,
    registered,
    run_dracadd,
    uaddr,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- golden vectors (copied from tests/vectors/README.md) -----------------

# UDP, v1 ADD of 192.0.2.10, legacy libdrac client, AUTH_NONE.
GOLDEN_V1_UDP_CALL = _hex(
    "6b053c89 00000000 00000002 000dbc05 00000001 00000001"
    "00000000 00000000 00000000 00000000 c000020a"
)
GOLDEN_V1_UDP_REPLY = _hex(
    "6b053c89 00000001 00000000 00000000 00000000 00000000 00000000"
)
# UDP, v2 ADD of 2001:db8::b8:10, legacy libdrac testing6.
GOLDEN_V2_LEGACY_CALL = _hex(
    "6b052fb0 00000000 00000002 000dbc05 00000002 00000001"
    "00000000 00000000 00000000 00000000"
    "00000020 00000001 0000000d ffffffb8 00000000 00000000 00000000 00000000"
    "00000000 00000000 00000000 00000000 00000000 ffffffb8 00000000 00000010"
)
# UDP, v2 ADD of 2001:db8:ff00::1, libtirpc client.
GOLDEN_V2_TIRPC_CALL = _hex(
    "6b051e85 00000000 00000002 000dbc05 00000002 00000001"
    "00000000 00000000 00000000 00000000"
    "00000020 00000001 0000000d ffffffb8 ffffffff 00000000 00000000 00000000"
    "00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001"
)
# TCP, v1 ADD of 203.0.113.200, libtirpc client, with the record mark.
GOLDEN_V1_TCP_CALL = _hex(
    "8000002c 927d399b 00000000 00000002 000dbc05 00000001 00000001"
    "00000000 00000000 00000000 00000000 cb0071c8"
)
GOLDEN_V1_TCP_REPLY = _hex(
    "8000001c 927d399b 00000001 00000000 00000000 00000000 00000000 00000000"
)
# UDP, v1 ADD from a caller outside the allow list: ADD_PERM.
GOLDEN_PERM_REPLY = _hex(
    "00e069ba 00000001 00000000 00000000 00000000 00000000 00000001"
)

# Reply words after the xid: REPLY, MSG_ACCEPTED, verf AUTH_NONE (0, 0),
# SUCCESS; the result word follows for DRACPROC_ADD, nothing for NULL.
REPLY_HEADER = GOLDEN_V1_UDP_REPLY[4:24]
assert GOLDEN_V1_TCP_REPLY[8:28] == REPLY_HEADER == GOLDEN_PERM_REPLY[4:24]

PROG_OFFSET = 12  # of the program number in an RPC call (no record mark)


def with_prog(call: bytes, prog: int) -> bytes:
    """*call* (no record mark) with its program number word set to *prog*."""
    assert call[PROG_OFFSET : PROG_OFFSET + 4] == struct.pack(">I", DRACPROG)
    return call[:PROG_OFFSET] + struct.pack(">I", prog) + call[PROG_OFFSET + 4 :]


# --- fake server ------------------------------------------------------------

IO_TIMEOUT = 5.0  # every socket below has a timeout
POLL = 0.05


@dataclass
class Call:
    transport: str  # "udp" or "tcp"
    raw: bytes  # as received (TCP: with record mark(s))
    body: bytes  # the RPC message
    peer: tuple


def default_reply(body: bytes, result: int) -> bytes:
    """Golden accepted reply for *body*'s xid; NULL proc gets no result."""
    proc = struct.unpack(">I", body[20:24])[0]
    reply = body[:4] + REPLY_HEADER
    if proc != 0:
        reply += struct.pack(">I", result)
    return reply


@dataclass
class FakeDracServer:
    """Loopback UDP + TCP endpoints that record calls and answer canned replies."""

    host: str = "127.0.0.1"
    result: int = 0
    reply_fn: Callable[[bytes], bytes | None] | None = None  # None: no reply
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._stop = threading.Event()
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        for s in (self.udp, self.tcp):
            s.settimeout(POLL)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((self.host, 0))
        self.tcp.bind((self.host, 0))
        self.tcp.listen(4)
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard, args=(self._udp_loop,), daemon=True),
            threading.Thread(target=self._guard, args=(self._tcp_loop,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def udp_port(self) -> int:
        return self.udp.getsockname()[1]

    @property
    def tcp_port(self) -> int:
        return self.tcp.getsockname()[1]

    def _reply(self, body: bytes) -> bytes | None:
        if self.reply_fn is not None:
            return self.reply_fn(body)
        return default_reply(body, self.result)

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # surfaced by close()
            self.errors.append(exc)

    def _udp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65536)
            except TimeoutError:
                continue
            self.calls.append(Call("udp", data, data, peer))
            reply = self._reply(data)
            if reply is not None:
                self.udp.sendto(reply, peer)

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _tcp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(IO_TIMEOUT)
                while not self._stop.is_set():
                    raw = body = b""
                    try:
                        while True:
                            mark = self._recv_exact(conn, 4)
                            (word,) = struct.unpack(">I", mark)
                            frag = self._recv_exact(conn, word & 0x7FFFFFFF)
                            raw += mark + frag
                            body += frag
                            if word & 0x80000000:
                                break
                    except (TimeoutError, EOFError, ConnectionError):
                        break
                    self.calls.append(Call("tcp", raw, body, peer))
                    reply = self._reply(body)
                    if reply is None:
                        continue
                    conn.sendall(struct.pack(">I", 0x80000000 | len(reply)) + reply)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(IO_TIMEOUT + 1)
        self.udp.close()
        self.tcp.close()
        if self.errors:
            raise self.errors[0]


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build dracadd and pmapreg; a build failure fails the tests."""
    return build_c_tools(tmp_path_factory.mktemp("cclient-build"))


@contextlib.contextmanager
def serving(
    tools: Path,
    host: str = "127.0.0.1",
    versions: Sequence[int] = (1, 2),
    **kwargs: object,
) -> Iterator[tuple[FakeDracServer, int]]:
    """A fake server registered (udp and tcp netids of *host*) under a fresh
    private program number; unregistered and closed afterwards."""
    v6 = ":" in host
    server = FakeDracServer(host=host, **kwargs)  # type: ignore[arg-type]
    try:
        entries = [
            ("udp6" if v6 else "udp", uaddr(host, server.udp_port)),
            ("tcp6" if v6 else "tcp", uaddr(host, server.tcp_port)),
        ]
        prog = private_prog()
        with contextlib.ExitStack() as stack:
            for vers in versions:
                stack.enter_context(registered(tools / "pmapreg", prog, vers, entries))
            yield server, prog
    finally:
        server.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def only_call(server: FakeDracServer) -> Call:
    assert len(server.calls) == 1, server.calls
    return server.calls[0]


def ok(res: subprocess.CompletedProcess[str], stdout: str, code: int = EXIT_OK) -> None:
    assert (res.returncode, res.stdout) == (code, stdout + "\n"), res.stderr


# --- build -------------------------------------------------------------------


def test_build_is_clean_and_out_of_tree(tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = subprocess.run(
        ["make", "-C", str(C_SRC_DIR), f"OUT={out}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    own = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if ("dracadd.c" in line or "pmapreg.c" in line) and "warning" in line
    ]
    assert own == []
    assert build_dracadd(out) == out / "dracadd"  # up to date: no rebuild
    for name in ("drac.h", "drac_clnt.c", "drac_xdr.c", "dracadd", "pmapreg"):
        assert (out / name).exists()
        assert not (C_SRC_DIR / name).exists()


def test_usage_errors(tools: Path) -> None:
    dracadd = tools / "dracadd"
    bad = [
        [],
        ["127.0.0.1", "udp"],  # ADDRESS needed without -n
        ["127.0.0.1", "udp", "not-an-ip"],
        ["-v", "2", "127.0.0.1", "udp", "192.0.2.1"],  # v2 needs IPv6
        ["-t", "0", "127.0.0.1", "udp", "192.0.2.1"],
        ["-p", "x", "127.0.0.1", "udp", "192.0.2.1"],
    ]
    for args in bad:
        res = subprocess.run(
            [str(dracadd), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert res.returncode == EXIT_USAGE, (args, res)
        assert res.stdout == ""


# --- wire format ---------------------------------------------------------------


def test_v1_udp_call_matches_golden(tools: Path) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog)
    ok(res, "ADD_SUCCESS")
    call = only_call(server)
    assert call.transport == "udp"
    assert call.body[4:] == with_prog(GOLDEN_V1_UDP_CALL, prog)[4:]
    assert call.peer[0] == "127.0.0.1"


@pytest.mark.parametrize(
    "address, golden",
    [
        pytest.param("2001:db8:ff00::1", GOLDEN_V2_TIRPC_CALL, id="libtirpc"),
        pytest.param("2001:db8::b8:10", GOLDEN_V2_LEGACY_CALL, id="legacy-testing6"),
    ],
)
def test_v2_udp_call_matches_golden(tools: Path, address: str, golden: bytes) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", address, prog=prog)
    ok(res, "ADD_SUCCESS")
    body = only_call(server).body
    assert len(body) == 40 + 64  # 16 sign-extended words
    assert body[4:] == with_prog(golden, prog)[4:]


def test_v1_tcp_call_has_record_mark_and_golden_body(tools: Path) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "tcp", "203.0.113.200", prog=prog)
    ok(res, "ADD_SUCCESS")
    call = only_call(server)
    assert call.transport == "tcp"
    assert call.raw[:4] == GOLDEN_V1_TCP_CALL[:4] == b"\x80\x00\x00\x2c"
    golden_body = GOLDEN_V1_TCP_CALL[4:]
    assert call.body[4:] == with_prog(golden_body, prog)[4:]
    assert call.raw[4:] == call.body


def test_golden_tcp_reply_is_accepted(tools: Path) -> None:
    def reply(body: bytes) -> bytes:
        return body[:4] + GOLDEN_V1_TCP_REPLY[8:]

    with serving(tools, reply_fn=reply) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "tcp", "203.0.113.200", prog=prog)
    ok(res, "ADD_SUCCESS")


def test_v2_tcp_call(tools: Path) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "tcp", "2001:db8:ff00::1", prog=prog)
    ok(res, "ADD_SUCCESS")
    call = only_call(server)
    assert call.raw[:4] == struct.pack(">I", 0x80000000 | len(GOLDEN_V2_TIRPC_CALL))
    assert call.body[4:] == with_prog(GOLDEN_V2_TIRPC_CALL, prog)[4:]


def test_auth_sys_credentials(tools: Path) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(
            tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog, auth_sys=True
        )
    ok(res, "ADD_SUCCESS")
    body = only_call(server).body
    assert body[4:24] == with_prog(GOLDEN_V1_UDP_CALL, prog)[4:24]
    flavor, length = struct.unpack(">II", body[24:32])
    assert flavor == 1 and 20 <= length <= 400
    verf = body[32 + length : 40 + length]
    assert verf == b"\0" * 8
    assert body[40 + length :] == GOLDEN_V1_UDP_CALL[-4:]


# --- results and errors -------------------------------------------------------


@pytest.mark.parametrize(
    "result, line, code",
    [
        (0, "ADD_SUCCESS", EXIT_OK),
        (1, "ADD_PERM", EXIT_RESULT),
        (2, "ADD_SYSERR", EXIT_RESULT),
        (3, "ADD_UNKOWN", EXIT_RESULT),
        (7, "UNKNOWN 7", EXIT_RESULT),
    ],
)
def test_results(tools: Path, result: int, line: str, code: int) -> None:
    with serving(tools, result=result) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog)
    ok(res, line, code)


def test_golden_perm_reply(tools: Path) -> None:
    def reply(body: bytes) -> bytes:
        return body[:4] + GOLDEN_PERM_REPLY[4:]

    with serving(tools, reply_fn=reply) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "198.51.100.9", prog=prog)
    ok(res, "ADD_PERM", EXIT_RESULT)
    assert only_call(server).body[-4:] == bytes([198, 51, 100, 9])


@pytest.mark.parametrize("netid", ["udp", "tcp"])
def test_null_proc(tools: Path, netid: str) -> None:
    with serving(tools) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", netid, None, prog=prog, null_only=True)
    ok(res, "NULL_OK")
    body = only_call(server).body
    expected = with_prog(GOLDEN_V1_UDP_CALL, prog)[:40]
    expected = expected[:20] + b"\0\0\0\0" + expected[24:]  # proc 0, no args
    assert body[4:] == expected[4:]


def test_not_registered_exits_2_within_timeout(tools: Path) -> None:
    # Register and unregister first: proves pmapreg's unset really removes.
    with serving(tools) as (server, prog):
        pass
    start = time.monotonic()
    res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog, timeout=2.0)
    elapsed = time.monotonic() - start
    assert res.returncode == EXIT_CREATE, res
    assert res.stdout == ""
    assert "Program not registered" in res.stderr
    assert elapsed < 2.0 + 1.0
    assert server.calls == []


def test_rpc_error_exits_3(tools: Path) -> None:
    def prog_mismatch(body: bytes) -> bytes:
        # accepted, verf AUTH_NONE, PROG_MISMATCH(low 1, high 1)
        return body[:4] + struct.pack(">IIIIIII", 1, 0, 0, 0, 2, 1, 1)

    with serving(tools, reply_fn=prog_mismatch) as (server, prog):
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog, version=1)
    assert res.returncode == EXIT_CALL, res
    assert res.stdout == ""
    assert "mismatch" in res.stderr.lower()


def test_silent_server_times_out_with_exit_3(tools: Path) -> None:
    with serving(tools, reply_fn=lambda body: None) as (server, prog):
        start = time.monotonic()
        res = run_dracadd(
            tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog, timeout=1.0
        )
        elapsed = time.monotonic() - start
    assert res.returncode == EXIT_CALL, res
    assert "Timed out" in res.stderr
    assert 0.9 <= elapsed < 1.0 + 2.0
    assert len(server.calls) >= 1
    assert all(c.body[4:] == with_prog(GOLDEN_V1_UDP_CALL, prog)[4:] for c in server.calls)


def test_udp_retransmissions_keep_the_xid(tools: Path) -> None:
    with serving(tools, reply_fn=lambda body: None) as (server, prog):
        res = run_dracadd(
            tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10",
            prog=prog, timeout=1.0, retry=0.2,
        )
    assert res.returncode == EXIT_CALL, res
    assert len(server.calls) >= 3
    assert len({c.body for c in server.calls}) == 1  # same xid, same bytes


# --- IPv6 -------------------------------------------------------------------------


@pytest.mark.parametrize("netid", ["udp6", "tcp6"])
@pytest.mark.parametrize(
    "address, golden",
    [
        pytest.param("2001:db8:ff00::1", GOLDEN_V2_TIRPC_CALL, id="v2"),
        pytest.param("192.0.2.10", GOLDEN_V1_UDP_CALL, id="v1"),
    ],
)
def test_ipv6_transport(tools: Path, netid: str, address: str, golden: bytes) -> None:
    if not ipv6_loopback():
        pytest.fail("no IPv6 loopback (::1) on this machine: the udp6/tcp6 interop cases need it")
    with serving(tools, host="::1") as (server, prog):
        res = run_dracadd(tools / "dracadd", "::1", netid, address, prog=prog)
    ok(res, "ADD_SUCCESS")
    call = only_call(server)
    assert call.transport == netid[:3]
    assert call.peer[0] == "::1"
    assert call.body[4:] == with_prog(golden, prog)[4:]


def test_rpcbind_refuses_conflicting_registration(tools: Path) -> None:
    with serving(tools, versions=(1,)) as (server, prog):
        other = uaddr("127.0.0.1", server.udp_port ^ 1)
        res = pmapreg(tools / "pmapreg", "set", prog, 1, "udp", other)
        assert res.returncode == 1, res
        # the same registration again is accepted (rpcbind answers TRUE)
        same = uaddr("127.0.0.1", server.udp_port)
        assert pmapreg(tools / "pmapreg", "set", prog, 1, "udp", same).returncode == 0
        res = run_dracadd(tools / "dracadd", "127.0.0.1", "udp", "192.0.2.10", prog=prog)
    ok(res, "ADD_SUCCESS")


def test_dns_names_are_refused(tools: Path) -> None:
    with pytest.raises(ValueError):
        run_dracadd(tools / "dracadd", "localhost", "udp", "192.0.2.10")


def test_private_prog_range() -> None:
    progs = {private_prog() for _ in range(5)}
    assert len(progs) == 5
    assert all(0x2000_0000 <= p <= 0x3FFF_FFFF for p in progs)
    assert uaddr("127.0.0.1", 1025) == "127.0.0.1.4.1"
    assert uaddr("::1", 0x1234) == "::1.18.52"
