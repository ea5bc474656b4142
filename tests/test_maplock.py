"""No lock another process holds can hold an ADD up (issue 16).

The map must be world-readable (the MTAs read it), so any local user can
flock(2) it, shared or exclusive, and keep the lock; so can a hung smtpd
in the middle of a lookup. The first tests run the real dracd process, a
real ``flock`` holder as the unprivileged uid 65534 (``setpriv``), and ADDs
over real UDP sockets, and require every ADD to be answered ADD_SUCCESS
within MAX_ANSWER seconds while the lock is held; the issue's own case runs
a real Postfix that relays for the added addresses throughout. Before the
fix, dracd waited for the lock and these ADDs went unanswered. The last
tests hold the same locks in-process around the map writer itself.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from berkeleydb import db

from dracclient.drac import AddStat
from dracclient.errors import RpcTimeout
from dracd.keys import KeyStyle
from dracd.publish.maps import MapError, StaleMap
from dracd.publish.maps.berkeley import READ_PATIENCE
from tests.fixtures.maps import open_map
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.process import DracdProcess, add_status, read_map, wait_until
from tests.fixtures.server import map_keys as records
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port

NOBODY = 65534
#: The longest an ADD may wait for its answer while a lock is held (the issue: "~1 s").
MAX_ANSWER = 1.0
#: How long the test waits for an answer before calling it a hang.
HANG = 3.0
ADDS = 20
#: Run as uid 65534: lock each new inode the map's name points at, keeping every lock.
HUNTER = """
import fcntl, os, sys, time
operation = fcntl.LOCK_SH if sys.argv[1] == "-s" else fcntl.LOCK_EX
held = {}
while True:
    try:
        fd = os.open(sys.argv[2], os.O_RDONLY)
    except OSError:
        fd = -1
    if fd >= 0:
        inode = os.fstat(fd).st_ino
        if inode in held:
            os.close(fd)
        else:
            fcntl.flock(fd, operation)
            held[inode] = fd
    time.sleep(0.002)
"""




@pytest.fixture
def map_dir() -> Iterator[Path]:
    """A map directory uid 65534 can reach (pytest's tmp_path is below a 0700 directory)."""
    directory = Path(tempfile.mkdtemp(prefix="dracd-maplock-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class LockHolder:
    """``setpriv --reuid=65534 ... flock MODE FILE sleep 600`` (or a shell loop around it),
    in a process group of its own: flock(1) passes the locked descriptor to its child,
    so the whole group is killed at the end."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    @classmethod
    def flock(cls, mode: str, path: Path) -> LockHolder:
        holder = cls(["flock", mode, str(path), "sleep", "600"])
        wait_until(lambda: holder.holds(path, mode), 10, f"uid {NOBODY} to hold flock {mode} on {path}")
        return holder

    @classmethod
    def hunting(cls, mode: str, path: Path) -> LockHolder:
        """Locks every file ``path`` names, as soon as it is in place, and never lets go."""
        holder = cls(["/usr/bin/python3", "-c", HUNTER, mode, str(path)])
        wait_until(lambda: holder.holds(path, mode), 10, f"uid {NOBODY} to hold flock {mode} on {path}")
        return holder

    def holds(self, path: Path, mode: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the lock holder exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        fd = os.open(path, os.O_RDONLY)
        try:
            # A shared holder conflicts with LOCK_EX only; an exclusive one with LOCK_SH too.
            fcntl.flock(fd, (fcntl.LOCK_EX if mode == "-s" else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Dracd:
    """The real dracd on a free port with a private program number, no rpcbind."""

    def __init__(self, map_path: Path, log_dir: Path, name: str = "dracd") -> None:
        self.map_path = map_path
        self.port, self.prog = free_port(), private_prog()
        self.process = DracdProcess(
            ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(self.port), "--program", str(self.prog),
             "--lifetime", "1h", str(map_path)], log_path=log_dir / f"{name}.log")

    def add(self, address: str) -> float:
        """One ADD; how long its answer took (AssertionError if none came within HANG)."""
        started = time.monotonic()
        try:
            status = add_status(self.port, self.prog, address, timeout=HANG)
        except RpcTimeout:
            raise AssertionError(f"ADD {address}: no answer within {HANG:g} s (dracd is stuck on a lock)\n"
                                 f"--- dracd log ---\n{self.process.log()}") from None
        took = time.monotonic() - started
        assert status == AddStat.ADD_SUCCESS, f"ADD {address}: {status!r}\n{self.process.log()}"
        return took

    def add_many(self, addresses: list[str]) -> float:
        """ADD each address in turn; the longest answer time, which must stay under MAX_ANSWER."""
        took = [self.add(address) for address in addresses]
        slowest = max(took)
        print(f"{len(took)} ADDs, slowest answer {slowest * 1000:.1f} ms")
        assert slowest < MAX_ANSWER, f"an ADD took {slowest:.3f} s to answer while the lock was held"
        in_map = set(read_map(self.map_path))
        assert set(addresses) <= in_map, f"acknowledged but not in the map: {sorted(set(addresses) - in_map)}"
        return slowest


@pytest.fixture
def dracd(map_dir: Path, tmp_path: Path) -> Iterator[Callable[[], Dracd]]:
    started: list[Dracd] = []

    def start() -> Dracd:
        server = Dracd(map_dir / "dracd.db", tmp_path, f"dracd-{len(started)}")
        started.append(server)
        server.process.start_ready(15)
        return server

    yield start
    for server in started:
        server.process.kill()


@pytest.fixture
def holders() -> Iterator[list[LockHolder]]:
    made: list[LockHolder] = []
    yield made
    for holder in made:
        holder.stop()


def addresses(net: int, count: int = ADDS) -> list[str]:
    return [f"127.0.{net}.{n}" for n in range(1, count + 1)]


class PostfixProber(threading.Thread):
    """Real SMTP sessions from ``client`` to a real Postfix, one after another, until stopped:
    every RCPT must be relayed (250), so every session read the map, under the lock too."""

    def __init__(self, postfix: PostfixInstance, client: str) -> None:
        super().__init__(name="postfix-prober", daemon=True)
        self.postfix, self.client = postfix, client
        self.halt = threading.Event()
        self.replies: list[tuple[int, str]] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.replies.append(self.postfix.probe_relay(self.client, timeout=HANG))
            except Exception as exc:  # a failed session is a result too
                self.replies.append((0, repr(exc)))

    def finish(self) -> list[tuple[int, str]]:
        self.halt.set()
        self.join(2 * HANG + 5)
        return self.replies


def test_a_shared_flock_holder_and_a_reading_postfix_never_delay_an_add(
    dracd: Callable[[], Dracd], holders: list[LockHolder], postfix_factory: Callable[..., PostfixInstance]
) -> None:
    """The issue's reproduction, `setpriv --reuid=65534 ... flock -s MAP sleep 600`, plus a
    second holder that takes a shared lock on every new map as soon as it is in place and
    keeps it (as hung smtpd processes would), while Postfix reads the map in session after
    session."""
    server = dracd()
    server.add("127.0.0.5")
    postfix = postfix_factory(server.map_path)
    assert postfix.probe_relay("127.0.0.5") == (250, "2.1.5 Ok")
    holders.append(LockHolder.flock("-s", server.map_path))
    holders.append(LockHolder.hunting("-s", server.map_path))
    prober = PostfixProber(postfix, "127.0.0.5")
    prober.start()
    took = []
    try:
        for address in addresses(1):
            took.append(server.add(address))
            # Every acknowledged address relays at once, in a new session, the lock still held.
            assert postfix.probe_relay(address) == (250, "2.1.5 Ok"), address
        assert all(holder.proc.poll() is None for holder in holders)
    finally:
        replies = prober.finish()
    print(f"{len(took)} ADDs, slowest answer {max(took) * 1000:.1f} ms; "
          f"{len(replies)} Postfix sessions relayed 127.0.0.5 meanwhile")
    assert max(took) < MAX_ANSWER, f"an ADD took {max(took):.3f} s to answer while the lock was held"
    assert replies and all(reply == (250, "2.1.5 Ok") for reply in replies), \
        [reply for reply in replies if reply != (250, "2.1.5 Ok")][:5]
    log = postfix.log_text()
    assert "fatal" not in log and "-30986" not in log and "panic" not in log, log
    assert server.process.stop() == 0, "dracd could not stop (its last write) while the lock was held"


def test_an_exclusive_flock_holder_never_delays_an_add(
    dracd: Callable[[], Dracd], holders: list[LockHolder], postfix_factory: Callable[..., PostfixInstance]
) -> None:
    """A read-only descriptor is enough for LOCK_EX too."""
    server = dracd()
    server.add("127.0.0.5")
    postfix = postfix_factory(server.map_path)
    holders.append(LockHolder.flock("-x", server.map_path))
    server.add_many(addresses(2))
    # The held inode is no longer the map: new sessions read the new one.
    assert postfix.probe_relay(f"127.0.2.{ADDS}") == (250, "2.1.5 Ok")
    assert server.process.stop() == 0, "dracd could not stop (its last write) while the lock was held"


@pytest.mark.parametrize("mode", ["-s", "-x"])
def test_a_holder_that_locks_every_new_map_never_delays_an_add(
    dracd: Callable[[], Dracd], holders: list[LockHolder], mode: str
) -> None:
    """Whichever file the map's name points at, someone may have locked it already."""
    server = dracd()
    server.add("127.0.0.5")
    holders.append(LockHolder.hunting(mode, server.map_path))
    server.add_many(addresses(3))
    assert holders[0].proc.poll() is None
    assert server.process.stop() == 0, "dracd could not stop (its last write) while the lock was held"


def test_a_lock_on_the_spare_never_delays_an_add(dracd: Callable[[], Dracd], holders: list[LockHolder]) -> None:
    server = dracd()
    server.add_many(addresses(4, 3))
    spare = server.map_path.with_name(".dracd.db.spare")
    assert spare.exists()
    holders.append(LockHolder.flock("-x", spare))
    server.add_many(addresses(5))


def test_a_map_locked_before_the_start_neither_stalls_the_start_nor_an_add(
    dracd: Callable[[], Dracd], holders: list[LockHolder]
) -> None:
    server = dracd()
    server.add_many(addresses(6, 3))
    assert server.process.stop() == 0
    holders.append(LockHolder.flock("-x", server.map_path))
    restarted = dracd()
    restarted.add_many(addresses(7))
    assert set(addresses(6, 3)) <= set(read_map(restarted.map_path)), "the restart lost the previous entries"


def test_nobody_can_keep_dracd_from_starting_through_its_lock_file(
    dracd: Callable[[], Dracd], holders: list[LockHolder]
) -> None:
    """``<map>.lock`` (which keeps a second dracd off the map) was mode 0644, so uid 65534
    could hold its flock while dracd was down and every start then failed ("in use by
    another dracd", exit 69). It is private now, and one that others may open, as an older
    dracd left it, is replaced at start."""
    server = dracd()
    server.add_many(addresses(8, 2))
    lock = server.map_path.with_name(server.map_path.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert server.process.stop() == 0
    assert not lock.exists(), "a clean stop removes the lock file"
    lock.write_text("1\n")  # as an older dracd left it, readable by all
    lock.chmod(0o644)
    holders.append(LockHolder.flock("-x", lock))
    restarted = dracd()
    restarted.add_many(addresses(9, 2))
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


# The writer itself, in-process: the same locks held from another open file description.

V4, V6 = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")


@contextmanager
def flocked(path: Path, operation: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        yield fd
    finally:
        os.close(fd)


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


@pytest.mark.unit
@pytest.mark.timeout(20)  # before the fix these waited for the lock forever
def test_a_shared_lock_delays_no_update_and_the_reader_keeps_its_file(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    with flocked(path, fcntl.LOCK_SH) as fd:
        assert timed(lambda: writer.update({V6: 2})) < 0.5
        assert records(path) == {b"192.0.2.7": b"1", b"2001:db8::7": b"2"}
        # As before: the reader's inode is the spare now, reused once nobody has it open.
        assert os.fstat(fd).st_ino == path.with_name(".dracd.db.spare").stat().st_ino
    writer.update({V4: 3})
    assert records(path) == {b"192.0.2.7": b"3", b"2001:db8::7": b"2"}


@pytest.mark.unit
@pytest.mark.timeout(20)  # before the fix these waited for the lock forever
def test_updates_under_an_exclusive_lock_go_on_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    spare = path.with_name(".dracd.db.spare")
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    writer.update({V6: 2})  # the first map is the spare now, lacking V6
    with flocked(path, fcntl.LOCK_EX) as fd:
        # The spare is brought up to date and renamed in; the locked inode is let go.
        assert timed(lambda: writer.update({V4: 3})) < 0.5
        assert records(path) == {b"192.0.2.7": b"3", b"2001:db8::7": b"2"}
        assert os.fstat(fd).st_nlink == 0 and not spare.exists()
    with flocked(path, fcntl.LOCK_EX):
        # No spare: a copy of the locked map, which is still the one written here.
        assert timed(lambda: writer.update({V6: 4})) < 0.5
        assert records(path) == {b"192.0.2.7": b"3", b"2001:db8::7": b"4"}
    writer.update({V4: 5})
    writer.update({V6: 6})
    assert records(path) == {b"192.0.2.7": b"5", b"2001:db8::7": b"6"}


@pytest.mark.unit
@pytest.mark.timeout(20)  # before the fix these waited for the lock forever
def test_a_map_changed_under_an_exclusive_lock_is_never_copied(tmp_path: Path) -> None:
    """Unlocked, a copy is trusted only if the map is still the file written here."""
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    with flocked(path, fcntl.LOCK_EX):
        table = db.DB()
        table.open(str(path), dbtype=db.DB_BTREE)
        table.put(b"198.51.100.1", b"9")  # another writer, in place
        table.close()
        with pytest.raises(StaleMap):
            writer.update({V6: 2})
        writer.write({V6: 2})  # what the committer does next
    assert records(path) == {b"2001:db8::7": b"2"}


@pytest.mark.unit
@pytest.mark.timeout(20)  # before the fix these waited for the lock forever
def test_a_map_read_under_an_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    open_map("btree", path, KeyStyle()).write({V4: 1, V6: 2})
    restarted = open_map("btree", path, KeyStyle())
    with flocked(path, fcntl.LOCK_EX):
        assert timed(lambda: restarted.read()) < 0.5
    assert restarted.read() == {V4: 1, V6: 2} and restarted.adopt()


@pytest.mark.unit
@pytest.mark.timeout(20)
def test_a_map_read_while_another_writer_changes_it_is_read_again(tmp_path: Path) -> None:
    """Unlocked, a read counts only if the map stayed the same during it."""
    path = tmp_path / "dracd.db"
    open_map("btree", path, KeyStyle()).write({V4: 1})
    reader = open_map("btree", path, KeyStyle())
    scan = reader._scan  # type: ignore[attr-defined]
    scans = []

    changes = 1

    def scan_while_another_writes() -> object:
        result = scan()
        scans.append(result)
        if len(scans) <= changes:  # another writer (postmap...) changes the map in place meanwhile
            table = db.DB()
            table.open(str(path), dbtype=db.DB_BTREE)
            table.put(b"198.51.100.1", str(len(scans)).encode())
            table.close()
        return result

    reader._scan = scan_while_another_writes  # type: ignore[attr-defined]
    with flocked(path, fcntl.LOCK_EX):
        entries = reader.read()
        assert len(scans) == 2 and entries == {V4: 1, ipaddress.ip_address("198.51.100.1"): 1}
        # A map that never stays the same: given up on after READ_PATIENCE, not waited for.
        changes = 1000
        started = time.monotonic()
        with pytest.raises(MapError, match="kept changing"):
            reader.read()
        assert time.monotonic() - started < READ_PATIENCE + 1


@pytest.mark.unit
@pytest.mark.timeout(20)
def test_a_spare_someone_else_wrote_into_is_not_reused(tmp_path: Path) -> None:
    """A writer that waited for its lock on the map may get it on the inode that became the
    spare meanwhile, and write there: that file no longer lacks only what dracd knows of."""
    path = tmp_path / "dracd.db"
    spare = path.with_name(".dracd.db.spare")
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    writer.update({V6: 2})
    table = db.DB()
    table.open(str(spare), dbtype=db.DB_BTREE)
    table.put(b"198.51.100.1", b"9")
    table.close()
    writer.update({V4: 3})
    assert records(path) == {b"192.0.2.7": b"3", b"2001:db8::7": b"2"}
