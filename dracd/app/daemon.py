"""The server's lifecycle: one ordered start, one ordered stop.

Start: allow list, table reloaded from the map, the map written (so it
exists before any MTA needs it), sockets bound, rpcbind registration,
expiry. Stop: close the sockets, let in-flight calls finish (bounded),
write the map a last time, unregister.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from dracclient.adminproto import DRACVERS_ADMIN

from ..config import Config, needs_restart
from ..config.hostpaths import allow_reason, map_reason
from ..keys import KeyStyle
from ..metrics import Metrics
from ..programs.admin import AdminService
from ..programs.dovecot import DovecotPolicy
from ..programs.drac import DracService, Settings
from ..programs.socketmap import SocketmapServer
from ..publish.commit import Committer
from ..publish.journal import Journal, JournalError
from ..publish.maps import MapError, MapWriter, open_writer, unsafe_directory
from ..relay.policy import load_allow
from ..relay.shared import SharedTable
from ..relay.table import Clock, RelayTable
from ..server.dispatch import Dispatcher
from ..server.registration import Registration, entries_for
from ..server.stream import RPC_RECORDS, StreamLimits, StreamServer, fit_descriptors
from ..server.transport import Listener, UdpServer, bind_listeners, bind_unix, serve_udp
from ..server.wrappers import from_setting as wrappers_from
from ..server.wrappers import name_patterns
from .privileges import PrivilegeError, RunAs, drop, resolve, start_guard
from .process import remove_left_pidfile
from .prometheus import Endpoint

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0
# Entries added while the expiry loop sleeps may expire before it would wake;
# a short tick bounds how late they leave the map, at the cost of a few idle wake-ups.
EXPIRY_TICK = 0.25
EXPIRY_BATCH = 512


def stream_limits(config: Config) -> StreamLimits:
    return StreamLimits(max_record=config.max_record, max_connections=config.max_connections,
                        idle_timeout=config.idle_timeout, record_timeout=config.record_timeout)


def key_style(config: Config) -> KeyStyle:
    return KeyStyle(nul=config.map.nul_terminated, cidr=config.map.cidr_keys, ipv6=config.map.ipv6_keys)


def unsafe_map_directory(config: Config) -> str | None:
    """Why the map's directory is unsafe (others could replace the map), unless the config allows it."""
    unsafe = unsafe_directory(config.map.path)
    if unsafe is None or config.map.allow_unsafe_directory:
        return None
    return (f"{unsafe} is writable by others without the sticky bit, so they could replace "
            f"{config.map.path}; fix its mode or set map.allow_unsafe_directory")


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


class Daemon:
    #: Dovecot's auth policy endpoint (dovecot_policy:), once started.
    dovecot: DovecotPolicy | None = None

    def __init__(self, config: Config, *, clock: Clock = time.time) -> None:
        self.config = config
        self.table = RelayTable(clock)
        self.metrics = Metrics()
        self.metrics.table_entries.read = self.table.__len__
        self.writer: MapWriter = open_writer(config.map.type, config.map.path, key_style(config))
        self.journal = Journal(config.map.path)
        self.committer = Committer(self.table, self.writer, self.journal, self.metrics)
        log.info("map %s: %s", config.map.path, map_reason(config.map.path))
        log.info("%s", allow_reason(config.allow_file, config.map.path))
        wrappers, why = wrappers_from(config.tcp_wrappers)
        log.info("%s", why)
        for problem in name_patterns() if wrappers is not None else ():
            log.warning("%s", problem)
        self.settings = Settings.from_config(config, load_allow(config.allow_path), wrappers)
        self.service = DracService(self.table, self.committer, self.settings, self.metrics)
        self.shared = SharedTable(config.redis, self.table, self.committer) if config.redis is not None else None
        self.service.shared = self.shared
        self.admin = AdminService(self.service, str(config.map.path), config.map.type)
        self.dispatcher = Dispatcher(self.metrics)
        self.service.register(self.dispatcher, config.program)
        self.admin.register(self.dispatcher, config.program)
        self.listeners: list[Listener] = []
        self.registration: Registration | None = None
        self._streams: list[StreamServer] = []
        self._udp: list[UdpServer] = []
        self._expiry_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._lock_fd: int | None = None
        self._locked_map = config.map.path
        self._admin_sock: socket.socket | None = None
        self._guard_fd: int | None = None
        self._endpoint: Endpoint | None = None
        self.socketmap: SocketmapServer | None = None
        #: Resolved now so a bad user or group fails before anything is bound or written.
        self.run_as = resolve(config.user, config.group) if config.user is not None else None

    @property
    def port(self) -> int:
        return self.listeners[0].port

    def load_table(self) -> None:
        """Reload the entries of the previous run, unless told to start empty (-i)."""
        if self.config.initialize:
            log.info("starting with an empty table (-i)")
            return
        if self.journal.exists():
            try:
                entries = self.journal.recover()
            except JournalError as exc:
                log.error("%s; starting from %s instead", exc, self.config.map.path)
            else:
                log.warning("dracd did not stop cleanly: %d entries recovered from its journal; "
                            "rewriting %s", len(entries), self.config.map.path)
                self.table.load(self._with_other_writers(entries))
                expired = self.table.expire()
                log.info("%d entries after recovery (%d already expired)", len(self.table), len(expired))
                return
        self.table.load(self.writer.read_codes())
        if self.writer.adopt():
            self.committer.adopted()
        expired = self.table.expire()
        log.info("reloaded %d entries from %s (%d already expired)",
                 len(self.table), self.config.map.path, len(expired))

    def _with_other_writers(self, journaled: dict[int, int]) -> dict[int, int]:
        """The table to restart with after a crash. The journal belongs to the map dracd
        last put in place: over that map (or one the crash left torn or missing) it is
        replayed alone, so what dracd deleted stays deleted (the map may lack acknowledged
        ADDs: the journal has them all). A readable map that is another file (legacy
        rpc.dracd ran on it meanwhile, or a rename-style writer, or it was set back to an
        older copy) may hold ADDs that only its writer acknowledged: then every entry of
        that map stays and the journal's are added, also those the other writer deleted
        (an acknowledged ADD is never lost; expiry removes it in time); where both have
        an entry, the later expiry wins."""
        path = self.config.map.path
        if self.journal.holds_last_written_map() or not path.exists():
            return journaled
        try:
            theirs = self.writer.read_codes(verify=True)
        except MapError as exc:
            log.warning("%s; taken as torn by the crash: rebuilding it from the journal alone", exc)
            return journaled
        merged = dict(theirs)
        lacking = later = 0
        for code, expiry in journaled.items():
            known = merged.get(code)
            if known is None or known < expiry:
                lacking += known is None
                later += known is not None
                merged[code] = expiry
        only_theirs = sum(1 for code in theirs if code not in journaled)
        log.warning("%s changed by another writer since dracd's last write (or set back to another copy): "
                    "kept its %d entries (%d not in the journal) and merged %d entries from the journal "
                    "(%d it lacked, %d with a later expiry)", path, len(theirs), only_theirs,
                    lacking + later, lacking, later)
        return merged

    async def start(self, on_ready: Callable[[], None] | None = None) -> None:
        unsafe = unsafe_map_directory(self.config)
        if unsafe is not None:
            raise MapError(unsafe)
        self._lock_fd = lock_map(self.config.map.path)
        self._locked_map = self.config.map.path  # a reload may name another map: this one is held
        try:
            await self._start()
        except BaseException:
            await self._close_listeners()
            if self.shared is not None:
                await self.shared.close()
            await self.committer.close()
            self._release_lock()
            raise
        if on_ready is not None:
            on_ready()

    async def _start(self) -> None:
        self.load_table()
        # A map reloaded just as we would write it needs only the entries expired meanwhile.
        self.committer.write_now(full=False)
        self.committer.start()
        if self.shared is not None:
            await self.shared.start()
            # The shared entries reach the map before any MTA is told we are ready.
            await self.committer.commit()
        self.listeners = bind_listeners(self.config.listen, self.config.port)
        streams = [x.sock for x in self.listeners if not x.netid.startswith("udp")]
        if self.config.admin_socket is not None:
            self._admin_sock = bind_unix(self.config.admin_socket)
            streams.append(self._admin_sock)
        limits = stream_limits(self.config)
        # Every stream endpoint at its limit must leave descriptors for the map and journal.
        endpoints = len(streams) + len(self.config.socketmap) + (self.config.dovecot_policy is not None)
        limits = replace(limits, max_connections=fit_descriptors(endpoints, limits.max_connections))
        dispatch = self.dispatcher.dispatch
        for listener in self.listeners:
            if listener.netid.startswith("udp"):
                self._udp.append(serve_udp(listener.sock, dispatch))
        for sock in streams:
            self._streams.append(await StreamServer(sock, dispatch, RPC_RECORDS, limits).start())
        log.info("listening on %s", ", ".join(f"{x.netid} {x.host} port {x.port}" for x in self.listeners))
        if self.config.admin_socket is not None:
            log.info("admin socket %s", self.config.admin_socket)
        if self.config.socketmap:
            self.socketmap = SocketmapServer(self.table, self.config.socketmap, limits)
            await self.socketmap.start()
        if self.config.dovecot_policy is not None:
            self.dovecot = DovecotPolicy(self.service, self.config.dovecot_policy, limits, self.config.program)
            await self.dovecot.start()
        if self.config.metrics_listen is not None:
            self._endpoint = Endpoint(self.metrics, self.config.metrics_listen)
        if self.config.rpcbind:
            entries = entries_for(self.listeners, self.dispatcher.versions(self.config.program))
            # Admin calls are refused over UDP (forgeable sources): don't advertise them there.
            entries = [e for e in entries if not (e.vers == DRACVERS_ADMIN and e.netid.startswith("udp"))]
            self.registration = Registration(self.config.program, entries)
            await self.registration.start()
        if self.run_as is not None:
            self._give_up_root(self.run_as)
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop(), name="dracd-expiry")

    def _give_up_root(self, run_as: RunAs) -> None:
        """Run as config.user from here on; a root helper cleans up after our exit."""
        if os.geteuid() != 0:
            raise PrivilegeError(f"user: {run_as.name} needs dracd to be started as root")
        registration, admin_socket = self.registration, self.config.admin_socket
        pidfile, pid = self.config.pidfile, os.getpid()

        def cleanup() -> None:
            if pidfile is not None:  # first: a successor may start as soon as we are gone
                remove_left_pidfile(pidfile, pid)
            if registration is not None:
                registration.release_now()
            if admin_socket is not None:
                with contextlib.suppress(OSError):
                    os.unlink(admin_socket)

        self._guard_fd = start_guard(cleanup)
        drop(run_as)
        self.settings.admin = replace(self.settings.admin, uid=run_as.uid)
        try:
            self.committer.write_now()
        except MapError as exc:
            raise MapError(f"as user {run_as.name}: {exc}; make the map's directory writable by it") from None
        log.info("running as user %s (uid %d, gid %d)", run_as.name, run_as.uid, run_as.gid)

    async def _expire_loop(self) -> None:
        while True:
            next_expiry = self.table.next_expiry()
            delay = EXPIRY_TICK if next_expiry is None else next_expiry - self.table.clock()
            await asyncio.sleep(min(max(delay, 0.0), EXPIRY_TICK))
            total = 0
            while gone := self.table.expire(limit=EXPIRY_BATCH):
                total += len(gone)
                self.metrics.expired.inc(amount=len(gone))
                if len(gone) < EXPIRY_BATCH:
                    break
                # Thousands due at once: let requests in between batches.
                await asyncio.sleep(0)
            if total:
                log.info("expired %d entries", total)
                self.committer.request()

    def reload(self, config: Config) -> None:
        """SIGHUP: new allow list and lifetime; sockets and entries stay."""
        allow = load_allow(config.allow_path)
        changed = needs_restart(self.config, config)
        if changed:
            log.warning("reload: %s changed; restart dracd to apply", ", ".join(changed))
        wrappers, why = wrappers_from(config.tcp_wrappers)
        if (wrappers is None) != (self.settings.wrappers is None):
            log.info("reload: %s", why)
        new = Settings.from_config(config, allow, wrappers)
        # dracd's own uid stays an administrator after the switch to `user:`.
        self.settings.update(replace(new, admin=replace(new.admin, uid=self.settings.admin.uid)))
        if self.dovecot is not None:
            self.dovecot.reload(config.dovecot_policy)
        self.config = config
        log.info("reloaded %s: %s (%d rules), lifetime %d s",
                 config.source, allow_reason(config.allow_file, config.map.path), len(allow.rules), config.lifetime)

    async def stop(self) -> None:
        await self._close_listeners()
        pending = [idle for udp in self._udp if not (idle := udp.idle()).done()]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
        drained = await asyncio.gather(*(stream.drain(DRAIN_TIMEOUT) for stream in self._streams))
        if not all(drained):
            log.warning("stream clients still owed answers after %.0f s; closing anyway", DRAIN_TIMEOUT)
        self._streams.clear()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self.shared is not None:
            await self.shared.close()
        await self.committer.close()
        try:
            self.committer.write_now(final=True)
        except Exception as exc:
            log.error("final map write failed: %s; the journal stays for the next start", exc)
        if self.registration is not None:
            await self.registration.stop()
        # Last: until here a second dracd must stay off the map.
        if self._lock_fd is not None:
            unlock_map(self._locked_map, self._lock_fd)
            self._lock_fd = None
        self._stopped.set()
        log.info("stopped")

    async def _close_listeners(self) -> None:
        if self.dovecot is not None:
            await self.dovecot.close(DRAIN_TIMEOUT)
            self.dovecot = None
        if self.socketmap is not None:
            await self.socketmap.close()
            self.socketmap = None
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        for stream in self._streams:
            stream.close()
        for udp in self._udp:
            udp.close()
        for listener in self.listeners:
            listener.sock.close()
        if self._admin_sock is not None:
            self._admin_sock.close()
            self._admin_sock = None
            assert self.config.admin_socket is not None
            with contextlib.suppress(OSError):
                os.unlink(self.config.admin_socket)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
