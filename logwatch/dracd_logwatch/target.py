"""Sending ADDs: through dracd's admin socket, or with the DRAC protocol.

The admin socket (version 3 of the program) takes a lifetime per entry,
which presets need for their ``lifetime`` option; the DRAC protocol's ADD
has none (dracd applies its own) but works across hosts, to several
servers at once. Both clients block, so calls run in worker threads.

A prefix becomes one network entry (admin socket) or expands to up to 256
ADDs. They go out concurrently, at most
:data:`CONCURRENCY` at a time: dracd answers an ADD once its map holds it
and writes concurrent ADDs in one map rewrite (group commit), so a batch
costs a few rewrites, not 254.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dracclient import aio
from dracclient.admin import AdminClient
from dracclient.drac import DRACPROG, Entry, IPAddress
from dracclient.errors import DracError

log = logging.getLogger(__name__)

CONCURRENCY = 16


@dataclass(frozen=True)
class Outcome:
    """What the server made of one address: ``error`` is None if it took it."""

    address: Entry
    error: str | None = None


class Target:
    """Where ADDs go; subclasses do one ADD, this class batches them."""

    #: Whether per-entry lifetimes reach the server.
    lifetimes = False
    #: Whether network entries (an authorized prefix) can be sent.
    networks = False

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def add_one(self, address: Entry, lifetime: int) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    async def add(self, addresses: Sequence[Entry], lifetime: int) -> list[Outcome]:
        """ADD every entry (concurrently, bounded); one outcome per entry, in order."""
        async def one(address: Entry) -> Outcome:
            async with self._slots:
                try:
                    await self.add_one(address, lifetime)
                except (DracError, ValueError, OSError) as exc:
                    return Outcome(address, str(exc) or type(exc).__name__)
            return Outcome(address)

        return list(await asyncio.gather(*(one(address) for address in addresses)))


class AdminTarget(Target):
    """dracd's admin UNIX socket: per-entry lifetimes, network entries."""

    lifetimes = True
    networks = True

    def __init__(self, socket_path: Path, *, prog: int = DRACPROG, timeout: float = 5.0) -> None:
        super().__init__()
        self.client = AdminClient(socket_path=str(socket_path), prog=prog, timeout=timeout)

    def describe(self) -> str:
        return f"dracd's admin socket {self.client.socket_path}"

    async def add_one(self, address: Entry, lifetime: int) -> None:
        await asyncio.to_thread(self.client.add, address, lifetime)


class ServersTarget(Target):
    """The DRAC protocol (ADD, version 1 or 2) to one or more servers; dracd's lifetime applies."""

    def __init__(self, servers: Sequence[str], *, port: int | None = None, prog: int = DRACPROG,
                 timeout: float = 5.0) -> None:
        super().__init__()
        self.servers = tuple(servers)
        self.port = port
        self.prog = prog
        self.timeout = timeout

    def describe(self) -> str:
        where = ", ".join(self.servers)
        return f"DRAC servers {where}" + (f" port {self.port}" if self.port else "")

    async def add_one(self, address: Entry, lifetime: int) -> None:
        if not isinstance(address, IPAddress):
            raise ValueError(f"{address}: the DRAC protocol carries host addresses only")
        await aio.add(address, servers=self.servers, port=self.port, prog=self.prog, timeout=self.timeout)
