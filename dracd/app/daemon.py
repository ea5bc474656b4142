"""The server's lifecycle: one ordered start, one ordered stop.

Start: allow list, table reloaded from the map, the map written (so it
exists before any MTA needs it), sockets bound, rpcbind registration,
expiry. Stop: close the sockets, let in-flight calls finish (bounded),
write the map a last time, unregister.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from dracclient.adminproto import DRACVERS_ADMIN

from ..config import Config, needs_restart
from ..config.hostpaths import allow_reason, map_reason
from ..keys import KeyStyle
from ..programs.dovecot import DovecotPolicy
from ..programs.drac import Settings
from ..programs.socketmap import SocketmapServer
from ..publish.lock import MapInUse as MapInUse  # where cli.py and the tests look for it
from ..publish.lock import lock_map, unlock_map
from ..publish.maps import MapError, open_writer, unsafe_directory
from ..publish.recovery import recover
from ..relay.clock import ClockSteps, after_restart, last_written
from ..relay.policy import load_allow
from ..relay.table import Clock
from ..server.registration import Registration, entries_for
from ..server.stream import RPC_RECORDS, StreamLimits, StreamServer, fit_descriptors
from ..server.transport import Listener, UdpServer, bind_listeners, bind_unix, serve_udp
from ..server.wrappers import from_setting as wrappers_from
from ..server.wrappers import name_patterns
from .assemble import build_stack
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


class Daemon:
    #: Dovecot's auth policy endpoint (dovecot_policy:), once started.
    dovecot: DovecotPolicy | None = None

    def __init__(self, config: Config, *, clock: Clock = time.time) -> None:
        self.config = config
        log.info("map %s: %s", config.map.path, map_reason(config.map.path))
        log.info("%s", allow_reason(config.allow_file, config.map.path))
        wrappers, why = wrappers_from(config.tcp_wrappers)
        log.info("%s", why)
        for problem in name_patterns() if wrappers is not None else ():
            log.warning("%s", problem)
        stack = build_stack(open_writer(config.map.type, config.map.path, key_style(config)),
                            Settings.from_config(config, load_allow(config.allow_path), wrappers),
                            map_type=config.map.type, program=config.program, redis=config.redis, clock=clock)
        self.stack = stack
        self.table, self.metrics, self.settings = stack.table, stack.metrics, stack.settings
        self.writer, self.journal, self.committer = stack.writer, stack.journal, stack.committer
        self.store, self.dispatcher = stack.store, stack.dispatcher
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
        entries = recover(self.journal, self.writer, self.config.lifetime, self.table.clock)
        if entries is not None:
            self.table.load(entries)
            expired = self.table.expire()
            log.info("%d entries after recovery (%d already expired)", len(self.table), len(expired))
            return
        self.table.load(self.writer.read_codes())
        if self.writer.adopt():
            self.committer.adopted()
        expired = self.table.expire()
        log.info("reloaded %d entries from %s (%d already expired)",
                 len(self.table), self.config.map.path, len(expired))

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
            await self.store.close()
            await self.committer.close()
            self._release_lock()
            raise
        if on_ready is not None:
            on_ready()

    async def _start(self) -> None:
        written = last_written([self.config.map.path, *self.journal.paths])  # before they are rewritten
        self.load_table()
        after_restart(self.table, written, self.config.lifetime)
        # A map reloaded just as we would write it needs only the entries expired meanwhile.
        self.committer.write_now(full=False)
        self.committer.start()
        await self.store.start()
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
            self.dovecot = DovecotPolicy(self.stack.drac, self.config.dovecot_policy, limits, self.config.program)
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
        steps = ClockSteps(self.table, lambda: self.config.lifetime)
        while True:
            next_expiry = self.table.next_expiry()
            delay = EXPIRY_TICK if next_expiry is None else next_expiry - self.table.clock()
            await asyncio.sleep(min(max(delay, 0.0), EXPIRY_TICK))
            self.committer.check_map()  # replaced or deleted by someone else? (recovery.take_in_replacement)
            if steps.check():  # the wall clock stepped back: entries pulled in
                self.committer.request()
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
        await self.store.close()
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
