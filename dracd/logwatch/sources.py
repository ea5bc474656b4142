"""Where log records come from besides files: a syslog socket and journald.

The syslog socket is a UNIX datagram socket this program binds, for
rsyslog's omuxsock (``action(type="omuxsock" ...)``) or for programs
pointed at it directly. Whoever can write to it can claim any tag and PID,
so it is created mode 0600 (owner only); rsyslog, running as root, can
still write to it. Tags on this socket are exactly as trustworthy as its
writers.

journald is read through ``journalctl --follow --output=json`` (a
subprocess: no systemd bindings needed). There the PID is journald's
``_PID``, taken from the sender's kernel credentials, and ``executables``
can restrict records to senders whose ``_EXE`` is listed: a local user can
pick any SYSLOG_IDENTIFIER, but not run their program as /usr/sbin/ipop3d.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .record import LogRecord, parse_journal_entry, parse_syslog_datagram

log = logging.getLogger(__name__)

Emit = Callable[[LogRecord], None]
SOCKET_MODE = 0o600
RECEIVE_BUFFER = 1 << 20
#: journald's _COMM holds at most 15 characters (the kernel's TASK_COMM_LEN).
COMM_LENGTH = 15


class SocketInUse(OSError):
    """Another process is bound to the syslog socket path."""


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def datagram_received(self, data: bytes, addr: Any) -> None:
        record = parse_syslog_datagram(data)
        if record is None:
            log.debug("ignored a syslog datagram that is not one RFC 3164/5424 message: %r", data[:200])
            return
        self.emit(record)

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog socket: %s", exc)


def bind_syslog_socket(path: Path) -> socket.socket:
    """A datagram socket bound at ``path`` with mode 0600 from the start.

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
        os.chmod(staged, SOCKET_MODE)
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
    """Receives syslog datagrams at ``path`` and hands each record to ``emit``."""

    def __init__(self, path: Path, emit: Emit) -> None:
        self.path = path
        self.emit = emit
        self._transport: asyncio.DatagramTransport | None = None
        self._identity: tuple[int, int] | None = None

    async def start(self) -> None:
        sock = bind_syslog_socket(self.path)
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self.emit), sock=sock)
        log.info("listening for syslog datagrams on %s (mode %o)", self.path, stat.S_IMODE(info.st_mode))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
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
        command: Iterable[str] = ("journalctl",),
        restart_delay: float = 5.0,
    ) -> None:
        self.emit = emit
        self.programs = tuple(sorted(set(programs)))
        self.executables = frozenset(executables)
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
