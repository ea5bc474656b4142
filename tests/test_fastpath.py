"""The task-free request path: UDP read by hand (a burst per wake-up, bounded, an
overload bound, replies dropped rather than queued when the send buffer is
full), synchronous dispatch with answers now or from a callback, TCP records
answered without a task each, and the event loop chosen by ``event_loop``.
Real sockets on loopback, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from dracclient.drac import DRACPROG, AddStat, encode_add_args
from dracclient.record import RecordReader, encode_record
from dracclient.rpc import decode_reply, encode_call
from dracclient.xdr import XdrError
from dracd.app.assemble import event_loop
from dracd.app.cli import EX_CONFIG, EX_OK, EX_USAGE
from dracd.app.cli import main as dracd_main
from dracd.app.daemon import Daemon
from dracd.config import Config, ConfigError, config_from_dict
from dracd.keys import KeyStyle, entry_code
from dracd.programs.drac import DracService, Settings
from dracd.publish.journal import Journal
from dracd.ratelog import RateLimitedLog
from dracd.relay.policy import AllowList, NetRule
from dracd.relay.table import RelayTable
from dracd.server import transport
from dracd.server.dispatch import PENDING, AuthRefused, CallContext, Dispatcher, Handler, Pending
from dracd.server.transport import CallerCache, UdpServer, send_datagram
from tests.fixtures.maps import EntryMap
from tests.fixtures.server import LOOPS, ServerThread, map_keys
from tests.fixtures.stack import running_stack

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

Make = Callable[..., ServerThread]
XID = 0x0FA57000


def words(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def success(xid: int, results: bytes = b"") -> bytes:
    return words(xid, 1, 0, 0, 0, 0) + results


def add_call(prog: int, address: str, xid: int) -> bytes:
    addr = ipaddress.ip_address(address)
    return encode_call(xid, prog, 1 if addr.version == 4 else 2, 1, encode_add_args(addr))


def null_call(prog: int, xid: int) -> bytes:
    return encode_call(xid, prog, 1, 0)


def udp_server_of(server: ServerThread) -> UdpServer:
    assert server.daemon is not None
    return server.daemon._udp[0]  # the 127.0.0.1 listener (test_config listens there first)


def daemon_of(server: ServerThread) -> Daemon:
    assert server.daemon is not None
    return server.daemon


def held_loop(server: ServerThread, seconds: float) -> threading.Event:
    """Block the server's loop for ``seconds``; the event is set once it is blocked."""
    blocked = threading.Event()

    def block() -> None:
        blocked.set()
        time.sleep(seconds)

    server.loop.call_soon_threadsafe(block)
    assert blocked.wait(5)
    return blocked


def receive(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(10)
    return [sock.recv(65536) for _ in range(count)]


# --- UDP: bursts, bounds, drops ------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_burst_of_datagrams_is_read_in_one_wake_up_and_answered(make_server: Make, loop: str) -> None:
    server = make_server(event_loop=loop)
    udp = udp_server_of(server)
    prog = server.config.program
    before = server.call(lambda: (udp.wakeups, udp.received))
    writes_before = server.call(lambda: sum(daemon_of(server).metrics.map_writes.values.values()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        held_loop(server, 0.5)
        # Queued while the loop cannot read: one readiness must serve them all.
        for n in range(40):
            sock.sendto(add_call(prog, f"198.51.100.{n + 1}", XID + n), ("127.0.0.1", server.port))
        for n in range(40, 50):
            sock.sendto(null_call(prog, XID + n), ("127.0.0.1", server.port))
        replies = receive(sock, 50)
    after = server.call(lambda: (udp.wakeups, udp.received))
    assert after[1] - before[1] == 50
    assert after[0] - before[0] == 1
    assert sorted(replies) == sorted([success(XID + n, words(AddStat.ADD_SUCCESS)) for n in range(40)]
                                     + [success(XID + n) for n in range(40, 50)])
    assert len(map_keys(server.config.map.path)) == 40
    # The 40 ADDs reached the table together: a map write or two serve them, not forty.
    writes = server.call(lambda: sum(daemon_of(server).metrics.map_writes.values.values())) - writes_before
    assert writes <= 3


def test_a_wake_up_reads_at_most_a_batch(make_server: Make) -> None:
    """The per-readiness bound: 150 queued datagrams take three wake-ups of 64, and all are answered."""
    server = make_server()
    udp = udp_server_of(server)
    assert udp.batch == 64
    before = server.call(lambda: udp.wakeups)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        held_loop(server, 0.5)
        for n in range(150):
            sock.sendto(null_call(server.config.program, XID + n), ("127.0.0.1", server.port))
        replies = receive(sock, 150)
    assert sorted(replies) == sorted(success(XID + n) for n in range(150))
    assert server.call(lambda: udp.wakeups) - before == 3


def run_loop(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=event_loop(Config(event_loop=loop_name))[1]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_udp_overload_bound_drops_new_calls_until_answers_make_room(loop: str) -> None:
    held: list[CallContext] = []

    def hold(args: bytes, ctx: CallContext) -> Pending:
        held.append(ctx)
        return PENDING

    dispatcher = Dispatcher()
    dispatcher.register(77, 1, 1, hold)
    dispatcher.register(77, 1, 0, lambda args, ctx: b"")

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listening, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            listening.bind(("127.0.0.1", 0))
            listening.setblocking(False)
            client.setblocking(False)
            server = UdpServer(listening, dispatcher.dispatch, max_in_flight=8)
            address = listening.getsockname()
            try:
                for n in range(20):
                    client.sendto(encode_call(XID + n, 77, 1, 1), address)
                while server.received < 20:
                    await asyncio.sleep(0.01)
                assert (server.in_flight, server.dropped, len(held)) == (8, 12, 8)
                assert not server.idle().done()
                # Answers make room, and reach their callers.
                for ctx in held:
                    ctx.reply(b"done")
                assert server.in_flight == 0 and server.idle().done()
                answers: list[bytes] = []
                while len(answers) < 8:
                    try:
                        answers.append(client.recv(100))
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                assert sorted(answers) == [success(XID + n, b"done") for n in range(8)]
                client.sendto(encode_call(XID + 99, 77, 1, 0), address)
                while True:
                    try:
                        assert client.recv(100) == success(XID + 99)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
            finally:
                server.close()

    run_loop(loop, main)


def test_a_full_send_buffer_drops_the_reply_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EAGAIN on a real socket: a UNIX datagram peer that does not read fills its queue,
    and a non-blocking sendto then fails the way a full UDP send buffer does."""
    monkeypatch.setattr(transport, "limited", RateLimitedLog(transport.log))
    path = str(tmp_path / "peer")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        peer.bind(path)
        sender.setblocking(False)
        with caplog.at_level(logging.WARNING, logger="dracd.server.transport"):
            sent = [send_datagram(sender, b"x" * 512, path) for _ in range(5000)]
        assert sent[0] and not sent[-1]
        dropped = sent.count(False)
        assert dropped > 1
        warnings = [r for r in caplog.records if "send buffer full" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited: one line for the flood
        # Nothing was queued behind the drops: the peer holds only what was sent.
        peer.setblocking(False)
        received = 0
        while True:
            try:
                peer.recv(1024)
            except BlockingIOError:
                break
            received += 1
        assert received == sent.count(True)


def test_caller_cache_is_bounded_and_strips_scope() -> None:
    cache = CallerCache(size=2)
    assert cache.get("127.0.0.1") is cache.get("127.0.0.1")
    assert cache.get("fe80::1%lo") == ipaddress.IPv6Address("fe80::1")
    assert cache.get("::1") == ipaddress.IPv6Address("::1")
    assert len(cache._known) <= 2


# --- synchronous dispatch ------------------------------------------------------

ALLOW = AllowList((NetRule(ipaddress.ip_network("127.0.0.1/32")),), "test")


@contextlib.asynccontextmanager
async def drac_service(writer: EntryMap, settings: Settings, clock: Callable[[], float] = time.time
                       ) -> AsyncIterator[tuple[RelayTable, Dispatcher, DracService]]:
    """The DRAC program on a dispatcher, over a running committer, with no sockets."""
    async with running_stack(writer, settings, clock) as stack:
        yield stack.table, stack.dispatcher, stack.drac


def test_sync_add_with_a_failing_map_answers_add_syserr_from_the_callback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = EntryMap(tmp_path / "missing" / "dracd.db", "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        async with drac_service(writer, Settings(ALLOW, 600)) as (table, dispatcher, drac):
            message = add_call(DRACPROG, "192.0.2.10", XID)
            # The ADD is in the table at once; the answer waits for the map.
            assert dispatcher.dispatch(message, ipaddress.ip_address("127.0.0.1"), 800, "udp", None,
                                       replies.append) is PENDING
            assert ipaddress.IPv4Address("192.0.2.10") in table and replies == []
            while not replies:
                await asyncio.sleep(0.01)
            assert drac.metrics.adds.get("1", "udp", "ADD_SYSERR") == 1

    with caplog.at_level(logging.WARNING, logger="dracd.programs.drac"):
        asyncio.run(main())
    assert replies == [success(XID, words(AddStat.ADD_SYSERR))]
    assert any(r.getMessage().startswith("ADD 192.0.2.10 from 127.0.0.1/udp failed:") for r in caplog.records)


def test_sync_add_answers_at_once_when_the_map_already_holds_it(tmp_path: Path) -> None:
    """A refresh of an entry already written: on_written calls back before dispatch returns."""
    writer = EntryMap(tmp_path / "dracd.db", "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        async with drac_service(writer, Settings(ALLOW, 600), clock=lambda: 1_000_000.0) as (_, dispatcher, _):
            caller = ipaddress.ip_address("127.0.0.1")
            first = dispatcher.dispatch(add_call(DRACPROG, "192.0.2.11", XID), caller, 1, "udp", None, replies.append)
            assert first is PENDING
            while not replies:
                await asyncio.sleep(0.01)
            # Same second, same expiry: the table does not change, the map already holds it.
            again = dispatcher.dispatch(add_call(DRACPROG, "192.0.2.11", XID + 1), caller, 1, "udp", None,
                                        replies.append)
            assert again is PENDING and len(replies) == 2

    asyncio.run(main())
    assert replies == [success(XID, words(0)), success(XID + 1, words(0))]


async def _answered_within(replies: list[bytes], count: int, iterations: int) -> bool:
    """Whether ``replies`` holds ``count`` answers after at most ``iterations`` loop iterations."""
    for _ in range(iterations):
        if len(replies) >= count:
            return True
        await asyncio.sleep(0)
    return len(replies) >= count


async def _add(dispatcher: Dispatcher, address: str, xid: int, replies: list[bytes]) -> None:
    caller = ipaddress.ip_address("127.0.0.1")
    assert dispatcher.dispatch(add_call(DRACPROG, address, xid), caller, 1, "udp", None, replies.append) is PENDING


async def _settled(replies: list[bytes], count: int) -> None:
    for _ in range(500):
        if len(replies) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count - len(replies)} ADDs unanswered after 5 s")


async def _spare_made(dispatcher: Dispatcher, replies: list[bytes], first: int) -> None:
    """Two ADDs (192.0.2.<first> and the next), answered: the first write is the whole map,
    the second a copy that leaves a spare behind."""
    for i in range(2):
        await _add(dispatcher, f"192.0.2.{first + i}", XID + i, replies)
        await _settled(replies, i + 1)


def test_a_lone_add_is_committed_on_the_spot(tmp_path: Path) -> None:
    """One login at a time (issue 21): the ADD is journaled, in the map and answered in the
    next loop iteration, with no commit-task step and no gathering of a burst (which took
    four iterations, each an epoll and a task step, for a burst that never comes)."""
    path = tmp_path / "dracd.db"
    writer = EntryMap(path, "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        async with drac_service(writer, Settings(ALLOW, 600)) as (_, dispatcher, drac):
            await _spare_made(dispatcher, replies, 20)
            await _add(dispatcher, "192.0.2.30", XID + 2, replies)
            assert await _answered_within(replies, 3, 2)
            assert b"192.0.2.30" in map_keys(path)
            # Durable before the answer: the journal replays it.
            journal = Journal(path)
            assert entry_code(ipaddress.ip_address("192.0.2.30")) in journal.recover()
            assert drac.metrics.adds.get("1", "udp", "ADD_SUCCESS") == 3

    asyncio.run(main())
    assert replies == [success(XID + i, words(0)) for i in range(3)]


def test_a_lone_add_the_spare_cannot_take_is_committed_by_a_copy(tmp_path: Path) -> None:
    """An MTA still reads the spare: the lone ADD's change goes to the commit task, which
    copies the map; it is answered once in the map, and nothing it took is lost."""
    path = tmp_path / "dracd.db"
    writer = EntryMap(path, "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        async with drac_service(writer, Settings(ALLOW, 600)) as (_, dispatcher, _):
            await _spare_made(dispatcher, replies, 40)
            with open(tmp_path / ".dracd.db.spare", "rb"):  # a reader holds the spare
                await _add(dispatcher, "192.0.2.50", XID + 2, replies)
                await _settled(replies, 3)
                assert set(map_keys(path)) == {b"192.0.2.40", b"192.0.2.41", b"192.0.2.50"}
            # The next lone ADD carries nothing over from the one before: both are there.
            await _add(dispatcher, "192.0.2.51", XID + 3, replies)
            await _settled(replies, 4)
            assert set(map_keys(path)) == {b"192.0.2.40", b"192.0.2.41", b"192.0.2.50", b"192.0.2.51"}

    asyncio.run(main())
    assert replies == [success(XID + i, words(0)) for i in range(4)]


def test_after_a_burst_a_small_commit_gathers_first(tmp_path: Path) -> None:
    """A commit of many changes means a burst is on its way: the next few ADDs are left to
    the commit task, which gathers what comes in before it writes, instead of one commit
    each on the spot."""
    path = tmp_path / "dracd.db"
    writer = EntryMap(path, "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        async with drac_service(writer, Settings(ALLOW, 600)) as (_, dispatcher, drac):
            await _spare_made(dispatcher, replies, 60)
            for i in range(16):
                await _add(dispatcher, f"198.51.100.{i}", XID + 2 + i, replies)
            await _settled(replies, 18)
            await _add(dispatcher, "192.0.2.70", XID + 18, replies)
            assert not await _answered_within(replies, 19, 2)
            await _settled(replies, 19)
            assert b"192.0.2.70" in map_keys(path)

    asyncio.run(main())


def raises_now(args: bytes, ctx: CallContext) -> bytes:
    raise RuntimeError("sync handler exploded")


def garbage_now(args: bytes, ctx: CallContext) -> bytes:
    raise XdrError("sync handler found garbage")


def refuses_now(args: bytes, ctx: CallContext) -> bytes:
    raise AuthRefused()


async def raises_later(args: bytes, ctx: CallContext) -> bytes:
    await asyncio.sleep(0)
    raise RuntimeError("coroutine handler exploded")


SYSTEM_ERR = words(XID, 1, 0, 0, 0, 5)
GARBAGE_ARGS = words(XID, 1, 0, 0, 0, 4)
AUTH_TOOWEAK = words(XID, 1, 1, 1, 5)
FAILING: dict[int, tuple[Handler, bytes]] = {
    5: (raises_now, SYSTEM_ERR), 6: (garbage_now, GARBAGE_ARGS), 7: (refuses_now, AUTH_TOOWEAK),
    8: (raises_later, SYSTEM_ERR),
}


def test_handler_errors_in_process(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = Dispatcher()
    for proc, (handler, _) in FAILING.items():
        dispatcher.register(77, 1, proc, handler)

    async def main() -> list[bytes | None]:
        return [await dispatcher.handle(encode_call(XID, 77, 1, proc), ipaddress.ip_address("::1"), 1, "tcp")
                for proc in FAILING]

    with caplog.at_level(logging.ERROR, logger="dracd.server.dispatch"):
        assert asyncio.run(main()) == [reply for _, reply in FAILING.values()]
    failed = [r for r in caplog.records if "failed for ::1" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info is not None for r in failed)
    assert dispatcher.metrics.rpc_errors.get("SYSTEM_ERR") == 2


@pytest.fixture(scope="module", params=LOOPS)
def fast(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fixtures.server import test_config

    server = ServerThread(test_config(tmp_path_factory.mktemp("fast"), event_loop=request.param)).start()
    for proc, (handler, _) in FAILING.items():
        server.call(functools.partial(daemon_of(server).dispatcher.register, server.config.program, 1, proc,
                                      handler))
    try:
        yield server
    finally:
        server.stop()


def test_failing_handlers_over_udp_and_tcp(fast: ServerThread) -> None:
    prog = fast.config.program
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for proc, (_, reply) in FAILING.items():
            sock.sendto(encode_call(XID, prog, 1, proc), ("127.0.0.1", fast.port))
            assert sock.recv(65536) == reply
    with socket.create_connection(("127.0.0.1", fast.port), timeout=5) as sock:
        reader = RecordReader(1 << 16)
        for proc, (_, reply) in FAILING.items():
            sock.sendall(encode_record(encode_call(XID, prog, 1, proc)))
            records: list[bytes] = []
            while not records:
                records += reader.feed(sock.recv(65536))
            assert records == [reply]


def test_event_loop_in_use(fast: ServerThread) -> None:
    name = type(fast.loop).__module__.split(".")[0]
    assert name == ("uvloop" if fast.config.event_loop == "uvloop" else "asyncio")


# --- TCP -------------------------------------------------------------------


def test_tcp_pipelined_records_are_all_answered(fast: ServerThread) -> None:
    """300 records in one write, over the per-connection in-flight bound (64): ADDs answered
    when the map holds them, NULLs and errors at once, so out of order; every one answered,
    and a half-closed connection still gets the answers it is owed."""
    prog = fast.config.program
    expected: dict[int, bytes] = {}
    calls = []
    for n in range(300):
        xid = XID + 0x1000 + n
        if n % 3 == 0:
            calls.append(null_call(prog, xid))
            expected[xid] = success(xid)
        elif n % 3 == 1:
            calls.append(add_call(prog, f"203.0.113.{n % 250 + 1}" if n < 250 else f"2001:db8::{n:x}", xid))
            expected[xid] = success(xid, words(AddStat.ADD_SUCCESS))
        else:
            calls.append(encode_call(xid, prog, 1, 9))  # PROC_UNAVAIL
            expected[xid] = words(xid, 1, 0, 0, 0, 3)
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as sock:
        sock.sendall(b"".join(encode_record(call) for call in calls))
        sock.shutdown(socket.SHUT_WR)
        reader = RecordReader(1 << 16)
        answers: list[bytes] = []
        while chunk := sock.recv(65536):
            answers += reader.feed(chunk)
    got = {decode_reply(answer).xid: answer for answer in answers}
    assert len(answers) == len(got) == 300
    assert got == expected


@pytest.mark.parametrize("loop", LOOPS)
def test_add_over_udp_and_tcp_is_in_the_map_before_the_reply(make_server: Make, loop: str) -> None:
    server = make_server(event_loop=loop)
    prog = server.config.program
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(add_call(prog, "2001:db8::77", XID), ("::1", server.port))
        assert sock.recv(100) == success(XID, words(0))
        assert b"2001:db8::77" in map_keys(server.config.map.path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(encode_record(add_call(prog, "192.0.2.77", XID + 1)))
        reader = RecordReader(1 << 16)
        records: list[bytes] = []
        while not records:
            records += reader.feed(sock.recv(100))
        assert records == [success(XID + 1, words(0))]
        assert b"192.0.2.77" in map_keys(server.config.map.path)
    metrics = daemon_of(server).metrics
    counts = server.call(lambda: (metrics.adds.get("2", "udp", "ADD_SUCCESS"),
                                  metrics.adds.get("1", "tcp", "ADD_SUCCESS")))
    assert counts == (1, 1)


# --- event_loop: config and command line ---------------------------------------------


def test_event_loop_key_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "dracd.yaml"
    assert config_from_dict({}, path).event_loop == "auto"
    for value in EVENT_LOOP_VALUES:
        assert config_from_dict({"event_loop": value}, path).event_loop == value
    for bad in ("tokio", "", None, 1, True):
        with pytest.raises(ConfigError, match=rf"{path}: key 'event_loop': expected one of auto, asyncio, uvloop"):
            config_from_dict({"event_loop": bad}, path)


EVENT_LOOP_VALUES = ("auto", "asyncio", "uvloop")


def test_auto_picks_uvloop_when_installed() -> None:
    assert event_loop(Config())[0] == "uvloop"
    assert event_loop(Config(event_loop="asyncio"))[0] == "asyncio"


def test_missing_uvloop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """uvloop asked for but not installed: --check-config and the server exit 78 naming the
    key and the extra; auto falls back to asyncio."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop(Config())[0] == "asyncio"
    config = tmp_path / "dracd.yaml"
    config.write_text(f"map:\n  path: {tmp_path / 'dracd.db'}\nevent_loop: uvloop\n")
    assert dracd_main(["--check-config", "-c", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{config}: key 'event_loop'" in err and "dracd[uvloop]" in err
    assert dracd_main(["-c", str(config), "--no-rpcbind", "--admin-socket", ""]) == EX_CONFIG
    assert "dracd[uvloop]" in capsys.readouterr().err
    assert not (tmp_path / "dracd.db").exists()  # refused before anything was written
    assert dracd_main(["--check-config", "-c", str(config), "--event-loop", "asyncio"]) == EX_OK
    assert "event loop asyncio" in capsys.readouterr().out
    assert dracd_main(["--check-config", "-c", str(config), "--event-loop", "libuv"]) == EX_USAGE


def test_refusals_are_remembered_per_caller_until_the_allow_list_or_udp_from_changes(tmp_path: Path) -> None:
    """refusal() is cached per (caller, transport): a new allow list or udp_from (SIGHUP
    replaces them) is obeyed from the next call on."""
    writer = EntryMap(tmp_path / "dracd.db", "btree", KeyStyle())
    replies: list[bytes] = []

    async def main() -> None:
        settings = Settings(AllowList((), "empty"), 600)
        async with drac_service(writer, settings) as (_, dispatcher, _):
            caller = ipaddress.ip_address("127.0.0.1")

            async def add(xid: int, transport: str = "udp") -> bytes:
                reply = dispatcher.dispatch(add_call(DRACPROG, "192.0.2.20", xid), caller, 1, transport, None,
                                            replies.append)
                if reply is PENDING:
                    while len(replies) < 1:
                        await asyncio.sleep(0.01)
                    return replies.pop()
                assert isinstance(reply, bytes)
                return reply

            assert await add(1) == success(1, words(AddStat.ADD_PERM))
            assert await add(2) == success(2, words(AddStat.ADD_PERM))
            settings.allow = ALLOW
            assert await add(3) == success(3, words(AddStat.ADD_SUCCESS))
            settings.udp_from = (ipaddress.ip_network("192.0.2.0/24"),)
            assert await add(4) == success(4, words(AddStat.ADD_PERM))
            assert await add(5, "tcp") == success(5, words(AddStat.ADD_SUCCESS))
            settings.udp_from = None
            assert await add(6) == success(6, words(AddStat.ADD_SUCCESS))

    asyncio.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_admin_procedures_run_as_coroutines_over_unix_and_tcp(make_server: Make, loop: str) -> None:
    """Admin procedures are still coroutine handlers (a task each): over the UNIX socket
    (peer credentials) and TCP, on both loops."""
    from dracclient.admin import AdminClient

    server = make_server(event_loop=loop, admin_allow=(ipaddress.ip_network("127.0.0.1/32"),))
    prog = server.config.program
    for admin in (AdminClient(socket_path=str(server.config.admin_socket), prog=prog, timeout=5),
                  AdminClient(server="127.0.0.1", port=server.port, prog=prog, timeout=5)):
        admin.add("192.0.2.30", lifetime=600)
        assert b"192.0.2.30" in map_keys(server.config.map.path)
        assert admin.get("192.0.2.30") is not None
        admin.delete("192.0.2.30")
        assert b"192.0.2.30" not in map_keys(server.config.map.path)
