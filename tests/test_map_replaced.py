"""A map replaced under a running dracd (issue 22, fault 3).

The real dracd process acknowledges ADDs and sits idle; then someone else
changes the map: a new file renamed over it (mv), db5.3_load adding to it in
place, a makemap-style rewrite in place under flock(LOCK_EX) with only the
admin's entries, an older copy put back (cp -p), or rm. Within two seconds
dracd must log a WARNING naming what it found, keep the replacement's valid
entries, and write the map again with every address it acknowledged (a
deleted map is back within two seconds). Before the fix, nothing happened
until the next ADD, which then overwrote the admin's file without a word.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from berkeleydb import db

from tests.fixtures.process import DracdProcess, add_status, read_map, wait_until
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port

#: The issue: "notices within a second or two"; a deleted map is back within two seconds.
NOTICE = 2.0
ACKED = [f"192.0.2.{host}" for host in range(1, 21)]
ADMIN = "198.51.100.77"


class Running:
    def __init__(self, directory: Path) -> None:
        self.map_path = directory / "dracd.db"
        self.port, self.prog = free_port(), private_prog()
        self.process = DracdProcess(
            ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(self.port), "--program", str(self.prog),
             "--log-level", "info", "--lifetime", "1h", str(self.map_path)], log_path=directory / "dracd.log")

    def add(self, address: str) -> None:
        assert add_status(self.port, self.prog, address) == 0, self.process.log()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    server = Running(tmp_path)
    server.process.start_ready(15)
    try:
        for address in ACKED[:10]:
            server.add(address)
        shutil.copy2(server.map_path, tmp_path / "older.db")  # a backup, 10 entries
        for address in ACKED[10:]:
            server.add(address)
        yield server
        assert server.process.stop() == 0
    finally:
        server.process.kill()


def write_btree(path: Path, entries: dict[str, int], flags: int = db.DB_CREATE) -> None:
    table = db.DB()
    table.open(str(path), dbtype=db.DB_BTREE, flags=flags, mode=0o644)
    try:
        for key in sorted(entries):
            table.put(key.encode(), str(entries[key]).encode())
    finally:
        table.close()


def moved_in(map_path: Path) -> str:
    """An admin's map built aside and renamed in: one address of theirs, half of dracd's."""
    new = map_path.with_name("admin.db")
    write_btree(new, {ADMIN: int(time.time()) + 1800, **{a: int(time.time()) + 600 for a in ACKED[:10]}})
    os.rename(new, map_path)
    return "replaced by another file"


def db_load(map_path: Path) -> str:
    """db5.3_load adding a record in place."""
    text = f"{ADMIN}\n{int(time.time()) + 1800}\n"
    result = subprocess.run(["db5.3_load", "-T", "-t", "btree", str(map_path)], input=text, text=True,
                            capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return "changed in place"


def makemap_style(map_path: Path) -> str:
    """As makemap does: the map truncated and rewritten in place under flock(LOCK_EX),
    holding the admin's entries only."""
    with open(map_path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_btree(map_path, {ADMIN: int(time.time()) + 1800}, db.DB_CREATE | db.DB_TRUNCATE)
    return "changed in place"


def older_copy(map_path: Path) -> str:
    """cp -p of a backup over the map (10 of the 20 entries; in place, older mtime)."""
    shutil.copy2(map_path.with_name("older.db"), map_path)
    return "changed in place"


def removed(map_path: Path) -> str:
    map_path.unlink()
    return "was deleted by someone else"


CASES: list[tuple[str, Callable[[Path], str]]] = [
    ("mv", moved_in), ("db5.3_load", db_load), ("makemap", makemap_style), ("older copy", older_copy),
    ("rm", removed)]


@pytest.mark.parametrize(("name", "change"), CASES, ids=[name for name, _ in CASES])
def test_a_replaced_map_is_noticed_merged_and_rewritten(running: Running, name: str,
                                                          change: Callable[[Path], str]) -> None:
    expected = set(ACKED) | ({ADMIN} if name in ("mv", "db5.3_load", "makemap") else set())
    time.sleep(0.3)  # idle: nothing but the expiry tick will look at the map
    changed_at = time.monotonic()
    said = change(running.map_path)

    def settled() -> bool:
        try:
            return expected <= set(read_map(running.map_path)) and said in running.process.log()
        except db.DBError:
            return False  # not there yet (rm), or being replaced

    wait_until(settled, NOTICE + 3, f"{name}: the map merged and written again")
    took = time.monotonic() - changed_at
    log = running.process.log()
    assert took <= NOTICE, f"{name}: took {took:.2f} s (more than {NOTICE} s)\n{log}"
    warning = [line for line in log.splitlines() if said in line]
    assert warning and "WARNING" in warning[0], log
    # Nothing else to fix: the next look finds dracd's own map.
    time.sleep(0.6)
    assert running.process.log().count(said) == 1, running.process.log()
    running.add("192.0.2.200")
    assert expected | {"192.0.2.200"} <= set(read_map(running.map_path))


def test_a_map_replaced_just_before_a_stop_is_merged_by_the_final_write(tmp_path: Path) -> None:
    server = Running(tmp_path)
    server.process.start_ready(15)
    try:
        for address in ACKED:
            server.add(address)
        moved_in(server.map_path)
        assert server.process.stop() == 0  # at once: the final write, not the tick, may meet it first
    finally:
        server.process.kill()
    assert set(ACKED) | {ADMIN} <= set(read_map(server.map_path)), server.process.log()
