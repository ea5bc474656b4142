"""The lone in-place update holds both inodes open (issue 21): what it holds must never
hide a reader from the write lease, nor let a page cached from a file someone else
changed be written anywhere."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from berkeleydb import db

from dracd.keys import KeyStyle, entry_code
from dracd.publish.maps import StaleMap, berkeley
from dracd.publish.maps.berkeley import BerkeleyMap
from tests.fixtures.maps import EntryMap, open_map
from tests.fixtures.server import map_keys as records

pytestmark = pytest.mark.unit

V4 = ipaddress.ip_address("192.0.2.7")
#: Holds the file open; at the end, what it reads there now.
OPEN = ("fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "ready()\n"
        "seen = os.pread(fd, os.fstat(fd).st_size + 1, 0)\n")
#: An MTA's way: mmap the file, and the descriptor may be closed at once.
MMAP = ("fd = os.open(sys.argv[1], os.O_RDONLY); m = mmap.mmap(fd, 0, prot=mmap.PROT_READ); os.close(fd)\n"
        "ready()\n"
        "seen = m[:]\n")


@contextmanager
def reader(path: Path, how: str) -> Iterator[None]:
    """Another process that has ``path``'s inode open (or mapped) until the block ends;
    it must then still find there exactly what the file held when it opened it."""
    before = digest(path)
    code = ("import hashlib, mmap, os, sys\n"
            "def ready():\n    print('ready', flush=True); sys.stdin.read()\n"
            f"{how}print(hashlib.sha256(seen).hexdigest(), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield
    finally:
        out, _ = proc.communicate(timeout=10)
    assert out.strip() == before, "the file a reader had open was changed"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fds_on(path: Path) -> int:
    """How many of this process's descriptors have ``path``'s inode open."""
    inode = path.stat().st_ino
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += st.st_ino == inode and st.st_dev == path.stat().st_dev
    return count


def warm(tmp_path: Path, kind: str = "btree") -> tuple[EntryMap, dict[bytes, bytes]]:
    """A writer whose map and spare have both been updated in place (both held open)."""
    path = tmp_path / "dracd.db"
    writer = open_map(kind, path, KeyStyle())
    writer.write({ipaddress.ip_address(f"10.0.0.{i}"): 1000 for i in range(1, 200)})
    writer.update({V4: 1})  # a copy: the first inode becomes the spare
    model = records(path)
    for i in range(4):
        address = ipaddress.ip_address(f"198.51.100.{i}")
        assert writer.update_in_place({entry_code(address): 2000 + i})
        model[str(address).encode()] = str(2000 + i).encode()
    assert records(path) == model
    return writer, model


def add(writer: BerkeleyMap, model: dict[bytes, bytes], address: str, expiry: int, *, in_place: bool) -> None:
    code = entry_code(ipaddress.ip_address(address))
    assert writer.update_in_place({code: expiry}) is in_place
    if not in_place:
        writer.update_codes({code: expiry}, durable=False)
    model[address.encode()] = str(expiry).encode()
    assert records(writer.path) == model


def verify(path: Path) -> None:
    result = subprocess.run(["db5.3_verify", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", ["btree", "hash"])
def test_lone_updates_open_no_database_and_hold_one_descriptor_per_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    writer, model = warm(tmp_path, kind)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    inodes = {path.stat().st_ino, spare.stat().st_ino}
    opened: list[object] = []
    real = db.DB

    def counting(*args: object) -> object:
        if args:  # in our private cache (a fresh reader's open, as records() does, has no env)
            opened.append(args)
        return real(*args)

    monkeypatch.setattr(db, "DB", counting)
    size = path.stat().st_size
    for i in range(300):  # enough to grow the files
        add(writer, model, f"203.0.{i // 250}.{i % 250}", 3000 + i, in_place=True)
        assert {path.stat().st_ino, spare.stat().st_ino} == inodes
        # Held open, yet the lease is ours to take: one descriptor each, no page left dirty.
        assert fds_on(path) == 1 and fds_on(spare) == 1
        assert writer._env is not None and writer._env.memp_stat()[0]["page_dirty"] == 0
    assert opened == [] and path.stat().st_size > size
    monkeypatch.undo()
    verify(path)
    verify(spare)


@pytest.mark.parametrize("how", [OPEN, MMAP], ids=["open", "mmap-then-close"])
def test_a_reader_of_the_held_spare_makes_the_lone_update_copy_until_it_goes(tmp_path: Path, how: str) -> None:
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    held_inode = spare.stat().st_ino
    with reader(spare, how):
        add(writer, model, "203.0.113.1", 3001, in_place=False)  # a copy: the spare is read
        for i in range(2, 8):  # the copy's old map is the spare now: in place again, never the held one
            add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
            assert held_inode not in (path.stat().st_ino, spare.stat().st_ino)
    # The held inode lost its name and was never written while anyone read it.
    add(writer, model, "192.0.2.7", 5, in_place=True)


@pytest.mark.parametrize("how", [OPEN, MMAP], ids=["open", "mmap-then-close"])
def test_a_reader_of_the_map_keeps_it_from_being_reused_once_it_is_the_spare(tmp_path: Path, how: str) -> None:
    """What an MTA does: it opens the map; the next commit makes that inode the spare."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    with reader(path, how):
        read_inode = path.stat().st_ino
        add(writer, model, "203.0.113.1", 3001, in_place=True)  # the other inode takes it
        assert spare.stat().st_ino == read_inode
        add(writer, model, "203.0.113.2", 3002, in_place=False)  # the one read is not touched
        assert read_inode != path.stat().st_ino
        for i in range(3, 6):
            add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
        assert spare.stat().st_ino != read_inode
    # The reader gone, the two inodes in use take turns in place again.
    inodes = set()
    for i in range(6, 12):
        add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
        inodes.add(path.stat().st_ino)
    assert len(inodes) == 2
    verify(path)


def test_the_held_spare_is_not_written_while_read_and_reuse_resumes_after(tmp_path: Path) -> None:
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    with reader(spare, MMAP):
        before = digest(spare)
        assert writer.update_in_place({entry_code(V4): 9}) is False
        assert digest(spare) == before and records(path) == model  # nothing at all was done
    # Once the reader left, the very same spare is reused in place.
    spare_inode = spare.stat().st_ino
    add(writer, model, "192.0.2.7", 9, in_place=True)
    assert path.stat().st_ino == spare_inode


@pytest.mark.parametrize("copy", [True, False], ids=["copy-of-our-map", "another-file"])
def test_a_map_renamed_over_ours_gives_stalemap_and_nothing_cached_reaches_any_file(
    tmp_path: Path, copy: bool
) -> None:
    """A byte copy of our map carries our file id: the worst case for a cache that knows
    files by it. Neither it nor our spare may receive a page from the cache."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    other = tmp_path / "other.db"
    if copy:
        shutil.copy(path, other)
        table = db.DB()
        table.open(str(other), dbtype=db.DB_BTREE)
        table.put(b"192.0.2.99", b"77")
        table.close()
    else:
        table = db.DB()
        table.open(str(other), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
        table.put(b"unknown", b"1")
        table.close()
    os.rename(other, path)
    theirs, ours = digest(path), digest(spare)
    os.link(path, tmp_path / "theirs")  # to look at it once it lost the map's name
    assert not writer.can_update()
    assert writer.update_in_place({entry_code(V4): 5}) is False
    with pytest.raises(StaleMap):
        writer.update_codes({entry_code(V4): 5}, durable=False)
    assert digest(path) == theirs and digest(spare) == ours and writer._handles == {}
    # The full write that follows starts afresh; in place resumes after it, exactly.
    writer.write({ipaddress.ip_address("10.1.0.1"): 1})
    expected = {b"10.1.0.1": b"1"}
    writer.update({V4: 2})
    expected[b"192.0.2.7"] = b"2"
    for i in range(4):
        add(writer, expected, f"203.0.113.{i}", 3000 + i, in_place=True)
    writer._drop_cache()
    assert digest(tmp_path / "theirs") == theirs
    verify(path)
    verify(spare)


def postmap_write(path: Path, key: bytes, value: bytes) -> None:
    """What postmap does in another process: LOCK_EX on the file, write in place, unlock."""
    code = ("import fcntl, os, sys\nfrom berkeleydb import db\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "t = db.DB(); t.open(sys.argv[1], dbtype=db.DB_BTREE); t.put(sys.argv[2].encode(), sys.argv[3].encode())\n"
            "t.close(); fcntl.flock(fd, fcntl.LOCK_UN); os.close(fd)\n")
    subprocess.run([sys.executable, "-c", code, str(path), key.decode(), value.decode()], check=True, timeout=30)


def test_a_map_postmap_wrote_into_gives_stalemap_and_is_left_as_it_wrote_it(tmp_path: Path) -> None:
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    postmap_write(path, b"192.0.2.99", b"77")  # same inode, same file id, pages we hold cached
    theirs, ours = digest(path), digest(spare)
    assert writer.update_in_place({entry_code(V4): 5}) is False
    with pytest.raises(StaleMap):
        writer.update_codes({entry_code(V4): 5}, durable=False)
    assert digest(path) == theirs and digest(spare) == ours
    assert records(path) == {**model, b"192.0.2.99": b"77"}
    verify(path)


def test_a_held_spare_postmap_wrote_into_is_not_reused(tmp_path: Path) -> None:
    """postmap waited for its lock on the map and got it on the inode that became the
    spare meanwhile; we hold that inode open with its pages cached."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    written = spare.stat().st_ino
    postmap_write(spare, b"198.51.100.200", b"9")
    kept = tmp_path / "kept"  # a name of our own for that inode (a link opens nothing)
    os.link(spare, kept)
    theirs = digest(kept)
    add(writer, model, "192.0.2.7", 6, in_place=False)  # a copy
    assert b"198.51.100.200" not in records(path)
    assert written not in (path.stat().st_ino, spare.stat().st_ino)  # that inode was let go
    for i in range(4):
        add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
    writer._drop_cache()  # what the cache still holds, written out now, goes nowhere near it
    assert digest(kept) == theirs
    verify(path)
    verify(spare)


def test_a_map_locked_by_a_writer_is_swapped_but_not_kept(tmp_path: Path) -> None:
    """LOCK_EX on the map during a lone update: the spare still goes in (readers see whole
    files), the locked inode is let go and nothing it held stays cached."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: it conflicts as another process's would
        locked = os.fstat(fd).st_ino
        os.link(path, tmp_path / "locked")
        add(writer, model, "203.0.113.1", 3001, in_place=True)
        assert path.stat().st_ino != locked and not spare.exists()
        assert writer._handles == {} and writer._env is None
        theirs = digest(tmp_path / "locked")  # the writer's to change from here on, never ours
    finally:
        os.close(fd)
    add(writer, model, "203.0.113.2", 3002, in_place=False)  # no spare: a copy
    for i in range(3, 7):
        add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
    writer._drop_cache()
    assert digest(tmp_path / "locked") == theirs
    verify(path)


def test_a_failure_half_way_drops_everything_held_and_the_next_update_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The changes are in cached pages, not yet written, when the update fails: the map
    is left alone and the spare, which may have them, is never reused."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    real = berkeley._apply

    def failing(table: db.DB, changes: berkeley.Records) -> None:
        real(table, changes)
        raise db.DBNoSpaceError(28, "No space left on device")

    monkeypatch.setattr(berkeley, "_apply", failing)
    before, inodes = digest(path), (path.stat().st_ino, spare.stat().st_ino)
    assert writer.update_in_place({entry_code(V4): 8}) is False
    assert writer._handles == {} and writer._env is None
    assert digest(path) == before and (path.stat().st_ino, spare.stat().st_ino) == inodes
    monkeypatch.setattr(berkeley, "_apply", real)
    add(writer, model, "192.0.2.7", 8, in_place=False)
    for i in range(4):
        add(writer, model, f"203.0.113.{i}", 3000 + i, in_place=True)
    verify(path)
    verify(spare)


@pytest.mark.parametrize("durable", [True, False])
def test_held_handles_survive_restarts_of_the_writer_object(tmp_path: Path, durable: bool) -> None:
    """A second writer (a restart) adopts the map; the first one's handles play no part."""
    writer, model = warm(tmp_path)
    again = open_map("btree", writer.path, KeyStyle())
    again.read()
    assert again.adopt()
    for i in range(5):
        code = entry_code(ipaddress.ip_address(f"203.0.113.{i}"))
        again.update_codes({code: 3000 + i}, durable)
        model[f"203.0.113.{i}".encode()] = str(3000 + i).encode()
        assert records(again.path) == model
    verify(again.path)


def test_the_swap_is_one_name_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The updated spare and the map trade names in one renameat2(RENAME_EXCHANGE) (issue 21:
    no link, no second rename); the old map is the spare, its mtime moved on, as before."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    calls: list[str] = []
    monkeypatch.setattr(berkeley.os, "link", lambda *a: calls.append("link"))
    monkeypatch.setattr(berkeley.os, "rename", lambda *a: calls.append("rename"))
    for i in range(3):
        old = path.stat()
        add(writer, model, f"203.0.113.{i}", 4000 + i, in_place=True)
        assert spare.stat().st_ino == old.st_ino and spare.stat().st_mtime_ns > old.st_mtime_ns
        assert path.stat().st_mtime_ns < spare.stat().st_mtime_ns  # readers of the old one see a change
    assert calls == [] and not (tmp_path / ".dracd.db.prev").exists()


def test_without_name_exchange_the_swap_links_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system or C library without RENAME_EXCHANGE (EINVAL, ENOSYS): the link and two
    renames, from then on, with the same end: the old map is the spare."""
    writer, model = warm(tmp_path)
    path, spare = writer.path, tmp_path / ".dracd.db.spare"
    tries: list[str] = []

    def refuse(a: str, b: str) -> None:
        tries.append(a)
        raise OSError(22, "Invalid argument", a)

    monkeypatch.setattr(berkeley, "_exchange_names", refuse)
    for i in range(3):
        old = path.stat().st_ino
        add(writer, model, f"203.0.113.{i}", 4000 + i, in_place=True)
        assert spare.stat().st_ino == old
    assert len(tries) == 1 and not (tmp_path / ".dracd.db.prev").exists()
