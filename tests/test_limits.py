"""Limits that keep a hostile or broken client from costing more than its share:
TCP record size, connection count, idle and slow senders, table size, and
which UDP sources are believed."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.drac import DRACPROC_ADD, AddStat, encode_add_args
from dracclient.record import encode_record
from dracclient.rpc import encode_call
from dracd.config import ConfigError, load_config
from tests.fixtures.server import LOOPS, ServerThread, add_status, map_keys, wait_for
from tests.fixtures.tools import accept_queue

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

Make = Callable[..., ServerThread]


def tcp(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed ``sock`` (fails if it stays open longer than ``within``)."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"connection still open after {within} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def add_call(server: ServerThread, address: str, xid: int = 1) -> bytes:
    args = encode_add_args(ipaddress.ip_address(address))
    return encode_call(xid, server.config.program, 1, DRACPROC_ADD, args)


def test_oversized_record_closes_that_connection_only(make_server: Make) -> None:
    server = make_server(max_record=1024)
    with tcp(server) as bad:
        bad.sendall((0x80000000 | 4096).to_bytes(4, "big"))  # announces 4 KiB: refused from the header alone
        assert closed_by_server(bad, 5) < 2
    assert add_status(server, "192.0.2.1", transport="tcp") == AddStat.ADD_SUCCESS


@pytest.mark.parametrize("loop", LOOPS)
def test_silent_connections_cannot_lock_others_out(make_server: Make, loop: str) -> None:
    server = make_server(max_connections=3, event_loop=loop)
    held = [tcp(server) for _ in range(3)]
    try:
        assert wait_for(lambda: accept_queue(server.port) == 0, 5.0), "the server did not accept all three"
        # A new client still gets served: the quietest connection makes room.
        assert add_status(server, "192.0.2.3", transport="tcp") == AddStat.ADD_SUCCESS
        assert closed_by_server(held[0], 5) < 2
        assert add_status(server, "192.0.2.2") == AddStat.ADD_SUCCESS  # UDP is not affected
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connection_is_closed(make_server: Make, tmp_path: Path, loop: str) -> None:
    server = make_server(idle_timeout=1, event_loop=loop)
    with tcp(server) as idle:
        assert 0.8 < closed_by_server(idle, 5) < 3


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_sender_is_closed_before_the_idle_timeout(make_server: Make, loop: str) -> None:
    server = make_server(idle_timeout=60, record_timeout=1, event_loop=loop)
    record = encode_record(add_call(server, "192.0.2.4"))
    with tcp(server) as slow:
        slow.sendall(record[:10])  # a record that never completes
        assert 0.8 < closed_by_server(slow, 5) < 3
    assert b"192.0.2.4" not in map_keys(server.config.map.path)


def test_full_table_refuses_new_addresses_but_refreshes_old_ones(make_server: Make) -> None:
    server = make_server(max_entries=2)
    assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
    assert add_status(server, "192.0.2.2") == AddStat.ADD_SUCCESS
    assert add_status(server, "192.0.2.3") == AddStat.ADD_SYSERR
    assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.1", b"192.0.2.2"}


def test_udp_from_restricts_udp_callers_only(make_server: Make, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text("127.0.0.0/8\n::1/128\n")
    server = make_server(udp_from=(ipaddress.ip_network("127.0.0.1/32"),))
    assert add_status(server, "192.0.2.1", source="127.0.0.1") == AddStat.ADD_SUCCESS
    assert add_status(server, "192.0.2.2", source="127.0.0.2") == AddStat.ADD_PERM
    assert add_status(server, "192.0.2.3", source="127.0.0.2", transport="tcp") == AddStat.ADD_SUCCESS
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.1", b"192.0.2.3"}


@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_calls_beyond_the_in_flight_bound_are_all_answered(make_server: Make, loop: str) -> None:
    server = make_server(event_loop=loop)
    calls = b"".join(encode_record(add_call(server, f"198.51.100.{n}", xid=n)) for n in range(1, 201))
    with tcp(server) as sock:
        sock.sendall(calls)
        data = b""
        sock.settimeout(10)
        while data.count(b"\x80\x00\x00\x1c") < 200:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before every call was answered"
            data += chunk
    assert len(map_keys(server.config.map.path)) == 200


def test_limit_settings_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "dracd.yaml"
    path.write_text("udp_from: loopback\nmax_entries: 10\nidle_timeout: 30s\n")
    config = load_config(path)
    assert config.udp_from is not None and ipaddress.ip_address("127.0.0.9") in config.udp_from[0]
    assert (config.max_entries, config.idle_timeout) == (10, 30)
    for bad in ("udp_from: nowhere", "max_entries: 0", "idle_timeout: 30", "max_record: 12"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=bad.split(":")[0]):
            load_config(path)


def test_server_keeps_answering_through_a_flood_of_bad_datagrams(server: ServerThread) -> None:
    """100k hostile datagrams (random, truncated, wrong program or version, huge
    credentials), interleaved with valid ADDs from another client."""
    import os
    import random

    rng = random.Random(8)
    good = add_call(server, "192.0.2.77")
    kinds = [
        lambda: os.urandom(rng.randrange(0, 200)),
        lambda: good[: rng.randrange(0, len(good))],
        lambda: encode_call(rng.getrandbits(32), rng.getrandbits(32), 1, 1, b"\0" * 4),
        lambda: encode_call(rng.getrandbits(32), server.config.program, rng.randrange(4, 99), 1),
        lambda: good[:24] + (1).to_bytes(4, "big") + (0xFFFFFFF0).to_bytes(4, "big") + b"\0" * 64,
    ]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.setblocking(False)
        for round_ in range(10):
            for _ in range(10_000):
                try:
                    attacker.sendto(rng.choice(kinds)(), ("127.0.0.1", server.port))
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.001)
            assert add_status(server, f"192.0.2.{100 + round_}", timeout=10) == AddStat.ADD_SUCCESS
    assert sent > 90_000
    assert {f"192.0.2.{100 + n}".encode() for n in range(10)} <= set(map_keys(server.config.map.path))


def test_rate_per_caller(make_server: Make, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text("127.0.0.0/8\n")
    server = make_server(rate_per_caller=5)
    results = [add_status(server, f"198.51.100.{n}") for n in range(1, 31)]
    # A burst of 2 x rate passes, then roughly the rate.
    assert results[:10] == [AddStat.ADD_SUCCESS] * 10
    assert AddStat.ADD_SYSERR in results[10:]
    # Another caller has a bucket of its own.
    assert add_status(server, "198.51.100.200", source="127.0.0.2") == AddStat.ADD_SUCCESS


def test_caller_buckets_refill_with_time() -> None:
    from dracd.programs.drac import CallerBuckets

    now = [0.0]
    buckets = CallerBuckets(clock=lambda: now[0])
    caller = ipaddress.ip_address("192.0.2.1")
    assert [buckets.allow(caller, 2) for _ in range(5)] == [True] * 4 + [False]
    now[0] += 1.0
    assert [buckets.allow(caller, 2) for _ in range(3)] == [True, True, False]
    assert buckets.allow(ipaddress.ip_address("192.0.2.2"), 2)
