"""One table for several dracd hosts, kept in Redis (``redis:`` in the config).

Redis holds the authoritative table, one key per address: ``PREFIX + address``
-> the expiry in epoch seconds, set with ``EXAT`` so Redis drops it at that
second by itself. An ADD writes Redis first and touches the local table only
once Redis took it, so ADD_SUCCESS always means "every instance will see it".
Every instance subscribes to the keyspace notifications of the prefix and
applies the others' changes to its own table, hence its map and socketmap,
within milliseconds. Lookups never ask Redis: they read the local table, so
an outage leaves them answering from the last known state while ADDs answer
ADD_SYSERR, and each (re)connection ends with a resync.

A resync SCANs the prefix (only then: events keep the table current between
resyncs) and merges. When Redis is the very server we synced with before
(same run_id), it is right and entries only we hold were deleted or expired
while we were cut off. Otherwise (first start, a Redis restart, a failover)
Redis may have lost entries, so ours are written back: an acknowledged entry
survives a Redis restart without persistence as long as one dracd does.

redis-py is imported only when ``redis:`` is configured (the ``redis`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..config import ConfigError, RedisConfig
from ..keys import Entry, canonical, entry_network, relayable
from ..ratelog import RateLimitedLog
from .table import RelayTable

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

#: What keyspace notifications must carry: K keyspace channel, g generic (del),
#: x expired, $ string commands (set). "A" is the alias for all classes.
NOTIFY_FLAGS = "Kgx$"
#: How long start() waits for the first sync before serving from the map alone.
FIRST_SYNC_WAIT = 3.0
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
#: Seconds between PINGs on an idle subscription, so a silent peer is noticed.
HEALTH_CHECK = 5
BATCH = 1000
#: Events that mean "the key is gone"; "expire" accompanies every SET ... EXAT
#: and changes nothing the value does not already say, so it is ignored.
GONE = frozenset({"del", "expired", "evicted"})
IGNORED = frozenset({"expire"})
#: Our own writes whose "set" event needs no GET; bounded in case events are off.
MAX_OWN = 100_000
#: CLIENT SETNAME of every connection, so CLIENT LIST shows which are dracd's.
CLIENT_NAME = "dracd"


class RedisUnavailable(ConfigError):
    """redis: is configured but redis-py is not installed."""


def require() -> Any:
    """The redis.asyncio module; RedisUnavailable names the extra to install."""
    try:
        import redis.asyncio
        import redis.asyncio.cluster
        import redis.asyncio.retry
        import redis.asyncio.sentinel
        import redis.backoff
    except ImportError:
        raise RedisUnavailable("redis: needs redis-py: pip install 'dracd[redis]'") from None
    return redis


def describe(config: RedisConfig) -> str:
    """Where the table lives, for log lines (never the password)."""
    if config.url:
        url = config.url
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    if config.sentinels:
        return f"sentinel {config.service} via " + ",".join(f"{h}:{p}" for h, p in config.sentinels)
    return "cluster " + ",".join(f"{h}:{p}" for h, p in config.cluster)


class Backend:
    """One way to reach Redis: commands through ``client``, and ``nodes()``
    for what must run on every primary (notifications, SCAN, run_id)."""

    def __init__(self, config: RedisConfig) -> None:
        self.redis = require()
        self.config = config
        # One immediate retry: a pooled connection to a Redis that restarted fails once.
        # The asyncio Retry: redis-py 8.2 warns about (and converts) a synchronous one.
        retry = self.redis.asyncio.retry.Retry(self.redis.backoff.NoBackoff(), 1)
        self.options: dict[str, Any] = {
            "socket_timeout": config.timeout, "socket_connect_timeout": config.timeout, "retry": retry,
            "decode_responses": True, "health_check_interval": HEALTH_CHECK, "client_name": CLIENT_NAME,
        }
        if config.password is not None:
            self.options["password"] = config.password
        self._nodes: dict[tuple[str, int], Any] = {}
        self._sentinel: Any = None
        self.db = config.db
        self.client: Any
        if config.url:
            self.client = self.redis.asyncio.Redis.from_url(config.url, **self.options)
            self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        elif config.sentinels:
            self._sentinel = self.redis.asyncio.sentinel.Sentinel(
                list(config.sentinels), socket_timeout=config.timeout,
                sentinel_kwargs={"socket_timeout": config.timeout, "socket_connect_timeout": config.timeout,
                                 "client_name": CLIENT_NAME})
            self.client = self._sentinel.master_for(config.service, db=config.db, **self.options)
        else:
            cluster = self.redis.asyncio.cluster
            options = {k: v for k, v in self.options.items() if k != "health_check_interval"}
            self.client = cluster.RedisCluster(
                startup_nodes=[cluster.ClusterNode(host, port) for host, port in config.cluster], **options)

    async def nodes(self) -> list[Any]:
        """Clients for every primary (one for a single server or a Sentinel's master)."""
        if not self.config.cluster:
            return [self.client]
        await self.client.initialize()
        primaries = {(node.host, int(node.port)) for node in self.client.get_primaries()}
        for address in set(self._nodes) - primaries:
            await self._nodes.pop(address).aclose()
        for host, port in primaries - set(self._nodes):
            self._nodes[host, port] = self.redis.asyncio.Redis(host=host, port=port, **self.options)
        return [self._nodes[address] for address in sorted(primaries)]

    async def close(self) -> None:
        """Close every client and pool opened here. redis-py closes a pool only if it
        made it (not master_for's), and Sentinel.aclose() exists only from 8.2 on,
        so each is closed by name; one failing does not keep the others open."""
        clients = [*self._nodes.values(), *(self._sentinel.sentinels if self._sentinel is not None else ())]
        self._nodes.clear()
        closing = [client.aclose(close_connection_pool=True) for client in clients]
        # RedisCluster owns its nodes' pools and closes them all.
        closing.append(self.client.aclose() if self.config.cluster else self.client.aclose(close_connection_pool=True))
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, Exception):
                log.debug("closing a Redis client at stop: %s", result)


class SharedTable:
    """The link between one dracd's table and the shared table in Redis."""

    def __init__(self, config: RedisConfig, table: RelayTable, changed: Callable[[], None]) -> None:
        self.config = config
        self.table = table
        #: Called after a change from Redis reached the table, to publish it.
        self.changed = changed
        self.backend = Backend(config)
        self.where = describe(config)
        self.connected = False
        #: The run_ids of the primaries at the last resync: the same ones mean Redis lost nothing.
        self._identity: tuple[str, ...] | None = None
        #: Addresses this instance changed while a resync runs: the resync must not undo them.
        self._dirty: set[Entry] | None = None
        self._own: dict[Entry, int] = {}
        self._puts: list[tuple[Entry, int, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel = f"__keyspace@{self.backend.db}__:{config.prefix}"

    def key(self, address: Entry) -> str:
        return self.config.prefix + str(address)

    async def start(self) -> None:
        """Connect and sync in the background; wait a little for the first sync, so
        the map holds the shared table before the MTAs are served, but never fail:
        without Redis, dracd serves from its map and keeps trying."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dracd-redis")
        try:
            await asyncio.wait_for(self._synced.wait(), FIRST_SYNC_WAIT)
        except TimeoutError:
            log.warning("Redis %s not reachable yet: serving the local table, ADDs answer ADD_SYSERR until it is",
                        self.where)

    async def close(self) -> None:
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for _, _, future in self._puts:
            if not future.done():
                future.set_result(False)
        await self.backend.close()

    # Changes made through this instance: Redis first.

    async def put(self, address: Entry, expiry: int) -> bool:
        """Store ``address`` until ``expiry`` in Redis; False (logged) if Redis did not take it."""
        self._touch(address)
        # Marked before the write: its event may be read before the reply.
        self._own[address] = expiry
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._puts.append((address, expiry, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_puts(), name="dracd-redis-put")
        if not await future:
            self._own.pop(address, None)
            return False
        if len(self._own) > MAX_OWN:
            self._own.clear()
        return True

    async def _write_puts(self) -> None:
        """Group commit, as for the map: the ADDs that arrive while one round trip
        is out share the next one (a pipeline), instead of one round trip each."""
        while self._puts:
            batch, self._puts = self._puts, []
            try:
                await _pipeline(self.backend.client, [("set", self.key(a), e, {"exat": e}) for a, e, _ in batch])
                error: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - any failure is "not shared": ADD_SYSERR
                error = exc
                self._failed(f"ADD {batch[0][0]}" + (f" and {len(batch) - 1} more" if len(batch) > 1 else ""), exc)
            for _, _, future in batch:
                if not future.done():
                    future.set_result(error is None)

    async def delete(self, address: Entry) -> int | None:
        """Delete ``address`` in Redis: how many keys went (0 or 1), None (logged) on failure."""
        self._touch(address)
        try:
            return int(await self.backend.client.delete(self.key(address)))
        except Exception as exc:  # noqa: BLE001
            self._failed(f"DEL {address}", exc)
            return None

    async def flush(self) -> int | None:
        """Delete every key under the prefix: how many, None (logged) on failure."""
        try:
            removed = 0
            for node in await self.backend.nodes():
                keys = [key async for key in node.scan_iter(match=self.config.prefix + "*", count=BATCH)]
                for chunk in _chunks(keys):
                    removed += sum(await _pipeline(node, [("delete", key) for key in chunk]))
            return removed
        except Exception as exc:  # noqa: BLE001
            self._failed("FLUSH", exc)
            return None

    def _touch(self, address: Entry) -> None:
        if self._dirty is not None:
            self._dirty.add(address)

    def _failed(self, what: str, exc: BaseException) -> None:
        limited.warning(f"redis-{what.split()[0]}", "%s: Redis %s unavailable (%s): answering an error",
                        what, self.where, exc or type(exc).__name__)

    # Following the shared table.

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                self._lost(exc)
            else:
                self._lost(None)
            if self.connected:
                delay = RETRY_FIRST
            self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _lost(self, exc: BaseException | None) -> None:
        reason = f"{exc}" if exc is not None and str(exc) else type(exc).__name__
        if self.connected:
            log.error("lost Redis %s (%s): lookups answer from the last known table, ADDs answer ADD_SYSERR, "
                      "reconnecting", self.where, reason)
        else:
            limited.warning("redis-connect", "cannot reach Redis %s (%s); retrying", self.where, reason)

    async def _session(self) -> None:
        """One connection: subscribe, resync, then apply events until it fails."""
        nodes = await self.backend.nodes()
        subscriptions = []
        try:
            for node in nodes:
                await self._enable_notifications(node)
                pubsub = node.pubsub()
                subscriptions.append(pubsub)
                await pubsub.psubscribe(self._channel + "*")
            # Subscribed first, resynced second: no change can fall between the two.
            await self._resync(nodes)
            tasks = [asyncio.create_task(self._listen(pubsub, nodes)) for pubsub in subscriptions]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()
        finally:
            for pubsub in subscriptions:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _enable_notifications(self, node: Any) -> None:
        try:
            current = (await node.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
            missing = [flag for flag in NOTIFY_FLAGS if flag not in current and not (flag != "K" and "A" in current)]
            if missing:
                await node.config_set("notify-keyspace-events", current + "".join(missing))
                log.info("Redis %s: notify-keyspace-events set to %s", self.where, current + "".join(missing))
        except self.backend.redis.exceptions.ResponseError as exc:
            # Managed Redis often refuses CONFIG: the setting must then come from its admin.
            limited.warning("redis-config", "Redis %s refused CONFIG (%s): set notify-keyspace-events to include "
                            "%s there, or changes made through other dracd hosts reach this one only at resync",
                            self.where, exc, NOTIFY_FLAGS)

    async def _listen(self, pubsub: Any, nodes: list[Any]) -> None:
        first = True
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "psubscribe":
                # A confirmation after the first: the connection was re-established and
                # re-subscribed by redis-py, so events may have been missed meanwhile.
                if not first:
                    await self._resync(nodes)
                first = False
            elif message["type"] == "pmessage":
                await self._apply(message["channel"][len(self._channel):], message["data"])

    def _address(self, text: str) -> Entry | None:
        """Only keys a dracd writes: canonical text of a relayable host address or of a
        network the map can express ("192.0.2.0/24")."""
        try:
            if "/" in text:
                entry = entry_network(ipaddress.ip_network(text))
            else:
                address = canonical(ipaddress.ip_address(text))
                entry = address if relayable(address) else None
        except ValueError:
            return None
        return entry if entry is not None and str(entry) == text else None

    async def _apply(self, text: str, event: str) -> None:
        address = self._address(text)
        if address is None or event in IGNORED:
            return
        if event in GONE:
            self._remove(address)
            return
        if event == "set" and address in self._own:
            del self._own[address]
            return
        # The event does not carry the value: read the key's state now (later events follow in order).
        value = await self.backend.client.get(self.key(address))
        expiry = _expiry(value)
        if expiry is None:
            self._remove(address)
        elif self.table.get(address) != expiry:
            self.table.set(address, expiry)
            self.changed()

    def _remove(self, address: Entry) -> None:
        if self.table.remove(address):
            self.changed()

    async def _resync(self, nodes: list[Any]) -> None:
        started = time.monotonic()
        self._dirty = set()
        try:
            identity = tuple(sorted([str((await node.info("server"))["run_id"]) for node in nodes]))
            same = identity == self._identity
            remote = await self._scan(nodes)
            taken, dropped, written = self._merge(remote, same)
            await self._write_back(written)
        finally:
            self._dirty = None
        self._identity = identity
        self.changed()
        back = self._synced.is_set() and not self.connected
        self.connected = True
        self._synced.set()
        (log.warning if back else log.info)(
            "Redis %s %s: %d shared entries, %d taken, %d dropped, %d written back (%.0f ms)", self.where,
            "is back, resynchronised" if back else "synchronised", len(remote), taken, dropped, len(written),
            (time.monotonic() - started) * 1e3)

    async def _scan(self, nodes: list[Any]) -> dict[Entry, int]:
        remote: dict[Entry, int] = {}
        for node in nodes:
            keys = [key async for key in node.scan_iter(match=self.config.prefix + "*", count=BATCH)]
            for chunk in _chunks(keys):
                values = await _pipeline(node, [("get", key) for key in chunk])
                for key, value in zip(chunk, values, strict=True):
                    address, expiry = self._address(key[len(self.config.prefix):]), _expiry(value)
                    if address is not None and expiry is not None:
                        remote[address] = expiry
        return remote

    def _merge(self, remote: dict[Entry, int], same: bool) -> tuple[int, int, dict[Entry, int]]:
        """Apply the scan to the table; what to write back to Redis."""
        dirty = self._dirty or set()
        now = int(self.table.clock())
        taken = dropped = 0
        written: dict[Entry, int] = {}
        for address in list(self.table):
            local = self.table.get(address)
            if address in dirty or local is None or local <= now:
                continue
            theirs = remote.get(address)
            if same:
                if theirs is None:
                    self.table.remove(address)
                    dropped += 1
            elif theirs is None or theirs < local:
                written[address] = local
        for address, expiry in remote.items():
            if address not in dirty and expiry > now and expiry > (written.get(address) or 0) \
                    and self.table.get(address) != expiry:
                self.table.set(address, expiry)
                taken += 1
        return taken, dropped, written

    async def _write_back(self, entries: dict[Entry, int]) -> None:
        items = list(entries.items())
        for chunk in _chunks(items):
            await _pipeline(self.backend.client, [("set", self.key(a), e, {"exat": e}) for a, e in chunk])


def _expiry(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


async def _pipeline(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Run single-key commands in one round trip (no transaction: fine on a cluster)."""
    pipe = client.pipeline(transaction=False)
    for name, *args in commands:
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        getattr(pipe, name)(*args, **kwargs)
    result: Awaitable[list[Any]] = pipe.execute()
    return await result
