"""Hostile bytes in every parser of outside input get a defined outcome (issue 16).

An address with an embedded NUL once raised an uncaught ValueError out of
``inet_pton``: a socketmap lookup got no reply, and a map holding such a key
stopped dracd at start. Here: the key parsers, the socketmap request handler
against a real server, a map on disk read by a real dracd process, and
journal replay.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dracd.programs.socketmap
from dracd.keys import entry_code, parse_key, parse_key_code
from dracd.programs.socketmap import answer
from dracd.ratelog import RateLimitedLog
from dracd.relay.table import RelayTable
from tests.fixtures.process import DRACD, DracdProcess, read_map
from tests.fixtures.server import ServerThread, private_prog
from tests.test_socketmap import Client, inet_port

pytestmark = pytest.mark.timeout(40)

NUL_KEYS = [b"192.0.2.5\0junk", b"2001:db8::5\0junk", b"ipv6:2001:db8:0:0:0:0:0:5\0x", b"\0", b"1.2.3.4\0\0x",
            b"192.0.2\0.5", b"192.0.2.0/24\0x"]


@pytest.mark.parametrize("key", NUL_KEYS)
def test_key_parsers_refuse_embedded_nul(key: bytes) -> None:
    assert parse_key(key) is None
    assert parse_key_code(key) is None


def test_trailing_nul_keys_still_parse() -> None:
    """The legacy TERM_KD style: one NUL at the end is the key's terminator, not junk."""
    assert parse_key(b"192.0.2.5\0") is not None
    assert parse_key_code(b"192.0.2.5\0") == 0xC0000205


def test_valid_code_accepts_only_what_entry_code_makes() -> None:
    from dracd.keys import valid_code

    for text in ("192.0.2.5", "2001:db8::5", "192.0.2.0/24", "2001:db8:1::/48"):
        entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
        assert valid_code(entry_code(entry))
    for code in (0, 0xFFFFFFFF, 0xE0000001, 1 << 32 | 5, (40 + 1) << 129 | 1, (1 << 128) | (200 << 129),
                 -1, 1 << 400, entry_code(ipaddress.ip_network("192.0.2.0/23")),
                 entry_code(ipaddress.ip_address("::")) , int(ipaddress.ip_network("192.0.2.0/24").network_address)
                 | (25 << 129) | 1):
        assert not valid_code(code), hex(code)


def test_socketmap_handler_failure_is_a_temp_reply_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(key: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(dracd.programs.socketmap, "parse_key", broken)
    monkeypatch.setattr(dracd.programs.socketmap, "limited", RateLimitedLog(dracd.programs.socketmap.log))
    table = RelayTable()
    with caplog.at_level(logging.DEBUG, logger="dracd.programs.socketmap"):
        replies = [answer(table, b"drac 192.0.2.5") for _ in range(50)]
    assert set(replies) == {b"TEMP internal error"}
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1 and "boom" in logged[0].getMessage()


@pytest.fixture
def sm_server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(socketmap=("inet:127.0.0.1:0",))


def test_socketmap_lookup_with_embedded_nul_is_answered(sm_server: ServerThread,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Against the real server: NOTFOUND, and the connection keeps serving."""
    from dracclient import add

    add("192.0.2.5", servers="127.0.0.1", port=sm_server.port, prog=sm_server.config.program)
    client = Client(("127.0.0.1", inet_port(sm_server)))
    try:
        for key in NUL_KEYS:
            assert client.lookup(key) == b"NOTFOUND "
        assert client.lookup("192.0.2.5").startswith(b"OK ")
    finally:
        client.close()
    assert not [r for r in caplog.records if r.exc_info]


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Callable[..., DracdProcess]]:
    started: list[DracdProcess] = []

    def start(*args: object) -> DracdProcess:
        proc = DracdProcess([str(a) for a in args], log_path=tmp_path / f"dracd-{len(started)}.log",
                            cwd=tmp_path, exe=DRACD)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def _write_map(path: Path, records: dict[bytes, bytes]) -> None:
    from berkeleydb import db

    table = db.DB()
    table.open(str(path), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    try:
        for key, value in records.items():
            table.put(key, value)
    finally:
        table.close()


def test_map_with_nul_keys_starts_and_drops_them(tmp_path: Path, process: Callable[..., DracdProcess]) -> None:
    """A map on disk holding such keys: dracd starts (no exit 1, no traceback), keeps the
    good entries, drops the bad ones from the rewritten map and says how many it ignored."""
    import time

    db_path = tmp_path / "dracd.db"
    expiry = str(int(time.time()) + 3600).encode()
    _write_map(db_path, {b"192.0.2.6": expiry, **{key: expiry for key in NUL_KEYS}})
    proc = process("--no-rpcbind", "--port", "0", "--listen", "127.0.0.1", "--program", private_prog(),
                   db_path).wait_ready(10)
    assert proc.alive()
    assert "Traceback" not in proc.log()
    assert f"ignored {len(NUL_KEYS)} records" in proc.log()
    assert read_map(db_path) == {"192.0.2.6": int(expiry)}
    assert proc.stop() == 0


def test_journal_replay_drops_codes_that_are_no_entry(tmp_path: Path) -> None:
    """A state or journal (CRC-valid, so written on purpose) naming codes that are no valid
    entry, or a wildcard host: replay keeps the valid ones only, rather than fail later or
    put 0.0.0.0 in the map."""
    from dracd.publish.journal import Journal

    good = {0xC0000205: 2_000_000_000, entry_code(ipaddress.ip_address("2001:db8::5")): 2_000_000_000}
    bad = {0: 2_000_000_000, 0xFFFFFFFF: 2_000_000_000, (1 << 128) | (200 << 129): 2_000_000_000,
           (40 + 1) << 129 | 1: 2_000_000_000}
    journal = Journal(tmp_path / "dracd.db")
    journal.start({**good, **bad})
    journal.commit({1 << 32 | 5: 2_000_000_001, 0xC0000206: 2_000_000_001})
    journal.close()
    assert Journal(tmp_path / "dracd.db").recover() == {**good, 0xC0000206: 2_000_000_001}


def test_a_failing_handler_is_logged_once_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    """A bug that every request meets (SYSTEM_ERR each time) writes one traceback a minute."""
    import asyncio

    from dracclient.rpc import encode_call
    from dracd.server.dispatch import CallContext, Dispatcher

    def raises(args: bytes, ctx: CallContext) -> bytes:
        raise RuntimeError("handler exploded")

    dispatcher = Dispatcher()
    dispatcher.register(77, 1, 5, raises)

    async def main() -> list[bytes | None]:
        return [await dispatcher.handle(encode_call(xid, 77, 1, 5), ipaddress.ip_address("::1"), 1, "udp")
                for xid in range(100)]

    with caplog.at_level(logging.DEBUG, logger="dracd.server.dispatch"):
        replies = asyncio.run(main())
    assert all(reply is not None and reply[-4:] == b"\0\0\0\5" for reply in replies)  # SYSTEM_ERR
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert dispatcher.metrics.rpc_errors.get("SYSTEM_ERR") == 100
