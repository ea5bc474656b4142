"""A wall-clock step never stretches an entry's life (issue 22, fault 5).

The real dracd runs under libfaketime (Debian package ``faketime``, a test
peer in the Makefile's TEST_APT): LD_PRELOAD of libfaketime with its offset read
from a file the test rewrites while dracd runs (FAKETIME_TIMESTAMP_FILE,
FAKETIME_NO_CACHE), and FAKETIME_DONT_FAKE_MONOTONIC=1 so the monotonic clock
runs on untouched, as it does when an admin or NTP steps the real clock.
Stepped back four hours, the entries dracd holds must be due no later than
(the new) now + lifetime within a couple of seconds, in the map too; stepped
forward again, entries whose time has passed leave the map at once. Stepped
back while dracd is down, the entries it reloads are pulled in the same way.
Before the fix, entries added before a -4 h step with a 10 min lifetime lived
4 h 10 min.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.process import DracdProcess, add_status, read_map, wait_until
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
LIFETIME = 600
STEP = 4 * 3600
ADDRESSES = [f"192.0.2.{host}" for host in range(1, 11)]
#: How soon after a step the map must show it (the expiry tick is 0.25 s).
NOTICE = 2.0


class Faked:
    """A dracd whose wall clock is real time plus the offset in ``offset_file``."""

    def __init__(self, directory: Path, offset: str = "+0", name: str = "dracd") -> None:
        if not LIBFAKETIME.exists():
            raise AssertionError(f"{LIBFAKETIME} is missing: apt-get install faketime (make apt-test does)")
        self.map_path = directory / "dracd.db"
        self.offset_file = directory / "faketime"
        self.offset_file.write_text(offset + "\n")
        self.port, self.prog = free_port(), private_prog()
        self.process = DracdProcess(
            ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(self.port), "--program", str(self.prog),
             "--log-level", "info", "--lifetime", f"{LIFETIME}s", str(self.map_path)],
            log_path=directory / f"{name}.log",
            env={"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
                 "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})

    def step(self, offset: str) -> None:
        """Atomically: libfaketime rereads the file at every call, and must never see it empty."""
        tmp = self.offset_file.with_name("faketime.tmp")
        tmp.write_text(offset + "\n")
        os.rename(tmp, self.offset_file)

    def add(self, address: str) -> None:
        # Over TCP: a UDP retransmission that arrives after a step would add the address again.
        assert add_status(self.port, self.prog, address, transport="tcp") == 0, self.process.log()


@pytest.fixture
def faked(tmp_path: Path) -> Iterator[Faked]:
    server = Faked(tmp_path)
    server.process.start_ready(20)
    try:
        yield server
        assert server.process.stop() == 0
    finally:
        server.process.kill()


def test_the_fake_clock_reaches_dracd(faked: Faked) -> None:
    """The harness itself: dracd's expiries follow the offset in the file."""
    faked.add(ADDRESSES[0])
    assert abs(read_map(faked.map_path)[ADDRESSES[0]] - (time.time() + LIFETIME)) < 5
    faked.step("-1d")
    faked.add(ADDRESSES[1])
    assert abs(read_map(faked.map_path)[ADDRESSES[1]] - (time.time() - 86400 + LIFETIME)) < 5


def test_a_backward_step_pulls_entries_in_and_a_forward_step_ends_them(faked: Faked) -> None:
    for address in ADDRESSES:
        faked.add(address)
    faked.step(f"-{STEP}")
    stepped_at = time.monotonic()

    def within_lifetime() -> bool:
        latest = time.time() - STEP + LIFETIME + 2
        entries = read_map(faked.map_path)
        return all(entries[address] <= latest for address in ADDRESSES)

    wait_until(within_lifetime, NOTICE + 3, "entries due within the lifetime after the step back")
    took = time.monotonic() - stepped_at
    assert took <= NOTICE, f"took {took:.2f} s\n{faked.process.log()}"
    entries = read_map(faked.map_path)
    # Pulled in by the step, not dropped: each keeps (about) the time it had left.
    assert all(entries[address] >= time.time() - STEP + LIFETIME - 10 for address in ADDRESSES), entries
    assert "the wall clock stepped back by" in faked.process.log()
    faked.add("198.51.100.1")  # after the step: now + lifetime on the new clock
    assert abs(read_map(faked.map_path)["198.51.100.1"] - (time.time() - STEP + LIFETIME)) < 5
    # And forward again: everything is past its time by the new clock, and leaves the map.
    faked.step("+0")
    try:
        wait_until(lambda: not set(read_map(faked.map_path)) & {*ADDRESSES, "198.51.100.1"}, NOTICE + 8,
                   "entries past their time to leave the map after the step forward")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; dracd {'runs' if faked.process.alive() else 'exited'}, map "
                             f"{read_map(faked.map_path)}, now {time.time():.0f}\n{faked.process.log()}") from None
    assert "the wall clock stepped forward by" in faked.process.log()
    faked.add(ADDRESSES[0])
    assert abs(read_map(faked.map_path)[ADDRESSES[0]] - (time.time() + LIFETIME)) < 5


def test_a_step_back_while_dracd_is_down_is_caught_at_reload(tmp_path: Path) -> None:
    first = Faked(tmp_path, name="first")
    first.process.start_ready(20)
    try:
        for address in ADDRESSES:
            first.add(address)
        assert first.process.stop() == 0
    finally:
        first.process.kill()
    second = Faked(tmp_path, offset=f"-{STEP}", name="second")
    second.process.start_ready(20)
    try:
        latest = time.time() - STEP + LIFETIME + 2
        entries = read_map(second.map_path)
        late = {address: entries[address] for address in ADDRESSES if entries[address] > latest}
        assert not late, f"entries outlive now + lifetime after a step back across a restart: {late}\n" \
                         f"{second.process.log()}"
        assert "the wall clock is behind dracd's last write by" in second.process.log()
        assert second.process.stop() == 0
    finally:
        second.process.kill()
