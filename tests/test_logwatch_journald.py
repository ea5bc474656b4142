"""dracd-logwatch's journald source against a real systemd-journald (tests/fixtures/journald.py).

Real entries, written the ways a daemon writes them (syslog(3)'s datagram
to /dev/log, journald's native protocol, ``logger``), read back through the
real ``journalctl --follow --output=json`` by ``sources.Journal``, matched by
the ``uw`` preset. What is proven:

* ``_PID`` is the sender's PID as the kernel gave it, not the ``[1]`` the
  sender wrote in its tag;
* the program name is SYSLOG_IDENTIFIER, which any sender picks freely, and
  ``_COMM`` follows the executable's *name*: a symlink called ``ipop3d`` (or
  ``exec -a``-style tricks on a copy) gets both right. Only ``_EXE``, the
  file the kernel ran, tells the real daemon from a look-alike, so with
  ``executables`` only the listed file authorizes;
* journalctl's program filter (SYSLOG_IDENTIFIER or _COMM of a preset's
  program) keeps other programs' entries out.

The "real daemon" is a copy of the Python interpreter installed as
``<tmp>/sbin/ipop3d`` (its _COMM is ``ipop3d``, its _EXE that path); the
forgers are a symlink named ``ipop3d`` to the interpreter and
``logger -t ipop3d``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dracd_logwatch.presets import Matcher, RuleOptions, preset_rule
from dracd_logwatch.record import LogRecord
from dracd_logwatch.sources import Journal
from tests.fixtures.journald import PrivateJournald

UW = preset_rule("uw", RuleOptions())
MARKER = "dracd-logwatch test marker"
WAIT = 20.0


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[PrivateJournald]:
    with PrivateJournald(tmp_path / "journald.log") as running:
        yield running


@pytest.fixture
def daemon(tmp_path: Path) -> Path:
    """The "real" ipop3d: an interpreter installed under the daemon's name."""
    path = tmp_path / "sbin" / "ipop3d"
    path.parent.mkdir()
    shutil.copy2(os.path.realpath(sys.executable), path)
    return path


@pytest.fixture
def look_alike(tmp_path: Path) -> Path:
    """A forger's ipop3d: a symlink named ipop3d to the interpreter (same _COMM, other _EXE)."""
    path = tmp_path / "bin" / "ipop3d"
    path.parent.mkdir()
    path.symlink_to(os.path.realpath(sys.executable))
    return path


class Follower:
    """A ``sources.Journal`` on the private journal, collecting what it emits."""

    def __init__(self, journald: PrivateJournald, executables: list[str]) -> None:
        self.records: list[LogRecord] = []
        self.journal = Journal(self.records.append, programs=sorted(UW.programs), executables=executables,
                               command=["journalctl", f"--directory={journald.journal_dir}"], restart_delay=0.2)

    def messages(self) -> list[str]:
        return [record.message for record in self.records]

    def logins(self) -> list[str]:
        matcher = Matcher([UW])
        return [login.ip for record in self.records if (login := matcher.match(record)) is not None]


async def _until(condition: object, what: str) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"journalctl never delivered {what}")
        await asyncio.sleep(0.05)


async def _follow_until_ready(journald: PrivateJournald, daemon: Path, followers: list[Follower]) -> None:
    """journalctl starts at the end (``--lines=0``): log markers until every follower saw one."""
    for attempt in range(int(WAIT)):
        await asyncio.to_thread(journald.write, daemon, "syslog", "ipop3d", f"{MARKER} {attempt}")
        if all(any(m.startswith(MARKER) for m in f.messages()) for f in followers):
            return
    raise AssertionError(f"journalctl never delivered a marker; journald said:\n{journald.output()}")


async def _logger(journald: PrivateJournald, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(*journald.command(["logger", *args]))
    assert await proc.wait() == 0


def test_real_journald_entries_authorize_only_the_real_executable(
        journald: PrivateJournald, daemon: Path, look_alike: Path) -> None:
    listed = Follower(journald, executables=[str(daemon)])
    unfiltered = Follower(journald, executables=[])
    pids: dict[str, int] = {}

    async def scenario() -> None:
        tasks = [asyncio.create_task(f.journal.run()) for f in (listed, unfiltered)]
        try:
            await _follow_until_ready(journald, daemon, [listed, unfiltered])
            # The real daemon: through syslog(3)'s socket (tag "ipop3d[1]") and the native protocol.
            pids["syslog"] = await asyncio.to_thread(
                journald.write, daemon, "syslog", "ipop3d", "Login user=alice host=[192.0.2.20] nmsgs=0/0")
            pids["native"] = await asyncio.to_thread(
                journald.write, daemon, "native", "ipop3d", "Auth user=alice host=[2001:db8::20] nmsgs=0/0")
            # Forgers: the right identifier and _COMM from another file; `logger -t ipop3d`.
            await asyncio.to_thread(
                journald.write, look_alike, "syslog", "ipop3d", "Login user=eve host=[198.51.100.1] nmsgs=0/0")
            await _logger(journald, "-u", "/run/systemd/journal/dev-log", "-t", "ipop3d",
                          "Login user=eve host=[198.51.100.2] nmsgs=0/0")
            # Another program entirely (identifier sshd, _COMM logger): journalctl's filter keeps it out.
            await _logger(journald, "-u", "/run/systemd/journal/dev-log", "-t", "sshd",
                          "Login user=mallory host=[198.51.100.3] nmsgs=0/0")
            await asyncio.to_thread(journald.write, daemon, "syslog", "ipop3d", f"{MARKER} end")
            await _until(lambda: f"{MARKER} end" in listed.messages() and f"{MARKER} end" in
                         unfiltered.messages(), "the end marker")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())

    assert listed.logins() == ["192.0.2.20", "2001:db8::20"]
    assert {record.exe for record in listed.records} == {str(daemon)}
    by_message = {record.message: record for record in listed.records}
    syslog_entry = by_message["Login user=alice host=[192.0.2.20] nmsgs=0/0"]
    assert (syslog_entry.program, syslog_entry.pid) == ("ipop3d", pids["syslog"])  # not the tag's [1]
    assert by_message["Auth user=alice host=[2001:db8::20] nmsgs=0/0"].pid == pids["native"]

    # Without `executables`, the look-alike and logger would have authorized: the filter is what stops them.
    assert unfiltered.logins() == ["192.0.2.20", "2001:db8::20", "198.51.100.1", "198.51.100.2"]
    forged = [r for r in unfiltered.records if "user=eve" in r.message]
    assert [r.program for r in forged] == ["ipop3d", "ipop3d"]
    assert forged[0].exe == os.path.realpath(sys.executable)
    # logger exits at once, often before journald reads its /proc/PID/exe: no _EXE is refused too.
    assert forged[1].exe in (None, shutil.which("logger"))
    assert not any("user=mallory" in m for m in unfiltered.messages())
