"""The server without its sockets, put together in one place along the data flow:
dispatcher (wire) -> programs -> relay store -> publishers (journal, map).

The daemon builds it from its config; tests and benchmarks build the same
stack around their own map writer and settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from dracclient.drac import DRACPROG

from ..config import Config, ConfigError, RedisConfig
from ..metrics import Metrics
from ..programs.admin import AdminService
from ..programs.drac import DracService, Settings
from ..publish.commit import Committer
from ..publish.journal import Journal
from ..publish.maps import MapWriter
from ..relay.store import Store, open_store
from ..relay.table import Clock, RelayTable
from ..server.dispatch import Dispatcher


@dataclass
class Stack:
    table: RelayTable
    metrics: Metrics
    writer: MapWriter
    journal: Journal
    committer: Committer
    store: Store
    settings: Settings
    drac: DracService
    admin: AdminService
    dispatcher: Dispatcher


def build_stack(writer: MapWriter, settings: Settings, *, map_type: str = "btree", program: int = DRACPROG,
                redis: RedisConfig | None = None, clock: Clock = time.time) -> Stack:
    """Everything between the sockets and the map file. The committer is not started."""
    table = RelayTable(clock)
    metrics = Metrics()
    metrics.table_entries.read = table.__len__
    journal = Journal(writer.path)
    committer = Committer(table, writer, journal, metrics)
    store = open_store(table, committer, redis)
    drac = DracService(store, settings, metrics)
    admin = AdminService(store, settings, metrics, str(writer.path), map_type)
    dispatcher = Dispatcher(metrics)
    drac.register(dispatcher, program)
    admin.register(dispatcher, program)
    return Stack(table, metrics, writer, journal, committer, store, settings, drac, admin, dispatcher)


def event_loop(config: Config) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop ``event_loop`` asks for: its name and factory. uvloop when asked for
    (ConfigError if it is not installed) or, with auto, when it is installed."""
    if config.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.event_loop == "uvloop":
                raise ConfigError(f"{config.source}: key 'event_loop': uvloop is not installed: "
                                  "pip install 'dracd[uvloop]'") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop
