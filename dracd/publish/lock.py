"""One dracd per map: exclusion that deleting a file cannot break.

``<map>.lock`` holds the pid and an flock for the daemon's lifetime. An admin
may take it for a stale pidfile and delete it while dracd runs; a second
dracd would then lock a new file and take the live journal for a crash's. So
the running dracd also holds flock(LOCK_EX) on its journal files (private,
mode 0600, so nobody else can open them to hold their lock and keep dracd
out), and a starting dracd that won the lock file still refuses to run while
any journal file is locked: a running dracd always has one.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from .maps import MapError

log = logging.getLogger(__name__)


class MapInUse(Exception):
    """Another dracd serves the same map."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def lock_map(path: Path) -> int:
    """Hold ``<map>.lock`` for the daemon's lifetime: a second dracd on the same
    map (say a mistaken ``dracd -i``) must fail before it touches the map.

    A clean stop removes the file while still holding its lock (:func:`unlock_map`),
    so a lock won on a file that is no longer at ``lock`` keeps nobody out: take the
    file that is there now instead."""
    lock = lock_path(path)
    while True:
        try:
            fd = _open_private(lock)
        except OSError as exc:
            raise MapError(f"cannot write {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MapInUse(f"{path} is in use by another dracd (pid {owner})") from None
        if _same_file(fd, lock):
            break
        os.close(fd)
    holder = journal_holder(path)
    if holder is not None:
        # The lock file was deleted under a running dracd: this one is ours, take it back out.
        unlock_map(path, fd)
        raise MapInUse(f"{path} is in use by another dracd: it holds the lock on {holder} "
                       f"({lock} was deleted while it ran)")
    try:
        with open(lock, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
    except OSError as exc:
        os.close(fd)
        raise MapError(f"cannot write {lock}: {exc.strerror}") from None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (held.st_dev, held.st_ino)


def unlock_map(path: Path, fd: int) -> None:
    """A clean stop: remove ``<map>.lock`` while its lock is still held (a dracd starting
    meanwhile either fails on the lock or, once it is released, finds the file gone and
    makes a new one), then release it, leaving only the map. When the file cannot be
    removed (``user:`` without the right to), it stays, harmless."""
    lock = lock_path(path)
    try:
        if _same_file(fd, lock):
            os.unlink(lock)
    except OSError as exc:
        log.debug("%s stays: %s", lock, exc.strerror)
    os.close(fd)


def _open_private(lock: Path) -> int:
    """``lock`` opened read-only (the lock never stops the file system from going read-only)
    and private: anyone who could open it could hold its flock while dracd is down and keep
    every start out. One that others may open (as older dracd versions left it) is replaced;
    whoever holds its flock keeps only the old inode."""
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(lock, flags, 0o600)
    info = os.fstat(fd)
    if info.st_mode & 0o077 or info.st_uid != os.geteuid():
        os.close(fd)
        os.unlink(lock)
        fd = os.open(lock, flags | os.O_EXCL, 0o600)
    return fd




def journal_holder(path: Path) -> Path | None:
    """The first journal file of ``path``'s map that a running dracd holds locked, if any."""
    for name in (f".{path.name}.journal.0", f".{path.name}.journal.1"):
        journal = path.with_name(name)
        try:
            fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return journal
        finally:
            os.close(fd)
    return None


def hold(path: Path) -> int:
    """flock(LOCK_EX) on a journal file dracd just created, held until release()."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd
