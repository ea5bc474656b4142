"""dracd-logwatch with real I/O: files in tmp_path, a real syslog socket, util-linux
logger, and a real dracd (in a thread) whose map must show the addresses.

Sample lines are in the formats documented in tests/test_logwatch.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from dracd_logwatch.config import LogwatchConfig, config_from_dict, validate
from dracd_logwatch.daemon import Watcher
from dracd_logwatch.follow import MAX_LINE, FileFollower
from dracd_logwatch.record import LogRecord
from dracd_logwatch.sources import SocketInUse, SyslogSocket, bind_syslog_socket
from tests.fixtures.dovecot import DovecotInstance
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.process import BIN, DracdProcess
from tests.fixtures.server import ServerThread, map_keys, wait_for

Make = Callable[..., ServerThread]
H = "Nov 28 19:33:18 mail"
WAIT = 10.0


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def lines(follower: FileFollower) -> list[str]:
    return follower.poll()[0]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: sun_path holds 107 bytes, pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="lw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the follower on real files ----------------------------------------------------------------

def test_starts_at_the_end_and_reads_appended_lines(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("old 1\nold 2\n")
    follower = FileFollower(log)
    try:
        assert follower.poll() == ([], False)
        append(log, "new 1\nnew 2\n")
        assert lines(follower) == ["new 1", "new 2"]
        assert lines(follower) == []
        append(log, "new 3\r\n")
        assert lines(follower) == ["new 3\r"]  # \r is the record parser's business
    finally:
        follower.close()


def test_from_start_reads_the_whole_file(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("old 1\nold 2\n")
    follower = FileFollower(log, from_start=True)
    try:
        assert lines(follower) == ["old 1", "old 2"]
    finally:
        follower.close()


def test_partial_lines_wait_for_their_newline(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = FileFollower(log)
    try:
        assert lines(follower) == []
        append(log, "par")
        assert lines(follower) == []
        append(log, "tial\nnext")
        assert lines(follower) == ["partial"]
        append(log, "\n")
        assert lines(follower) == ["next"]
    finally:
        follower.close()


def test_starting_inside_an_unfinished_line_skips_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(f"a\n{H} postfix/smtpd[1]: reject: helo=<x ")
    follower = FileFollower(log)
    try:
        assert lines(follower) == []
        append(log, f"{H} ipop3d[1]: Login user=a host=[192.0.2.1] nmsgs=0/0>\nb\n")
        assert lines(follower) == ["b"]
    finally:
        follower.close()


def test_overlong_lines_are_dropped(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = FileFollower(log)
    try:
        lines(follower)
        append(log, "x" * (MAX_LINE + 10))
        assert lines(follower) == []
        append(log, "y" * 10 + "\nok\n")
        assert lines(follower) == ["ok"]
    finally:
        follower.close()


def test_rename_rotation(tmp_path: Path) -> None:
    log, old = tmp_path / "mail.log", tmp_path / "mail.log.1"
    log.write_text("")
    now = [0.0]
    follower = FileFollower(log, grace=10.0, clock=lambda: now[0])
    try:
        lines(follower)
        append(log, "before\n")
        log.rename(old)  # logrotate renames; the writer still has the old file open
        append(old, "late 1\n")
        assert lines(follower) == ["before", "late 1"]  # no new file yet: keep reading the old one
        append(old, "late 2\n")
        log.write_text("new 1\n")  # the new file appears: the old one is finished first
        assert lines(follower) == ["late 2", "new 1"]
        append(old, "late 3\n")  # a writer that has not reopened yet: read during the grace time
        append(log, "new 2\n")
        assert sorted(lines(follower)) == ["late 3", "new 2"]
        now[0] = 11.0
        assert lines(follower) == []  # grace over: the old file is closed
        append(old, "too late\n")
        append(log, "new 3\n")
        assert lines(follower) == ["new 3"]
    finally:
        follower.close()


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = FileFollower(log)
    try:
        lines(follower)
        append(log, "one line that is long enough\nand another\n")
        assert lines(follower) == ["one line that is long enough", "and another"]
        shutil.copy(log, tmp_path / "mail.log.1")
        with open(log, "r+") as f:  # copytruncate: same file, cut to 0, the writer goes on
            f.truncate(0)
        append(log, "after\n")
        assert lines(follower) == ["after"]
        append(log, "more\n")
        assert lines(follower) == ["more"]
    finally:
        follower.close()


def test_a_file_created_later_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    follower = FileFollower(log)
    try:
        assert lines(follower) == []
        log.write_text("first\nsecond\n")
        assert lines(follower) == ["first", "second"]
        log.unlink()  # removed (no rename target): keep the open file until a new one appears
        assert lines(follower) == []
        log.write_text("third\n")
        assert lines(follower) == ["third"]
    finally:
        follower.close()


def test_reopen_finishes_rotated_files(tmp_path: Path) -> None:
    log, old = tmp_path / "mail.log", tmp_path / "mail.log.1"
    log.write_text("")
    follower = FileFollower(log, grace=3600)
    try:
        lines(follower)
        log.rename(old)
        log.write_text("new\n")
        append(old, "last\n")
        assert sorted(follower.reopen()) == ["last", "new"]
        append(old, "ignored\n")  # closed by reopen, grace or not
        assert lines(follower) == []
    finally:
        follower.close()


def test_run_on_an_event_loop(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    follower = FileFollower(log, interval=0.02)
    seen: list[str] = []

    async def scenario() -> None:
        lines(follower)
        task = asyncio.create_task(follower.run(seen.append))
        append(log, "a\nb\n")
        for _ in range(250):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        follower.close()
    assert seen == ["a", "b"]


# -- the syslog socket -------------------------------------------------------------------------

def test_syslog_socket_is_0600_and_reads_datagrams(short_dir: Path) -> None:
    path = short_dir / "run" / "logwatch.sock"
    seen: list[LogRecord] = []

    async def scenario() -> None:
        source = SyslogSocket(path, seen.append)
        await source.start()
        try:
            info = os.stat(path)
            assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.getuid()
            assert [p.name for p in path.parent.iterdir()] == ["logwatch.sock"]  # no staging left
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.sendto(b"<22>Nov 28 19:33:18 dovecot: pop3-login: Login: user=<a>, method=PLAIN, "
                              b"rip=192.0.2.1, lip=192.0.2.254", str(path))
                client.sendto(b"garbage", str(path))
                client.sendto(b"<13>ipop3d[7]: Login user=u host=[192.0.2.2] nmsgs=0/0", str(path))
            for _ in range(250):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            source.close()

    asyncio.run(scenario())
    assert [(r.program, r.pid) for r in seen] == [("dovecot", None), ("ipop3d", 7)]
    assert not path.exists()


def test_syslog_socket_replaces_a_stale_one_and_refuses_a_live_one(short_dir: Path) -> None:
    path = short_dir / "logwatch.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # the path stays behind, nobody listens
    live = bind_syslog_socket(path)
    try:
        with pytest.raises(SocketInUse):
            bind_syslog_socket(path)
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        bind_syslog_socket(path)


# -- end to end, against a real dracd ----------------------------------------------------------

class WatcherThread:
    """A Watcher on its own event loop in a thread, started and stopped like ServerThread."""

    def __init__(self, config: LogwatchConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.watcher: Watcher | None = None
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="logwatch-test", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.watcher = Watcher(self.config)
            self.loop.run_until_complete(self.watcher.start())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            self.loop.close()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        self.loop.run_forever()

    def __enter__(self) -> WatcherThread:
        self._thread.start()
        self._ready.result(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.watcher is not None
        asyncio.run_coroutine_threadsafe(self.watcher.stop(), self.loop).result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


def watch(server: ServerThread, tmp_path: Path, **sections: Any) -> LogwatchConfig:
    data = {
        "target": {"admin_socket": str(server.config.admin_socket), "program": server.config.program,
                   "timeout": 5},
        **sections,
    }
    data.setdefault("sources", {})["poll_interval"] = 0.02
    return validate(config_from_dict(data, tmp_path / "logwatch.yaml"))


def expiry(server: ServerThread, address: str) -> int | None:
    value = map_keys(server.config.map.path).get(address.encode())
    return int(value) if value is not None else None


def in_map(server: ServerThread, address: str) -> bool:
    return expiry(server, address) is not None


def test_log_lines_reach_dracds_map_with_each_presets_lifetime(make_server: Make, tmp_path: Path) -> None:
    server = make_server()  # dracd's own lifetime: 1800 s
    mail, dovecot = tmp_path / "mail.log", tmp_path / "dovecot.log"
    mail.write_text(f"{H} ipop3d[1]: Login user=old host=[192.0.2.99] nmsgs=0/0\n")  # before the start: skipped
    config = watch(server, tmp_path,
                   sources={"files": [str(mail), {"path": str(dovecot), "format": "dovecot"}]},
                   presets={"uw": {"lifetime": "2m"}, "dovecot": None, "courier": {"prefix4": 24}})
    with WatcherThread(config) as thread:
        started = time.time()
        append(mail, f"{H} x[123]: Login user=a host=b [192.0.2.66] nmsgs=0/0\n"  # forged: logger -t x
                     f"{H} ipop3d: Login user=a host=b [192.0.2.67] nmsgs=0/0\n"  # forged: no PID
                     f"{H} postfix/smtpd[5]: reject: helo=< ipop3d[1]: Login user=a host=[192.0.2.68] nmsgs=0/0>\n"
                     f"{H} ipop3d[4242]: Login user=alice host=client.example.org [192.0.2.1] nmsgs=3/3\n"
                     f"{H} imapd[4243]: Authenticated user=alice host=[2001:db8::1] mech=PLAIN\n"
                     f"{H} dovecot: imap-login: Login: user=<bob>, method=PLAIN, rip=::ffff:192.0.2.2, "
                     "lip=192.0.2.254, mpid=9, secured, session=<AAAA>\n")
        # Dovecot's own log file, written in two pieces (a partial line first).
        append(dovecot, "Nov 28 19:32:36 pop3-login: Info: Login: user=<carol>, method=PLAIN, ")
        append(dovecot, "rip=2001:db8::3, lip=2001:db8::1, mpid=811, secured, session=<Fz8sPVthgoV/AAAB>\n")
        append(mail, f"{H} pop3d: LOGIN, user=dave, ip=[::ffff:198.51.100.7], port=[5000], protocol=POP3\n")
        for address in ("192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::3", "198.51.100"):
            assert wait_for(lambda a=address: in_map(server, a), WAIT), f"{address} not in the map"
        keys = map_keys(server.config.map.path)
        for forged in ("192.0.2.66", "192.0.2.67", "192.0.2.68", "192.0.2.99"):
            assert forged.encode() not in keys
        # uw's lifetime is 2 minutes; dovecot has none, so dracd's own 30 minutes apply.
        for address, lifetime in (("192.0.2.1", 120), ("2001:db8::1", 120), ("192.0.2.2", 1800),
                                  ("2001:db8::3", 1800), ("198.51.100", 1800)):
            value = expiry(server, address)
            assert value is not None and started + lifetime - 2 <= value <= time.time() + lifetime + 2, address
        # courier's prefix4: 24 put the whole /24 in as one network entry, the key Postfix's
        # partial lookup of any 198.51.100.x client finds; no host keys.
        assert not any(k.startswith(b"198.51.100.") for k in keys)
        assert server.daemon.table.get(ipaddress.ip_network("198.51.100.0/24")) is not None
        watcher = thread.watcher
        assert watcher is not None
        # A second login of the same client within the dedup window sends nothing.
        assert wait_for(lambda: watcher.counters.added == 4 + 1, WAIT)
        before = watcher.counters.added
        append(mail, f"{H} ipop3d[4244]: Login user=alice host=[192.0.2.1] nmsgs=3/3\n")
        append(mail, f"{H} ipop3d[4245]: Login user=erin host=[192.0.2.5] nmsgs=0/0\n")
        assert wait_for(lambda: in_map(server, "192.0.2.5"), WAIT)
        assert wait_for(lambda: watcher.counters.added == before + 1, WAIT)


def test_the_drac_protocol_as_target(make_server: Make, tmp_path: Path) -> None:
    server = make_server()
    mail = tmp_path / "mail.log"
    mail.write_text("")
    config = validate(config_from_dict({
        "sources": {"files": [str(mail)], "poll_interval": 0.02}, "presets": {"cyrus": {"prefix6": 124}},
        "target": {"servers": ["127.0.0.1"], "port": server.port, "program": server.config.program},
    }, tmp_path / "logwatch.yaml"))
    with WatcherThread(config):
        started = time.time()
        append(mail, f"{H} cyrus/imap[9]: login: [192.0.2.8] alice plaintext User logged in\n"
                     f"{H} cyrus/pop3[9]: login: [2001:db8::18] alice plaintext User logged in\n")
        assert wait_for(lambda: in_map(server, "192.0.2.8"), WAIT)
        value = expiry(server, "192.0.2.8")
        assert value is not None and started + 1800 - 2 <= value <= time.time() + 1800 + 2  # dracd's lifetime
        v6 = [f"2001:db8::{i:x}" for i in range(0x11, 0x20)]  # the /124's host addresses
        assert wait_for(lambda: all(in_map(server, a) for a in v6), WAIT)
        assert not in_map(server, "2001:db8::10")  # the subnet-router anycast address


def test_failed_adds_are_retried_by_the_next_login(make_server: Make, tmp_path: Path) -> None:
    server = make_server()
    mail = tmp_path / "mail.log"
    mail.write_text("")
    config = validate(config_from_dict({
        "sources": {"files": [str(mail)], "poll_interval": 0.02}, "presets": ["uw"],
        "target": {"admin_socket": str(tmp_path / "nobody.sock"), "program": server.config.program, "timeout": 1},
    }, tmp_path / "logwatch.yaml"))
    with WatcherThread(config) as thread:
        watcher = thread.watcher
        assert watcher is not None
        append(mail, f"{H} ipop3d[1]: Login user=a host=[192.0.2.7] nmsgs=0/0\n")
        assert wait_for(lambda: watcher.counters.failed == 1, WAIT)
        append(mail, f"{H} ipop3d[2]: Login user=a host=[192.0.2.7] nmsgs=0/0\n")  # not swallowed by dedup
        assert wait_for(lambda: watcher.counters.failed == 2, WAIT)


def test_logger_through_the_syslog_socket(make_server: Make, tmp_path: Path, short_dir: Path) -> None:
    """util-linux logger writing to our socket: a tag is trusted, so the socket is 0600."""
    server = make_server()
    sock = short_dir / "logwatch.sock"
    config = watch(server, tmp_path, sources={"syslog_socket": str(sock)}, presets=["uw", "dovecot"])
    message = "Login user=u host=h [{}] nmsgs=0/0"

    def logger(*args: str) -> None:
        subprocess.run(["logger", "-u", str(sock), *args], check=True, timeout=10, capture_output=True)

    with WatcherThread(config):
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        logger("-t", "x", message.format("192.0.2.1"))  # forged with another tag: nothing
        logger("-t", "ipop3d", message.format("192.0.2.2"))  # no PID: nothing
        logger("--rfc5424", "-t", "ipop3d", message.format("192.0.2.3"))  # no PID either
        # The right tag and a PID (any PID: --id chooses it) IS accepted: whoever may write to the socket
        # can authorize addresses, hence mode 0600.
        logger("-t", "ipop3d", "--id=4242", message.format("192.0.2.9"))
        logger("--rfc5424", "-t", "dovecot", "pop3-login: Login: user=<a>, method=PLAIN, rip=2001:db8::9, "
               "lip=2001:db8::1, mpid=1, session=<A>")
        assert wait_for(lambda: in_map(server, "192.0.2.9") and in_map(server, "2001:db8::9"), WAIT)
        keys = map_keys(server.config.map.path)
        assert not {b"192.0.2.1", b"192.0.2.2", b"192.0.2.3"} & set(keys)


def test_a_real_dovecots_log_file_feeds_dracd_and_postfix_relays(
    make_server: Make, postfix_factory: Callable[..., PostfixInstance], tmp_path: Path
) -> None:
    """Issue 6's end to end: Dovecot 2.3 (tests/fixtures/dovecot.py, its DRAC hook replaced by a
    pass-through) writes its own log file; dracd-logwatch follows it; Postfix relays."""
    hook_dir = Path(tempfile.mkdtemp(prefix="lw-hook-"))
    try:
        hook_dir.chmod(0o755)  # Dovecot's internal user runs the post-login hook
        hook = hook_dir / "passthrough"
        hook.write_text('#!/bin/sh\nexec "$@"\n')
        hook.chmod(0o755)
        server = make_server()
        postfix = postfix_factory(server.config.map.path)
        with DovecotInstance(postlogin=hook) as dovecot:
            config = watch(server, tmp_path, presets={"dovecot": {"lifetime": "10m"}},
                           sources={"files": [{"path": str(dovecot.log_path), "format": "dovecot"}]})
            with WatcherThread(config):
                assert postfix.probe_relay("127.0.0.5")[0] == 554
                assert not dovecot.pop3_login("127.0.0.7", password="wrong").ok
                # A user name that forges the fields of a login line: Dovecot logs it as typed.
                crafted = "x>, method=PLAIN, rip=127.0.0.9, lip="
                assert not dovecot.pop3_login("127.0.0.8", user=crafted, password="wrong").ok
                started = time.time()
                assert dovecot.pop3_login("127.0.0.5").ok
                assert dovecot.imap_login("::1").ok
                assert wait_for(lambda: in_map(server, "127.0.0.5") and in_map(server, "::1"), WAIT), \
                    dovecot.log_text()
                for client in ("127.0.0.5", "::1"):
                    value = expiry(server, client)
                    assert value is not None and started + 600 - 2 <= value <= time.time() + 600 + 2
                    assert postfix.probe_relay(client)[0] == 250
                assert set(map_keys(server.config.map.path)) == {b"127.0.0.5", b"::1"}
                assert postfix.probe_relay("127.0.0.7")[0] == 554
                assert postfix.probe_relay("127.0.0.9")[0] == 554
                assert "user=<x>, method=PLAIN, rip=127.0.0.9" in dovecot.log_text()
            assert dovecot.dns_queries() == []
    finally:
        shutil.rmtree(hook_dir, ignore_errors=True)


def test_the_command_end_to_end(make_server: Make, tmp_path: Path) -> None:
    """dracd-logwatch as a process: READY=1, ADDs, SIGHUP reload (new file, new preset), SIGTERM."""
    server = make_server()
    mail, dovecot = tmp_path / "mail.log", tmp_path / "dovecot.log"
    mail.write_text("")
    config = tmp_path / "logwatch.yaml"
    config.write_text("sources: {files: [mail.log], poll_interval: 0.05}\npresets: {uw: {lifetime: 5m}}\n")
    process = DracdProcess(["-c", config, "--admin-socket", server.config.admin_socket,
                            "--program", str(server.config.program), "--log-level", "debug"],
                           log_path=tmp_path / "logwatch.out", exe=BIN / "dracd-logwatch")
    try:
        process.start_ready(WAIT)
        append(mail, f"{H} ipop3d[1]: Login user=a host=[192.0.2.1] nmsgs=0/0\n"
                     f"{H} ipop3d: Login user=a host=[192.0.2.66] nmsgs=0/0\n")
        assert wait_for(lambda: in_map(server, "192.0.2.1"), WAIT), process.log()
        config.write_text("sources: {files: [mail.log, {path: dovecot.log, format: dovecot}], "
                          "poll_interval: 0.05}\npresets: {uw: {lifetime: 5m}, dovecot: }\n")
        process.notify.drain()
        process.send(signal.SIGHUP)
        process.notify.wait_for("READY=1", WAIT, process.alive)
        append(dovecot, "Nov 28 19:32:36 pop3-login: Info: Login: user=<c>, method=PLAIN, rip=192.0.2.3, "
                        "lip=192.0.2.254, mpid=1, session=<A>\n")
        assert wait_for(lambda: in_map(server, "192.0.2.3"), WAIT), process.log()
        config.write_text("presets: [nosuch]\n")  # a broken config on SIGHUP: keep running
        process.notify.drain()
        process.send(signal.SIGHUP)
        process.notify.wait_for("READY=1", WAIT, process.alive)
        append(mail, f"{H} imapd[2]: Login user=a host=[192.0.2.4]\n")
        assert wait_for(lambda: in_map(server, "192.0.2.4"), WAIT), process.log()
        assert process.stop(WAIT) == 0
    finally:
        process.kill()
    log = process.log()
    assert "ADD 192.0.2.1 (preset uw, lifetime 300 s): ok" in log
    assert "ADD 192.0.2.3 (preset dovecot, dracd's lifetime): ok" in log
    assert "refused a uw login line without a PID" in log
    assert "reload failed, keeping the running configuration" in log and "unknown preset 'nosuch'" in log
    assert "stopping on signal" in log
    assert not in_map(server, "192.0.2.66")


def test_the_command_refuses_a_busy_syslog_socket(tmp_path: Path, short_dir: Path) -> None:
    sock = short_dir / "logwatch.sock"
    live = bind_syslog_socket(sock)
    try:
        process = DracdProcess(["--preset", "uw", "--admin-socket", tmp_path / "none.sock"],
                               log_path=tmp_path / "out", exe=BIN / "dracd-logwatch")
        config = tmp_path / "c.yaml"
        config.write_text(f"sources: {{syslog_socket: {sock}}}\n")
        process.args += ["-c", str(config)]
        try:
            process.start()
            assert process.wait(WAIT) == 69
        finally:
            process.kill()
        assert "another process is bound" in process.log()
    finally:
        live.close()
