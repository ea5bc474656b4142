"""Issue 16: log lines forged by a local user, with the real util-linux ``logger``.

Every forger here is ``logger`` run as ``nobody`` (``setpriv --reuid=65534
--regid=65534 --clear-groups``), the way any local user can run it. What is
proven, per source:

* a syslog *file*: a line is whatever reached the syslog daemon. The
  ``dovecot:`` line without a PID that ``logger -t dovecot`` writes (with no
  journald in front of the syslog daemon) no longer authorizes; a PID is
  only text (``logger --id=4242``), so the same user can still forge a UW
  login there. Hence the warning at start, which these tests read;
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
import logging
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dracd.keys import Entry
from dracd.logwatch.config import LogwatchConfig, config_from_dict, validate
from dracd.logwatch.daemon import Watcher
from dracd.logwatch.target import Target

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

def test_loggers_pid_less_dovecot_line_in_a_file_authorizes_nothing(
        tmp_path: Path, short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    mail = tmp_path / "mail.log"
    mail.write_text("")
    forged = logger_file_line(short_dir, "-p", "mail.info", "-t", "dovecot", DOVECOT_LOGIN.format("203.0.113.10"))
    assert re.fullmatch(r".{15} mail dovecot: pop3-login: Login: .*rip=203\.0\.113\.10, .*\n", forged), forged
    # A real Dovecot's line as journald relays it to the syslog daemon (Debian 12): with a PID.
    real = f"Dec  6 19:00:00 {HOST} dovecot[812]: {DOVECOT_LOGIN.format('192.0.2.10')}\n"
    target = RecordingTarget()

    async def scenario() -> None:
        watcher = Watcher(config(tmp_path, sources={"files": [str(mail)]}, presets=["dovecot"]), target=target)
        await watcher.start()
        try:
            append(mail, forged)
            append(mail, real)
            await until(lambda: watcher.counters.records == 2, "both lines read")
            await until(lambda: target.added == ["192.0.2.10"], "the real login sent")
            await asyncio.sleep(0.1)
        finally:
            await watcher.stop()

    with caplog.at_level(logging.DEBUG, logger="dracd.logwatch"):
        asyncio.run(scenario())
    assert target.added == ["192.0.2.10"]
    # Said once, at warning level: a site whose Dovecot lines have no PID learns what to do.
    refusals = [r for r in caplog.records if "without a PID" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING]
    assert "require_pid: false" in refusals[0].getMessage()


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

    async def scenario() -> None:
        watcher = Watcher(cfg, target=RecordingTarget())
        await watcher.start()
        await watcher.stop()

    with caplog.at_level(logging.INFO, logger="dracd.logwatch"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(mail) in warnings[0] and "any local user" in warnings[0] and "logger" in warnings[0]
    # Dovecot's own log file, written by Dovecot alone (mode 0600 here), is not such a source.
    assert str(dovecot) not in warnings[0]


def test_a_dovecot_log_file_others_may_write_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dovecot = tmp_path / "dovecot.log"
    dovecot.write_text("")
    dovecot.chmod(0o666)
    cfg = config(tmp_path, presets=["dovecot"], sources={"files": [{"path": str(dovecot), "format": "dovecot"}]})

    async def scenario() -> None:
        watcher = Watcher(cfg, target=RecordingTarget())
        await watcher.start()
        await watcher.stop()

    with caplog.at_level(logging.INFO, logger="dracd.logwatch"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(dovecot) in warnings[0], warnings

