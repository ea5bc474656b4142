"""The DRAC program (900101): NULL and ADD in versions 1 and 2. No sockets here."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

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
from ..keys import IPAddress, canonical, relayable
from ..metrics import Metrics
from ..publish.maps import MapError
from ..ratelog import RateLimitedLog
from ..relay.policy import AdminPolicy, AllowList, Network, in_networks
from ..relay.store import NotShared, Store
from ..server.dispatch import PENDING, CallContext, Dispatcher, Pending
from ..server.wrappers import HostsAccess

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
    """The DRAC program: checks every ADD's caller and address, puts it in the relay
    store, and answers once the store has published it."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics | None = None) -> None:
        self.store = store
        self.table = store.table
        self.settings = settings
        self.buckets = CallerBuckets()
        self.metrics = metrics if metrics is not None else Metrics()
        #: Failed writes: one line a minute during an outage, not one per ADD (the committer
        #: logs the outage's start and end; its ADDs are counted in the metrics).
        self.write_failures = RateLimitedLog(log)
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
    def add_v1(self, args: bytes, ctx: CallContext) -> bytes | Pending:
        return self._add_call(decode_add_v1(args, trailing=True), ctx)

    def add_v2(self, args: bytes, ctx: CallContext) -> bytes | Pending:
        return self._add_call(decode_add_v2(args, trailing=True), ctx)

    def _add_call(self, address: IPAddress, ctx: CallContext) -> bytes | Pending:
        """An RPC ADD without a task: checked now, answered through ctx.reply once the
        store has published it."""
        checked = self._check(address, ctx)
        if isinstance(checked, AddStat):
            self._count(ctx, checked)
            return _ADDSTAT[checked]
        self.store.put(checked, self.settings.lifetime, functools.partial(self._replied, ctx, checked))
        return PENDING

    def _replied(self, ctx: CallContext, address: IPAddress, expiry: int, error: Exception | None) -> None:
        ctx.reply(_ADDSTAT[self._done(ctx, address, expiry, error)])

    async def add(self, address: IPAddress, ctx: CallContext, lifetime: int | None = None) -> AddStat:
        """An ADD that does not come as an RPC call (the Dovecot policy endpoint): the same
        checks, store, logging and counting, as a coroutine."""
        checked = self._check(address, ctx)
        if isinstance(checked, AddStat):
            self._count(ctx, checked)
            return checked
        try:
            expiry = await self.store.add(checked, lifetime or self.settings.lifetime)
        except (MapError, NotShared) as exc:
            return self._done(ctx, checked, 0, exc)
        return self._done(ctx, checked, expiry, None)

    def _done(self, ctx: CallContext, address: IPAddress, expiry: int, error: Exception | None) -> AddStat:
        """Every ADD the store took ends here: logged, counted, its answer."""
        if error is not None:
            self.write_failures.warning("write", "ADD %s from %s failed: %s", address, ctx, error)
            stat = AddStat.ADD_SYSERR
        else:
            log.info("ADD %s from %s ok, expires %d", address, ctx, expiry)
            stat = AddStat.ADD_SUCCESS
        self._count(ctx, stat)
        return stat

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
