"""Berkeley DB btree/hash maps, as Postfix (btree:, hash:) and Sendmail read them.

The readers flock(2) the file and mmap it, so updating in place a file that
a reader has open crashes it when the file grows (DESIGN.md §3). So a
reader only ever sees a complete file that nobody changes any more: every
write puts a finished, fsynced file in place with rename(2); open MTA
sessions keep their old inode and the next session opens the new one.

Locks: the map is world-readable, so anyone may flock(2) it and keep the
lock, and a hung smtpd keeps its shared one; so dracd never waits for a
lock. Readers need none from us (a rename cannot change a file they have
open); the only use of the lock is to stay out of the way of writers that
update in place under LOCK_EX (postmap, makemap). dracd asks for LOCK_SH,
without waiting: it excludes those writers as LOCK_EX would, and readers'
shared locks cannot refuse it. Refused, someone holds LOCK_EX: a writer
or anyone at all. dracd then renames anyway (readers still see only whole
files) but leaves the locked inode alone (it is not kept as the spare,
someone may be writing into it), and reads or copies the map unlocked,
trusting what it read only if the map's identity (inode, size, mtime) did
not change meanwhile (Linux 6.13+ gives a file that was just stat()ed a
fine-grained mtime at its next write; before, only a change in a later
clock tick shows).

Where the new file comes from, cheapest first:
- the spare: the map's previous inode, kept under a hidden name. Once no
  process has it open (a write lease, F_SETLEASE, can only be taken on a
  file nobody else has open or mapped), it is brought up to date in place
  with the changes it lacks and renamed back in (it and the map trade names
  in one renameat2 RENAME_EXCHANGE; a link and two renames where the file
  system cannot): a commit costs its changes and two fsyncs, whatever the
  size of the map. As it keeps a name, a reader
  would not see that it was replaced by the inode losing its last link, so
  its mtime moves forward at the swap (all Postfix and Sendmail look at);
- a copy of the map we last wrote, with the changes applied (the spare is
  busy, or lags too far behind);
- a complete new file from the table (first write, or the map was replaced
  by someone else).

When the committer keeps a journal (dracd.publish.journal), an update need not be
durable by itself: the spare's pages are written through a private Berkeley
DB cache (memp_trickle writes them, nothing flushes them) and the rename is
not flushed either, which halves a commit. That cache knows a file by the
id Berkeley DB stamps into it, so a copy gets a new id (fileid_reset) before
it can ever become the spare: two files under one id would share pages.

A lone ADD's commit updates the spare on the event-loop thread (issue 21), so
that path opens nothing: the map and the spare, the two inodes that take
turns, stay open in the cache, one descriptor each. The spare's descriptor
takes the write lease (granted only if no other open file has the inode, ours
included, nor a mapping of it), the map's takes the lock and the mtime moves.
Any identity not as we left it, a failure, a full write or adopt() closes
them and drops the cache (whose dirty pages, once a file's handle is closed,
Berkeley DB writes by file name at close: so it writes them first, through
the open handles).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

try:
    from berkeleydb import db
except ImportError:  # Debian's python3-bsddb3: the same module under its old name
    from bsddb3 import db

from ...keys import HOSTS4, KeyStyle, code_entry, parse_key_code, parse_value
from ...ratelog import RateLimitedLog
from ..files import fsync_dir, unlink_quietly
from . import MapError, StaleMap

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    _renameat2.restype = ctypes.c_int

_DB_TYPES = {"btree": db.DB_BTREE, "hash": db.DB_HASH}
MAP_MODE = 0o644
_U32 = struct.Struct(">I")
#: Entry codes below this are IPv4 hosts (keys.entry_code).
#: Most changes the spare may lag behind; beyond that a copy is cheaper.
SPARE_MAX_PENDING = 4096
#: The private cache the spare is updated through: enough for the pages a commit touches.
CACHE_BYTES = 4 << 20
Records = dict[bytes, bytes | None]
#: What a read of the map found: entries, records skipped, whether all is as write() makes it.
_Scan = tuple[dict[int, int], int, bool]
#: How long a read of a map that changes under another process's LOCK_EX is tried again
#: (start-up only; a holder that changes nothing costs no wait), and how often.
READ_PATIENCE = 2.0
READ_PAUSE = 0.05


class BerkeleyMap:
    def __init__(self, path: Path, kind: str, style: KeyStyle) -> None:
        self.path = path
        self.kind = kind
        self.style = style
        #: (device, inode, size, mtime) of the map this writer last put in place.
        self._written: tuple[int, int, int, int] | None = None
        self._spare = path.with_name(f".{path.name}.spare")
        self._prev = path.with_name(f".{path.name}.prev")
        # The same as str, for the per-commit path (no pathlib there).
        self._path_s, self._spare_s, self._prev_s = str(path), str(self._spare), str(self._prev)
        #: The records the spare lacks (None: delete the key); None: there is no spare.
        self._spare_lacks: Records | None = None
        #: Identity of the map read() found to be exactly in this writer's style.
        self._as_written: tuple[int, int, int, int] | None = None
        self._env: db.DBEnv | None = None
        #: Berkeley DB handles held open in that cache, by (device, inode): the map's and the
        #: spare's at most (the two inodes take turns), so a commit opens no database.
        self._handles: dict[tuple[int, int], db.DB] = {}
        #: (device, inode, size, mtime) of the spare as this writer left it.
        self._spare_identity: tuple[int, int, int, int] | None = None
        #: Whether the last _install kept the replaced inode as the spare.
        self._spare_kept = False
        self._lock_log = RateLimitedLog(log)
        #: renameat2(RENAME_EXCHANGE) works here (until the file system says otherwise).
        self._exchange_works = True

    def write_codes(self, entries: Mapping[int, int]) -> None:
        # A million records: the loops below are what a full write costs in Python.
        value = {expiry: self.style.value(expiry) for expiry in set(entries.values())}
        if self.style.cidr:
            records = [(key, value[expiry]) for code, expiry in entries.items()
                       for key in self.style.code_keys(code)]
        else:
            # IPv4 hosts, most of any big table, in one pass at C speed; the rest by the rules.
            end, ntoa, pack = ("\0" if self.style.nul else ""), socket.inet_ntoa, _U32.pack
            records = [((ntoa(pack(code)) + end).encode(), value[expiry])
                       for code, expiry in entries.items() if code < HOSTS4]
            if len(records) < len(entries):
                records += [(key, value[expiry]) for code, expiry in entries.items() if code >= HOSTS4
                            for key in self.style.code_keys(code)]
        # Sorted keys fill a btree page after page instead of splitting pages.
        records.sort()

        def fill(table: db.DB) -> None:
            # The loop in C (starmap drained by a zero-length deque): 0.1 s less per million.
            collections.deque(itertools.starmap(table.put, records), maxlen=0)

        self._replace(fill, copy=False)
        # The old inode may be anyone's; start the spare afresh from the next update.
        self._forget()
        unlink_quietly(self._spare)

    def update_codes(self, changes: Mapping[int, int | None], durable: bool = True) -> None:
        records = self._records(changes)
        if self._in_place(records, durable):
            return
        self._replace(lambda table: _apply(table, records), copy=True)
        self._keep_spare(records)

    def update_in_place(self, changes: Mapping[int, int | None]) -> bool:
        """``update_codes(changes, durable=False)`` if the spare can take the changes in
        place, and True; else nothing is done and False (no spare yet, it lags too far,
        someone has it open, the map is not ours, updating it failed): then update_codes
        copies. Never copies the map, so it is cheap enough for the event-loop thread."""
        return self._in_place(self._records(changes), False)

    def _records(self, changes: Mapping[int, int | None]) -> Records:
        return {key: None if expiry is None else self.style.value(expiry)
                for code, expiry in changes.items() for key in self.style.code_keys(code)}

    def _in_place(self, records: Records, durable: bool) -> bool:
        lacks = self._spare_lacks
        if lacks is None or len(lacks) + len(records) > SPARE_MAX_PENDING:
            return False
        try:
            done = self._refresh_spare({**lacks, **records}, durable)
        except (OSError, db.DBError) as exc:
            log.info("cannot reuse %s (%s); copying the map instead", self._spare, _describe(exc))
            self._forget()
            return False
        if done:
            self._keep_spare(records)
        return done

    def _refresh_spare(self, records: Records, durable: bool) -> bool:
        """Bring the spare up to date in place and rename it over the map, if it can take
        the changes: nobody else has it open, it is as we left it and the map is ours.

        Once per commit (issue 21), so with what is known and held rather than more
        system calls: both inodes stay open in the private cache (_handles); the spare's
        handle takes the write lease, the map's the lock and the mtimes; identities come
        from what we set. Whatever is not as we left it, nothing held is trusted."""
        written, left = self._written, self._spare_identity
        if written is None or left is None:
            return False
        spare = self._handles.get(left[:2])
        if spare is None:  # (never by truth value: len() of a DB counts its records)
            spare = self._open(self._spare_s, left[:2])
            if spare is None:
                self._forget()
                return False
        fd = spare.fd()
        if not _nobody_else_has_open(fd):
            return False
        # Nobody has it open now, so nobody writes into it unseen: is it as we left it,
        # under its name? (postmap may have written into the inode it had locked)
        if _lidentity(self._spare_s) != left:
            self._forget()
            return False
        current = self._handles.get(written[:2])
        if current is None:  # the map was never opened (a copy): by name, as after a copy
            if _lidentity(self._path_s) != written:
                self._forget()
                return False
            self._write_spare(spare, records, durable)
            self._install(self._spare, durable)
            return True
        # The map's lock first, then its identity: it then stays as it is until we are done.
        map_fd = current.fd()
        try:
            fcntl.flock(map_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:  # someone holds LOCK_EX on it: as _install, it is let go
            locked = False
            self._warn_locked()
        self._spare_kept = False
        try:
            st = _lstat(self._path_s)
            ours = st is not None and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == written
            if st is not None and ours:
                self._write_spare(spare, records, durable)
                self._swap(map_fd, st, locked)
        finally:
            if locked:
                fcntl.flock(map_fd, fcntl.LOCK_UN)
        if not ours:
            self._forget()
            return False
        new = os.fstat(fd)
        self._written = (new.st_dev, new.st_ino, new.st_size, new.st_mtime_ns)
        # Kept, the map and the spare are the two inodes they were, the other way round: the
        # handles held are still theirs. Else that inode's pages are not to be trusted any
        # more (someone may be writing into it).
        if not self._spare_kept:
            self._forget()
        if durable:
            fsync_dir(self.path.parent)
        return True

    def _write_spare(self, spare: db.DB, records: Records, durable: bool) -> None:
        """``records`` into the held spare, every changed page written (flushed if ``durable``)."""
        _apply(spare, records)
        self._cache().memp_trickle(100)
        if durable:
            os.fdatasync(spare.fd())

    def _swap(self, map_fd: int, st: os.stat_result, locked: bool) -> None:
        """_install(self._spare) with the map open as ``map_fd`` (``st``: its lstat, taken
        under our lock if ``locked``): its mtimes set by fd, its new identity as set."""
        # As _install: the old map's mtime moves on before the swap and again after it.
        before = (st.st_atime_ns, st.st_mtime_ns + 1_000_000_000)
        kept = locked and self._exchange(map_fd, before)
        if not kept:
            if locked:
                try:
                    self._link_prev()
                    os.utime(map_fd, ns=before)
                    kept = True
                except OSError:  # not ours (fs.protected_hardlinks after a privilege drop)
                    unlink_quietly(self._prev)
            os.rename(self._spare_s, self._path_s)
            if kept:
                os.rename(self._prev_s, self._spare_s)
        if kept:
            mtime = st.st_mtime_ns + 2_000_000_000
            try:
                os.utime(map_fd, ns=(st.st_atime_ns, mtime))
                self._spare_identity = (st.st_dev, st.st_ino, st.st_size, mtime)
                self._spare_kept = True
            except OSError:  # not ours after all: let it go
                unlink_quietly(self._spare)

    def _link_prev(self) -> None:
        """Name the map's inode a second time, as the spare-to-be."""
        try:
            os.link(self._path_s, self._prev_s)
        except FileExistsError:  # left by a stop between the link and the rename
            unlink_quietly(self._prev)
            os.link(self._path_s, self._prev_s)

    def _exchange(self, map_fd: int, before: tuple[int, int]) -> bool:
        """The map's times set to ``before``, then it and the spare trade names in one
        renameat2(RENAME_EXCHANGE) (what a link and two renames do otherwise). False,
        nothing swapped, where the file system cannot (from then on) or the map is not ours."""
        if not self._exchange_works:
            return False
        try:
            os.utime(map_fd, ns=before)
            _exchange_names(self._spare_s, self._path_s)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                self._exchange_works = False
            elif exc.errno != errno.EPERM:
                raise
            return False
        return True

    def _open(self, path: str, key: tuple[int, int]) -> db.DB | None:
        """Open ``path`` in the private cache and hold it, if it is the file ``key``
        (device, inode); else None."""
        table = db.DB(self._cache())
        try:
            table.open(path, dbtype=_DB_TYPES[self.kind])
            st = os.fstat(table.fd())
        except BaseException:
            table.close(db.DB_NOSYNC)
            raise
        if (st.st_dev, st.st_ino) != key:
            table.close(db.DB_NOSYNC)
            return None
        self._handles[key] = table
        return table

    def _warn_locked(self) -> None:
        self._lock_log.warning("locked", "%s: another process holds flock(LOCK_EX) on it; going "
                               "on without waiting (that inode is not reused)", self.path)

    def _keep_spare(self, lacks: Records) -> None:
        """The previous map is the spare now, lacking the records just written (if it was kept)."""
        self._spare_lacks = lacks if self._spare_kept else None

    def _prune(self) -> None:
        """Close the handles of inodes that are neither the map nor the spare any more."""
        keep = {self._written[:2] if self._written else None,
                self._spare_identity[:2] if self._spare_kept and self._spare_identity else None}
        for key in [key for key in self._handles if key not in keep]:
            self._handles.pop(key).close(db.DB_NOSYNC)

    def _forget(self) -> None:
        """Trust nothing cached any more: no spare, no open handle, no cached page."""
        self._spare_lacks = None
        self._drop_cache()

    def _cache(self) -> db.DBEnv:
        if self._env is None:
            env = db.DBEnv()
            env.set_cachesize(0, CACHE_BYTES)
            # DB_PRIVATE: the cache lives in our memory, no region files beside the map.
            env.open(str(self.path.parent), db.DB_PRIVATE | db.DB_INIT_MPOOL | db.DB_CREATE)
            self._env = env
        return self._env

    def _drop_cache(self) -> None:
        """Close every held handle and forget every cached page (after a failure they
        may not match the files)."""
        handles, self._handles = self._handles, {}
        if self._env is not None and handles:
            # Closing the cache writes what is dirty in it (a failure half-way), and by file
            # name once a file's handle is closed: write it first, through the open handles,
            # to the inodes it belongs to (the spare that is given up).
            try:
                self._env.memp_trickle(100)
            except db.DBError:
                pass
        for table in handles.values():
            try:
                table.close(db.DB_NOSYNC)
            except db.DBError:
                pass
        if self._env is not None:
            try:
                self._env.close()
            except db.DBError:
                pass
            self._env = None

    def can_update(self) -> bool:
        return self._written is not None and self._written == _identity(self.path)

    def identity(self) -> tuple[int, int, int, int] | None:
        return self._written

    def _replace(self, fill: Callable[[db.DB], None], copy: bool) -> None:
        """Build the new map in a temporary file beside the map, then rename it in place."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            unlink_quietly(tmp)
            # O_EXCL|O_NOFOLLOW: never write through a planted file or symlink.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, MAP_MODE)
            try:
                os.fchmod(fd, MAP_MODE)
                if copy:
                    self._copy_current(fd)
                table = db.DB()
                try:
                    # Berkeley DB accepts an existing empty file as a new database.
                    table.open(str(tmp), dbtype=_DB_TYPES[self.kind], flags=db.DB_CREATE, mode=MAP_MODE)
                    fill(table)
                finally:
                    table.close()
                if copy:
                    self._cache().fileid_reset(str(tmp))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._install(tmp)
        except StaleMap:
            unlink_quietly(tmp)
            self._forget()
            raise
        except (OSError, db.DBError) as exc:
            unlink_quietly(tmp)
            self._written = None
            self._forget()
            raise MapError(f"cannot write {self.path}: {_describe(exc)}") from exc

    def _install(self, new: Path, durable: bool = True) -> None:
        """Rename ``new`` over the map; the map's inode stays as the spare."""
        self._spare_kept = False
        with self._try_lock() as locked:
            keep = False
            # Readers tell a replaced map by its open inode losing its last name or
            # changing mtime (Postfix: mtime differs, in seconds; Sendmail: mtime is later).
            # The old inode keeps a name as the spare, so its mtime moves on, its content
            # untouched: once before the new map takes the name (a reader checking right
            # after the rename must not find its map unchanged) and once after (for a
            # reader that opened it in between).
            if locked:  # else someone holds LOCK_EX on it: it may be a writer's, let it go
                try:
                    self._link_prev()
                    _later_mtime(self._prev)
                    keep = True
                except OSError:  # no map yet, or not ours (fs.protected_hardlinks after a privilege drop)
                    unlink_quietly(self._prev)
            if not keep and new != self._spare:
                unlink_quietly(self._spare)  # an older inode: it lacks more than this commit
            os.rename(new, self.path)
            if keep:
                os.rename(self._prev, self._spare)
                try:
                    self._spare_identity = _later_mtime(self._spare)
                    self._spare_kept = True
                except OSError:  # not ours after all: let it go
                    unlink_quietly(self._spare)
        self._written = _identity(self.path)
        self._prune()
        if durable:
            fsync_dir(self.path.parent)

    def _copy_current(self, out_fd: int) -> None:
        """Copy the map: under a shared lock if we get one at once, so no other writer is
        half-way through it; else trusted only if it is still the file we wrote."""
        with self._try_lock():
            if not self.can_update():
                raise StaleMap(f"{self.path} was changed by someone else")
            with open(self.path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                offset = 0
                while offset < size:
                    sent = os.sendfile(out_fd, src.fileno(), offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent
            if not self.can_update():
                raise StaleMap(f"{self.path} was changed by someone else while it was copied")

    def read_codes(self, verify: bool = False) -> dict[int, int]:
        self._as_written = None
        if not self.path.exists():
            return {}
        deadline = time.monotonic() + READ_PATIENCE
        while True:
            with self._try_lock() as locked:
                identity = _identity(self.path)
                try:
                    if verify:
                        _verify(self.path)
                    scan: _Scan | BaseException = self._scan()
                except (OSError, db.DBError) as exc:
                    scan = exc
                if locked or _identity(self.path) == identity:
                    break
            # Read unlocked, and changed meanwhile by whoever holds LOCK_EX: a writer at work.
            if time.monotonic() >= deadline:
                raise MapError(f"cannot read {self.path}: it kept changing under another process's lock")
            time.sleep(READ_PAUSE)
        if isinstance(scan, BaseException):
            raise MapError(f"cannot read {self.path}: {_describe(scan)}") from scan
        entries, skipped, ours = scan
        if skipped:
            log.warning("%s: ignored %d records that are not address keys with expiry values", self.path, skipped)
        if ours and not skipped and _db_type(self.path) == _DB_TYPES[self.kind]:
            self._as_written = identity
        return entries

    def _scan(self) -> _Scan:
        """The map's entries, how many records were skipped, and whether every record is
        what write() would put there for its entry."""
        entries: dict[int, int] = {}
        skipped = records = expected = 0
        ours = True
        plain4 = not self.style.cidr  # then an IPv4 host's key is its text, as inet_pton reads it
        for key, value in _records(self.path):
            records += 1
            try:
                code, expiry = parse_key_code(key), parse_value(value)
            except Exception:  # the parsers return None for junk; a bug must not stop a start
                log.debug("unreadable record %r: %r", key[:80], value[:80], exc_info=True)
                code = expiry = None
            if code is None or expiry is None:
                # A network's second Postfix key ("2001:db8:") comes back with its first.
                skipped += not key.rstrip(b"\0").endswith(b":")
                continue
            if ours:
                known = entries.get(code)
                if plain4 and code < HOSTS4:
                    expected += known is None
                    ours = key.endswith(b"\0") == self.style.nul and key.strip(b"0123456789.\0") == b""
                else:
                    keys = self.style.keys(code_entry(code))
                    expected += 0 if known is not None else len(keys)
                    ours = key in keys
                ours = ours and value == self.style.value(expiry if known is None else known)
            entries[code] = max(expiry, entries.get(code, 0))
        return entries, skipped, ours and records == expected

    def adopt(self) -> bool:
        """Take the map last read as our own if it is exactly what write() would make of
        its entries (then a restart needs no full rewrite)."""
        if self._as_written is None or self._as_written != _identity(self.path):
            return False
        self._written = self._as_written
        self._forget()
        unlink_quietly(self._spare)
        return True

    @contextmanager
    def _try_lock(self) -> Iterator[bool]:
        """flock(LOCK_SH) on the map, never waiting: True while held (or there is no map),
        False if another process holds LOCK_EX on it. Shared, it keeps out writers that
        take LOCK_EX (postmap, makemap) as well as LOCK_EX would, and no reader can refuse it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            if not locked:
                self._warn_locked()
            yield locked
        finally:
            os.close(fd)


def _apply(table: db.DB, records: Records) -> None:
    for key in sorted(records):
        value = records[key]
        if value is not None:
            table.put(key, value)
        elif table.exists(key):
            table.delete(key)


def _nobody_else_has_open(fd: int) -> bool:
    """Whether no other open file (any process's, ours included) has ``fd``'s file open
    or mapped: only then can a write lease be taken on it."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    except OSError:  # EAGAIN: someone has it open; EINVAL: no leases on this file system
        return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _lidentity(path: str) -> tuple[int, int, int, int] | None:
    """_identity of ``path`` itself (a symlink is not followed)."""
    st = _lstat(path)
    return None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    try:
        cursor = table.cursor()
        record = cursor.first()
        while record is not None:
            yield record
            record = cursor.next()
        cursor.close()
    finally:
        table.close()


def _verify(path: Path) -> None:
    """DBVerifyBadError if the file's pages do not make a whole database (a torn file
    can read as a shorter map without any error)."""
    db.DB().verify(str(path))


def _db_type(path: Path) -> int | None:
    table = db.DB()
    try:
        table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
        return int(table.get_type())
    except db.DBError:
        return None
    finally:
        table.close()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc.args[-1] if exc.args else exc)


def _exchange_names(a: str, b: str) -> None:
    """renameat2(a, b, RENAME_EXCHANGE): both names stay, their files trade places at once."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), a)
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), a)


def _later_mtime(path: Path) -> tuple[int, int, int, int]:
    """Move ``path``'s mtime a second on (the MTAs compare whole seconds); its identity then."""
    st = os.stat(path)
    mtime = st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, mtime))
    return st.st_dev, st.st_ino, st.st_size, mtime
