"""Version 3 of program 900101: administration (docs/drac.x).

Every procedure first checks that the caller is an admin (policy.AdminPolicy)
and otherwise refuses it at the RPC level, changing nothing. Changes are
answered once the map holds them, like ADD.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dracclient.adminproto import (
    DRACPROC_ADD3,
    DRACPROC_DEL3,
    DRACPROC_FLUSH3,
    DRACPROC_GET3,
    DRACPROC_LIST3,
    DRACPROC_STATUS3,
    DRACVERS_ADMIN,
    MAX_LIFETIME,
    MAX_LIST,
    AdminStat,
    Counter,
    Entry,
    ListPage,
    Status,
    Target,
    decode_add3,
    decode_list3_args,
    decode_target,
    encode_adminstat,
    encode_flush3_res,
    encode_get3_res,
    encode_list3_res,
    encode_status3_res,
)
from dracclient.xdr import Unpacker

from .. import __version__
from ..keys import Entry as TableEntry
from ..keys import IPAddress, canonical, entry_network, key_siblings, relayable
from ..metrics import Metrics
from ..publish.maps import MapError
from ..ratelog import RateLimitedLog
from ..relay.store import NotShared, Store
from ..server.dispatch import AuthRefused, CallContext, Dispatcher
from .drac import Settings

log = logging.getLogger(__name__)
write_failures = RateLimitedLog(log)

LIST_IDLE = 60.0
MAX_LISTINGS = 16


@dataclass
class Listing:
    """A snapshot of the table being paged through by one client."""

    addresses: list[TableEntry]
    used: float = field(default_factory=time.monotonic)


def _canonical(target: Target) -> TableEntry:
    return canonical(target) if isinstance(target, IPAddress) else target


class AdminService:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics, map_path: str, map_type: str) -> None:
        self.store = store
        self.table = store.table
        self.settings = settings
        self.metrics = metrics
        self.map_path = map_path
        self.map_type = map_type
        self.started = int(time.time())
        self._listings: dict[int, Listing] = {}
        self._next_cookie = 1

    def register(self, dispatcher: Dispatcher, prog: int) -> None:
        procedures = {
            0: self.null, DRACPROC_ADD3: self.add, DRACPROC_DEL3: self.delete, DRACPROC_GET3: self.get,
            DRACPROC_LIST3: self.list, DRACPROC_FLUSH3: self.flush, DRACPROC_STATUS3: self.status,
        }
        for proc, handler in procedures.items():
            # Never over UDP, whose source addresses can be forged: there version 3 does not exist.
            dispatcher.register(prog, DRACVERS_ADMIN, proc, handler, udp=False)

    def _require_admin(self, ctx: CallContext, what: str) -> None:
        if not self.settings.admin.permits(ctx):
            log.warning("admin %s from %s refused: not an admin caller", what, ctx)
            raise AuthRefused()

    async def null(self, args: bytes, ctx: CallContext) -> bytes:
        Unpacker(args).done()
        return b""

    async def add(self, args: bytes, ctx: CallContext) -> bytes:
        # The caller is checked first: a non-admin is refused whatever it sent.
        self._require_admin(ctx, "ADD")
        target, lifetime = decode_add3(args)
        # An admin is not held to the MRA allow list (DracService.add would answer
        # ADD_PERM to an admin_allow caller missing from dracd.allow).
        address, why = self._entry(target)
        if address is None or lifetime > MAX_LIFETIME:
            log.warning("admin ADD %s (lifetime %d) from %s refused: %s", target, lifetime, ctx,
                        why or "lifetime over ten years")
            return encode_adminstat(AdminStat.ADMIN_INVAL)
        try:
            expiry = await self.store.add(address, lifetime or self.settings.lifetime)
        except (MapError, NotShared) as exc:
            write_failures.warning("write", "admin ADD %s from %s failed: %s", address, ctx, exc)
            return encode_adminstat(AdminStat.ADMIN_SYSERR)
        log.info("admin ADD %s from %s ok, expires %d", address, ctx, expiry)
        return encode_adminstat(AdminStat.ADMIN_OK)

    def _entry(self, target: Target) -> tuple[TableEntry | None, str]:
        """The table entry an admin ADD names, or None and why not."""
        if isinstance(target, IPAddress):
            address = canonical(target)
            return (address, "") if relayable(address) else (None, "not a unicast host address")
        entry = entry_network(target)
        if entry is None:
            return None, ("not a network the MTAs' partial lookups can match "
                          "(IPv4 /8, /16, /24; IPv6 /48 to /112 in steps of 16)")
        for sibling in key_siblings(target):
            if sibling in self.table:
                return None, f"it would share a map key with the entry {sibling}; delete that first"
        return entry, ""

    async def delete(self, args: bytes, ctx: CallContext) -> bytes:
        self._require_admin(ctx, "DEL")
        address = _canonical(decode_target(args))
        try:
            if not await self.store.remove(address):
                return encode_adminstat(AdminStat.ADMIN_NOTFOUND)
            await self.store.written()
        except (MapError, NotShared) as exc:
            write_failures.warning("write", "DEL %s from %s failed: %s", address, ctx, exc)
            return encode_adminstat(AdminStat.ADMIN_SYSERR)
        log.info("DEL %s from %s ok", address, ctx)
        return encode_adminstat(AdminStat.ADMIN_OK)

    async def get(self, args: bytes, ctx: CallContext) -> bytes:
        self._require_admin(ctx, "GET")
        address = _canonical(decode_target(args))
        expiry = self.table.get(address)
        if expiry is None or expiry <= self.table.clock():
            return encode_get3_res(AdminStat.ADMIN_NOTFOUND)
        return encode_get3_res(AdminStat.ADMIN_OK, expiry)

    async def list(self, args: bytes, ctx: CallContext) -> bytes:
        self._require_admin(ctx, "LIST")
        cookie, offset, count = decode_list3_args(args)
        self._drop_idle_listings()
        if cookie == 0:
            cookie = self._start_listing()
        listing = self._listings.get(cookie)
        if listing is None:
            return encode_list3_res(ListPage(AdminStat.ADMIN_EXPIRED, cookie, 0, [], False))
        listing.used = time.monotonic()
        chunk = listing.addresses[offset : offset + min(count, MAX_LIST)]
        entries = [Entry(address, expiry) for address in chunk if (expiry := self.table.get(address)) is not None]
        more = offset + len(chunk) < len(listing.addresses)
        if not more:
            del self._listings[cookie]
        return encode_list3_res(ListPage(AdminStat.ADMIN_OK, cookie, len(listing.addresses), entries, more))

    def _start_listing(self) -> int:
        if len(self._listings) >= MAX_LISTINGS:
            oldest = min(self._listings, key=lambda c: self._listings[c].used)
            del self._listings[oldest]
        cookie = self._next_cookie
        self._next_cookie += 1
        self._listings[cookie] = Listing(list(self.table))
        return cookie

    def _drop_idle_listings(self) -> None:
        now = time.monotonic()
        for cookie in [c for c, listing in self._listings.items() if now - listing.used > LIST_IDLE]:
            del self._listings[cookie]

    async def flush(self, args: bytes, ctx: CallContext) -> bytes:
        self._require_admin(ctx, "FLUSH")
        Unpacker(args).done()
        removed = 0
        try:
            removed = await self.store.clear()
            await self.store.written()
        except (MapError, NotShared) as exc:
            write_failures.warning("write", "FLUSH from %s failed: %s", ctx, exc)
            return encode_flush3_res(AdminStat.ADMIN_SYSERR, removed)
        log.info("FLUSH from %s ok: %d entries removed", ctx, removed)
        return encode_flush3_res(AdminStat.ADMIN_OK, removed)

    async def status(self, args: bytes, ctx: CallContext) -> bytes:
        self._require_admin(ctx, "STATUS")
        Unpacker(args).done()
        committer = self.store.committer
        return encode_status3_res(Status(
            entries=len(self.table),
            map_path=self.map_path,
            map_type=self.map_type,
            last_write=int(committer.last_write or 0),
            last_write_us=int(committer.last_duration * 1e6),
            lifetime=self.settings.lifetime,
            started=self.started,
            server_version=__version__,
            counters=tuple(Counter(name, value) for name, value in self.metrics.counters()),
        ))
