"""The DRAC program (900101): NULL and ADD in versions 1 and 2. No sockets here."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from dracclient.drac import (
    DRACPROC_ADD,
    DRACPROC_NULL,
    DRACVERS,
    DRACVERS6,
    AddStat,
    decode_add_v1,
    decode_add_v2,
    encode_addstat,
)
from dracclient.xdr import Unpacker

from ..config import Config
from ..keys import Entry, IPAddress, canonical, relayable
from ..metrics import Metrics
from ..publish.commit import Committer
from ..publish.maps import MapError
from ..ratelog import RateLimitedLog
from ..relay.policy import AdminPolicy, AllowList, Network, in_networks
from ..relay.table import RelayTable
from ..server.dispatch import PENDING, CallContext, Dispatcher, Pending
from ..server.wrappers import HostsAccess

if TYPE_CHECKING:
    from ..relay.shared import SharedTable

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

# Computed once: per ADD, encoding the answer and naming its labels cost as much as the checks.
_ADDSTAT = {stat: encode_addstat(stat) for stat in AddStat}
_STAT_NAME = {stat: stat.name for stat in AddStat}
_VERS_LABEL = {DRACVERS: str(DRACVERS), DRACVERS6: str(DRACVERS6)}


@dataclass
class Settings:
    """What SIGHUP may change while the server runs."""

    allow: AllowList
    lifetime: int
    admin: AdminPolicy = field(default_factory=AdminPolicy)
    #: None: UDP from anywhere (legacy); else the networks UDP callers must be in.
    udp_from: tuple[Network, ...] | None = None
    max_entries: int = 1_000_000
    #: ADDs per second one network caller may make (burst: twice that); 0 = no limit.
    rate_per_caller: int = 0
    #: hosts_access(5) for daemon dracd, asked on every network ADD; None: tcp_wrappers off.
    wrappers: HostsAccess | None = None

    @classmethod
    def from_config(cls, config: Config, allow: AllowList, wrappers: HostsAccess | None = None) -> Settings:
        admin = AdminPolicy(groups=frozenset(config.admin_groups), allow=config.admin_allow)
        return cls(allow, config.lifetime, admin, config.udp_from, config.max_entries, config.rate_per_caller,
                   wrappers)

    def update(self, new: Settings) -> None:
        """Take every value of ``new`` (SIGHUP); the objects holding this one see them."""
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(new, name))


class CallerBuckets:
    """A token bucket per caller, so one MRA (or a forger) cannot flood the table."""

    MAX_CALLERS = 65_536

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[IPAddress, tuple[float, float]] = {}

    def allow(self, caller: IPAddress, rate: int) -> bool:
        now = self.clock()
        burst = 2.0 * rate
        tokens, last = self._buckets.get(caller, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if len(self._buckets) >= self.MAX_CALLERS and caller not in self._buckets:
            self._buckets.clear()  # forget everyone rather than grow without bound
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            return False
        self._buckets[caller] = (tokens - 1.0, now)
        return True


class DracService:
    def __init__(self, table: RelayTable, committer: Committer, settings: Settings,
                 metrics: Metrics | None = None) -> None:
        self.table = table
        self.committer = committer
        self.settings = settings
        self.buckets = CallerBuckets()
        self.metrics = metrics if metrics is not None else Metrics()
        #: Failed writes: one line a minute during an outage, not one per ADD (the committer
        #: logs the outage's start and end; its ADDs are counted in the metrics).
        self.write_failures = RateLimitedLog(log)
        #: The table shared through Redis, written before the local one; None: not shared.
        self.shared: SharedTable | None = None
        #: refusal() of network callers by (caller, transport): matching the allow list costs
        #: more than the rest of an ADD. Valid for the allow list and udp_from it was made
        #: with (both immutable; SIGHUP replaces them); bounded like CallerBuckets.
        self._refusals: dict[tuple[IPAddress, str], str | None] = {}
        self._refusals_for: tuple[AllowList | None, tuple[Network, ...] | None] = (None, None)

    def register(self, dispatcher: Dispatcher, prog: int) -> None:
        for vers in (DRACVERS, DRACVERS6):
            dispatcher.register(prog, vers, DRACPROC_NULL, self.null)
        dispatcher.register(prog, DRACVERS, DRACPROC_ADD, self.add_v1)
        dispatcher.register(prog, DRACVERS6, DRACPROC_ADD, self.add_v2)

    def null(self, args: bytes, ctx: CallContext) -> bytes:
        Unpacker(args).done()
        return b""

    # Bytes after the argument are ignored, as rpc.dracd (a libtirpc server) ignores them.
    def add_v1(self, args: bytes, ctx: CallContext) -> bytes | Pending | Coroutine[Any, Any, bytes]:
        return self._add_now(decode_add_v1(args, trailing=True), ctx)

    def add_v2(self, args: bytes, ctx: CallContext) -> bytes | Pending | Coroutine[Any, Any, bytes]:
        return self._add_now(decode_add_v2(args, trailing=True), ctx)

    def _add_now(self, address: IPAddress, ctx: CallContext) -> bytes | Pending | Coroutine[Any, Any, bytes]:
        """An ADD without a task: checked and put in the table now, answered from the
        committer's callback once the map holds it. A shared table is written over the
        network first, so that ADD stays a coroutine."""
        if self.shared is not None:
            return self._add_shared(address, ctx)
        checked = self._check(address, ctx)
        if isinstance(checked, AddStat):
            self._count(ctx, checked)
            return _ADDSTAT[checked]
        expiry = self.table.add(checked, self.settings.lifetime)
        self.committer.on_written(functools.partial(self._written, ctx, checked, expiry))
        return PENDING

    def _written(self, ctx: CallContext, address: IPAddress, expiry: int, error: MapError | None) -> None:
        """The committer's answer for one ADD of _add_now: as commit() and _add() log it."""
        if error is not None:
            self.write_failures.warning("write", "ADD %s from %s failed: %s", address, ctx, error)
            stat = AddStat.ADD_SYSERR
        else:
            log.info("ADD %s from %s ok, expires %d", address, ctx, expiry)
            stat = AddStat.ADD_SUCCESS
        self._count(ctx, stat)
        ctx.reply(_ADDSTAT[stat])

    async def _add_shared(self, address: IPAddress, ctx: CallContext) -> bytes:
        return _ADDSTAT[await self.add(address, ctx)]

    def _count(self, ctx: CallContext, stat: AddStat) -> None:
        self.metrics.adds.inc(_VERS_LABEL.get(ctx.call.vers) or str(ctx.call.vers), ctx.transport, _STAT_NAME[stat])

    def refusal(self, ctx: CallContext) -> str | None:
        """Why ``ctx`` may not ADD ("admin", "udp_from", "allow", "tcp_wrappers"), or None if it
        may: network callers by the allow list (and udp_from over UDP), then hosts_access when
        tcp_wrappers is on; UNIX socket callers if they are admins."""
        caller = ctx.caller
        if caller is None:
            return None if self.settings.admin.permits(ctx) else "admin"
        reason = self._network_refusal(caller, ctx.transport)
        wrappers = self.settings.wrappers
        # Not cached: libwrap reads hosts.allow and hosts.deny per call, as legacy did (~10 us).
        if reason is None and wrappers is not None and not wrappers.permits(str(canonical(caller))):
            reason = "tcp_wrappers"
        return reason

    def _network_refusal(self, caller: IPAddress, transport: str) -> str | None:
        allow, udp_from = self.settings.allow, self.settings.udp_from
        known = self._refusals_for
        if known[0] is not allow or known[1] is not udp_from:
            self._refusals.clear()
            self._refusals_for = (allow, udp_from)
        key = (caller, transport)
        try:
            return self._refusals[key]
        except KeyError:
            pass
        reason: str | None = None
        if transport == "udp" and udp_from is not None and not in_networks(canonical(caller), udp_from):
            reason = "udp_from"
        elif not allow.permits(caller):
            reason = "allow"
        if len(self._refusals) >= CallerBuckets.MAX_CALLERS:
            self._refusals.clear()
        self._refusals[key] = reason
        return reason

    async def add(self, address: IPAddress, ctx: CallContext, lifetime: int | None = None) -> AddStat:
        stat = await self._add(address, ctx, lifetime)
        self._count(ctx, stat)
        return stat

    def _check(self, address: IPAddress, ctx: CallContext) -> IPAddress | AddStat:
        """What every ADD checks before it changes the table, in this order: the address
        to add (canonical), or the refusal to answer (counted and logged here)."""
        reason = self.refusal(ctx)
        if reason is not None:
            self.metrics.refusals.inc(reason)
            why = {"allow": f"caller not in allow list ({self.settings.allow.source})",
                   "udp_from": "UDP from a source udp_from does not trust",
                   "admin": "not an admin on the UNIX socket",
                   "tcp_wrappers": "hosts.allow/hosts.deny refuse it (daemon dracd, tcp_wrappers)"}[reason]
            log.warning("ADD %s from %s refused: %s", address, ctx, why)
            return AddStat.ADD_PERM
        rate = self.settings.rate_per_caller
        if rate and ctx.caller is not None and not self.buckets.allow(canonical(ctx.caller), rate):
            self.metrics.refusals.inc("rate")
            limited.warning(f"rate-{ctx.caller}", "ADD %s from %s refused: over %d ADDs per second",
                            address, ctx, rate)
            return AddStat.ADD_SYSERR
        address = canonical(address)
        if not relayable(address):
            self.metrics.refusals.inc("not_unicast")
            log.warning("ADD %s from %s refused: not a unicast host address", address, ctx)
            return AddStat.ADD_UNKOWN
        if address not in self.table and len(self.table) >= self.settings.max_entries:
            self.metrics.refusals.inc("table_full")
            limited.warning("full", "ADD %s from %s refused: the table is full (%d entries, max_entries)",
                            address, ctx, len(self.table))
            return AddStat.ADD_SYSERR
        return address

    async def _add(self, address: IPAddress, ctx: CallContext, lifetime: int | None) -> AddStat:
        checked = self._check(address, ctx)
        if isinstance(checked, AddStat):
            return checked
        address = checked
        if self.shared is None:
            expiry = self.table.add(address, lifetime or self.settings.lifetime)
        elif (shared_expiry := await self.authorize(address, lifetime or self.settings.lifetime)) is None:
            return AddStat.ADD_SYSERR
        else:
            expiry = shared_expiry
        if not await self.commit(ctx, "ADD", address):
            return AddStat.ADD_SYSERR
        log.info("ADD %s from %s ok, expires %d", address, ctx, expiry)
        return AddStat.ADD_SUCCESS

    async def authorize(self, address: Entry, lifetime: int) -> int | None:
        """Put ``address`` in the table for ``lifetime`` seconds, in the shared table first
        if there is one; its expiry, or None (logged) if the shared table did not take it."""
        if self.shared is None:
            return self.table.add(address, lifetime)
        expiry = int(self.table.clock()) + lifetime
        if not await self.shared.put(address, expiry):
            return None
        self.table.set(address, expiry)
        return expiry

    async def revoke(self, address: Entry) -> bool | None:
        """Remove ``address`` (from the shared table first): whether it was there, None if
        the shared table could not be changed (then nothing changed here either)."""
        if self.shared is None:
            return self.table.remove(address)
        removed = await self.shared.delete(address)
        if removed is None:
            return None
        return self.table.remove(address) or removed > 0

    async def revoke_all(self) -> int | None:
        """Remove every entry (shared ones too): how many, None if the shared table failed."""
        if self.shared is None:
            return self.table.clear()
        removed = await self.shared.flush()
        if removed is None:
            return None
        return max(self.table.clear(), removed)

    async def commit(self, ctx: CallContext, verb: str, target: object = "") -> bool:
        """Wait until the map holds the table; False (logged) if it cannot be written."""
        try:
            await self.committer.commit()
        except MapError as exc:
            self.write_failures.warning("write", "%s %s from %s failed: %s", verb, target, ctx, exc)
            return False
        return True
