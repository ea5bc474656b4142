"""dracclient.add() and ping() against the real server in a thread, blocking and, in
every test taking ``add_with``, the asyncio twin too: address families,
transports, IPv4 and IPv6 sockets, rpcbind, several servers with dead ones
among them, the deadline, UDP retransmission, refusals.

The helpers here (silent sockets, a dropping UDP relay, a second server in its
own directory) are shared with test_client_aio.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dracclient
from dracclient import (
    BadReply,
    DracError,
    PermissionRefused,
    RpcRefused,
    RpcTimeout,
    ServerError,
    ServerResult,
    Unavailable,
    add,
    aio,
    ping,
)
from dracclient.rpc import decode_call, encode_accepted, peek_xid
from tests.fixtures.server import ServerThread, map_keys, test_config

Make = Callable[..., ServerThread]
SLACK = 0.5  # how far past its deadline a call may return


def keys(server: ServerThread) -> set[bytes]:
    return set(map_keys(server.config.map.path))


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@contextlib.contextmanager
def other_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Make]:
    """Like make_server, but each server gets its own directory (map, allow list, sockets)."""
    servers: list[ServerThread] = []

    def make(**changes: Any) -> ServerThread:
        server = ServerThread(test_config(tmp_path_factory.mktemp("other"), **changes))
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def dead_sockets() -> Iterator[Callable[..., socket.socket]]:
    """Factory for dead peers: ``bind(host, port, kind)`` binds a socket that never
    answers. ``udp``: datagrams pile up unread. ``tcp-refused``: bound, not listening,
    so connections are refused. ``tcp-silent``: listening, never accepting."""
    made: list[socket.socket] = []

    def bind(host: str, port: int = 0, kind: str = "udp") -> socket.socket:
        sock = socket.socket(family(host), socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        made.append(sock)
        sock.bind((host, port))
        if kind == "tcp-silent":
            sock.listen(8)
        return sock

    try:
        yield bind
    finally:
        for sock in made:
            sock.close()


def start_pair(make_server: Make, make_other: Make) -> tuple[ServerThread, ServerThread]:
    """Two live servers on one port number: 127.0.0.1 and ::1 (same private program)."""
    live4 = make_server(listen=("127.0.0.1",))
    return live4, make_other(listen=("::1",), port=live4.port, program=live4.config.program)


@pytest.fixture
def make_other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Make]:
    with other_servers(tmp_path_factory) as make:
        yield make


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    with dead_sockets() as bind:
        yield bind


@pytest.fixture
def pair(make_server: Make, make_other: Make) -> tuple[ServerThread, ServerThread]:
    return start_pair(make_server, make_other)


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def drain_xids(sock: socket.socket) -> list[int | None]:
    """The xids of every datagram waiting on ``sock``."""
    sock.setblocking(False)
    xids = []
    with contextlib.suppress(BlockingIOError):
        while True:
            xids.append(peek_xid(sock.recv(65536)))
    return xids


class DroppingRelay:
    """A UDP relay in front of ``upstream``: drops the first ``drop`` datagrams from
    the client, forwards the rest, relays the replies back, and records every xid
    it received from the client."""

    def __init__(self, upstream: tuple[str, int], drop: int = 1) -> None:
        self.drop = drop
        self.xids: list[int | None] = []
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(family(upstream[0]), socket.SOCK_DGRAM)
        self.back.connect(upstream)
        self.port = port_of(self.front)
        self._client: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.front, selectors.EVENT_READ)
            selector.register(self.back, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    with contextlib.suppress(OSError):
                        if key.fileobj is self.front:
                            data, self._client = self.front.recvfrom(65536)
                            self.xids.append(peek_xid(data))
                            if len(self.xids) > self.drop:
                                self.back.send(data)
                        else:
                            self.front.sendto(self.back.recv(65536), self._client)

    def __enter__(self) -> DroppingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close()
        self.back.close()


def fake_udp_dracd(results: bytes) -> tuple[socket.socket, threading.Thread]:
    """A one-shot UDP peer that answers the first call SUCCESS with ``results``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            data, client = sock.recvfrom(65536)
            sock.sendto(encode_accepted(decode_call(data).xid, results=results), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


Add = Callable[..., list[ServerResult]]


@pytest.fixture(params=["blocking", "asyncio"])
def add_with(request: pytest.FixtureRequest) -> Add:
    """dracclient.add or its asyncio twin run to completion: the same cases must give the
    same results, errors and messages (test_client_aio.py has what only a loop can show)."""
    if request.param == "blocking":
        return add

    def run_aio(address: str, **kwargs: Any) -> list[ServerResult]:
        return asyncio.run(aio.add(address, **kwargs))

    return run_aio


# --- one server, every route ------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_add_ipv4_and_ipv6_with_explicit_port(server: ServerThread, transport: str, host: str, add_with: Add) -> None:
    prog = server.config.program
    for address in ("192.0.2.7", "2001:db8::7"):
        results = add_with(address, servers=host, port=server.port, prog=prog, transport=transport,
                      timeout=2.0)
        assert results == [ServerResult(host)] and results[0].ok
    assert {b"192.0.2.7", b"2001:db8::7"} <= keys(server)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_add_through_rpcbind(rpcbind: None, make_server: Make, transport: str, host: str, add_with: Add) -> None:
    server = make_server(rpcbind=True)
    for address in ("192.0.2.8", "2001:db8::8"):
        assert add_with(address, servers=host, prog=server.config.program, transport=transport,
                   timeout=2.0)[0].ok
    assert {b"192.0.2.8", b"2001:db8::8"} <= keys(server)


def test_ipv4_mapped_address_goes_as_ipv4(server: ServerThread, add_with: Add) -> None:
    add_with("::ffff:192.0.2.44", servers="::1", port=server.port, prog=server.config.program, timeout=2.0)
    assert b"192.0.2.44" in keys(server)
    assert not any(key.startswith(b"::ffff") for key in keys(server))


def test_not_registered_with_rpcbind_is_unavailable(rpcbind: None, server: ServerThread, add_with: Add) -> None:
    with pytest.raises(Unavailable, match=r"^cannot reach dracd on 127\.0\.0\.1: .*not registered with rpcbind$"):
        add_with("192.0.2.7", servers="127.0.0.1", prog=server.config.program, timeout=2.0)
    for transport in ("udp", "tcp"):
        with pytest.raises(Unavailable, match=r"^cannot reach dracd on ::1: .*not registered with rpcbind$"):
            add_with("192.0.2.7", servers="::1", prog=server.config.program, transport=transport, timeout=2.0)


def test_wrong_program_is_rpc_refused(server: ServerThread, add_with: Add) -> None:
    with pytest.raises(RpcRefused, match=r"^dracd on 127\.0\.0\.1 refused the call: PROG_UNAVAIL$"):
        add_with("192.0.2.7", servers="127.0.0.1", port=server.port, prog=server.config.program + 1, timeout=2.0)


# --- refusals and bad replies ------------------------------------------------------------


def test_caller_outside_allow_list_gets_permission_refused(make_server: Make, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.9\n")
    server = make_server()
    prog = server.config.program
    for transport in ("udp", "tcp"):
        with pytest.raises(PermissionRefused) as info:
            add("192.0.2.7", servers="127.0.0.1", port=server.port, prog=prog, transport=transport,
                timeout=2.0)
        assert str(info.value) == "127.0.0.1 refused this host (ADD_PERM): check dracd.allow"
        assert info.value.results == [ServerResult("127.0.0.1", info.value)]
    assert keys(server) == set()
    # From the allowed address the same call goes through.
    add("192.0.2.7", servers="127.0.0.1", port=server.port, prog=prog, source=("127.0.0.9", 0), timeout=2.0)
    assert keys(server) == {b"192.0.2.7"}


@pytest.mark.parametrize("results, error", [
    (b"\0\0\0\2", ServerError),   # ADD_SYSERR
    (b"\0\0\0\3", ServerError),   # ADD_UNKOWN
    (b"\0\0\0\7", BadReply),      # no such addstat
    (b"", BadReply),              # no addstat at all
])
def test_addstat_failures(results: bytes, error: type[DracError], add_with: Add) -> None:
    sock, thread = fake_udp_dracd(results)
    with sock, pytest.raises(error, match=r"127\.0\.0\.1"):
        add_with("192.0.2.7", servers="127.0.0.1", port=port_of(sock), timeout=2.0)
    thread.join(5)


@pytest.mark.parametrize("kwargs", [
    {"address": "not-an-address"},
    {"address": "192.0.2.256"},
    {"servers": "mail.example.org"},  # host names are never resolved
    {"servers": ["127.0.0.1", "dracd"]},
    {"servers": []},
    {"timeout": 0},
    {"timeout": float("nan")},
    {"retries": -1},
    {"transport": "sctp"},
    {"port": 70000},
])
def test_bad_arguments_raise_value_error_before_any_traffic(
    sockets: Callable[..., socket.socket], monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    def no_resolver(*args: object, **kw: object) -> None:
        raise AssertionError("the resolver was asked")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    monkeypatch.setattr(socket, "gethostbyname", no_resolver)
    peer = sockets("127.0.0.1")
    call = {"address": "192.0.2.7", "servers": "127.0.0.1", "port": port_of(peer), "timeout": 1.0, **kwargs}
    address = call.pop("address")
    with pytest.raises(ValueError):
        add(address, **call)
    assert drain_xids(peer) == []


# --- deadline and retransmission ---------------------------------------------------------


def test_silent_udp_server_times_out_on_the_deadline(sockets: Callable[..., socket.socket], add_with: Add) -> None:
    peer = sockets("127.0.0.1")
    started = time.monotonic()
    with pytest.raises(RpcTimeout) as info:
        add_with("192.0.2.7", servers="127.0.0.1", port=port_of(peer), timeout=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed <= 1.0 + SLACK
    assert str(info.value) == "cannot reach dracd on 127.0.0.1: timed out after 1.0 s"
    xids = drain_xids(peer)
    assert len(xids) >= 3 and len(set(xids)) == 1  # 0, 0.25, 0.75 s: retransmitted, one xid


@pytest.mark.parametrize("retries, sent", [(0, 1), (1, 2)])
def test_retries_caps_retransmissions(sockets: Callable[..., socket.socket], retries: int, sent: int,
                                      add_with: Add) -> None:
    peer = sockets("127.0.0.1")
    with pytest.raises(RpcTimeout):
        add_with("192.0.2.7", servers="127.0.0.1", port=port_of(peer), timeout=0.6, retries=retries)
    assert len(drain_xids(peer)) == sent  # sends at 0 and 0.25 s if allowed


def test_retransmission_gets_through_a_dropped_datagram(server: ServerThread, add_with: Add) -> None:
    with DroppingRelay(("127.0.0.1", server.port)) as relay:
        started = time.monotonic()
        results = add_with("192.0.2.9", servers="127.0.0.1", port=relay.port, prog=server.config.program, timeout=2.0)
        assert results[0].ok
        assert time.monotonic() - started >= 0.25  # the first retransmission's interval
    assert len(relay.xids) == 2 and relay.xids[0] == relay.xids[1]
    assert b"192.0.2.9" in keys(server)


def test_no_retries_and_a_dropped_datagram_times_out(server: ServerThread, add_with: Add) -> None:
    with DroppingRelay(("127.0.0.1", server.port)) as relay, pytest.raises(RpcTimeout):
        add_with("192.0.2.9", servers="127.0.0.1", port=relay.port, prog=server.config.program, timeout=0.6, retries=0)
    assert len(relay.xids) == 1
    assert keys(server) == set()


def test_tcp_server_that_never_answers_times_out(sockets: Callable[..., socket.socket]) -> None:
    peer = sockets("127.0.0.1", kind="tcp-silent")
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        add("192.0.2.7", servers="127.0.0.1", port=port_of(peer), transport="tcp", timeout=0.6)
    assert 0.6 <= time.monotonic() - started <= 0.6 + SLACK


# --- several servers ------------------------------------------------------------------


@pytest.mark.parametrize("transport, dead_kind, dead_error", [
    ("udp", "udp", RpcTimeout),
    ("tcp", "tcp-silent", RpcTimeout),
    ("tcp", "tcp-refused", Unavailable),
])
def test_dead_servers_do_not_stop_the_others(
    pair: tuple[ServerThread, ServerThread], sockets: Callable[..., socket.socket],
    transport: str, dead_kind: str, dead_error: type[DracError],
) -> None:
    live4, live6 = pair
    port = live4.port
    sockets("127.0.0.2", port, dead_kind)
    sockets("127.0.0.3", port, dead_kind)
    started = time.monotonic()
    results = add("192.0.2.10", servers=["127.0.0.2", "127.0.0.1", "127.0.0.3", "::1"], port=port,
                  prog=live4.config.program, transport=transport, timeout=0.8)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert elapsed <= 0.8 + SLACK  # concurrent: not one deadline per dead server
    assert [r.server for r in results] == ["127.0.0.2", "127.0.0.1", "127.0.0.3", "::1"]
    assert [r.ok for r in results] == [False, True, False, True]
    assert isinstance(results[0].error, dead_error) and isinstance(results[2].error, dead_error)
    assert "127.0.0.2" in str(results[0].error) and "127.0.0.3" in str(results[2].error)
    assert b"192.0.2.10" in keys(live4) and b"192.0.2.10" in keys(live6)


def test_all_servers_down_raises_the_first_error_with_results(sockets: Callable[..., socket.socket]) -> None:
    silent = sockets("127.0.0.1")
    port = port_of(silent)  # nothing is bound on 127.0.0.4 at this port: refused at once
    started = time.monotonic()
    with pytest.raises(DracError) as info:
        add("192.0.2.7", servers=["127.0.0.1", "127.0.0.4"], port=port, timeout=0.6)
    assert time.monotonic() - started <= 0.6 + SLACK
    # The first server's error, although the second failed sooner.
    assert type(info.value) is RpcTimeout
    results = info.value.results
    assert results is not None and [r.server for r in results] == ["127.0.0.1", "127.0.0.4"]
    assert results[0].error is info.value
    assert isinstance(results[1].error, Unavailable)
    assert str(results[1].error).startswith("cannot reach dracd on 127.0.0.4: ")


def test_several_servers_through_rpcbind(rpcbind: None, make_server: Make, add_with: Add) -> None:
    """Registered for udp and tcp only: the lookup on ::1 (udp6/tcp6) finds nothing."""
    server = make_server(rpcbind=True, listen=("127.0.0.1",))
    for transport in ("udp", "tcp"):
        results = add_with("2001:db8::10", servers=("::1", "localhost"), prog=server.config.program,
                      transport=transport, timeout=2.0)
        assert [r.server for r in results] == ["::1", "localhost"]
        assert isinstance(results[0].error, Unavailable) and "not registered with rpcbind" in str(results[0].error)
        assert results[1].ok
    assert b"2001:db8::10" in keys(server)


# --- ping ----------------------------------------------------------------------------


def test_ping_returns_the_round_trip(rpcbind: None, make_server: Make) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    for transport in ("udp", "tcp"):
        for host in ("127.0.0.1", "::1"):
            rtt = ping(host, prog=prog, transport=transport, timeout=2.0)
            assert 0 < rtt < 2.0
    assert 0 < ping("localhost", vers=2, port=server.port, prog=prog, timeout=2.0) < 2.0
    assert 0 < dracclient.ping(port=server.port, prog=prog, timeout=2.0) < 2.0


def test_ping_failures(server: ServerThread, sockets: Callable[..., socket.socket]) -> None:
    with pytest.raises(RpcRefused, match="PROG_MISMATCH"):
        ping("127.0.0.1", vers=9, port=server.port, prog=server.config.program, timeout=2.0)
    silent = sockets("::1")
    with pytest.raises(RpcTimeout, match=r"^cannot reach dracd on ::1: timed out after 0\.5 s$"):
        ping("::1", port=port_of(silent), timeout=0.5)
