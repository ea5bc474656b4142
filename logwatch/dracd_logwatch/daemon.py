"""The watcher: sources in, ADDs out, one ordered start, reload and stop.

Lines and datagrams are matched on the event loop as they arrive (cheap,
synchronous); the ADDs they lead to wait in a queue for a few workers, so a
slow or absent dracd delays ADDs but never the reading of logs. An ADD that
fails is forgotten by the de-duplication, so the next login retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import FileSource, LogwatchConfig, TargetConfig
from .follow import FileFollower
from .policy import Authorization, IPNetwork, Policy, postfix_mynetworks
from .presets import Matcher
from .record import LogRecord, parse_dovecot_line, parse_syslog_line
from .sources import Journal, SyslogSocket
from .target import AdminTarget, ServersTarget, Target
from .trust import forgery_warnings

log = logging.getLogger(__name__)

WORKERS = 4
_PARSERS = {"syslog": parse_syslog_line, "dovecot": parse_dovecot_line}


def make_target(config: TargetConfig) -> Target:
    if config.admin_socket is not None:
        return AdminTarget(config.admin_socket, prog=config.program, timeout=config.timeout)
    return ServersTarget(config.servers, port=config.port, prog=config.program, timeout=config.timeout)


def _socket_settings(config: LogwatchConfig) -> tuple[object, ...]:
    sources = config.sources
    return sources.syslog_socket, sources.syslog_socket_executables, sources.syslog_socket_users


def _programs(config: LogwatchConfig) -> frozenset[str]:
    return frozenset(program for rule in config.rules() for program in rule.programs)


def trusted_networks(config: LogwatchConfig) -> list[IPNetwork]:
    """The configured trusted networks, plus Postfix's mynetworks if asked (raises MynetworksError)."""
    networks = list(config.trusted)
    if config.postfix_mynetworks:
        networks += postfix_mynetworks(config.postfix_config)
    return networks


@dataclass
class Counters:
    records: int = 0
    logins: int = 0
    added: int = 0
    failed: int = 0


@dataclass
class _Followed:
    follower: FileFollower
    format: str
    task: asyncio.Task[None] | None = field(default=None)


class Watcher:
    """Everything one configuration asks for, running on the current event loop."""

    def __init__(self, config: LogwatchConfig, *, target: Target | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.target = target if target is not None else make_target(config.target)
        self.matcher = Matcher(config.rules(), clock)
        self.policy = Policy(trusted_networks(config), config.dedup, clock, networks=self.target.networks)
        self.counters = Counters()
        self._queue: asyncio.Queue[Authorization] = asyncio.Queue()
        self._files: dict[Path, _Followed] = {}
        self._socket: SyslogSocket | None = None
        self._journal: tuple[Journal, asyncio.Task[None]] | None = None
        self._workers: list[asyncio.Task[None]] = []

    # -- matching (synchronous, on the loop) --------------------------------------------

    def feed(self, record: LogRecord) -> None:
        """One record from any source: a login becomes an authorization in the queue."""
        self.counters.records += 1
        login = self.matcher.match(record)
        if login is None:
            return
        self.counters.logins += 1
        authorization = self.policy.decide(login)
        if authorization is not None:
            self._queue.put_nowait(authorization)

    def _line_feeder(self, fmt: str) -> Callable[[str], None]:
        parse = _PARSERS[fmt]

        def feed_line(line: str) -> None:
            record = parse(line)
            if record is not None:
                self.feed(record)
        return feed_line

    # -- sending ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            authorization = await self._queue.get()
            try:
                await self._send(authorization)
            except Exception:  # noqa: BLE001 - a bug in one ADD must not stop the others
                log.exception("sending %s failed", authorization.describe())
                self.policy.forget(authorization)
            finally:
                self._queue.task_done()

    async def _send(self, auth: Authorization) -> None:
        lifetime = f"lifetime {auth.lifetime} s" if auth.lifetime else "dracd's lifetime"
        if not auth.entries:
            log.debug("nothing to add for %s (preset %s): every address is trusted", auth.describe(), auth.rule)
            return
        outcomes = await self.target.add(auth.entries, auth.lifetime)
        failed = [outcome for outcome in outcomes if outcome.error is not None]
        self.counters.added += len(outcomes) - len(failed)
        self.counters.failed += len(failed)
        if not failed:
            log.info("ADD %s (preset %s, %s): ok", auth.describe(), auth.rule, lifetime)
            return
        self.policy.forget(auth)
        if len(outcomes) == 1:
            log.warning("ADD %s (preset %s, %s): failed: %s", auth.describe(), auth.rule, lifetime,
                        failed[0].error)
        else:
            log.warning("ADD %s (preset %s, %s): %d of %d failed, e.g. %s: %s", auth.describe(), auth.rule,
                        lifetime, len(failed), len(outcomes), failed[0].address, failed[0].error)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued ADD was answered; False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open every source (files positioned at their end) and start sending."""
        self._workers = [asyncio.create_task(self._work(), name=f"logwatch-add-{i}") for i in range(WORKERS)]
        try:
            for source in self.config.sources.files:
                self._follow(source, from_start=self.config.sources.from_start)
            await self._start_socket()
            self._start_journal()
        except BaseException:
            await self.stop(drain_timeout=0.1)
            raise
        log.info("watching %s; rules %s; sending to %s", self._describe_sources(),
                 ", ".join(rule.name for rule in self.matcher.rules), self.target.describe())
        self._warn_forgeable()

    def _warn_forgeable(self) -> None:
        for warning in forgery_warnings(self.config):
            log.warning("%s", warning)

    def _describe_sources(self) -> str:
        parts = [f"{path} ({item.format})" for path, item in self._files.items()]
        if self._socket is not None:
            parts.append(f"syslog socket {self._socket.path}")
        if self._journal is not None:
            parts.append("journald")
        return ", ".join(parts)

    def _follow(self, source: FileSource, *, from_start: bool) -> None:
        follower = FileFollower(source.path, from_start=from_start, interval=self.config.sources.poll_interval)
        followed = _Followed(follower, source.format)
        feed = self._line_feeder(source.format)
        for line in follower.poll()[0]:  # opens (or positions at the end) before READY
            feed(line)
        followed.task = asyncio.create_task(follower.run(feed), name=f"logwatch-follow-{source.path}")
        self._files[source.path] = followed

    async def _start_socket(self) -> None:
        path = self.config.sources.syslog_socket
        if path is not None:
            sources = self.config.sources
            self._socket = SyslogSocket(path, self.feed, sources.syslog_socket_executables, sources.syslog_socket_users)
            await self._socket.start()

    def _start_journal(self) -> None:
        settings = self.config.sources.journald
        if settings is None:
            return
        programs = [program for rule in self.matcher.rules for program in rule.programs]
        journal = Journal(self.feed, programs=programs, executables=settings.executables, users=settings.users,
                          command=settings.command)
        self._journal = (journal, asyncio.create_task(journal.run(), name="logwatch-journal"))

    async def reload(self, config: LogwatchConfig) -> None:
        """SIGHUP: new rules, trusted networks and target; files reopened, new ones followed
        from their end; what was sent recently is still remembered. Raises (and changes
        nothing) if the new trusted networks cannot be read."""
        trusted = trusted_networks(config)
        old = self.config
        self.config = config
        self.matcher = Matcher(config.rules(), self.clock)
        self.policy.configure(trusted, config.dedup)
        if config.target != old.target:
            await self.drain(old.target.timeout + 1)
            self.target = make_target(config.target)
        wanted = {source.path: source for source in config.sources.files}
        for path in list(self._files):
            if path not in wanted or wanted[path].format != self._files[path].format:
                await self._unfollow(path)
        for path, source in wanted.items():
            if path in self._files:
                feed = self._line_feeder(source.format)
                for line in self._files[path].follower.reopen():
                    feed(line)
            else:
                self._follow(source, from_start=False)
        if _socket_settings(config) != _socket_settings(old):
            self._close_socket()
            await self._start_socket()
        if config.sources.journald != old.sources.journald or _programs(config) != _programs(old):
            await self._stop_journal()
            self._start_journal()
        log.info("reloaded %s: watching %s", config.source, self._describe_sources())
        self._warn_forgeable()

    async def _unfollow(self, path: Path) -> None:
        followed = self._files.pop(path)
        if followed.task is not None:
            followed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await followed.task
        followed.follower.close()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _stop_journal(self) -> None:
        if self._journal is not None:
            _, task = self._journal
            self._journal = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop reading, let queued ADDs finish (bounded), then stop sending."""
        for path in list(self._files):
            await self._unfollow(path)
        self._close_socket()
        await self._stop_journal()
        timeout = drain_timeout if drain_timeout is not None else self.config.target.timeout + 1
        if not await self.drain(timeout):
            log.warning("stopping with %d ADDs unsent", self._queue.qsize())
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
