"""Every RPC error path of the server (RFC 5531 §9), in-process through
dracd.server.dispatch.Dispatcher + dracd.programs.drac.DracService and over real UDP and
TCP loopback sockets to a running server.

Expected replies are spelled out as XDR words, not built with our own
encoders, so an encoder bug cannot hide a dispatcher bug.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient.drac import DRACPROG, encode_add_args
from dracclient.record import RecordReader, encode_record
from dracclient.rpc import AuthFlavor, AuthStat, OpaqueAuth, decode_reply, encode_call
from dracclient.xdr import Packer, XdrError
from dracd.app.daemon import Daemon
from dracd.keys import KeyStyle
from dracd.programs.drac import Settings
from dracd.relay.policy import AllowList, NetRule
from dracd.server.dispatch import CallContext, Dispatcher, check_auth
from tests.fixtures.maps import EntryMap, read_entries
from tests.fixtures.server import LOOPS, ServerThread, test_config
from tests.fixtures.stack import running_stack

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

TIMEOUT = 5.0
XID = 0x5EC0DE01
V4 = encode_add_args(ipaddress.IPv4Address("192.0.2.10"))
V6 = encode_add_args(ipaddress.IPv6Address("2001:db8::b8:10"))


def words(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def call_bytes(prog: int, vers: int, proc: int, args: bytes = b"", *, xid: int = XID, rpcvers: int = 2,
               cred: tuple[int, bytes] = (0, b"")) -> bytes:
    """A call message built word by word (not with encode_call), so rpcvers can be anything."""
    flavor, body = cred
    return (words(xid, 0, rpcvers, prog, vers, proc, flavor, len(body)) + body + bytes(-len(body) % 4)
            + words(0, 0) + args)


def auth_sys(machine: bytes = b"mail", gids: int = 2, *, count: int | None = None) -> bytes:
    packer = Packer().uint(0x65000000).opaque(machine).uint(0).uint(0).uint(gids if count is None else count)
    for gid in range(gids):
        packer.uint(gid)
    return packer.bytes()


def success(results: bytes = b"", xid: int = XID) -> bytes:
    return words(xid, 1, 0, 0, 0, 0) + results


def accepted(stat: int, *extra: int) -> bytes:
    return words(XID, 1, 0, 0, 0, stat, *extra)


def denied_auth(stat: int) -> bytes:
    return words(XID, 1, 1, 1, stat)


RPC_MISMATCH_2_2 = words(XID, 1, 1, 0, 2, 2)
PROG_UNAVAIL = accepted(1)
PROG_MISMATCH_1_3 = accepted(2, 1, 3)
PROG_MISMATCH_1_2 = accepted(2, 1, 2)
PROC_UNAVAIL = accepted(3)
GARBAGE_ARGS = accepted(4)
SYSTEM_ERR = accepted(5)
ADD_SUCCESS = success(words(0))


@dataclass(frozen=True)
class Case:
    """A call for program ``prog`` (the server's own number) and the exact reply it must get."""

    build: Callable[[int], bytes]
    reply: bytes
    #: The reply over TCP when it differs (version 3 exists over TCP only).
    tcp: bytes | None = None

    @property
    def tcp_reply(self) -> bytes:
        return self.reply if self.tcp is None else self.tcp


CASES: dict[str, Case] = {
    "rpcvers 3": Case(lambda p: call_bytes(p, 1, 1, V4, rpcvers=3), RPC_MISMATCH_2_2),
    "rpcvers 1": Case(lambda p: call_bytes(p, 1, 0, rpcvers=1), RPC_MISMATCH_2_2),
    "unknown program": Case(lambda p: call_bytes(p + 1, 1, 1, V4), PROG_UNAVAIL),
    # Over UDP, versions 1 and 2 only: the admin version 3 is never served there.
    "program version 4": Case(lambda p: call_bytes(p, 4, 1, V4), PROG_MISMATCH_1_2, PROG_MISMATCH_1_3),
    "program version 0": Case(lambda p: call_bytes(p, 0, 0), PROG_MISMATCH_1_2, PROG_MISMATCH_1_3),
    "version 3 NULL": Case(lambda p: call_bytes(p, 3, 0), PROG_MISMATCH_1_2, success()),
    "procedure 7": Case(lambda p: call_bytes(p, 1, 7, V4), PROC_UNAVAIL),
    "procedure 2 in v2": Case(lambda p: call_bytes(p, 2, 2, V6), PROC_UNAVAIL),
    "v1 argument truncated": Case(lambda p: call_bytes(p, 1, 1, V4[:3]), GARBAGE_ARGS),
    "v1 argument missing": Case(lambda p: call_bytes(p, 1, 1), GARBAGE_ARGS),
    # As libtirpc servers (legacy rpc.dracd): bytes after a whole argument are ignored.
    "v1 trailing bytes": Case(lambda p: call_bytes(p, 1, 1, V4 + words(0)), ADD_SUCCESS),
    "v2 word 0x00000100": Case(lambda p: call_bytes(p, 2, 1, V6[:8] + words(0x100) + V6[12:]), GARBAGE_ARGS),
    "v2 word 0xffffff00": Case(lambda p: call_bytes(p, 2, 1, V6[:60] + words(0xFFFFFF00)), GARBAGE_ARGS),
    "v2 argument truncated": Case(lambda p: call_bytes(p, 2, 1, V6[:60]), GARBAGE_ARGS),
    "v2 trailing bytes": Case(lambda p: call_bytes(p, 2, 1, V6 + b"\0"), ADD_SUCCESS),
    "v1 argument to v2": Case(lambda p: call_bytes(p, 2, 1, V4), GARBAGE_ARGS),
    "NULL with arguments": Case(lambda p: call_bytes(p, 1, 0, words(0)), GARBAGE_ARGS),
    "NULL v1": Case(lambda p: call_bytes(p, 1, 0), success()),
    "NULL v2": Case(lambda p: call_bytes(p, 2, 0), success()),
    "AUTH_SYS accepted": Case(lambda p: call_bytes(p, 1, 1, V4, cred=(1, auth_sys())), ADD_SUCCESS),
    "AUTH_SYS no gids, NULL": Case(lambda p: call_bytes(p, 2, 0, cred=(1, auth_sys(b"", 0))), success()),
    "AUTH_SYS 16 gids": Case(lambda p: call_bytes(p, 1, 0, cred=(1, auth_sys(gids=16))), success()),
    "AUTH_DH rejected": Case(lambda p: call_bytes(p, 1, 1, V4, cred=(3, b"\0" * 8)), denied_auth(2)),
    "AUTH_SHORT rejected": Case(lambda p: call_bytes(p, 1, 0, cred=(2, b"\0" * 4)), denied_auth(2)),
    "AUTH_SYS truncated": Case(lambda p: call_bytes(p, 1, 1, V4, cred=(1, auth_sys()[:-2])), denied_auth(1)),
    "AUTH_SYS empty": Case(lambda p: call_bytes(p, 1, 0, cred=(1, b"")), denied_auth(1)),
    "AUTH_SYS 17 gids": Case(lambda p: call_bytes(p, 1, 0, cred=(1, auth_sys(gids=17))), denied_auth(1)),
    "AUTH_SYS gid count lies": Case(lambda p: call_bytes(p, 1, 0, cred=(1, auth_sys(gids=1, count=2))),
                                    denied_auth(1)),
    "AUTH_SYS machine > 255": Case(lambda p: call_bytes(p, 1, 0, cred=(1, auth_sys(b"m" * 256))), denied_auth(1)),
    # Auth is checked first: even a call for another program gets the auth error.
    "bad auth before unknown program": Case(lambda p: call_bytes(p + 1, 1, 0, cred=(3, b"")), denied_auth(2)),
}
#: Messages nobody can answer (no trustworthy header): dropped silently.
DROPPED: dict[str, Callable[[int], bytes]] = {
    "REPLY message": lambda p: words(XID, 1, 0, 0, 0, 0, 0),
    "3 bytes": lambda p: b"\x5e\xc0\xde",
    "empty": lambda p: b"",
    "unknown message type": lambda p: words(XID, 7, 2, p, 1, 0, 0, 0, 0, 0),
    "truncated header": lambda p: call_bytes(p, 1, 0)[:30],
    "cred body over 400 bytes": lambda p: call_bytes(p, 1, 0, cred=(1, bytes(404))),
}


def test_expected_replies_are_well_formed() -> None:
    """The hand-written replies decode (guards the table above against typos)."""
    for case in CASES.values():
        assert decode_reply(case.reply).xid == XID


# --- in-process -------------------------------------------------------------

ALLOW = AllowList((NetRule(ipaddress.ip_network("127.0.0.1/32")), NetRule(ipaddress.ip_network("::1/128"))), "test")


async def failing(args: bytes, ctx: CallContext) -> bytes:
    raise RuntimeError("handler exploded")


async def garbage(args: bytes, ctx: CallContext) -> bytes:
    raise XdrError("handler found garbage")


async def echo(args: bytes, ctx: CallContext) -> bytes:
    return args


def run_dispatcher(tmp_path: Path, messages: list[bytes], *, caller: str = "127.0.0.1",
                   setup: Callable[[Dispatcher], None] | None = None,
                   map_path: Path | None = None) -> list[bytes | None]:
    """Hand each message to a Dispatcher serving DRAC (program 900101) from ``caller``."""
    writer = EntryMap(map_path or tmp_path / "dracd.db", "btree", KeyStyle())

    async def main() -> list[bytes | None]:
        async with running_stack(writer, Settings(ALLOW, 600)) as stack:
            if setup is not None:
                setup(stack.dispatcher)
            return [await stack.dispatcher.handle(m, ipaddress.ip_address(caller), 800, "udp") for m in messages]

    return asyncio.run(main())


@pytest.mark.parametrize("name", list(CASES))
def test_dispatcher_error_paths(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    assert run_dispatcher(tmp_path, [case.build(DRACPROG)]) == [case.reply]


@pytest.mark.parametrize("name", list(DROPPED))
def test_dispatcher_drops_unanswerable_and_keeps_serving(tmp_path: Path, name: str) -> None:
    replies = run_dispatcher(tmp_path, [DROPPED[name](DRACPROG), call_bytes(DRACPROG, 1, 0, xid=XID + 1)])
    assert replies == [None, success(xid=XID + 1)]


def test_dispatcher_handler_exception_is_system_err(tmp_path: Path) -> None:
    def setup(dispatcher: Dispatcher) -> None:
        dispatcher.register(DRACPROG, 1, 5, failing)
        dispatcher.register(DRACPROG, 1, 6, garbage)

    replies = run_dispatcher(tmp_path, [call_bytes(DRACPROG, 1, 5), call_bytes(DRACPROG, 1, 6),
                                        call_bytes(DRACPROG, 1, 0, xid=XID + 1)], setup=setup)
    assert replies == [SYSTEM_ERR, GARBAGE_ARGS, success(xid=XID + 1)]


def test_dispatcher_ipv6_caller(tmp_path: Path) -> None:
    replies = run_dispatcher(tmp_path, [call_bytes(DRACPROG, 2, 1, V6)], caller="::1")
    assert replies == [ADD_SUCCESS]


def test_dispatcher_caller_outside_allow_list_gets_add_perm(tmp_path: Path) -> None:
    replies = run_dispatcher(tmp_path, [call_bytes(DRACPROG, 1, 1, V4), call_bytes(DRACPROG, 2, 1, V6)],
                             caller="127.0.0.2")
    assert replies == [success(words(1))] * 2


@pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"])
def test_dispatcher_refuses_non_unicast_addresses(tmp_path: Path, address: str) -> None:
    addr = ipaddress.ip_address(address)
    vers = 1 if addr.version == 4 else 2
    replies = run_dispatcher(tmp_path, [call_bytes(DRACPROG, vers, 1, encode_add_args(addr))])
    assert replies == [success(words(3))]  # ADD_UNKOWN: not recorded


def test_dispatcher_map_failure_is_add_syserr(tmp_path: Path) -> None:
    replies = run_dispatcher(tmp_path, [call_bytes(DRACPROG, 1, 1, V4)], map_path=tmp_path / "missing" / "dracd.db")
    assert replies == [success(words(2))]


def test_prog_mismatch_reports_registered_range() -> None:
    dispatcher = Dispatcher()
    dispatcher.register(77, 4, 0, echo)
    dispatcher.register(77, 9, 0, echo)
    assert dispatcher.versions(77) == [4, 9]
    assert dispatcher.versions(78) == []
    reply = asyncio.run(dispatcher.handle(call_bytes(77, 5, 0), ipaddress.ip_address("127.0.0.1"), 1, "tcp"))
    assert reply == accepted(2, 4, 9)


def test_handler_gets_arguments_and_context() -> None:
    seen: list[CallContext] = []

    async def record(args: bytes, ctx: CallContext) -> bytes:
        seen.append(ctx)
        return args[::-1]

    dispatcher = Dispatcher()
    dispatcher.register(77, 1, 3, record)
    reply = asyncio.run(dispatcher.handle(call_bytes(77, 1, 3, b"abcd"), ipaddress.ip_address("::1"), 4242, "tcp"))
    assert reply == success(b"dcba")
    (ctx,) = seen
    assert (ctx.caller, ctx.port, ctx.transport) == (ipaddress.ip_address("::1"), 4242, "tcp")
    assert (ctx.call.prog, ctx.call.vers, ctx.call.proc, ctx.call.xid) == (77, 1, 3, XID)


def test_check_auth() -> None:
    assert check_auth(OpaqueAuth(AuthFlavor.AUTH_NONE)) is AuthStat.AUTH_OK
    assert check_auth(OpaqueAuth(AuthFlavor.AUTH_SYS, auth_sys())) is AuthStat.AUTH_OK
    assert check_auth(OpaqueAuth(AuthFlavor.AUTH_SYS, auth_sys()[:-1])) is AuthStat.AUTH_BADCRED
    assert check_auth(OpaqueAuth(AuthFlavor.AUTH_DH, b"")) is AuthStat.AUTH_REJECTEDCRED


_ECHO = Dispatcher()
_ECHO.register(77, 1, 0, echo)
_ECHO.register(77, 2, 1, failing)
_ECHO.register(77, 2, 2, garbage)


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=100),
    st.tuples(st.integers(0, 3), st.integers(76, 78), st.integers(0, 3), st.integers(0, 3),
              st.integers(0, 7), st.binary(max_size=40), st.binary(max_size=12)).map(
        lambda t: words(XID, 0, t[0] % 3 + 1 if t[0] else 2, t[1], t[2], t[3], t[4], len(t[5]))
        + t[5] + bytes(-len(t[5]) % 4) + words(0, 0) + t[6]),
))
def test_dispatcher_never_raises_and_answers_with_the_xid(message: bytes) -> None:
    reply = asyncio.run(_ECHO.handle(message, ipaddress.ip_address("127.0.0.1"), 1, "udp"))
    if reply is not None:
        assert decode_reply(reply).xid == int.from_bytes(message[:4], "big")


# --- over the wire ------------------------------------------------------------


def daemon_of(server: ServerThread) -> Daemon:
    assert server.daemon is not None
    return server.daemon


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server per event loop for the module: it must survive every bad message in turn."""
    server = ServerThread(test_config(tmp_path_factory.mktemp("dispatch"), event_loop=request.param)).start()
    # A procedure that fails, registered on the live dispatcher from the server's own loop.
    server.call(lambda: daemon_of(server).dispatcher.register(server.config.program, 1, 5, failing))
    try:
        yield server
    finally:
        server.stop()


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    return sock


def udp_exchange(server: ServerThread, message: bytes, host: str = "127.0.0.1") -> bytes:
    with udp_socket(host) as sock:
        sock.sendto(message, (host, server.port))
        return sock.recv(65536)


class TcpClient:
    def __init__(self, server: ServerThread, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, server.port), timeout=TIMEOUT)
        self.reader = RecordReader(1 << 16)
        self.records: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sock.sendall(encode_record(message))

    def receive(self) -> bytes:
        while not self.records:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.records += self.reader.feed(chunk)
        return self.records.pop(0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tcp(live: ServerThread) -> Iterator[TcpClient]:
    client = TcpClient(live)
    yield client
    client.close()


@pytest.mark.parametrize("name", list(CASES))
def test_udp_error_paths(live: ServerThread, name: str) -> None:
    case = CASES[name]
    assert udp_exchange(live, case.build(live.config.program)) == case.reply


@pytest.mark.parametrize("name", list(CASES))
def test_tcp_error_paths(live: ServerThread, tcp: TcpClient, name: str) -> None:
    case = CASES[name]
    tcp.send(case.build(live.config.program))
    assert tcp.receive() == case.tcp_reply


def test_tcp_error_paths_on_one_connection(live: ServerThread, tcp: TcpClient) -> None:
    """Errors never close the connection: every case in turn, one socket."""
    for case in CASES.values():
        tcp.send(case.build(live.config.program))
        assert tcp.receive() == case.tcp_reply


def test_error_paths_over_ipv6(live: ServerThread) -> None:
    for name in ("rpcvers 3", "program version 4", "v2 word 0xffffff00", "AUTH_DH rejected", "NULL v2"):
        case = CASES[name]
        assert udp_exchange(live, case.build(live.config.program), host="::1") == case.reply
    client = TcpClient(live, "::1")
    try:
        for name in ("procedure 7", "AUTH_SYS truncated", "unknown program"):
            client.send(CASES[name].build(live.config.program))
            assert client.receive() == CASES[name].tcp_reply
    finally:
        client.close()


def test_handler_exception_over_the_wire(live: ServerThread, tcp: TcpClient) -> None:
    call = call_bytes(live.config.program, 1, 5)
    assert udp_exchange(live, call) == SYSTEM_ERR
    tcp.send(call)
    assert tcp.receive() == SYSTEM_ERR
    # ...and the server keeps serving on the same connection.
    tcp.send(call_bytes(live.config.program, 1, 0, xid=XID + 1))
    assert tcp.receive() == success(xid=XID + 1)


@pytest.mark.parametrize("name", list(DROPPED))
def test_udp_drops_unanswerable_then_answers_next(live: ServerThread, name: str) -> None:
    with udp_socket() as sock:
        sock.sendto(DROPPED[name](live.config.program), ("127.0.0.1", live.port))
        sock.sendto(call_bytes(live.config.program, 1, 0, xid=XID + 1), ("127.0.0.1", live.port))
        # Datagrams are handled in order, so an answer to the first would arrive first.
        assert sock.recv(65536) == success(xid=XID + 1)


@pytest.mark.parametrize("name", list(DROPPED))
def test_tcp_drops_unanswerable_then_answers_next(live: ServerThread, tcp: TcpClient, name: str) -> None:
    tcp.send(DROPPED[name](live.config.program))
    tcp.send(call_bytes(live.config.program, 2, 0, xid=XID + 2))
    assert tcp.receive() == success(xid=XID + 2)


def test_server_still_adds_after_all_the_abuse(live: ServerThread) -> None:
    with udp_socket() as sock:
        for build in DROPPED.values():
            sock.sendto(build(live.config.program), ("127.0.0.1", live.port))
        for case in CASES.values():
            sock.sendto(case.build(live.config.program), ("127.0.0.1", live.port))
        answers = [sock.recv(65536) for _ in CASES]
    assert sorted(answers) == sorted(case.reply for case in CASES.values())
    args = encode_add_args(ipaddress.IPv4Address("198.51.100.77"))
    message = encode_call(XID + 3, live.config.program, 1, 1, args)
    assert udp_exchange(live, message) == success(words(0), xid=XID + 3)
    assert ipaddress.IPv4Address("198.51.100.77") in live.call(lambda: read_entries(daemon_of(live).writer))


def test_live_server_serves_legacy_and_admin_versions(live: ServerThread) -> None:
    assert live.call(lambda: daemon_of(live).dispatcher.versions(live.config.program)) == [1, 2, 3]

