"""What init scripts see of the running daemon: its name and its pidfile.

A console script runs as ``/usr/bin/python3 /usr/sbin/rpc.dracd ARGS``. The
kernel names such a process (comm, 15 bytes) after the script, which is what
``pgrep -x`` and ``start-stop-daemon --name`` match; but argv[0] is the
interpreter and the executable is python, so sysvinit's plain ``pidof
rpc.dracd`` (argv[0], its basename, or the executable) found nothing where it
found the C daemon; only ``pidof -x`` did (it also tries argv[1] when comm
equals its basename). ``show_name`` sets comm (also when started as
``python3 /usr/sbin/rpc.dracd``, which the kernel would name python3) and
rewrites argv in place to what the C daemon showed, ``/usr/sbin/rpc.dracd
ARGS``: Python keeps its own copies of argv, so the original strings, the
kernel's arg_start..arg_end (/proc/self/stat fields 48-49), are free to
overwrite, as setproctitle(3) does. The new text is shorter (the interpreter
is dropped) and padded with NULs. ``start-stop-daemon --exec`` compares the
executable, which stays python: init scripts match the name or the pidfile.

With ``user:``, the root helper that outlives the daemon to clean up is a
fork of it; ``show_helper`` renames it, so the tools find the daemon alone.

The pidfile is opened as the process starts (as root, before ``user:`` drops
privileges, so it may live in /run) with O_NOFOLLOW and must be a regular
file of ours with one link, so a planted symlink or hard link cannot make
root write elsewhere. The pid goes in once the daemon serves; a clean stop
removes the file. With ``user:`` the daemon can no longer remove it from a
root-owned directory: it empties it, and the root helper removes it.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from pathlib import Path

PR_SET_NAME = 15
#: comm holds 15 bytes and a NUL.
COMM_LENGTH = 15


def set_comm(name: str) -> bool:
    """prctl(PR_SET_NAME): what ``pgrep -x`` and ``start-stop-daemon --name`` see."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl
        return bool(libc.prctl(PR_SET_NAME, name.encode()[:COMM_LENGTH], 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def show_argv(argv: list[str]) -> bool:
    """Make /proc/self/cmdline read ``argv`` (argv[0] first), if it fits; False if not done."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49, counted from 1
        text = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
        if not start or len(text) > end - start:
            return False
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(text.ljust(end - start, b"\0"))
    except (OSError, IndexError, ValueError):
        return False
    return True


def show_name(prog: str) -> None:
    """Name the process ``prog`` the ways pidof, pgrep and start-stop-daemon look."""
    set_comm(prog)
    script = sys.argv[0]
    if Path(script).name == prog:
        try:
            with open("/proc/self/cmdline", "rb") as f:
                current = f.read().split(b"\0", 1)[0]
        except OSError:
            return
        if current != os.fsencode(script):
            show_argv(sys.argv)


def show_helper() -> None:
    """Name the root helper (privileges.py) so that nothing takes it for the daemon: pidof, pgrep -x
    and start-stop-daemon --name would otherwise count it, as a fork inherits comm and argv."""
    set_comm("dracd-helper")
    # A space in argv[0] makes pidof compare comm instead; the arguments stay for ps and pgrep -f.
    show_argv([f"{sys.argv[0]} (root helper)", *sys.argv[1:]]) or show_argv([f"{sys.argv[0]} (root helper)"])


def remove_left_pidfile(path: Path, pid: int) -> None:
    """The root helper's part, once daemon ``pid`` exited: remove the pidfile it could no longer
    remove as ``user:``, if it is still its own (empty or naming ``pid``), not a successor's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            text = os.read(fd, 64)
        finally:
            os.close(fd)
        if text.strip() in (b"", str(pid).encode()):
            os.unlink(path)
    except OSError:
        pass


class PidfileError(OSError):
    """The pidfile cannot be created safely."""


class Pidfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PidfileError(exc.errno, f"pidfile {path}: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
            os.close(fd)
            raise PidfileError(0, f"pidfile {path}: not a regular file of ours with one link; refusing to write it")
        self._fd = fd

    def write(self) -> None:
        """The serving process's pid, once it serves."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:  # no longer root: an empty pidfile reads as "not running"
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
