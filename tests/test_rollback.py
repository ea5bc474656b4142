"""Rollback safety: another writer on the map between dracd's crash and its restart.

A site rolls back after dracd was killed: legacy rpc.dracd runs on the same
map and adds an address, then dracd starts again and finds its journal. The
journal belongs to the map dracd last wrote; the map in place is someone
else's now, so dracd merges: every entry of that map stays, the journal's
unexpired entries come back (also those the other writer deleted), and the
log says so. A map dracd left as it was is still rebuilt from the journal
alone (a deletion dracd made stays deleted).

The other writer is built from the documented map format (DESIGN.md §2-3):
a btree, key = the address as text without NUL, value = expiry in decimal
epoch seconds, written in place as legacy rpc.dracd does, or as a new file
renamed over the map.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from berkeleydb import db

from dracclient.admin import AdminClient
from tests.fixtures.process import DracdProcess, add_status, read_map
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port

LEGACY_ADDRESS = "198.51.100.77"
#: An address dracd acknowledged that the other writer removes from the map.
DELETED_BY_LEGACY = "192.0.2.5"




def legacy_in_place(map_path: Path, put: dict[str, int], delete: tuple[str, ...] = ()) -> None:
    """What legacy rpc.dracd does: open the map itself (fcntl lock) and change it in place."""
    with open(map_path, "rb") as lock:
        fcntl.lockf(lock, fcntl.LOCK_SH)
        table = db.DB()
        table.open(str(map_path), dbtype=db.DB_BTREE)
        try:
            for address, expiry in put.items():
                table.put(address.encode(), str(expiry).encode())
            for address in delete:
                table.delete(address.encode())
            table.sync()
        finally:
            table.close()


def legacy_renamed(map_path: Path, put: dict[str, int], delete: tuple[str, ...] = ()) -> None:
    """A writer in the rename style: the map's entries, changed, in a new file renamed over it."""
    entries = {key: str(value) for key, value in read_map(map_path).items() if key not in delete}
    entries.update({address: str(expiry) for address, expiry in put.items()})
    tmp = map_path.with_name("legacy.tmp")
    table = db.DB()
    table.open(str(tmp), dbtype=db.DB_BTREE, flags=db.DB_CREATE, mode=0o644)
    try:
        for key in sorted(entries):
            table.put(key.encode(), entries[key].encode())
    finally:
        table.close()
    os.rename(tmp, map_path)


def run_and_kill(tmp_path: Path, args: list[str], port: int, prog: int, *, admin_delete: str | None = None) -> None:
    process = DracdProcess(args, log_path=tmp_path / "dracd.log").start_ready(15)
    try:
        for host in range(1, 21):
            assert add_status(port, prog, f"192.0.2.{host}") == 0
        assert add_status(port, prog, "2001:db8::5") == 0
        if admin_delete is not None:
            AdminClient(socket_path=str(tmp_path / "dracd.sock"), prog=prog, timeout=5.0).delete(admin_delete)
        process.send(9)
        process.wait(10)
    finally:
        process.kill()


@pytest.mark.parametrize("writer", [legacy_in_place, legacy_renamed], ids=["in place", "renamed"])
def test_a_legacy_writer_between_crash_and_restart_loses_nothing(tmp_path: Path, writer: object) -> None:
    prog, port = private_prog(), free_port()
    map_path = tmp_path / "dracd.db"
    args = ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port), "--program", str(prog),
            "--log-level", "info", "--lifetime", "1h", str(map_path)]
    run_and_kill(tmp_path, args, port, prog)
    # The rollback: legacy rpc.dracd on the same map acknowledges an address and
    # (its expiry sweep, an admin) removes one that dracd had acknowledged.
    legacy_expiry = int(time.time()) + 1800
    assert callable(writer)
    writer(map_path, {LEGACY_ADDRESS: legacy_expiry}, (DELETED_BY_LEGACY,))
    assert LEGACY_ADDRESS in read_map(map_path)
    restarted = DracdProcess(args, log_path=tmp_path / "dracd-2.log").start_ready(15)
    try:
        entries = read_map(map_path)
        assert entries.get(LEGACY_ADDRESS) == legacy_expiry, f"the legacy writer's ADD was lost\n{restarted.log()}"
        expected = {f"192.0.2.{host}" for host in range(1, 21)} | {"2001:db8::5"}
        assert expected <= set(entries), f"lost: {sorted(expected - set(entries))}"
        log = restarted.log()
        assert "changed by another writer since dracd's last write" in log
        # The journal's entry the other writer had deleted came back (an acknowledged ADD).
        assert "merged 1 entries from the journal" in log
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    assert {LEGACY_ADDRESS, DELETED_BY_LEGACY} <= set(read_map(map_path))


def test_a_map_dracd_left_as_it_was_is_replayed_not_merged(tmp_path: Path) -> None:
    """No other writer: the journal is replayed over the map alone, so an address
    dracd deleted before the crash stays deleted."""
    prog, port = private_prog(), free_port()
    map_path = tmp_path / "dracd.db"
    args = ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port), "--program", str(prog),
            "--log-level", "info", "--lifetime", "1h", str(map_path)]
    run_and_kill(tmp_path, args, port, prog, admin_delete="192.0.2.3")
    restarted = DracdProcess(args, log_path=tmp_path / "dracd-2.log").start_ready(15)
    try:
        entries = read_map(map_path)
        assert "192.0.2.3" not in entries
        assert {"192.0.2.1", "192.0.2.20", "2001:db8::5"} <= set(entries)
        log = restarted.log()
        assert "did not stop cleanly: 20 entries recovered from its journal" in log
        assert "another writer" not in log
        assert restarted.stop() == 0
    finally:
        restarted.kill()
