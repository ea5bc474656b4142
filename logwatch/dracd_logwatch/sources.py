"""Where log records come from besides files: a syslog socket and journald.

The syslog socket is a UNIX datagram socket this program binds, in one of
two modes:

* plain (a path): for rsyslog's omuxsock (``action(type="omuxsock" ...)``).
  Whoever can write to it can claim any tag and PID, so it is created mode
  0600 (owner only; rsyslog, running as root, can still write to it). Tags
  on it are exactly as trustworthy as its writers, and a syslog daemon
  relays whatever any local user logged: forgeable.
* credential-checking (``executables``): for MRAs that log to it directly
  (their /dev/log bound to it). Mode 0666, like /dev/log, and SO_PASSCRED:
  the kernel attaches each sender's PID, uid and gid (SCM_CREDENTIALS),
  which only root could fake; a datagram counts only if
  ``/proc/PID/exe`` of that sender is a listed executable, and its record's
  PID is the kernel's, never the one in its tag. That is journald's
  ``_PID``/``_EXE``, with the same limits: the sender must still be alive
  when its datagram is read (a daemon is; ``logger`` may not be, and is
  refused either way), and reading another user's ``/proc/PID/exe`` needs
  root (or CAP_SYS_PTRACE).

journald is read through ``journalctl --follow --output=json`` (a
subprocess: no systemd bindings needed). There the PID is journald's
``_PID``, taken from the sender's kernel credentials, and ``executables``
can restrict records to senders whose ``_EXE`` is listed: a local user can
pick any SYSLOG_IDENTIFIER, but not run their program as /usr/sbin/ipop3d.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .record import LogRecord, parse_journal_entry, parse_syslog_datagram

log = logging.getLogger(__name__)

Emit = Callable[[LogRecord], None]
SOCKET_MODE = 0o600
#: The credential-checking socket: any local process may send (the kernel says who it is).
OPEN_SOCKET_MODE = 0o666
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size)
MAX_DATAGRAM = 65536
RECEIVE_BUFFER = 1 << 20
#: journald's _COMM holds at most 15 characters (the kernel's TASK_COMM_LEN).
COMM_LENGTH = 15


class SocketInUse(OSError):
    """Another process is bound to the syslog socket path."""


def sender_credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """(pid, uid, gid) from a datagram's SCM_CREDENTIALS, or None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(data)
            return pid, uid, gid
    return None


def executable(pid: int) -> str | None:
    """The file process ``pid`` runs, as the kernel says (``/proc/PID/exe``); None if unknown.

    A binary replaced since it started reads ``PATH (deleted)``: only who may write
    PATH could have started it, so it still counts as PATH.
    """
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return exe.removesuffix(" (deleted)")


class _Receiver:
    """Reads the socket when it is readable; checks senders when given executables."""

    def __init__(self, sock: socket.socket, emit: Emit, executables: frozenset[str],
                 users: frozenset[int] = frozenset()) -> None:
        self.sock = sock
        self.emit = emit
        self.executables = executables
        self.users = users

    def readable(self) -> None:
        for _ in range(256):  # then let the loop breathe
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("syslog socket: %s", exc)
                return
            self.received(data, ancillary)

    def received(self, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> None:
        record = parse_syslog_datagram(data)
        if record is None:
            log.debug("ignored a syslog datagram that is not one RFC 3164/5424 message: %r", data[:200])
            return
        if self.executables:
            credentials = sender_credentials(ancillary)
            if credentials is None:
                log.debug("ignored a syslog datagram without sender credentials: %r", data[:200])
                return
            pid, uid, _ = credentials
            exe = executable(pid)
            if exe not in self.executables:
                log.debug("ignored a syslog datagram of %s from PID %d (uid %d, %s): not a listed executable",
                          record.program, pid, uid, exe or "executable unknown")
                return
            if self.users and uid not in self.users:
                log.debug("ignored a syslog datagram of %s from PID %d (%s): uid %d not listed", record.program,
                          pid, exe, uid)
                return
            record = dataclasses.replace(record, pid=pid, exe=exe, uid=uid)
        self.emit(record)


def bind_syslog_socket(path: Path, mode: int = SOCKET_MODE) -> socket.socket:
    """A datagram socket bound at ``path`` with ``mode`` (0600 by default) from the start.

    It is bound in a private directory, chmod-ed, then renamed into place,
    so the path never exists with a wider mode (and the process umask,
    shared with every thread, is left alone). A stale socket nobody
    listens on is replaced; a live one is an error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            pass
        else:
            raise SocketInUse(f"{path}: another process is bound to this syslog socket")
        finally:
            probe.close()
    elif path.exists():
        raise FileExistsError(f"{path}: exists and is not a socket")
    private = Path(tempfile.mkdtemp(prefix=".logwatch-", dir=path.parent))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        staged = private / "s"
        sock.bind(str(staged))
        os.chmod(staged, mode)
        os.replace(staged, path)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return sock


class SyslogSocket:
    """Receives syslog datagrams at ``path`` and hands each record to ``emit``; with
    ``executables``, only those whose sender runs a listed executable (see the module docstring)."""

    def __init__(self, path: Path, emit: Emit, executables: Iterable[str] = (), users: Iterable[int] = ()) -> None:
        self.path = path
        self.emit = emit
        self.executables = frozenset(executables)
        self.users = frozenset(users)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._identity: tuple[int, int] | None = None

    async def start(self) -> None:
        checking = bool(self.executables)
        sock = bind_syslog_socket(self.path, OPEN_SOCKET_MODE if checking else SOCKET_MODE)
        try:
            if checking:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sock.fileno(), _Receiver(sock, self.emit, self.executables, self.users).readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        log.info("listening for syslog datagrams on %s (mode %o%s)", self.path, stat.S_IMODE(info.st_mode),
                 f"; senders running {', '.join(sorted(self.executables))} only" if checking else "")

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        # Remove the path only if it is still ours (not a successor's socket).
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)


class Journal:
    """Follows journald through ``journalctl``, restarting it if it exits."""

    def __init__(
        self,
        emit: Emit,
        *,
        programs: Iterable[str] = (),
        executables: Iterable[str] = (),
        users: Iterable[int] = (),
        command: Iterable[str] = ("journalctl",),
        restart_delay: float = 5.0,
    ) -> None:
        self.emit = emit
        self.programs = tuple(sorted(set(programs)))
        self.executables = frozenset(executables)
        self.users = frozenset(users)
        self.command = tuple(command)
        self.restart_delay = restart_delay

    def arguments(self) -> list[str]:
        """The journalctl command line: from now on, only the programs the rules read."""
        args = [*self.command, "--follow", "--output=json", "--lines=0", "--quiet"]
        if self.programs:
            args += [f"SYSLOG_IDENTIFIER={program}" for program in self.programs]
            args += ["+", *(f"_COMM={program[:COMM_LENGTH]}" for program in self.programs)]
        return args

    def handle(self, line: bytes) -> None:
        """One line of journalctl's output."""
        try:
            entry = json.loads(line)
        except ValueError:
            log.debug("journalctl: not JSON: %r", line[:200])
            return
        record = parse_journal_entry(entry) if isinstance(entry, dict) else None
        if record is None:
            return
        if self.executables and record.exe not in self.executables:
            log.debug("ignored a journal entry of %s from %s: executable not listed", record.program, record.exe)
            return
        if self.users and record.uid not in self.users:
            log.debug("ignored a journal entry of %s from %s: uid %s not listed", record.program, record.exe,
                      record.uid)
            return
        self.emit(record)

    async def run(self) -> None:
        """Run journalctl until cancelled."""
        while True:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.arguments(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, limit=1 << 20,
                )
            except OSError as exc:
                log.error("cannot run %s (retrying in %g s): %s", self.command[0], self.restart_delay, exc)
                await asyncio.sleep(self.restart_delay)
                continue
            try:
                await self._read(process)
                code = await process.wait()
                detail = (await process.stderr.read()).decode(errors="replace").strip() if process.stderr else ""
                log.warning("journalctl exited (status %s)%s; restarting in %g s", code,
                            f": {detail}" if detail else "", self.restart_delay)
            finally:
                if process.returncode is None:
                    process.terminate()
                    with contextlib.suppress(ProcessLookupError):
                        await asyncio.shield(process.wait())
            await asyncio.sleep(self.restart_delay)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over the limit: skip it
                log.debug("journalctl: skipped an entry over 1 MiB")
                continue
            if not line:
                return
            self.handle(line)
