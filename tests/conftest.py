from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.postfix import postfix_factory  # noqa: F401  (a fixture, used by name)
from tests.fixtures.server import ServerThread, ensure_rpcbind, test_config


@pytest.fixture(scope="session")
def rpcbind() -> None:
    ensure_rpcbind()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``make_server(**config_changes)`` starts a server; all are stopped at teardown."""
    servers: list[ServerThread] = []

    def make(clock: Any = None, **changes: Any) -> ServerThread:
        config = test_config(tmp_path, **changes)
        server = ServerThread(config, clock) if clock else ServerThread(config)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()
