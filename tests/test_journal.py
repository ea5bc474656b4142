"""The journal that makes acknowledged ADDs durable while map commits are not flushed.

Unit tests of the file format and replay (torn tails, stale batches of a reused
file, compaction interrupted at every step, damage), then a real dracd killed
with SIGKILL while the map is set back to what a power cut could leave (an
older map, a torn one): the restart rebuilds the map from the journal with
every acknowledged address, and a clean stop leaves only the map.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
from pathlib import Path

import pytest

from dracclient.drac import AddStat
from dracd.keys import entry_code
from dracd.publish import journal as journal_module
from dracd.publish.journal import HEADER_SIZE, Journal, JournalError
from tests.fixtures.process import DracdProcess, add_status, read_map
from tests.fixtures.server import ServerThread, private_prog, test_config, wait_for
from tests.fixtures.server import add_status as server_add
from tests.fixtures.tools import free_port


def code(text: str) -> int:
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    return entry_code(entry)


@pytest.mark.unit
def test_replay_gives_back_every_change(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({code("192.0.2.1"): 1000, code("192.0.2.2"): 1000})
    journal.commit({code("192.0.2.3"): 2000, code("2001:db8::7"): 2001, code("198.51.100.0/24"): 2002})
    journal.commit({code("192.0.2.1"): None, code("192.0.2.2"): 3000})
    journal.close()
    recovered = Journal(tmp_path / "dracd.db").recover()
    assert recovered == {code("192.0.2.2"): 3000, code("192.0.2.3"): 2000, code("2001:db8::7"): 2001,
                         code("198.51.100.0/24"): 2002}


@pytest.mark.unit
def test_a_torn_last_batch_ends_the_replay_there(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    journal.commit({code("192.0.2.1"): 1000})
    offset = journal._offset
    journal.commit({code("192.0.2.2"): 1000, code("192.0.2.3"): 1000})
    path = journal.paths[0]
    with open(path, "r+b") as handle:  # the crash wrote the batch's first page only
        handle.seek(offset + 20)
        handle.write(b"\xff" * 8)
    assert Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 1000}


@pytest.mark.unit
def test_growth_past_the_preallocated_chunk(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    expected = {}
    for batch in range(40):  # 40 x 100 records x 26 bytes: past the 64 KiB chunk
        changes = {code(str(ipaddress.IPv4Address(0x0A000000 + batch * 100 + i))): 5000 + batch for i in range(100)}
        journal.commit(changes)
        expected.update(changes)
    assert os.path.getsize(journal.paths[0]) % journal_module.CHUNK == HEADER_SIZE
    assert Journal(tmp_path / "dracd.db").recover() == expected


@pytest.mark.unit
def test_compaction_interrupted_at_each_step_loses_nothing(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    journal = Journal(map_path)
    table = {code("192.0.2.1"): 1000}
    journal.start(table)
    for step in range(6):
        change = {code(f"192.0.2.{10 + step}"): 2000 + step}
        journal.commit(change)
        table.update(change)
        snapshot = dict(table)
        covered = journal.switch()
        # Killed here: the old file and the new one are both replayed over the old state.
        assert Journal(map_path).recover() == table
        change = {code(f"198.51.100.{step}"): 3000 + step, code("192.0.2.1"): None if step == 3 else 1000 + step}
        journal.commit(change)
        for key, value in change.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        assert Journal(map_path).recover() == table
        journal.write_state(snapshot, covered)
        # Done: the new state covers the old file, which the next switch will reuse.
        assert Journal(map_path).recover() == table


@pytest.mark.unit
def test_a_reused_file_never_replays_its_stale_batches(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    journal = Journal(map_path)
    journal.start({})
    journal.commit({code(f"10.0.0.{i}"): 1000 for i in range(50)})  # a long batch in file 0
    journal.write_state({code(f"10.0.0.{i}"): 1000 for i in range(50)}, journal.switch())
    journal.commit({code("10.0.1.1"): 2000})
    state = {code(f"10.0.0.{i}"): 1000 for i in range(50)} | {code("10.0.1.1"): 2000}
    journal.write_state(state, journal.switch())  # back to file 0, under a new epoch
    journal.commit({code("10.0.0.1"): None})  # shorter than the stale batch behind it
    del state[code("10.0.0.1")]
    assert Journal(map_path).recover() == state


@pytest.mark.unit
def test_a_damaged_state_is_an_error_not_a_guess(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({code("192.0.2.1"): 1000, code("2001:db8::1"): 1000})
    data = bytearray(journal.state_path.read_bytes())
    data[40] ^= 0x01
    journal.state_path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged"):
        Journal(tmp_path / "dracd.db").recover()
    journal.state_path.write_bytes(bytes(data[:30]))
    with pytest.raises(JournalError, match="truncated"):
        Journal(tmp_path / "dracd.db").recover()


@pytest.mark.unit
def test_start_covers_every_older_journal(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    journal = Journal(map_path)
    journal.start({})
    journal.commit({code("192.0.2.1"): 1000})
    journal.switch()
    journal.commit({code("192.0.2.2"): 1000})
    restarted = Journal(map_path)
    table = restarted.recover()
    assert table == {code("192.0.2.1"): 1000, code("192.0.2.2"): 1000}
    table[code("192.0.2.1")] = 5000
    restarted.start(table)
    assert Journal(map_path).recover() == table
    restarted.close(clean=True)
    assert not Journal(map_path).exists()


# --- a real dracd, killed, with the map set back as a power cut could leave it ---




def journal_files(map_path: Path) -> list[str]:
    return sorted(path.name for path in map_path.parent.iterdir() if ".journal." in path.name or path.name.endswith(
        ".state"))


@pytest.mark.parametrize("damage", ["older map", "torn map", "no map"])
def test_acknowledged_adds_survive_a_map_that_lost_them(tmp_path: Path, damage: str) -> None:
    prog, port = private_prog(), free_port()
    map_path = tmp_path / "dracd.db"
    args = ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port), "--program", str(prog),
            "--log-level", "info", "--lifetime", "1h", str(map_path)]
    process = DracdProcess(args, log_path=tmp_path / "dracd.log").start_ready(15)
    try:
        assert journal_files(map_path) == [".dracd.db.journal.0", ".dracd.db.journal.1", ".dracd.db.state"]
        for host in range(1, 21):
            assert add_status(port, prog, f"192.0.2.{host}") == 0
        shutil.copy(map_path, tmp_path / "early.db")  # the map as a crash could leave it
        for host in range(21, 61):
            assert add_status(port, prog, f"192.0.2.{host}") == 0
        assert add_status(port, prog, "2001:db8::5") == 0
        process.send(9)
        process.wait(10)
    finally:
        process.kill()
    if damage == "older map":
        shutil.copy(tmp_path / "early.db", map_path)
        assert "192.0.2.60" not in read_map(map_path)
    elif damage == "torn map":
        size = map_path.stat().st_size
        with open(map_path, "r+b") as handle:
            handle.seek(size // 2)
            handle.write(b"\0" * (size - size // 2))
    else:
        map_path.unlink()
    restarted = DracdProcess(args, log_path=tmp_path / "dracd-2.log").start_ready(15)
    try:
        entries = read_map(map_path)
        expected = {f"192.0.2.{host}" for host in range(1, 61)} | {"2001:db8::5"}
        assert expected <= set(entries), f"lost: {sorted(expected - set(entries))[:5]}"
        assert "did not stop cleanly: 61 entries recovered from its journal" in restarted.log()
        assert add_status(port, prog, "192.0.2.99") == 0
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    # A clean stop: the map holds everything, the journal is gone (a legacy rpc.dracd could take over).
    assert journal_files(map_path) == []
    assert "192.0.2.99" in read_map(map_path)


def test_the_journal_is_compacted_under_load_and_replays_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny compaction threshold dracd switches journal files many times;
    stopped dead at the end (no clean stop), the journal still holds every ADD."""
    monkeypatch.setattr(journal_module, "COMPACT_MIN", 2048)
    monkeypatch.setattr(journal_module, "COMPACT_RATIO", 0)
    server = ServerThread(test_config(tmp_path)).start()
    map_path = server.config.map.path
    epochs = set()
    try:
        for host in range(300):
            assert server_add(server, str(ipaddress.IPv4Address(0x0A000000 + host))) == 0
            epochs.add(_current_epoch(map_path))
    finally:
        server.abandon()
    assert len(epochs) > 5, f"the journal was never compacted: epochs {epochs}"
    recovered = Journal(map_path).recover()
    assert set(recovered) == {0x0A000000 + host for host in range(300)}


def _current_epoch(map_path: Path) -> int:
    epochs = []
    for index in (0, 1):
        head = (map_path.parent / f".{map_path.name}.journal.{index}").read_bytes()[:16]
        epochs.append(struct.unpack("<Q", head[8:16])[0])
    return max(epochs)


def test_a_journal_that_cannot_be_written_fails_the_add_then_starts_afresh(tmp_path: Path) -> None:
    """Someone removes the journal under a running dracd: the ADD that cannot be made
    durable gets ADD_SYSERR (never a false ADD_SUCCESS); dracd then writes the whole
    map and a new journal generation, and later ADDs succeed and survive a crash."""
    server = ServerThread(test_config(tmp_path)).start()
    map_path = server.config.map.path
    try:
        assert server_add(server, "192.0.2.1") == AddStat.ADD_SUCCESS
        for path in Journal(map_path).paths:
            path.unlink()
        assert server_add(server, "192.0.2.2") == AddStat.ADD_SYSERR
        assert wait_for(lambda: all(path.exists() for path in Journal(map_path).paths), timeout=5.0)
        assert server_add(server, "192.0.2.3") == AddStat.ADD_SUCCESS
    finally:
        server.abandon()
    recovered = Journal(map_path).recover()
    assert {code("192.0.2.1"), code("192.0.2.2"), code("192.0.2.3")} <= set(recovered)


@pytest.mark.unit
def test_the_journal_names_the_map_dracd_last_put_in_place(tmp_path: Path) -> None:
    """recover() tells the map dracd last wrote (its inode, size, mtime noted in the
    journal) from a map changed since; a switch carries the note to the new file."""
    map_path = tmp_path / "dracd.db"
    map_path.write_bytes(b"first")

    def identity() -> tuple[int, int, int, int]:
        st = map_path.stat()
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    journal = Journal(map_path)
    journal.start({})
    recovered = Journal(map_path)
    recovered.recover()
    assert not recovered.holds_last_written_map()  # none noted yet: nobody can tell
    journal.note_map(identity())
    journal.commit({code("192.0.2.1"): 1000})
    journal.write_state({code("192.0.2.1"): 1000}, journal.switch())
    recovered = Journal(map_path)
    recovered.recover()
    assert recovered.holds_last_written_map()
    os.utime(map_path, ns=(0, map_path.stat().st_mtime_ns + 1))  # written in place since
    recovered = Journal(map_path)
    recovered.recover()
    assert not recovered.holds_last_written_map()
    journal.note_map(identity())
    recovered = Journal(map_path)
    recovered.recover()
    assert recovered.holds_last_written_map()


@pytest.mark.unit
def test_a_commit_can_note_the_map_in_the_same_write(tmp_path: Path) -> None:
    """commit(changes, identity): the batch and the note of the map just put in place go in
    one open of the file (issue 21), and a failed commit forgets the note it could not write."""
    map_path = tmp_path / "dracd.db"
    map_path.write_bytes(b"map")
    st = map_path.stat()
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    journal = Journal(map_path)
    journal.start({})
    journal.commit({code("192.0.2.1"): 1000}, identity)
    recovered = Journal(map_path)
    assert recovered.recover() == {code("192.0.2.1"): 1000}
    assert recovered.holds_last_written_map()

    os.utime(map_path, ns=(0, st.st_mtime_ns + 1))
    st = map_path.stat()
    later = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    os.chmod(journal.paths[0], 0o400)
    try:
        if os.geteuid() == 0:  # root writes anyway: take the file away instead
            journal.paths[0].rename(tmp_path / "away")
        with pytest.raises(JournalError):
            journal.commit({code("192.0.2.2"): 1000}, later)
    finally:
        if os.geteuid() == 0:
            (tmp_path / "away").rename(journal.paths[0])
        os.chmod(journal.paths[0], 0o600)
    journal.note_map(later)  # not recorded by the failed commit: written now
    recovered = Journal(map_path)
    recovered.recover()
    assert recovered.holds_last_written_map()
