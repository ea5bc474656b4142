"""Registration with the system rpcbind, kept alive across rpcbind restarts.

Clients find dracd through rpcbind (libtirpc's clnt_create asks GETADDR),
so every (version, netid) served is registered, checked periodically and
registered again when rpcbind lost it (it restarted). Without rpcbind dracd
still serves its port and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass

from dracclient import rpcbind
from dracclient.errors import DracError
from dracclient.rpccall import Transport, call

from .transport import Listener, host_addresses

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0


@dataclass(frozen=True)
class Entry:
    vers: int
    netid: str
    uaddr: str
    port: int


class AlreadyRegistered(Exception):
    """Another live server holds the program number in rpcbind."""


def entries_for(listeners: list[Listener], versions: list[int]) -> list[Entry]:
    """One registration per (version, netid); the first listener of a netid wins."""
    by_netid: dict[str, Listener] = {}
    for listener in listeners:
        by_netid.setdefault(listener.netid, listener)
    return [
        Entry(vers, netid, rpcbind.format_uaddr(item.host, item.port), item.port)
        for netid, item in by_netid.items()
        for vers in versions
    ]


class Registration:
    def __init__(self, prog: int, entries: list[Entry], interval: float = CHECK_INTERVAL) -> None:
        self.prog = prog
        self.entries = entries
        self.interval = interval
        self.registered: set[Entry] = set()
        self._refused: set[Entry] = set()
        self._available = True
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._claim)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="dracd-rpcbind")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._release)

    def _claim(self) -> None:
        """First registration: take over stale entries, refuse to steal live ones."""
        try:
            self._clear_stale()
            self._sync()
        except DracError as exc:
            self._unavailable(exc)

    def _ours(self) -> list[rpcbind.Mapping]:
        return [m for m in rpcbind.dump(timeout=2.0) if m.prog == self.prog]

    def _clear_stale(self) -> None:
        own_ports = {entry.port for entry in self.entries}
        for found in self._ours():
            if found.port in own_ports:
                continue  # names our own new port: _sync adopts it
            # Probe where the entry points: a live server bound to one address
            # only (say 127.0.0.2 or a LAN address) does not answer on loopback.
            # Only local addresses are probed: a registration naming another
            # host must not make us send traffic there.
            host = rpcbind.parse_uaddr(found.uaddr)[0]
            address = ipaddress.ip_address(host)
            if address.is_unspecified:
                host = "::1" if found.netid.endswith("6") else "127.0.0.1"
            local = address.is_unspecified or address.is_loopback or address in host_addresses()
            transport: Transport = "tcp" if found.netid.startswith("tcp") else "udp"
            if local and _alive(host, found.port, self.prog, found.vers, transport):
                raise AlreadyRegistered(
                    f"program {self.prog} version {found.vers} is already registered with rpcbind "
                    f"({found.netid} port {found.port}) by a running server: is another dracd running?"
                )
            log.info("removing stale rpcbind registration of program %d version %d (%s port %d)",
                     self.prog, found.vers, found.netid, found.port)
            rpcbind.unregister(self.prog, found.vers, found.netid)

    def _sync(self) -> None:
        """Register whatever rpcbind does not know about (again)."""
        known = {(m.vers, m.netid, m.port) for m in self._ours()}
        added = []
        for entry in self.entries:
            if (entry.vers, entry.netid, entry.port) in known:
                self.registered.add(entry)
            elif rpcbind.register(self.prog, entry.vers, entry.netid, entry.uaddr):
                self.registered.add(entry)
                self._refused.discard(entry)
                added.append(entry)
            elif entry not in self._refused:
                # Logged once per entry: the watch retries every few seconds.
                self._refused.add(entry)
                log.error("rpcbind refused to register program %d version %d %s %s",
                          self.prog, entry.vers, entry.netid, entry.uaddr)
        if added:
            log.info("registered program %d with rpcbind: %s", self.prog,
                     ", ".join(sorted({f"{e.netid}/{e.port}" for e in added})))
        if not self._available:
            log.warning("rpcbind is back; program %d is registered again", self.prog)
        self._available = True

    def _unavailable(self, exc: Exception) -> None:
        if self._available:
            ports = ", ".join(sorted({f"{e.netid}/{e.port}" for e in self.entries}))
            log.warning("rpcbind is not reachable (%s): serving without registration on %s; "
                        "clients must be given the port", exc, ports)
        self._available = False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self._sync)
            except DracError as exc:
                self._unavailable(exc)

    def release_now(self) -> None:
        """Unregister synchronously (for the root helper after dracd's exit)."""
        self._release()

    def _release(self) -> None:
        """Unregister only what still points at us, never a successor's entry."""
        mine = {(entry.vers, entry.netid, entry.port) for entry in self.registered}
        try:
            for found in self._ours():
                if (found.vers, found.netid, found.port) in mine:
                    rpcbind.unregister(self.prog, found.vers, found.netid)
        except DracError as exc:
            log.warning("could not unregister program %d from rpcbind: %s", self.prog, exc)
        self.registered.clear()


def _alive(host: str, port: int, prog: int, vers: int, transport: Transport) -> bool:
    try:
        call((host, port), prog, vers, 0, transport=transport, timeout=1.0)
    except DracError:
        return False
    return True
