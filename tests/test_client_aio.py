"""dracclient.aio.add() and ping() against the real server in a thread (the cases
it shares with the blocking add() run in test_client_api.py, over both), plus
what only an event loop can show: the loop keeps running during a call, many
adds run concurrently, and cancellation ends a call at once."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dracclient import (
    DracError,
    PermissionRefused,
    RpcRefused,
    RpcTimeout,
    ServerResult,
    Unavailable,
    aio,
)
from dracclient import add as sync_add
from tests.fixtures.server import ServerThread
from tests.test_client_api import (
    SLACK,
    dead_sockets,
    drain_xids,
    keys,
    other_servers,
    port_of,
    start_pair,
)

Make = Callable[..., ServerThread]
Sockets = Callable[..., socket.socket]
T = TypeVar("T")


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    with dead_sockets() as bind:
        yield bind


@pytest.fixture
def pair(make_server: Make, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, ServerThread]]:
    with other_servers(tmp_path_factory) as make_other:
        yield start_pair(make_server, make_other)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def add(address: str, **kwargs: Any) -> list[ServerResult]:
    return run(aio.add(address, **kwargs))


# --- one server, every route ------------------------------------------------------------


# --- refusals and bad replies ------------------------------------------------------------


def test_caller_outside_allow_list_gets_permission_refused(make_server: Make, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.9\n")
    server = make_server()
    prog = server.config.program
    for transport in ("udp", "tcp"):
        with pytest.raises(PermissionRefused) as info:
            add("192.0.2.7", servers="127.0.0.1", port=server.port, prog=prog, transport=transport, timeout=2.0)
        assert str(info.value) == "127.0.0.1 refused this host (ADD_PERM): check dracd.allow"
        assert info.value.results == [ServerResult("127.0.0.1", info.value)]
    assert keys(server) == set()
    for transport in ("udp", "tcp"):
        add("192.0.2.7", servers="127.0.0.1", port=server.port, prog=prog, transport=transport,
            source=("127.0.0.9", 0), timeout=2.0)
    assert keys(server) == {b"192.0.2.7"}


@pytest.mark.parametrize("kwargs", [
    {"address": "not-an-address"},
    {"servers": "mail.example.org"},
    {"servers": []},
    {"timeout": -1},
    {"retries": 1.5},
    {"transport": "unix"},
])
def test_bad_arguments_raise_value_error_before_any_traffic(
    sockets: Sockets, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    peer = sockets("127.0.0.1")
    call = {"address": "192.0.2.7", "servers": "127.0.0.1", "port": port_of(peer), "timeout": 1.0, **kwargs}
    address = call.pop("address")

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def no_resolver(*args: object, **kw: object) -> None:
            raise AssertionError("the resolver was asked")

        monkeypatch.setattr(loop, "getaddrinfo", no_resolver)
        await aio.add(address, **call)

    with pytest.raises(ValueError):
        run(main())
    assert drain_xids(peer) == []


# --- deadline and retransmission ---------------------------------------------------------


def test_tcp_server_that_never_answers_times_out(sockets: Sockets) -> None:
    peer = sockets("::1", kind="tcp-silent")
    started = time.monotonic()
    with pytest.raises(RpcTimeout, match="^cannot reach dracd on ::1: timed out after 0.6 s$"):
        add("192.0.2.7", servers="::1", port=port_of(peer), transport="tcp", timeout=0.6)
    assert 0.6 <= time.monotonic() - started <= 0.6 + SLACK


def test_udp_port_without_a_listener_is_unavailable(sockets: Sockets) -> None:
    port = port_of(sockets("127.0.0.1"))  # bound on 127.0.0.1 only: 127.0.0.4 answers port unreachable
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"^cannot reach dracd on 127\.0\.0\.4: connection refused$") as info:
        add("192.0.2.7", servers="127.0.0.4", port=port, timeout=2.0)
    assert time.monotonic() - started < 1.0
    # Word for word what the blocking client says.
    with pytest.raises(Unavailable) as blocking:
        sync_add("192.0.2.7", servers="127.0.0.4", port=port, timeout=2.0)
    assert str(blocking.value) == str(info.value)


# --- several servers ------------------------------------------------------------------


@pytest.mark.parametrize("transport, dead_kind, dead_error", [
    ("udp", "udp", RpcTimeout),
    ("tcp", "tcp-silent", RpcTimeout),
    ("tcp", "tcp-refused", Unavailable),
])
def test_dead_servers_do_not_stop_the_others(
    pair: tuple[ServerThread, ServerThread], sockets: Sockets, transport: str, dead_kind: str,
    dead_error: type[DracError],
) -> None:
    live4, live6 = pair
    port = live4.port
    sockets("127.0.0.2", port, dead_kind)
    sockets("127.0.0.3", port, dead_kind)
    started = time.monotonic()
    results = add("192.0.2.10", servers=["127.0.0.2", "127.0.0.1", "127.0.0.3", "::1"], port=port,
                  prog=live4.config.program, transport=transport, timeout=0.8)
    assert time.monotonic() - started <= 0.8 + SLACK
    assert [r.server for r in results] == ["127.0.0.2", "127.0.0.1", "127.0.0.3", "::1"]
    assert [r.ok for r in results] == [False, True, False, True]
    assert isinstance(results[0].error, dead_error) and isinstance(results[2].error, dead_error)
    assert b"192.0.2.10" in keys(live4) and b"192.0.2.10" in keys(live6)


def test_all_servers_down_raises_the_first_error_with_results(sockets: Sockets) -> None:
    port = port_of(sockets("127.0.0.1"))
    started = time.monotonic()
    with pytest.raises(DracError) as info:
        add("192.0.2.7", servers=["127.0.0.1", "127.0.0.4"], port=port, timeout=0.6)
    assert time.monotonic() - started <= 0.6 + SLACK
    assert type(info.value) is RpcTimeout
    results = info.value.results
    assert results is not None and [r.server for r in results] == ["127.0.0.1", "127.0.0.4"]
    assert results[0].error is info.value and isinstance(results[1].error, Unavailable)


# --- what only an event loop shows -------------------------------------------------------


def test_the_loop_keeps_running_during_a_call(sockets: Sockets) -> None:
    port = port_of(sockets("127.0.0.1"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    async def main() -> DracError:
        task = asyncio.create_task(ticker())
        try:
            await aio.add("192.0.2.7", servers="127.0.0.1", port=port, timeout=0.5)
        except DracError as exc:
            return exc
        finally:
            task.cancel()
        raise AssertionError("add() succeeded against a silent server")

    assert isinstance(run(main()), RpcTimeout)
    assert ticks >= 10  # a blocking call would have starved the ticker


def test_many_concurrent_adds(server: ServerThread) -> None:
    addresses = [f"198.51.100.{n}" for n in range(1, 31)]

    async def main() -> list[list[ServerResult]]:
        return await asyncio.gather(*(
            aio.add(address, servers="127.0.0.1" if n % 2 else "::1", port=server.port,
                    prog=server.config.program, transport="tcp" if n % 3 else "udp", timeout=5.0)
            for n, address in enumerate(addresses)))

    assert all(results[0].ok for results in run(main()))
    assert {address.encode() for address in addresses} <= keys(server)


def test_cancellation_ends_the_call_at_once(sockets: Sockets) -> None:
    dead_udp, dead_tcp = sockets("127.0.0.1"), sockets("127.0.0.1", kind="tcp-silent")
    udp, tcp = port_of(dead_udp), port_of(dead_tcp)

    async def main() -> float:
        task = asyncio.create_task(aio.add("192.0.2.7", servers=["127.0.0.1", "127.0.0.1"], port=udp, timeout=5.0))
        other = asyncio.create_task(aio.add("192.0.2.7", port=tcp, transport="tcp", timeout=5.0))
        # Both calls in flight: the datagram has arrived, the connection waits to be accepted.
        for _ in range(500):
            if len(select.select([dead_udp, dead_tcp], [], [], 0)[0]) == 2:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the calls did not reach the dead servers within 5 s")
        started = time.monotonic()
        task.cancel()
        other.cancel()
        for pending in (task, other):
            with pytest.raises(asyncio.CancelledError):
                await pending
        return time.monotonic() - started

    assert run(main()) < 0.5


# --- ping ----------------------------------------------------------------------------


def test_ping_returns_the_round_trip(rpcbind: None, make_server: Make) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    for transport in ("udp", "tcp"):
        for host in ("127.0.0.1", "::1"):
            assert 0 < run(aio.ping(host, prog=prog, transport=transport, timeout=2.0)) < 2.0
    assert 0 < run(aio.ping("localhost", vers=2, port=server.port, prog=prog, timeout=2.0)) < 2.0


def test_ping_failures(server: ServerThread, sockets: Sockets) -> None:
    with pytest.raises(RpcRefused, match="PROG_MISMATCH"):
        run(aio.ping("127.0.0.1", vers=9, port=server.port, prog=server.config.program, timeout=2.0))
    silent = sockets("::1")
    with pytest.raises(RpcTimeout, match=r"^cannot reach dracd on ::1: timed out after 0\.5 s$"):
        run(aio.ping("::1", port=port_of(silent), timeout=0.5))
    with pytest.raises(ValueError):
        run(aio.ping("dracd.example.org"))
