"""The journal in-process, beyond tests/test_journal.py's unit tests: the file format's
exact numbers (written here as literals, not taken from the module), the compaction
threshold, a closed journal, a state file with bytes after its checksum, and the
committer's restart of the journal (a new generation) after a commit that could not
be written, with the real table, map writer and journal files.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import stat
import zlib
from pathlib import Path

import pytest

from dracd.keys import KeyStyle, entry_code
from dracd.publish.commit import Committer
from dracd.publish.journal import Journal, JournalError
from dracd.publish.maps import MapError
from dracd.publish.maps.berkeley import BerkeleyMap
from dracd.relay.table import RelayTable
from tests.fixtures.server import map_keys

pytestmark = pytest.mark.unit


def code(text: str) -> int:
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    return entry_code(entry)


# --- the committer restarts the journal after a failed commit -------------------------


def test_a_commit_the_journal_cannot_take_fails_its_adds_then_a_new_generation_takes_over(tmp_path: Path) -> None:
    """The journal's files vanish under a running committer: the ADD waiting for that commit
    gets the MapError (never a false success); the retry writes the whole map and starts a
    new journal generation (both files back, a state covering the table), and the next
    ADDs are journaled and replayed."""
    map_path = tmp_path / "dracd.db"
    table = RelayTable(clock=lambda: 1_000_000.0)
    journal = Journal(map_path)
    committer = Committer(table, BerkeleyMap(map_path, "hash", KeyStyle()), journal)

    async def scenario() -> None:
        table.add(ipaddress.ip_address("192.0.2.1"), 3600)
        committer.write_now()  # start-up: the whole map, journal generation 1
        assert journal.active and journal.epoch == 1
        committer.start()
        try:
            for path in journal.paths:
                path.unlink()
            table.add(ipaddress.ip_address("192.0.2.2"), 3600)
            with pytest.raises(MapError, match="cannot write"):
                await asyncio.wait_for(committer.commit(), 10)
            # The retry (after RETRY_FIRST, 0.5 s) writes everything afresh, unasked.
            for _ in range(1000):
                if all(path.exists() for path in journal.paths) and committer.written_version == table.version:
                    break
                await asyncio.sleep(0.01)
            assert all(path.exists() for path in journal.paths), "the journal was not started afresh"
            assert journal.epoch == 2 and journal.state_path.exists()
            assert set(map_keys(map_path)) == {b"192.0.2.1", b"192.0.2.2"}
            table.add(ipaddress.ip_address("192.0.2.3"), 3600)
            await asyncio.wait_for(committer.commit(), 10)
        finally:
            await committer.close()

    asyncio.run(scenario())
    assert Journal(map_path).recover() == {code("192.0.2.1"): 1_003_600, code("192.0.2.2"): 1_003_600,
                                           code("192.0.2.3"): 1_003_600}
    assert set(map_keys(map_path)) == {b"192.0.2.1", b"192.0.2.2", b"192.0.2.3"}


# --- closed journals ---------------------------------------------------------------------


def test_a_journal_that_is_not_open_takes_no_commit_and_no_switch(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    for call in (lambda: journal.commit({code("192.0.2.1"): 1000}), journal.switch):
        with pytest.raises(JournalError, match="not open"):
            call()
    journal.start({})
    assert journal.active
    journal.close()
    assert not journal.active and journal.exists()  # closed, not clean: the files stay
    for call in (lambda: journal.commit({code("192.0.2.1"): 1000}), journal.switch):
        with pytest.raises(JournalError, match="not open"):
            call()
    assert not journal.wants_compaction()
    journal.close(clean=True)
    assert not journal.exists()


# --- the file format, byte by byte ----------------------------------------------------------


def test_journal_file_layout_as_written(tmp_path: Path) -> None:
    """Header (magic, epoch, CRC of both, then the map slot), 64 KiB preallocated, and a batch
    (magic "TABJ", epoch, count, CRC) of 26-byte records: code big-endian in 18 bytes, expiry."""
    journal = Journal(tmp_path / "dracd.db")
    journal.start({code("192.0.2.1"): 1000})
    journal.commit({code("192.0.2.2"): 2000, code("2001:db8::1"): None})
    data = journal.paths[0].read_bytes()
    assert len(data) == 32 + 65536
    head = b"DRACDJ01" + (1).to_bytes(8, "little")
    assert data[:32] == head + zlib.crc32(head).to_bytes(4, "little") + bytes(12)
    records = (code("192.0.2.2").to_bytes(18, "big") + (2000).to_bytes(8, "little", signed=True)
               + code("2001:db8::1").to_bytes(18, "big") + (-1).to_bytes(8, "little", signed=True))
    crc = zlib.crc32(records, zlib.crc32((1).to_bytes(4, "little") + (2).to_bytes(4, "little")))
    batch = b"TABJ" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + crc.to_bytes(4, "little")
    assert data[32:32 + 16 + 52] == batch + records
    assert not data[32 + 16 + 52:].strip(b"\0")
    other = journal.paths[1].read_bytes()  # the spare file: a header of epoch 0, nothing more
    spare = b"DRACDJ01" + bytes(8)
    assert other == spare + zlib.crc32(spare).to_bytes(4, "little") + bytes(12)


def test_state_file_layout_as_written(tmp_path: Path) -> None:
    """Magic, covered epoch, counts; IPv4 hosts as two arrays (codes, expiries); other
    entries as records; a CRC of everything before it."""
    journal = Journal(tmp_path / "dracd.db")
    net = code("198.51.100.0/24")
    journal.write_state({code("192.0.2.1"): 1000, net: 3000, code("192.0.2.2"): 2000}, 7)
    data = journal.state_path.read_bytes()
    body = (b"DRACDST1" + (7).to_bytes(8, "little") + (2).to_bytes(8, "little") + (1).to_bytes(8, "little")
            + (0xC0000201).to_bytes(4, "little") + (0xC0000202).to_bytes(4, "little")
            + (1000).to_bytes(8, "little") + (2000).to_bytes(8, "little")
            + net.to_bytes(18, "big") + (3000).to_bytes(8, "little"))
    assert data == body + zlib.crc32(body).to_bytes(4, "little")
    assert Journal(tmp_path / "dracd.db")._read_state() == (7, {code("192.0.2.1"): 1000, net: 3000,
                                                                code("192.0.2.2"): 2000})


@pytest.mark.parametrize("damage", ["trailing byte", "short by one", "count too high", "magic"])
def test_a_state_file_that_is_not_exactly_as_written_is_refused(tmp_path: Path, damage: str) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.write_state({code("192.0.2.1"): 1000, code("2001:db8::1"): 2000}, 3)
    data = bytearray(journal.state_path.read_bytes())
    if damage == "trailing byte":
        data += b"\0"
    elif damage == "short by one":
        del data[-1]
    elif damage == "count too high":
        data[16] += 1
    else:
        data[0] ^= 0x20
    journal.state_path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="not a dracd state file or is truncated|damaged"):
        Journal(tmp_path / "dracd.db").recover()


def test_the_smallest_state_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.write_state({}, 0)
    assert journal.state_path.stat().st_size == 32 + 4
    assert Journal(tmp_path / "dracd.db").recover() == {}
    journal.state_path.write_bytes(journal.state_path.read_bytes()[:35])
    with pytest.raises(JournalError, match="truncated"):
        Journal(tmp_path / "dracd.db").recover()


# --- compaction threshold ------------------------------------------------------------------


def test_compaction_is_wanted_past_16_mib_or_four_times_the_state(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    assert not journal.wants_compaction()
    journal._offset = 16 * 1024 * 1024
    assert not journal.wants_compaction()
    journal._offset += 1
    assert journal.wants_compaction()
    # The state's size is what write_state() wrote (header, 12 bytes a host, 26 a record)...
    journal.write_state({code("192.0.2.1"): 1000, code("192.0.2.2"): 1000, code("2001:db8::1"): 1000}, 0)
    assert journal._state_bytes == 32 + 2 * 12 + 26
    # ... and past 4 MiB of state, four times its size is the threshold (a state that big
    # is 350k entries: set here rather than written).
    state_bytes = journal._state_bytes = 5_000_000
    journal._offset = 4 * state_bytes
    assert not journal.wants_compaction()
    journal._offset += 1
    assert journal.wants_compaction()
    journal.close()
    assert not journal.wants_compaction()


# --- recovery's edges --------------------------------------------------------------------------


def test_recovery_of_nothing_is_an_empty_table(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    assert journal.recover() == {} and journal.epoch == 0
    assert journal.holds_last_written_map() is False  # no map, nothing recorded


def test_an_expiry_of_0_is_an_expiry_not_a_deletion(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    journal.commit({code("192.0.2.1"): 0, code("192.0.2.2"): 5})
    journal.commit({code("192.0.2.2"): None})
    assert Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 0}


def test_records_no_add_could_make_are_dropped_and_counted(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    journal.commit({code("192.0.2.1"): 1000})
    with caplog.at_level(logging.WARNING, logger="dracd.publish.journal"):
        assert Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 1000}
        assert not caplog.records
        # A CRC-correct batch of what no ADD makes: multicast, broadcast, a /23.
        journal.commit({0xE0000001: 1000, 0xFFFFFFFF: 1000, code("192.0.2.2"): 1000,
                        entry_code(ipaddress.ip_network("192.0.2.0/24")) - (1 << 129): 1000})
        assert Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 1000, code("192.0.2.2"): 1000}
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: ignored 3 records that are no relayable entry"]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_files_are_private_and_no_descriptor_is_left_behind(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    map_path.write_bytes(b"map")
    journal = Journal(map_path)
    before = open_descriptors()
    journal.start({code("192.0.2.1"): 1000})
    held = open_descriptors()
    for path in (journal.state_path, *journal.paths):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    st = map_path.stat()
    journal.note_map((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    journal.commit({code("192.0.2.2"): 1000})
    journal.write_state({code("192.0.2.1"): 1000, code("192.0.2.2"): 1000}, journal.switch())
    journal.start({code("192.0.2.1"): 1000, code("192.0.2.2"): 1000})  # a new generation: the old one let go
    assert open_descriptors() == held
    journal.close(clean=True)
    assert open_descriptors() == before


def test_a_map_noted_before_start_is_the_one_start_records(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    map_path.write_bytes(b"map")
    st = map_path.stat()
    journal = Journal(map_path)
    journal.note_map((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))  # no journal file yet
    journal.start({})
    recovered = Journal(map_path)
    recovered.recover()
    assert recovered.holds_last_written_map() is True
    journal.close(clean=True)


# --- failures are JournalErrors ---------------------------------------------------------------


def test_every_write_that_fails_is_a_journal_error(tmp_path: Path) -> None:
    missing = Journal(tmp_path / "gone" / "dracd.db")
    with pytest.raises(JournalError, match="cannot write .*state"):
        missing.write_state({code("192.0.2.1"): 1000}, 0)
    with pytest.raises(JournalError, match="cannot write"):
        missing.start({})
    assert not missing.active
    blocked = Journal(tmp_path / "blocked" / "dracd.db")
    blocked.paths[1].parent.mkdir()
    blocked.paths[1].mkdir()  # the second journal file cannot be created
    before = open_descriptors()
    with pytest.raises(JournalError, match=r"cannot write .*journal\.0"):
        blocked.start({})
    assert not blocked.active and open_descriptors() == before
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    journal.paths[0].unlink()
    with pytest.raises(JournalError, match=r"cannot write .*journal\.0"):
        journal.commit({code("192.0.2.1"): 1000})
    journal.paths[1].unlink()
    with pytest.raises(JournalError, match=r"cannot write .*journal\.1"):
        journal.switch()
    journal.state_path.unlink()
    journal.state_path.mkdir()  # unreadable as a file
    with pytest.raises(JournalError, match="cannot read"):
        Journal(tmp_path / "dracd.db").recover()
    (journal.state_path / "x").touch()  # a rename over a non-empty directory fails
    with pytest.raises(JournalError, match="cannot write"):
        journal.write_state({code("192.0.2.1"): 1000}, 0)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary state was left behind"


@pytest.mark.parametrize("cut", [0, 1, 19, 20, 31])
def test_a_header_shorter_than_32_bytes_is_no_header(cut: int) -> None:
    """20 bytes of magic, epoch and CRC, then the 12-byte map slot."""
    from dracd.publish.journal import _header, parse_header

    head = _header(5)
    assert len(head) == 32 and parse_header(head) == (5, None) and parse_header(head + b"x") == (5, None)
    assert parse_header(head[:cut]) is None


def test_a_header_with_a_bad_magic_or_crc_is_no_header() -> None:
    from dracd.publish.journal import _header, _map_slot, parse_header

    good = _header(7)
    for at in (0, 8, 16):  # magic, epoch (its CRC no longer fits), CRC
        bad = bytearray(good)
        bad[at] ^= 1
        assert parse_header(bytes(bad)) is None
    slot = _map_slot(b"12345678")
    assert parse_header(_header(7, slot)) == (7, b"12345678")
    damaged = bytearray(_header(7, slot))
    damaged[20] ^= 1  # the digest no longer matches its CRC
    assert parse_header(bytes(damaged)) == (7, None)


def test_a_batch_that_ends_exactly_at_the_end_of_the_file_is_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    journal.start({})
    journal.commit({code("192.0.2.1"): 1000})
    path = journal.paths[0]
    path.write_bytes(path.read_bytes()[:32 + 16 + 26])  # no zeros after it
    assert Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 1000}
    path.write_bytes(path.read_bytes()[:32 + 16 + 25])  # torn by one byte
    assert Journal(tmp_path / "dracd.db").recover() == {}


def test_a_temporary_state_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    stale = journal.state_path.with_name(journal.state_path.name + ".tmp")
    stale.write_bytes(b"half a state")
    journal.write_state({code("192.0.2.1"): 1000}, 0)
    assert not stale.exists() and Journal(tmp_path / "dracd.db").recover() == {code("192.0.2.1"): 1000}
