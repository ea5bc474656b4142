"""Issue 16: log lines forged by a local user, with the real util-linux ``logger``.

Every forger here is ``logger`` run as ``nobody`` (``setpriv --reuid=65534
--regid=65534 --clear-groups``), the way any local user can run it. What is
proven, per source:

* a syslog *file*: a line is whatever reached the syslog daemon.
  ``logger -t dovecot`` writes the very line a real Dovecot does (no PID:
  journald relays both unchanged), and a PID is only text (``logger
  --id=4242``), so any local user can forge a login there. Hence the
  warning at start, which these tests read;
* journald with ``executables``: ``_PID`` and ``_EXE`` come from the kernel,
  and nobody's ``logger -t ipop3d`` authorizes nothing;
* the credential-checking syslog socket (tests further down).

The file lines are made the way a syslog daemon without journald makes them:
``logger`` sends its datagram to a socket of the test (as it would to
/dev/log), and the datagram becomes the file line as rsyslog writes it (PRI
dropped, host inserted; tests/vectors/logwatch/capture/convert.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dracd.keys import Entry
from dracd_logwatch.config import LogwatchConfig, config_from_dict, validate
from dracd_logwatch.daemon import Watcher
from dracd_logwatch.target import Target
from tests.fixtures.dovecot import DovecotInstance
from tests.fixtures.journald import ForwardingJournald, PrivateJournald

#: The process of Dovecot 2.3 that sends its syslog lines (Debian's dovecot-core).
DOVECOT_LOG = "/usr/lib/dovecot/log"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
HOST = "mail"
WAIT = 10.0
DOVECOT_LOGIN = ("pop3-login: Login: user=<eve>, method=PLAIN, rip={}, lip=192.0.2.254, mpid=1, secured, "
                 "session=<AAAA>")
UW_LOGIN = "Login user=eve host=[{}] nmsgs=0/0"
#: syslog(3)'s datagram, as convert.py reads it.
DATAGRAM = re.compile(r"<\d{1,3}>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (.*)")


class RecordingTarget(Target):
    """Records what would be added (the admin socket's abilities, no dracd)."""

    lifetimes = True
    networks = True

    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []

    def describe(self) -> str:
        return "a test recorder"

    async def add_one(self, address: Entry, lifetime: int) -> None:
        self.added.append(str(address))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path that nobody can traverse (sun_path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lw-forge-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(tmp_path: Path, **sections: Any) -> LogwatchConfig:
    data = {"target": {"admin_socket": str(tmp_path / "unused.sock")}, **sections}
    data.setdefault("sources", {})["poll_interval"] = 0.02
    return validate(config_from_dict(data, tmp_path / "logwatch.yaml"))


def run_as_nobody(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30, check=False)


def logger_file_line(short_dir: Path, *args: str) -> str:
    """What ``logger ARGS`` run by nobody puts in a syslog file when the syslog daemon reads
    /dev/log itself (no journald): its datagram, with the PRI dropped and the host added."""
    path = short_dir / "devlog"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        path.chmod(0o666)  # like /dev/log
        receiver.settimeout(WAIT)
        try:
            result = run_as_nobody(["logger", "--socket-errors=on", "-u", str(path), *args])
            assert result.returncode == 0, result.stderr
            datagram = receiver.recv(65536).decode()
        finally:
            path.unlink()
    match = DATAGRAM.fullmatch(datagram)
    assert match is not None, datagram
    return f"{match[1]} {HOST} {match[2]}\n"


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


# -- syslog files --------------------------------------------------------------------------------

def watching(cfg: LogwatchConfig, target: Target, seen: list[Any]) -> Watcher:
    """A Watcher that also appends every record it is fed to ``seen``."""
    watcher = Watcher(cfg, target=target)
    feed = watcher.feed
    watcher.feed = lambda record: (seen.append(record), feed(record))[1]  # type: ignore[method-assign]
    return watcher


def start_warnings(cfg: LogwatchConfig, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings dracd-logwatch logs when it starts (and stops) on ``cfg``."""
    async def scenario() -> None:
        watcher = Watcher(cfg, target=RecordingTarget())
        await watcher.start()
        await watcher.stop()

    with caplog.at_level(logging.INFO, logger="dracd_logwatch"):
        asyncio.run(scenario())
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_pid_in_a_file_is_only_text(tmp_path: Path, short_dir: Path) -> None:
    """What the docs say: ``logger --id`` writes any PID, so a file source stays forgeable."""
    mail = tmp_path / "mail.log"
    mail.write_text("")
    forged = logger_file_line(short_dir, "--id=4242", "-p", "mail.info", "-t", "ipop3d",
                              UW_LOGIN.format("203.0.113.11"))
    assert " mail ipop3d[4242]: Login user=eve " in forged
    target = RecordingTarget()

    async def scenario() -> None:
        watcher = Watcher(config(tmp_path, sources={"files": [str(mail)]}, presets=["uw"]), target=target)
        await watcher.start()
        try:
            append(mail, forged)
            await until(lambda: target.added == ["203.0.113.11"], "the forged login sent")
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_following_a_syslog_file_warns_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mail, dovecot = tmp_path / "mail.log", tmp_path / "dovecot.log"
    mail.write_text("")
    dovecot.write_text("")
    dovecot.chmod(0o600)
    cfg = config(tmp_path, presets=["dovecot"],
                 sources={"files": [str(mail), {"path": str(dovecot), "format": "dovecot"}]})
    warnings = start_warnings(cfg, caplog)
    assert len(warnings) == 1, warnings
    assert str(mail) in warnings[0] and "any local user" in warnings[0] and "logger" in warnings[0]
    # Dovecot's own log file, written by Dovecot alone (mode 0600 here), is not such a source.
    assert str(dovecot) not in warnings[0]


def test_a_dovecot_log_file_others_may_write_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dovecot = tmp_path / "dovecot.log"
    dovecot.write_text("")
    dovecot.chmod(0o666)
    cfg = config(tmp_path, presets=["dovecot"], sources={"files": [{"path": str(dovecot), "format": "dovecot"}]})
    warnings = start_warnings(cfg, caplog)
    assert len(warnings) == 1 and str(dovecot) in warnings[0], warnings



# -- the credential-checking syslog socket -------------------------------------------------------

#: ``python -c SENDER SOCKET DATAGRAM``: one datagram, as syslog(3) sends it, then "sent" on
#: stdout, and stay alive until stdin closes (a daemon does; the receiver reads the sender's
#: /proc/PID/exe): see sending().
SENDER = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(sys.argv[2].encode(), sys.argv[1])
print("sent", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def daemon(short_dir: Path) -> Path:
    """The "real" ipop3d: an interpreter installed under the daemon's name, runnable by nobody."""
    path = short_dir / "sbin" / "ipop3d"
    path.parent.mkdir()
    path.parent.chmod(0o755)
    shutil.copy2(os.path.realpath(sys.executable), path)
    return path


@contextlib.contextmanager
def sending(program: Path, sock: Path, datagram: str, *, as_nobody: bool = False) -> Iterator[None]:
    """``program`` (run by nobody if ``as_nobody``) has sent ``datagram`` to ``sock`` when the
    block starts, and stays alive until it ends: end it once the receiver is known to have
    read the datagram (it, or a datagram sent after it, had its effect)."""
    proc = subprocess.Popen([*(NOBODY if as_nobody else []), str(program), "-c", SENDER, str(sock), datagram],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "sent\n", proc.communicate(timeout=30)
        yield
    finally:
        _, stderr = proc.communicate(timeout=30)  # closes stdin: the sender exits
    assert proc.returncode == 0, stderr


def test_nobodys_logger_cannot_write_to_the_plain_socket(tmp_path: Path, short_dir: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Without executables the socket is 0600: a local user cannot even send to it. What a syslog
    daemon forwards to it is another matter: a warning at start says so."""
    sock = short_dir / "log"
    target = RecordingTarget()

    async def scenario() -> None:
        watcher = Watcher(config(tmp_path, sources={"syslog_socket": str(sock)}, presets=["uw"]), target=target)
        await watcher.start()
        try:
            result = await asyncio.to_thread(run_as_nobody, ["logger", "--socket-errors=on", "-u", str(sock),
                                                             "--id=4242", "-t", "ipop3d",
                                                             UW_LOGIN.format("203.0.113.12")])
            # Refused by the kernel at sendto(): no datagram exists that could still arrive.
            assert result.returncode != 0 and "Permission denied" in result.stderr, result
        finally:
            await watcher.stop()

    with caplog.at_level(logging.INFO, logger="dracd_logwatch"):
        asyncio.run(scenario())
    assert target.added == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"the syslog socket {sock}" in warnings[0] and "forged" in warnings[0], warnings


def test_credential_checking_socket_takes_only_listed_executables(
        tmp_path: Path, short_dir: Path, daemon: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With executables the socket is open to every local process (like /dev/log), and the kernel's
    credentials of each datagram's sender decide: nobody's ``logger`` (any tag, any --id) authorizes
    nothing; a listed executable does, with the PID the kernel gives, not the one in its tag."""
    sock = short_dir / "log"
    target = RecordingTarget()
    cfg = config(tmp_path, sources={"syslog_socket": {"path": str(sock), "executables": [str(daemon)]}},
                 presets=["uw", "dovecot"])
    seen: list[Any] = []

    async def scenario() -> None:
        watcher = watching(cfg, target, seen)
        await watcher.start()
        try:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
            for args in (["--id=4242", "-t", "ipop3d", UW_LOGIN.format("203.0.113.13")],
                         ["-t", "ipop3d", UW_LOGIN.format("203.0.113.14")],
                         ["--rfc5424", "--id=4242", "-t", "ipop3d", UW_LOGIN.format("203.0.113.15")],
                         ["-t", "dovecot", DOVECOT_LOGIN.format("203.0.113.16")]):
                result = await asyncio.to_thread(run_as_nobody, ["logger", "--socket-errors=on", "-u", str(sock),
                                                                 *args])
                assert result.returncode == 0, result.stderr  # delivered, and refused by the reader
            # The listed executable, run by nobody too, with a tag PID that is not its own. Read in
            # order: once it is sent, the four before it have been read (and refused).
            with sending(daemon, sock, f"<22>Dec  6 19:00:00 ipop3d[1]: {UW_LOGIN.format('192.0.2.13')}",
                         as_nobody=True):
                await until(lambda: target.added == ["192.0.2.13"], "the listed executable's login sent")
        finally:
            await watcher.stop()

    with caplog.at_level(logging.DEBUG, logger="dracd_logwatch"):
        asyncio.run(scenario())
    assert target.added == ["192.0.2.13"]
    assert [(r.program, r.exe) for r in seen] == [("ipop3d", str(daemon))]
    assert seen[0].pid not in (None, 1)
    refused = [r.getMessage() for r in caplog.records if "not a listed executable" in r.getMessage()]
    assert len(refused) == 4, refused
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a forgery-proof source


class _Socket:
    """What DovecotInstance needs of its syslog receiver: the path its /dev/log links to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def snapshot(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class SysloggingDovecot(DovecotInstance):
    """tests/fixtures/dovecot.py's Dovecot, logging to syslog (``log_path = syslog``, ident
    ``dovecot``) through a /dev/log that is dracd-logwatch's socket."""

    def __init__(self, socket_path: Path, **kwargs: Any) -> None:
        super().__init__(syslog=False, **kwargs)
        self.socket_path = socket_path

    def write_config(self) -> None:
        super().write_config()
        text = self.conf_path.read_text()
        for old, new in ((f"\ninfo_log_path = {self.base_dir}/dovecot.log\n", "\n"),
                         (f"\nlog_path = {self.base_dir}/dovecot.log\n", "\nlog_path = syslog\n"),
                         (f"instance_name = {self.token}\n", "instance_name = dovecot\n")):
            assert old in text, old
            text = text.replace(old, new)
        self.conf_path.write_text(text)

    def _launch(self) -> None:
        self._syslog = _Socket(self.socket_path)  # type: ignore[assignment]
        super()._launch()


def test_credential_checking_socket_users(tmp_path: Path, short_dir: Path, daemon: Path) -> None:
    """``users``: a listed executable that any user may run (Dovecot's log process relays whatever
    its callers send) counts only when the kernel says it runs as a listed user."""
    sock = short_dir / "log"
    target = RecordingTarget()
    cfg = config(tmp_path, presets=["uw"],
                 sources={"syslog_socket": {"path": str(sock), "executables": [str(daemon)], "users": ["root"]}})

    async def scenario() -> None:
        watcher = Watcher(cfg, target=target)
        await watcher.start()
        try:
            # nobody's datagram, then root's: once root's is sent, nobody's has been read (and refused).
            with sending(daemon, sock, f"<22>Dec  6 19:00:00 ipop3d[1]: {UW_LOGIN.format('203.0.113.18')}",
                         as_nobody=True), \
                    sending(daemon, sock, f"<22>Dec  6 19:00:00 ipop3d[1]: {UW_LOGIN.format('192.0.2.18')}"):
                await until(lambda: target.added == ["192.0.2.18"], "root's login sent")
        finally:
            await watcher.stop()

    asyncio.run(scenario())
    assert target.added == ["192.0.2.18"]


def test_a_real_dovecot_through_the_credential_checking_socket(tmp_path: Path, short_dir: Path) -> None:
    """Dovecot 2.3 sends ``dovecot: pop3-login: Login: ...`` (no PID) from its log process,
    /usr/lib/dovecot/log: with that executable listed, the login authorizes (with the kernel's PID,
    so the dovecot preset's PID requirement holds), and nobody's ``logger -t dovecot`` does not."""
    sock = short_dir / "log"
    target = RecordingTarget()
    cfg = config(tmp_path, presets=["dovecot"],
                 sources={"syslog_socket": {"path": str(sock), "executables": [DOVECOT_LOG], "users": ["root"]}})
    seen: list[Any] = []

    async def scenario() -> None:
        watcher = watching(cfg, target, seen)
        await watcher.start()
        try:
            result = await asyncio.to_thread(run_as_nobody, ["logger", "--socket-errors=on", "-u", str(sock),
                                                             "-t", "dovecot", DOVECOT_LOGIN.format("203.0.113.17")])
            assert result.returncode == 0, result.stderr
            dovecot = SysloggingDovecot(sock)
            await asyncio.to_thread(dovecot.start)
            try:
                login = await asyncio.to_thread(dovecot.pop3_login, "127.0.0.5")
                assert login.ok, login
                assert not (await asyncio.to_thread(dovecot.pop3_login, "127.0.0.6", password="wrong")).ok
                await until(lambda: target.added == ["127.0.0.5"], "the real Dovecot login sent")
            finally:
                await asyncio.to_thread(dovecot.stop)
        finally:
            await watcher.stop()

    asyncio.run(scenario())
    assert target.added == ["127.0.0.5"]
    assert {record.exe for record in seen} == {DOVECOT_LOG}
    assert all(record.program == "dovecot" and record.pid for record in seen)


# -- journald --------------------------------------------------------------------------------------

def test_nobodys_logger_through_real_journald_authorizes_nothing(
        tmp_path: Path, short_dir: Path, daemon: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real systemd-journald (tests/fixtures/journald.py) read with ``executables``: ``_PID`` and
    ``_EXE`` come from the kernel, so nobody's ``logger`` with the right tag and any ``--id``, to
    the syslog socket or journald's own, authorizes nothing; the listed daemon does."""
    target = RecordingTarget()
    seen: list[Any] = []
    marker = "dracd-logwatch forgery test marker"

    with PrivateJournald(tmp_path / "journald.log") as journald:
        cfg = config(tmp_path, presets=["uw"], sources={"journald": {
            "executables": [str(daemon)], "users": ["root"],
            "command": ["journalctl", f"--directory={journald.journal_dir}"]}})

        def logger(*args: str, entry: str | None = None) -> None:
            result = subprocess.run(journald.command([*NOBODY, "logger", "--socket-errors=on", *args]),
                                    input=entry, capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 0, result.stderr

        async def scenario() -> None:
            watcher = watching(cfg, target, seen)
            await watcher.start()
            try:
                for attempt in range(int(WAIT * 2)):  # journalctl starts at the end: until it follows
                    await asyncio.to_thread(journald.write, daemon, "syslog", "ipop3d", f"{marker} {attempt}")
                    if any(r.message.startswith(marker) for r in seen):
                        break
                else:
                    raise AssertionError(f"journalctl never followed; journald said:\n{journald.output()}")
                dev_log = "/run/systemd/journal/dev-log"
                await asyncio.to_thread(logger, "-u", dev_log, "--id=4242", "-t", "ipop3d",
                                        UW_LOGIN.format("203.0.113.20"))
                await asyncio.to_thread(logger, "-u", dev_log, "--rfc5424", "--id=4242", "-t", "ipop3d",
                                        UW_LOGIN.format("203.0.113.21"))
                # journald's native protocol, with the sender's own SYSLOG_PID and _PID-like fields.
                await asyncio.to_thread(logger, "--journald", entry=(
                    f"MESSAGE={UW_LOGIN.format('203.0.113.22')}\nSYSLOG_IDENTIFIER=ipop3d\nSYSLOG_PID=4242\n"
                    f"_PID=4242\n_EXE={daemon}\n_COMM=ipop3d\n"))
                # The listed daemon itself, run by nobody (users: [root]).
                await asyncio.to_thread(journald.write, daemon, "syslog", "ipop3d", UW_LOGIN.format("203.0.113.23"),
                                        prefix=NOBODY)
                # Entries are followed in order: once this one is sent, those before it were refused.
                await asyncio.to_thread(journald.write, daemon, "syslog", "ipop3d", UW_LOGIN.format("192.0.2.20"))
                await until(lambda: target.added == ["192.0.2.20"], "the listed daemon's login sent")
            finally:
                await watcher.stop()

        with caplog.at_level(logging.INFO, logger="dracd_logwatch"):
            asyncio.run(scenario())
        # The forgeries did reach the journal (journald parses no RFC 5424: that one's identifier
        # is not ipop3d), but not with the _PID and _EXE they claimed.
        out = subprocess.run(["journalctl", f"--directory={journald.journal_dir}", "--output=json"],
                             capture_output=True, text=True, timeout=30, check=True)
        entries = [json.loads(line) for line in out.stdout.splitlines()]
        forged = [e for e in entries if "user=eve host=[203.0.113." in e.get("MESSAGE", "")]
        assert len(forged) == 4, entries
        assert all(e["_PID"] != "4242" and e["_UID"] == "65534" for e in forged), forged
        assert [e.get("_EXE") for e in forged].count(str(daemon)) == 1  # the nobody-run daemon's
    assert target.added == ["192.0.2.20"]
    assert {record.exe for record in seen} == {str(daemon)}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a forgery-proof source


def test_journald_without_executables_warns_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, presets=["uw"], sources={"journald": {"command": ["true"]}})
    warnings = start_warnings(cfg, caplog)
    assert len(warnings) == 1 and "journald without executables" in warnings[0], warnings


#: Dovecot 2.3.19.1's datagram, as its log process sends it to /dev/log (no PID; captured from
#: the Dovecot of tests/fixtures/dovecot.py), sent from a process that stays alive a moment.
DOVECOT_DATAGRAM = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"<22>Dec  6 19:01:26 dovecot: " + sys.argv[1].encode(), "/run/systemd/journal/dev-log")
sys.stdin.read()
"""


def test_journald_relays_dovecots_and_loggers_lines_alike(tmp_path: Path, short_dir: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Why the dovecot preset cannot require a PID, and why a file is forgeable: a real journald
    (ForwardToSyslog=yes, as on Debian 12, where rsyslog reads what it relays) passes Dovecot's
    PID-less datagram to the syslog daemon unchanged, and nobody's ``logger -t dovecot`` just
    the same. In the file both are ``dovecot: ...``; both authorize, and the start-up warning
    says so."""
    with ForwardingJournald(tmp_path / "journald.log") as journald:
        sender = subprocess.Popen(journald.command([sys.executable, "-c", DOVECOT_DATAGRAM,
                                                    DOVECOT_LOGIN.format("192.0.2.30")]), stdin=subprocess.PIPE)
        relayed = journald.forwarded()  # journald has read it: the sender may go
        sender.communicate(timeout=30)
        assert sender.returncode == 0
        result = subprocess.run(journald.command([*NOBODY, "logger", "--socket-errors=on", "-u",
                                                  "/run/systemd/journal/dev-log", "-p", "mail.info", "-t", "dovecot",
                                                  DOVECOT_LOGIN.format("203.0.113.30")]),
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        relayed += journald.forwarded()
    assert len(relayed) == 2, relayed
    assert relayed[0].decode() == f"<22>Dec  6 19:01:26 dovecot: {DOVECOT_LOGIN.format('192.0.2.30')}"
    assert re.fullmatch(r"<22>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d dovecot: "
                        + re.escape(DOVECOT_LOGIN.format("203.0.113.30")), relayed[1].decode()), relayed[1]

    mail = tmp_path / "mail.log"
    mail.write_text("")
    target = RecordingTarget()

    async def scenario() -> None:
        watcher = Watcher(config(tmp_path, sources={"files": [str(mail)]}, presets=["dovecot"]), target=target)
        await watcher.start()
        try:
            for datagram in relayed:
                match = DATAGRAM.fullmatch(datagram.decode())
                assert match is not None, datagram
                append(mail, f"{match[1]} {HOST} {match[2]}\n")
            await until(lambda: len(target.added) == 2, "both lines sent")
        finally:
            await watcher.stop()

    with caplog.at_level(logging.WARNING, logger="dracd_logwatch"):
        asyncio.run(scenario())
    assert target.added == ["192.0.2.30", "203.0.113.30"]
    assert any(str(mail) in r.getMessage() and "forged" in r.getMessage() for r in caplog.records)
