"""The Berkeley DB map writer: legacy format, atomic replacement, locking."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from berkeleydb import db

from dracd.keys import Ipv6Keys, KeyStyle, entry_code
from dracd.publish.maps import MapError, StaleMap
from tests.fixtures.maps import open_map
from tests.fixtures.mounts import set_readonly, tmpfs
from tests.fixtures.server import map_keys as records

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

VECTORS = Path(__file__).parent / "vectors"
V4 = ipaddress.ip_address("192.0.2.7")
V6 = ipaddress.ip_address("2001:db8::7")


def db_type(path: Path) -> int:
    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    try:
        return int(table.get_type())
    finally:
        table.close()


def test_reads_the_legacy_map(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    shutil.copy(VECTORS / "legacy-dracd.db", path)
    entries = open_map("btree", path, KeyStyle()).read()
    assert entries == {
        ipaddress.ip_address(a): 1795892048
        for a in ("192.0.2.10", "2001:db8::b8:10", "2001:db8:ff00::1", "203.0.113.200")
    }


@pytest.mark.parametrize(("kind", "dbtype"), [("btree", db.DB_BTREE), ("hash", db.DB_HASH)])
def test_writes_legacy_keys_and_values(tmp_path: Path, kind: str, dbtype: int) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map(kind, path, KeyStyle())
    writer.write({V4: 1795892048, V6: 1795892049})
    assert records(path) == {b"192.0.2.7": b"1795892048", b"2001:db8::7": b"1795892049"}
    assert db_type(path) == dbtype
    assert writer.read() == {V4: 1795892048, V6: 1795892049}
    dump = subprocess.run(["db5.3_dump", "-p", str(path)], capture_output=True, text=True, timeout=10)
    assert dump.returncode == 0 and " 192.0.2.7\n 1795892048\n" in dump.stdout


def test_key_options_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle(nul=True, cidr=True, ipv6=Ipv6Keys.BOTH))
    writer.write({V4: 5, V6: 6})
    assert records(path) == {
        b"192.0.2.7/32\0": b"5\0",
        b"2001:db8::7/128\0": b"6\0",
        b"ipv6:2001:db8:0:0:0:0:0:7/128\0": b"6\0",
    }
    assert writer.read() == {V4: 5, V6: 6}


def test_replacement_is_atomic_new_inode_mode_0644_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    before = path.stat().st_ino
    old = db.DB()
    old.open(str(path), dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
    writer.write({V6: 2})
    # A reader that had the map open keeps a consistent old file, as MTA sessions do.
    assert old.get(b"192.0.2.7") == b"1" and old.get(b"2001:db8::7") is None
    old.close()
    assert path.stat().st_ino != before
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["dracd.db"]


def test_an_exclusive_flock_holder_delays_no_write_and_its_inode_is_not_reused(tmp_path: Path) -> None:
    """Anyone who can read the map can hold flock(LOCK_EX) on it (issue 16): the write goes
    on at once, and the locked inode, perhaps a writer's such as postmap's, is let go."""
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        writer.write({V6: 2})
        assert time.monotonic() - started < 0.5
        assert records(path) == {b"2001:db8::7": b"2"}
        assert os.fstat(fd).st_nlink == 0, "the locked inode was kept"
    finally:
        os.close(fd)


def test_foreign_records_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    table = db.DB()
    table.open(str(path), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    for key, value in [(b"unknown", b"1"), (b"127.0.0.0/23", b"1"), (b"192.0.2.7", b"soon"), (b"192.0.2.8", b"9"),
                       (b"198.51.100", b"7"), (b"2001:db8:", b"7")]:
        table.put(key, value)
    table.close()
    assert open_map("btree", path, KeyStyle()).read() == {
        ipaddress.ip_address("192.0.2.8"): 9, ipaddress.ip_network("198.51.100.0/24"): 7}


def test_network_entries_round_trip_through_the_map(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    entries = {ipaddress.ip_network("198.51.100.0/24"): 5, ipaddress.ip_network("2001:db8::/64"): 6,
               ipaddress.ip_network("2001:db8:1:2::/64"): 7, ipaddress.ip_address("192.0.2.8"): 9}
    writer = open_map("btree", path, KeyStyle())
    writer.write(entries)
    assert records(path) == {b"198.51.100": b"5", b"2001:db8:0:0": b"6", b"2001:db8:": b"6",
                             b"2001:db8:1:2": b"7", b"192.0.2.8": b"9"}
    assert writer.read() == entries
    writer.update({ipaddress.ip_network("2001:db8::/64"): None})
    assert b"2001:db8:" not in records(path) and b"2001:db8:0:0" not in records(path)


def test_read_only_directory_fails_cleanly_and_keeps_the_old_map(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro") as directory:
        path = directory / "dracd.db"
        writer = open_map("btree", path, KeyStyle())
        writer.write({V4: 1})
        set_readonly(directory, True)
        try:
            with pytest.raises(MapError, match="cannot write"):
                writer.write({V6: 2})
            assert records(path) == {b"192.0.2.7": b"1"}
        finally:
            set_readonly(directory, False)
        writer.write({V6: 2})
        assert records(path) == {b"2001:db8::7": b"2"}


def test_full_disk_fails_cleanly(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="64k") as directory:
        path = directory / "dracd.db"
        writer = open_map("btree", path, KeyStyle())
        writer.write({V4: 1})
        big = {ipaddress.IPv4Address(0x0A000000 + n): 1795892048 for n in range(5_000)}
        with pytest.raises(MapError):
            writer.write(big)
        assert records(path) == {b"192.0.2.7": b"1"}
        assert sorted(os.listdir(directory)) == ["dracd.db"]


def test_rewrite_of_100k_entries_writes_every_one_in_bounded_time(tmp_path: Path) -> None:
    """Every key and value of a 100k-entry rewrite, spelled out here (not by KeyStyle), and
    a bound of 30 s that a linear writer meets with room to spare on a loaded 2-core machine
    (~0.5 s idle) and a quadratic one does not."""
    writer = open_map("btree", tmp_path / "dracd.db", KeyStyle())
    entries = {ipaddress.IPv4Address(0x0A000000 + n): 1795892048 + n % 7 for n in range(100_000)}
    started = time.monotonic()
    writer.write(entries)
    elapsed = time.monotonic() - started
    expected = {f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}".encode(): str(1795892048 + n % 7).encode()
                for n in range(100_000)}
    assert records(tmp_path / "dracd.db") == expected
    assert elapsed < 30, f"100k-entry rewrite took {elapsed:.1f} s"


def test_update_applies_changes_to_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle(ipv6=Ipv6Keys.BOTH))
    writer.write({V4: 1, V6: 2})
    inode = path.stat().st_ino
    assert writer.can_update()
    writer.update({V4: None, V6: 3, ipaddress.ip_address("192.0.2.8"): 4, ipaddress.ip_address("192.0.2.9"): None})
    assert path.stat().st_ino != inode
    assert records(path) == {b"2001:db8::7": b"3", b"ipv6:2001:db8:0:0:0:0:0:7": b"3", b"192.0.2.8": b"4"}
    assert sorted(os.listdir(tmp_path)) == [".dracd.db.spare", "dracd.db"]  # the old inode, kept as the spare


def test_update_refuses_a_map_someone_else_replaced(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    other = db.DB()
    other.open(str(tmp_path / "other.db"), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    other.put(b"unknown", b"1")
    other.close()
    os.rename(tmp_path / "other.db", path)
    assert not writer.can_update()
    with pytest.raises(StaleMap):
        writer.update({V6: 2})
    assert records(path) == {b"unknown": b"1"}
    writer.write({V6: 2})
    assert records(path) == {b"2001:db8::7": b"2"} and writer.can_update()


def test_unsafe_map_directories_are_found(tmp_path: Path) -> None:
    from dracd.publish.maps import unsafe_directory

    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    assert unsafe_directory(safe / "dracd.db") is None
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "sub").mkdir(mode=0o755)
    assert unsafe_directory(shared / "sub" / "dracd.db") == shared
    shared.chmod(0o1777)  # sticky, like /tmp
    assert unsafe_directory(shared / "sub" / "dracd.db") is None
    shared.chmod(0o775)
    assert unsafe_directory(shared / "dracd.db") == shared


def test_updates_reuse_the_previous_inode_once_nobody_has_it_open(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    spare = tmp_path / ".dracd.db.spare"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    first = path.stat().st_ino
    writer.update({V4: 2})  # a copy: the first inode becomes the spare, lacking V4: 2
    second = path.stat().st_ino
    assert second != first and spare.stat().st_ino == first
    writer.update({ipaddress.ip_address("192.0.2.8"): 3})  # the spare catches up in place and comes back
    assert path.stat().st_ino == first and spare.stat().st_ino == second
    assert records(path) == {b"192.0.2.7": b"2", b"192.0.2.8": b"3"}
    writer.update({V4: None})
    assert path.stat().st_ino == second and records(path) == {b"192.0.2.8": b"3"}
    assert writer.read() == {ipaddress.ip_address("192.0.2.8"): 3}


def test_a_spare_someone_still_reads_is_never_changed(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    writer.update({V4: 2})
    # An MTA session that opened the map before the last write still reads the old inode.
    reader = db.DB()
    reader.open(str(tmp_path / ".dracd.db.spare"), dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
    held = os.stat(tmp_path / ".dracd.db.spare").st_ino
    try:
        for expiry in range(3, 40):  # enough changes to grow the file, which crashes mmap readers
            writer.update({ipaddress.ip_address(f"198.51.100.{expiry}"): expiry, V4: expiry})
            assert path.stat().st_ino != held
        assert reader.get(b"192.0.2.7") == b"1" and len(reader.keys()) == 1
    finally:
        reader.close()
    assert records(path)[b"192.0.2.7"] == b"39" and len(records(path)) == 38
    # That inode lost its names to newer copies; with no reader left, reuse resumes.
    inodes = set()
    for expiry in range(40, 46):
        writer.update({V4: expiry})
        inodes.add(path.stat().st_ino)
    assert len(inodes) == 2 and held not in inodes


def test_an_update_in_place_only_ever_takes_the_spare_and_otherwise_changes_nothing(tmp_path: Path) -> None:
    # The event-loop thread's update (issue 21): the spare in place, or nothing at all.
    path = tmp_path / "dracd.db"
    spare = tmp_path / ".dracd.db.spare"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    first = path.stat().st_ino
    assert writer.update_in_place({entry_code(V4): 2}) is False  # no spare yet: that would be a copy
    assert path.stat().st_ino == first and records(path) == {b"192.0.2.7": b"1"}
    writer.update({V4: 2})  # the copy: the first inode is the spare now
    second = path.stat().st_ino
    other = ipaddress.ip_address("192.0.2.8")
    assert writer.update_in_place({entry_code(other): 3}) is True
    assert path.stat().st_ino == first and spare.stat().st_ino == second
    assert records(path) == {b"192.0.2.7": b"2", b"192.0.2.8": b"3"}
    reader = db.DB()  # an MTA still reads the spare: it is left alone, and so is the map
    reader.open(str(spare), dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
    try:
        assert writer.update_in_place({entry_code(V4): None}) is False
        assert path.stat().st_ino == first and records(path) == {b"192.0.2.7": b"2", b"192.0.2.8": b"3"}
        writer.update({V4: None})  # so the change goes to a copy
        assert path.stat().st_ino not in (first, second) and records(path) == {b"192.0.2.8": b"3"}
    finally:
        reader.close()
    shutil.copy(path, tmp_path / "other")  # someone else's map takes the name: not ours to update
    os.rename(tmp_path / "other", path)
    assert writer.update_in_place({entry_code(V4): 4}) is False
    assert records(path) == {b"192.0.2.8": b"3"}


def test_a_full_write_drops_the_spare(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    writer.write({V4: 1})
    writer.update({V4: 2})
    writer.write({V6: 5})
    assert sorted(os.listdir(tmp_path)) == ["dracd.db"]
    writer.update({V4: 3})
    writer.update({V4: 4})
    assert records(path) == {b"2001:db8::7": b"5", b"192.0.2.7": b"4"}


def test_a_restart_adopts_a_map_exactly_as_it_would_write_it(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    entries = {V4: 1, V6: 2, ipaddress.ip_network("2001:db8::/64"): 3}
    open_map("btree", path, KeyStyle()).write(entries)
    inode = path.stat().st_ino
    again = open_map("btree", path, KeyStyle())
    assert again.read() == entries and again.adopt()
    again.update({V4: None})  # incremental from the adopted map: a copy, the old inode kept
    assert records(path) == {b"2001:db8::7": b"2", b"2001:db8:0:0": b"3", b"2001:db8:": b"3"}
    assert (tmp_path / ".dracd.db.spare").stat().st_ino == inode


@pytest.mark.parametrize(("kind", "style", "extra"), [
    ("btree", KeyStyle(nul=True), None),                # other NUL style
    ("hash", KeyStyle(), None),                         # other database type
    ("btree", KeyStyle(ipv6=Ipv6Keys.BOTH), None),      # IPv6 keys missing their second form
    ("btree", KeyStyle(), (b"unknown", b"1")),          # a foreign record
    ("btree", KeyStyle(), (b"192.0.2.7\0", b"1")),     # the same address in a second style
    ("btree", KeyStyle(), (b"::ffff:192.0.2.9", b"1")),  # an IPv4 address in IPv6 form
    ("btree", KeyStyle(), (b"192.0.2.9/32", b"1")),      # in CIDR form
    ("btree", KeyStyle(), (b"192.0.2.9", b"01")),        # a value not as written
])
def test_a_map_in_another_style_is_not_adopted(tmp_path: Path, kind: str, style: KeyStyle,
                                               extra: tuple[bytes, bytes] | None) -> None:
    path = tmp_path / "dracd.db"
    open_map("btree", path, KeyStyle()).write({V4: 1, V6: 2})
    if extra is not None:
        table = db.DB()
        table.open(str(path), dbtype=db.DB_BTREE)
        table.put(*extra)
        table.close()
    writer = open_map(kind, path, style)
    writer.read()
    assert not writer.adopt() and not writer.can_update()


def test_a_map_changed_after_reading_is_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "dracd.db"
    open_map("btree", path, KeyStyle()).write({V4: 1})
    writer = open_map("btree", path, KeyStyle())
    writer.read()
    open_map("btree", path, KeyStyle()).write({V4: 2})
    assert not writer.adopt()


@pytest.mark.parametrize("style", [KeyStyle(), KeyStyle(nul=True), KeyStyle(cidr=True),
                                   KeyStyle(nul=True, cidr=True, ipv6=Ipv6Keys.BOTH)])
def test_the_fast_full_write_writes_what_the_key_rules_say(tmp_path: Path, style: KeyStyle) -> None:
    entries = {V4: 5, V6: 6, ipaddress.ip_address("10.255.0.1"): 5, ipaddress.ip_network("198.51.100.0/24"): 7,
               ipaddress.ip_network("2001:db8::/64"): 8, ipaddress.ip_address("255.255.255.254"): 9}
    path = tmp_path / "dracd.db"
    open_map("btree", path, style).write(entries)
    expected = {key: style.value(expiry) for entry, expiry in entries.items() for key in style.keys(entry)}
    assert records(path) == expected
    assert list(records(path)) == sorted(expected)  # a btree dumps in key order


@pytest.mark.parametrize("durable", [True, False])
def test_in_place_and_copied_updates_always_read_back_exactly(tmp_path: Path, durable: bool) -> None:
    """The spare is updated through a Berkeley DB cache that knows files by the id
    stamped in them; a copy carries its source's id until it is given a new one. Mix
    copies (a reader holds the spare) with in-place updates, unflushed or not, and
    check every file against a model after every step, as a fresh reader sees it."""
    import random

    rng = random.Random(7)
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path, KeyStyle())
    model = {f"10.0.{i // 256}.{i % 256}": 1000 for i in range(3000)}
    writer.write({ipaddress.ip_address(key): value for key, value in model.items()})
    inodes = set()
    for step in range(60):
        changes: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None] = {}
        for _ in range(rng.randint(1, 40)):
            key = f"10.0.{rng.randint(0, 15)}.{rng.randint(0, 255)}"
            value = None if rng.random() < 0.3 else 2000 + step
            changes[ipaddress.ip_address(key)] = value
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        reader = None
        if step % 7 == 3 and (tmp_path / ".dracd.db.spare").exists():
            reader = db.DB()  # an MTA holds the spare: this update must copy
            reader.open(str(tmp_path / ".dracd.db.spare"), dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
        try:
            writer.update_codes({int(key): value for key, value in changes.items()}, durable)
        finally:
            if reader is not None:
                reader.close()
        inodes.add(path.stat().st_ino)
        assert records(path) == {key.encode(): str(value).encode() for key, value in model.items()}, f"step {step}"
        result = subprocess.run(["db5.3_verify", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    assert len(inodes) > 2, "no copy was ever made"


def test_a_reader_of_the_replaced_map_finds_it_changed_from_the_moment_of_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postfix's smtpd restarts before its next session once its open map has no name
    left or another mtime (in seconds). The old inode keeps a name as the spare, so its
    mtime must have moved before the new map takes the name, not after: a reader that
    checks in between would serve one more session from the replaced map (seen once in
    the Postfix end-to-end test: an expired address relayed)."""
    path = tmp_path / "dracd.db"
    writer = open_map("btree", path)
    writer.write({V4: 1})
    reader = os.open(path, os.O_RDONLY)  # what an MTA opened
    opened = os.fstat(reader)
    seen: list[bool] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        if Path(dst) == path:
            now = os.fstat(reader)
            seen.append(now.st_nlink == 0 or int(now.st_mtime) != int(opened.st_mtime))

    monkeypatch.setattr(os, "rename", rename)
    try:
        writer.update({V4: None})
        writer.update({ipaddress.ip_address("192.0.2.9"): 2})
    finally:
        os.close(reader)
    assert seen and all(seen), seen
